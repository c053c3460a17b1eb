//! Wall-clock helpers.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The UTC calendar date of a Unix time in milliseconds, as `YYYY-MM-DD`.
pub fn utc_date(ms: i64) -> String {
    // Days since 1970-01-01, then the civil date (H. Hinnant's algorithm).
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{d:02}");
    }
    // Four digits, two, two, without the formatting machinery (it runs for
    // every login row).
    let digit = |n: i64| char::from(b'0' + (n % 10) as u8);
    let mut out = String::with_capacity(10);
    for n in [y / 1000, y / 100, y / 10, y] {
        out.push(digit(n));
    }
    out.push('-');
    out.extend([digit(m / 10), digit(m)]);
    out.push('-');
    out.extend([digit(d / 10), digit(d)]);
    out
}

/// A Unix time in milliseconds as an ISO 8601 UTC timestamp
/// (`2022-12-02T17:06:40.123Z`): what PostgreSQL's timestamptz input reads
/// whatever the session's DateStyle and TimeZone.
pub fn iso_utc(ms: i64) -> String {
    let ms_of_day = ms.rem_euclid(86_400_000);
    let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!("{}T{h:02}:{m:02}:{s:02}.{milli:03}Z", utc_date(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(1_670_000_000_123), "2022-12-02T16:53:20.123Z");
        assert_eq!(iso_utc(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_670_000_000_000), "2022-12-02");
        // the fast path's edges, against the formatter
        for (ms, want) in [
            (-62_167_219_200_000, "0000-01-01"),
            (253_402_300_799_999, "9999-12-31"),
            (253_402_300_800_000, "10000-01-01"),
            (-62_167_219_200_001, "-001-12-31"),
        ] {
            assert_eq!(utc_date(ms), want);
        }
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(951_868_799_999), "2000-02-29");
        assert_eq!(utc_date(951_868_800_000), "2000-03-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(4_102_444_800_000), "2100-01-01");
    }

    #[test]
    fn now_is_after_2025() {
        assert!(now_ms() > 1_735_689_600_000);
    }
}

//! The built-in transforms (`USING name`): what the exercise needed, made
//! general. Pure functions of the value; no SQL, so a pipeline never runs
//! code its creator chose.

use super::spec::Transform;
use crate::reject::quoted;
use crate::time::iso_utc;

/// `major*10000 + minor*100 + patch`: order-preserving for versions whose
/// minor and patch are below 100 (`2.3` = `2.3.0` = 20300, `0.96` = 9600 >
/// `0.9.6` = 906). `field` names the value in messages.
pub fn encode_version(field: &str, v: &str) -> Result<i64, String> {
    let parts: Vec<&str> = v.split('.').collect();
    if v.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{field} {} is not of the form major[.minor[.patch]] with decimal digits",
            quoted(v)
        ));
    }
    let nums: Vec<u64> = parts
        .iter()
        .map(|p| {
            p.parse::<u64>()
                .map_err(|_| format!("{field} {} has a component too large", quoted(v)))
        })
        .collect::<Result<_, _>>()?;
    if nums.iter().skip(1).any(|&n| n > 99) {
        return Err(format!(
            "{field} {} has a minor or patch above 99, which major*10000+minor*100+patch cannot encode",
            quoted(v)
        ));
    }
    let major = nums[0];
    if major > 100_000_000 {
        return Err(format!(
            "{field} {} has a major version too large",
            quoted(v)
        ));
    }
    Ok((major * 10_000
        + nums.get(1).copied().unwrap_or(0) * 100
        + nums.get(2).copied().unwrap_or(0)) as i64)
}

/// The transforms other than `version` (which depends on the column).
pub fn apply(t: Transform, v: &str) -> Result<String, String> {
    Ok(match t {
        Transform::Lower => v.to_lowercase(),
        Transform::Upper => v.to_uppercase(),
        Transform::Trim => v.trim().to_string(),
        Transform::EpochSeconds | Transform::EpochMillis => {
            let n: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{} is not a number of seconds since 1970", quoted(v)))?;
            let ms = if t == Transform::EpochSeconds {
                n * 1000.0
            } else {
                n
            };
            // PostgreSQL's timestamps end in 294276 AD
            if !ms.is_finite() || ms.abs() > 9.0e15 {
                return Err(format!("{} is out of range for a timestamp", quoted(v)));
            }
            iso_utc(ms.round() as i64)
        }
        Transform::Version => v.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn app_version_encoding() {
        let e = |v| encode_version("app_version", v);
        assert_eq!(e("2.3.0"), Ok(20300));
        assert_eq!(e("2.3"), Ok(20300));
        assert_eq!(e("0.96"), Ok(9600));
        assert_eq!(e("0.9.6"), Ok(906));
        assert_eq!(e("2.00"), Ok(20000));
        assert_eq!(e("4.19"), Ok(41900));
        assert_eq!(e("5"), Ok(50000));
        assert_eq!(e("0.2.6"), Ok(206));
        assert_eq!(e("99.99.99"), Ok(999_999));
        assert!(e("0.96").unwrap() > e("0.9.6").unwrap());
        for bad in [
            "", ".", "1.", ".1", "1..2", "1.2.3.4", "v1.2", "1.2-beta", " 1.2", "1.2 ", "-1.2",
            "+1", "1.100", "١.٢",
        ] {
            assert!(e(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            e("1.2.3.4").unwrap_err(),
            "app_version \"1.2.3.4\" is not of the form major[.minor[.patch]] with decimal digits"
        );
    }

    #[test]
    fn every_sample_version_encodes_in_order() {
        let sample = include_str!("../../../../data/login-queue-sample.json");
        let records: Vec<serde_json::Value> = serde_json::from_str(sample).unwrap();
        let mut versions: Vec<(String, i64)> = records
            .iter()
            .filter_map(|r| r.get("app_version").and_then(|v| v.as_str()))
            .map(|v| (v.to_string(), encode_version("app_version", v).unwrap()))
            .collect();
        assert_eq!(versions.len(), 99);
        versions.sort_by_key(|(v, _)| {
            v.split('.')
                .map(|p| p.parse::<u32>().unwrap())
                .chain([0, 0])
                .take(3)
                .collect::<Vec<_>>()
        });
        assert!(
            versions.windows(2).all(|w| w[0].1 <= w[1].1),
            "{versions:?}"
        );
    }

    #[test]
    fn the_other_transforms() {
        assert_eq!(apply(Transform::Lower, "AbC").unwrap(), "abc");
        assert_eq!(apply(Transform::Upper, "AbC").unwrap(), "ABC");
        assert_eq!(apply(Transform::Trim, "  x ").unwrap(), "x");
        assert_eq!(
            apply(Transform::EpochSeconds, "1670000000.5").unwrap(),
            "2022-12-02T16:53:20.500Z"
        );
        assert_eq!(
            apply(Transform::EpochMillis, "1670000000123").unwrap(),
            "2022-12-02T16:53:20.123Z"
        );
        assert!(apply(Transform::EpochSeconds, "soon").is_err());
        assert!(apply(Transform::EpochSeconds, "1e300").is_err());
        assert!(apply(Transform::EpochSeconds, "NaN").is_err());
    }

    proptest! {
        /// Any text either encodes or is refused with a reason: no panic.
        #[test]
        fn any_version_text_converts_or_is_refused(v in ".{0,24}") {
            let _ = encode_version("v", &v);
            for t in [Transform::EpochSeconds, Transform::EpochMillis, Transform::Lower, Transform::Trim] {
                let _ = apply(t, &v);
            }
        }
    }
}

//! The built-in transforms (`USING name`): what the exercise needed, made
//! general. Pure functions of the value; no SQL, so a pipeline never runs
//! code its creator chose.

use super::spec::Transform;
use crate::reject::quoted;
use crate::time::iso_utc;

/// Why a text is not a version [`encode_version`] can encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionError {
    NotDotted,
    ComponentTooLarge,
    AboveNinetyNine,
    MajorTooLarge,
}

impl VersionError {
    /// The reject detail for value `v` of `field`.
    pub fn describe(self, field: &str, v: &str) -> String {
        let v = quoted(v);
        match self {
            VersionError::NotDotted => format!(
                "{field} {v} is not of the form major[.minor[.patch]] with decimal digits"
            ),
            VersionError::ComponentTooLarge => format!("{field} {v} has a component too large"),
            VersionError::AboveNinetyNine => format!(
                "{field} {v} has a minor or patch above 99, which major*10000+minor*100+patch cannot encode"
            ),
            VersionError::MajorTooLarge => format!("{field} {v} has a major version too large"),
        }
    }
}

/// `major*10000 + minor*100 + patch`: order-preserving for versions whose
/// minor and patch are below 100 (`2.3` = `2.3.0` = 20300, `0.96` = 9600 >
/// `0.9.6` = 906). Allocates nothing (it runs for every login row).
pub fn encode_version(v: &str) -> Result<i64, VersionError> {
    let mut nums = [0u64; 3];
    let (mut part, mut digits, mut too_large) = (0, 0, false);
    for b in v.bytes() {
        match b {
            b'.' if digits > 0 && part < 2 => {
                part += 1;
                digits = 0;
            }
            b'0'..=b'9' => {
                digits += 1;
                match nums[part]
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(b - b'0')))
                {
                    Some(n) => nums[part] = n,
                    None => too_large = true,
                }
            }
            _ => return Err(VersionError::NotDotted),
        }
    }
    if digits == 0 {
        return Err(VersionError::NotDotted);
    }
    if too_large {
        return Err(VersionError::ComponentTooLarge);
    }
    let [major, minor, patch] = nums;
    if minor > 99 || patch > 99 {
        return Err(VersionError::AboveNinetyNine);
    }
    if major > 100_000_000 {
        return Err(VersionError::MajorTooLarge);
    }
    Ok((major * 10_000 + minor * 100 + patch) as i64)
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
        let e = |v| encode_version(v).map_err(|w| w.describe("app_version", v));
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
            e("99999999999999999999999").unwrap_err(),
            "app_version \"99999999999999999999999\" has a component too large"
        );
        assert_eq!(e("99999999999999999999999.x").unwrap_err(), "app_version \"99999999999999999999999.x\" is not of the form major[.minor[.patch]] with decimal digits");
        assert_eq!(e("1.100").unwrap_err(), "app_version \"1.100\" has a minor or patch above 99, which major*10000+minor*100+patch cannot encode");
        assert_eq!(
            e("100000001").unwrap_err(),
            "app_version \"100000001\" has a major version too large"
        );
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
            .map(|v| (v.to_string(), encode_version(v).unwrap()))
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
        /// Every dotted version in range encodes to its formula, however
        /// many parts it gives.
        #[test]
        fn a_dotted_version_encodes_to_its_formula(a in 0u64..=100_000_000, b in 0u64..100, c in 0u64..100) {
            let want = (a * 10_000 + b * 100 + c) as i64;
            prop_assert_eq!(encode_version(&format!("{a}.{b}.{c}")), Ok(want));
            prop_assert_eq!(encode_version(&format!("{a}.{b}")), Ok(want - c as i64));
            prop_assert_eq!(encode_version(&format!("{a}")), Ok((a * 10_000) as i64));
        }

        /// Any text either encodes or is refused with a reason: no panic.
        #[test]
        fn any_version_text_converts_or_is_refused(v in ".{0,24}") {
            if let Err(w) = encode_version(&v) {
                prop_assert!(!w.describe("v", &v).is_empty());
            }
            for t in [Transform::EpochSeconds, Transform::EpochMillis, Transform::Lower, Transform::Trim] {
                let _ = apply(t, &v);
            }
        }
    }
}

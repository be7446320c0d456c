//! Parsers for command-line values: durations, byte rates and percentages.

use std::time::Duration;

/// Parses `30s`, `10m`, `10min`, `26h`, `7d`, `2w`, or combinations like `1h30m` (a bare `m`
/// is minutes here; `mo`, months, is refused: a month has no fixed length).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {text:?}: use a number and a unit (s, m or min = minutes, h, d, w), e.g. 90s, 10min, 26h, 1h30m")
    };
    let mut total = 0u64;
    for (n, unit) in tvault_core::ops::retention::split_units(text).ok_or_else(bad)? {
        let unit = match unit.as_str() {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "mo" => {
                return Err(format!(
                    "invalid duration {text:?}: a month is not a fixed duration here; use days, e.g. 30d"
                ))
            }
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_secs(total))
}

pub use tvault_core::ops::describe_duration;

/// Parses a byte rate per second: `200MiB`, `1.5GB`, `500k` (K/M/G = powers of 1000,
/// KiB/MiB/GiB = powers of 1024; an optional `/s`).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid rate {text:?}: use e.g. 200MiB, 1.5GB or 500M (bytes per second)");
    let t = text.trim().trim_end_matches("/s");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let rate = n * mult;
    if !(rate >= 1.0 && rate.is_finite()) {
        return Err(bad());
    }
    Ok(rate as u64)
}

/// Parses a percentage from 0 to 100 (`5`, `2.5`, `5%`).
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "invalid percentage {text:?}: use a number from 0 to 100, e.g. 5 or 2.5"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_explain() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("26h"), Ok(Duration::from_secs(26 * 3600)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("10min"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30min"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("1mo").unwrap_err().contains("use days"));
        for bad in [
            "",
            "10",
            "h",
            "5y",
            "-3s",
            "1.5h",
            "99999999999999999999s",
            "10 m",
            "10mins",
            "m5",
        ] {
            assert!(
                parse_duration(bad)
                    .unwrap_err()
                    .contains("invalid duration"),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations_read_in_words() {
        assert_eq!(describe_duration(Duration::from_secs(600)), "10 minutes");
        assert_eq!(
            describe_duration(Duration::from_secs(5400)),
            "1 hour 30 minutes"
        );
        assert_eq!(
            describe_duration(Duration::from_secs(86_401)),
            "1 day 1 second"
        );
        assert_eq!(describe_duration(Duration::ZERO), "0 seconds");
    }

    #[test]
    fn rates_parse_or_explain() {
        assert_eq!(parse_rate("200MiB"), Ok(200 << 20));
        assert_eq!(parse_rate("1.5GB/s"), Ok(1_500_000_000));
        assert_eq!(parse_rate("500k"), Ok(500_000));
        for bad in ["", "fast", "0", "10 parsecs", "-5M"] {
            assert!(
                parse_rate(bad).unwrap_err().contains("invalid rate"),
                "{bad}"
            );
        }
    }

    #[test]
    fn percentages_parse_or_explain() {
        assert_eq!(parse_percent("5"), Ok(5.0));
        assert_eq!(parse_percent("2.5%"), Ok(2.5));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert_eq!(parse_percent("100"), Ok(100.0));
        for bad in ["-5", "200", "100.5", "", "five", "NaN", "inf"] {
            assert!(
                parse_percent(bad)
                    .unwrap_err()
                    .contains("invalid percentage"),
                "{bad}"
            );
        }
    }
}

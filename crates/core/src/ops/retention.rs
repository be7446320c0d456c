//! Which snapshots a retention policy keeps. The semantics are restic's `forget`:
//!
//! - Snapshots are considered newest first (ties: by ID), in groups of the same host and paths.
//! - `--keep-last N` keeps the N newest. `--keep-hourly/daily/weekly/monthly/yearly N` keep the
//!   newest snapshot of each of the N most recent hours/days/ISO weeks/months/years *that have a
//!   snapshot* (empty periods do not count). Periods are computed in **UTC**.
//! - `--keep-within D` keeps every snapshot strictly newer than the group's newest minus D
//!   (`D` like `2d`, `36h`, `1y6m`, `2w`, `90min`: units y, m or mo (months, as in restic), w,
//!   d, h, min (minutes)).
//! - `--keep-tag T` keeps every snapshot that has tag T.
//! - A snapshot is kept if any rule keeps it; the reasons say which.
//! - With no rule at all, every snapshot is kept.

use chrono::{DateTime, Datelike, Duration, Months, Utc};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub within: Option<Within>,
    pub tags: Vec<String>,
}

/// A calendar span for `--keep-within`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
    pub minutes: u32,
}

/// Splits a duration like `1h30min` into (number, unit) pairs; `None` unless it is one or more
/// numbers each followed by a unit made of letters.
pub fn split_units(text: &str) -> Option<Vec<(u64, String)>> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let letters = rest[digits..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |n| digits + n);
        if digits == 0 || letters == digits {
            return None;
        }
        parts.push((
            rest[..digits].parse().ok()?,
            rest[digits..letters].to_string(),
        ));
        rest = &rest[letters..];
    }
    Some(parts)
}

impl Within {
    /// Parses `1y2m3w4d5h6min`-style spans (any subset, each unit at most once, in any order).
    /// A bare `m` is months (restic's meaning, kept so existing policies keep what they kept);
    /// `mo` says months and `min` minutes explicitly.
    pub fn parse(text: &str) -> Result<Within, String> {
        let bad = || {
            format!("invalid duration {text:?}: use a number and a unit (y, m or mo = months, w, d, h, min = minutes), e.g. 36h, 7d, 1y6m, 90min")
        };
        let mut w = Within::default();
        let mut seen: Vec<&str> = Vec::new();
        for (n, unit) in split_units(text).ok_or_else(bad)? {
            let n: u32 = n.try_into().map_err(|_| bad())?;
            let unit = match unit.as_str() {
                "y" => "y",
                "m" | "mo" => "mo",
                "w" => "w",
                "d" => "d",
                "h" => "h",
                "min" => "min",
                _ => return Err(bad()),
            };
            if seen.contains(&unit) {
                return Err(bad());
            }
            seen.push(unit);
            let days = |d: u32| w.days.checked_add(d).ok_or_else(bad);
            match unit {
                "y" => w.years = n,
                "mo" => w.months = n,
                "w" => w.days = days(n.checked_mul(7).ok_or_else(bad)?)?,
                "d" => w.days = days(n)?,
                "h" => w.hours = n,
                _ => w.minutes = n,
            }
        }
        Ok(w)
    }

    /// `t` minus this span.
    pub fn before(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years.saturating_mul(12).saturating_add(self.months);
        let t = t
            .checked_sub_months(Months::new(months))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        t.checked_sub_signed(
            Duration::days(self.days as i64)
                + Duration::hours(self.hours as i64)
                + Duration::minutes(self.minutes as i64),
        )
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The span in words, as plans state it: `1 year 6 months`, `30 minutes`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.years, "year"),
            (self.months, "month"),
            (self.days, "day"),
            (self.hours, "hour"),
            (self.minutes, "minute"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
        .collect();
        if parts.is_empty() {
            return "0 minutes".to_string();
        }
        parts.join(" ")
    }
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// One snapshot as the policy sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub time: DateTime<Utc>,
    pub tags: Vec<String>,
    /// Breaks ties between equal times deterministically (the snapshot ID).
    pub tiebreak: String,
}

/// For each candidate (in input order): the reasons it is kept; empty means it is removed.
pub fn apply(policy: &KeepPolicy, group: &[Candidate]) -> Vec<Vec<String>> {
    let mut reasons = vec![Vec::new(); group.len()];
    if policy.is_empty() {
        for r in &mut reasons {
            r.push("no keep rule given".to_string());
        }
        return reasons;
    }
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by(|&a, &b| {
        (group[b].time, &group[b].tiebreak).cmp(&(group[a].time, &group[a].tiebreak))
    });
    let Some(&newest) = order.first() else {
        return reasons;
    };

    type Bucket = fn(DateTime<Utc>, usize) -> i64;
    let rules: [(&str, u32, Bucket); 6] = [
        ("last", policy.last, |_, nr| nr as i64),
        ("hourly", policy.hourly, |t, _| {
            t.timestamp().div_euclid(3600)
        }),
        ("daily", policy.daily, |t, _| {
            t.timestamp().div_euclid(86_400)
        }),
        ("weekly", policy.weekly, |t, _| {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly", policy.monthly, |t, _| {
            t.year() as i64 * 100 + t.month() as i64
        }),
        ("yearly", policy.yearly, |t, _| t.year() as i64),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
    let cutoff = policy.within.map(|w| w.before(group[newest].time));

    for (nr, &i) in order.iter().enumerate() {
        let snap = &group[i];
        for tag in &policy.tags {
            if snap.tags.contains(tag) {
                reasons[i].push(format!("tag {tag}"));
            }
        }
        if let (Some(cutoff), Some(w)) = (cutoff, policy.within) {
            if snap.time > cutoff {
                reasons[i].push(format!("within {}", describe(w)));
            }
        }
        for (r, (name, _, bucket)) in rules.iter().enumerate() {
            if left[r] == 0 {
                continue;
            }
            let b = bucket(snap.time, nr);
            if last_bucket[r] != Some(b) {
                last_bucket[r] = Some(b);
                reasons[i].push(format!("{name} {}", rules[r].1 - left[r] + 1));
                left[r] -= 1;
            }
        }
    }
    reasons
}

/// The span in short units that cannot be misread: `1y6mo`, `2d`, `30min`.
fn describe(w: Within) -> String {
    let mut s = String::new();
    for (n, unit) in [
        (w.years, "y"),
        (w.months, "mo"),
        (w.days, "d"),
        (w.hours, "h"),
        (w.minutes, "min"),
    ] {
        if n > 0 {
            s.push_str(&format!("{n}{unit}"));
        }
    }
    if s.is_empty() {
        s.push_str("0h");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        Utc.from_utc_datetime(&naive)
    }

    fn snaps(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                time: at(t),
                tags: if i % 3 == 0 {
                    vec!["gold".into()]
                } else {
                    vec![]
                },
                tiebreak: format!("{i:04}"),
            })
            .collect()
    }

    /// The indices kept.
    fn kept(policy: &KeepPolicy, group: &[Candidate]) -> Vec<usize> {
        apply(policy, group)
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, _)| i)
            .collect()
    }

    const TIMES: &[&str] = &[
        "2026-01-01 00:10", // 0 Thu, ISO week 2026-01
        "2026-01-01 00:50", // 1 same hour and day as 0
        "2026-01-01 23:59", // 2
        "2026-01-02 00:00", // 3
        "2026-01-05 12:00", // 4 Mon, week 02
        "2026-01-31 08:00", // 5
        "2026-02-01 08:00", // 6
        "2026-03-15 10:00", // 7
        "2026-03-15 10:30", // 8 same hour as 7
        "2027-06-01 00:00", // 9
    ];

    #[test]
    fn each_rule_keeps_the_newest_of_each_period_with_a_snapshot() {
        let g = snaps(TIMES);
        let p = |f: fn(&mut KeepPolicy)| {
            let mut p = KeepPolicy::default();
            f(&mut p);
            p
        };
        let table: Vec<(KeepPolicy, Vec<usize>)> = vec![
            (p(|p| p.last = 3), vec![7, 8, 9]),
            (p(|p| p.last = 100), (0..10).collect()),
            // Hours with snapshots, newest first: 9, 8 (7 shares its hour), 6, 5, 4, ...
            (p(|p| p.hourly = 4), vec![5, 6, 8, 9]),
            // Days: 9, 8, 6, 5, 4, 3, then 2 (0, 1 and 2 share a day).
            (p(|p| p.daily = 7), vec![2, 3, 4, 5, 6, 8, 9]),
            (p(|p| p.daily = 100), vec![2, 3, 4, 5, 6, 8, 9]),
            // ISO weeks: 2027-22 (9), 2026-11 (8), 2026-05 (6), 2026-05 has 5 too? Jan 31 is
            // Sat of week 05 and Feb 1 is Sun of week 05: one bucket, newest (6) wins.
            (p(|p| p.weekly = 4), vec![4, 6, 8, 9]),
            (p(|p| p.monthly = 3), vec![6, 8, 9]),
            (p(|p| p.monthly = 4), vec![5, 6, 8, 9]),
            (p(|p| p.yearly = 5), vec![8, 9]),
            (
                p(|p| {
                    p.last = 1;
                    p.yearly = 2;
                }),
                vec![8, 9],
            ),
            (
                p(|p| {
                    p.last = 2;
                    p.monthly = 2;
                    p.tags = vec!["gold".into()];
                }),
                vec![0, 3, 6, 8, 9],
            ),
        ];
        for (policy, want) in table {
            assert_eq!(kept(&policy, &g), want, "{policy:?}");
        }
    }

    #[test]
    fn keep_within_is_relative_to_the_newest_snapshot_and_strict() {
        let g = snaps(&[
            "2026-05-01 00:00",
            "2026-05-02 00:00",
            "2026-05-03 00:00",
            "2026-05-03 12:00",
        ]);
        let within = |s: &str| KeepPolicy {
            within: Some(Within::parse(s).unwrap()),
            ..KeepPolicy::default()
        };
        // Exactly 2 days before the newest (05-01 12:00) is the boundary: not kept.
        assert_eq!(kept(&within("2d"), &g), vec![1, 2, 3]);
        assert_eq!(kept(&within("2d12h"), &g), vec![1, 2, 3]);
        assert_eq!(kept(&within("2d13h"), &g), vec![0, 1, 2, 3]);
        assert_eq!(kept(&within("1h"), &g), vec![3]);
        assert_eq!(kept(&within("1m"), &g), vec![0, 1, 2, 3]);
        assert_eq!(kept(&within("1mo"), &g), vec![0, 1, 2, 3]);
        assert_eq!(kept(&within("720min"), &g), vec![3]);
        assert_eq!(kept(&within("721min"), &g), vec![2, 3]);
        let reasons = apply(&within("1y6m"), &g);
        assert_eq!(reasons[0], vec!["within 1y6mo".to_string()]);
    }

    #[test]
    fn ties_in_time_resolve_by_id_and_reasons_name_the_rule() {
        let mut g = snaps(&["2026-01-01 10:00", "2026-01-01 10:00"]);
        g[0].tiebreak = "b".into();
        g[1].tiebreak = "a".into();
        let policy = KeepPolicy {
            last: 1,
            daily: 1,
            ..KeepPolicy::default()
        };
        let reasons = apply(&policy, &g);
        assert_eq!(
            reasons[0],
            vec!["last 1".to_string(), "daily 1".to_string()]
        );
        assert!(reasons[1].is_empty());
    }

    #[test]
    fn no_rule_keeps_everything_and_empty_groups_are_fine() {
        let g = snaps(TIMES);
        assert_eq!(
            kept(&KeepPolicy::default(), &g),
            (0..10).collect::<Vec<_>>()
        );
        assert!(apply(
            &KeepPolicy {
                last: 1,
                ..KeepPolicy::default()
            },
            &[]
        )
        .is_empty());
    }

    #[test]
    fn durations_parse_or_explain() {
        assert_eq!(
            Within::parse("36h").unwrap(),
            Within {
                hours: 36,
                ..Within::default()
            }
        );
        assert_eq!(
            Within::parse("1y6m2w1d").unwrap(),
            Within {
                years: 1,
                months: 6,
                days: 15,
                ..Within::default()
            }
        );
        // A bare `m` stays months; `mo` and `min` say which explicitly.
        assert_eq!(Within::parse("30m"), Within::parse("30mo"));
        assert_eq!(Within::parse("30m").unwrap().describe(), "30 months");
        let w = Within::parse("1h30min").unwrap();
        assert_eq!((w.hours, w.minutes), (1, 30));
        assert_eq!(w.describe(), "1 hour 30 minutes");
        assert_eq!(
            Within::parse("1y6m2w1d").unwrap().describe(),
            "1 year 6 months 15 days"
        );
        for bad in [
            "",
            "5",
            "h",
            "3x",
            "1d1d",
            "-1d",
            "1.5d",
            "1m1mo",
            "1min1min",
            "5mins",
            "99999999999y",
        ] {
            let err = Within::parse(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }
}

//! The verbs, one file each: every operation is a plan over the repository's parts, then its
//! execution, taking plain option structs and returning a report (no CLI types here). Storage
//! is reached only through `Repository` (objects by kind and ID, planned reads of pack ranges,
//! the one pack writer `PackSink`): no verb formats a key or knows a byte layout.

pub mod backup;
mod content;
pub mod copy;
mod copy_blobs;
pub mod diff;
pub(crate) mod disk_bases;
pub mod drill;
pub mod dump;
mod encode_block;
pub mod export;
pub mod find;
pub mod import;
pub mod ls;
pub mod prune;
mod read_file;
pub mod repair;
pub mod restore;
pub mod retention;
pub mod select;
pub mod settle;
pub mod show;
pub mod stats;
mod stream_layout;
pub mod tag;
mod tensor_bases;
mod tensors;
mod throttle;
pub mod verify;
mod walk;
pub use walk::Excludes;

/// A duration in words, as plans and messages state it: `1 hour 30 minutes`, `10 minutes`.
pub fn describe_duration(d: std::time::Duration) -> String {
    let mut secs = d.as_secs();
    let mut parts = Vec::new();
    for (unit, len) in [
        ("week", 7 * 86_400),
        ("day", 86_400),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ] {
        let n = secs / len;
        secs %= len;
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        return "0 seconds".to_string();
    }
    parts.join(" ")
}

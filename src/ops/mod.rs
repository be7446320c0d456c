//! The verbs, one file each: every operation is a plan over the repository's parts, then its
//! execution, taking plain option structs and returning a report (no CLI types here).

pub mod backup;
mod content;
pub mod diff;
pub mod export;
pub mod import;
pub mod prune;
mod read_file;
pub mod repair;
pub mod restore;
pub mod retention;
pub mod show;
mod tensors;
mod throttle;
pub mod verify;
mod walk;
pub use walk::Excludes;

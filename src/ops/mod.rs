//! The verbs, one file each: every operation is a plan over the repository's parts, then its
//! execution, taking plain option structs and returning a report (no CLI types here).

pub mod backup;
mod content;
pub mod diff;
pub mod dump;
pub mod export;
pub mod find;
pub mod import;
pub mod ls;
pub mod prune;
mod read_file;
pub mod restore;
pub mod retention;
pub mod select;
pub mod show;
pub mod stats;
mod tensors;
mod throttle;
pub mod verify;
mod walk;
pub use walk::Excludes;

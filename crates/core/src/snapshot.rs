//! Snapshot manifests: the small JSON file that names a tree and describes one backup.
//! A manifest's ID is the BLAKE3 hash of its bytes; writing it is a backup's commit point.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Every file was read.
    Full,
    /// Files unchanged since the parent reused the parent's chunk lists without being read.
    Incremental,
}

/// What one backup did. Also the `--json` output of `backup`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the sizes of the files in the snapshot.
    pub total_bytes: u64,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    /// File content read from disk (0 for an incremental backup of an unchanged tree).
    pub bytes_read: u64,
    /// Bytes this backup added to the repository (packs and index), after dedup and compression.
    pub bytes_added: u64,
    pub chunks_added: u64,
    pub duration_ms: u64,
    /// How the content read was stored (absent in snapshots of older builds: all zero).
    #[serde(default)]
    pub stored: StoredBy,
}

/// Plain bytes of file content read by one backup, by how they were stored, and the stored
/// bytes of each new kind (`*_stored`). `deduplicated` bytes were already in the repository.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredBy {
    pub deduplicated: u64,
    pub byte_planes: u64,
    pub byte_planes_stored: u64,
    pub zstd: u64,
    pub zstd_stored: u64,
    pub raw: u64,
    /// Stored as an XOR with the parent snapshot's bytes at the same place (encoding 3).
    pub delta: u64,
    pub delta_stored: u64,
}

impl StoredBy {
    /// Records a new data blob of `plain` bytes stored as `stored` bytes with `encoding`.
    pub fn add(&mut self, encoding: crate::codec::Encoding, plain: u64, stored: u64) {
        use crate::codec::Encoding;
        match encoding {
            Encoding::Raw => self.raw += plain,
            Encoding::Zstd => {
                self.zstd += plain;
                self.zstd_stored += stored;
            }
            Encoding::Planes => {
                self.byte_planes += plain;
                self.byte_planes_stored += stored;
            }
            Encoding::Delta => {
                self.delta += plain;
                self.delta_stored += stored;
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: DateTime<Utc>,
    pub host: String,
    /// The absolute source paths, as given to `backup` (after resolving).
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub parent: Option<Id>,
    pub kind: SnapshotKind,
    pub tree: Id,
    pub summary: Summary,
    /// Why the snapshot is incomplete (files skipped), empty when it holds everything.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Files whose current version this backup did not store because they were still being
    /// written (`--settle`), each with the start of its deferral, so the next backup can tell
    /// how long a file has been deferred. Absent (empty) in most snapshots and in older ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<Deferral>,
    /// Set by `copy`: the ID of the snapshot this one is a copy of, in the repository it was
    /// copied from. Absent in snapshots taken by backup and in older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<Id>,
}

/// A file left at an older version, or out, by `--settle`, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferral {
    /// The file's path in the tree (lossy UTF-8 for non-UTF-8 names).
    pub path: String,
    /// The time of the first backup that deferred it (this one, or a chain of parents).
    pub since: DateTime<Utc>,
}

impl Snapshot {
    pub fn is_complete(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a snapshot always serialises")
    }

    /// Parses a manifest, checking that its name is the hash of its content (`ids`: keyed in
    /// an encrypted repository).
    pub fn from_bytes(name: &str, id: Id, bytes: &[u8], ids: crate::id::Ids) -> Result<Snapshot> {
        if ids.of(bytes) != id {
            return Err(Error::corrupt(
                name,
                "content does not match its name (damaged)",
            ));
        }
        let snap: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(name, format!("snapshot does not parse: {e}")))?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(Error::corrupt(
                name,
                format!("unknown snapshot version {}", snap.version),
            ));
        }
        Ok(snap)
    }
}

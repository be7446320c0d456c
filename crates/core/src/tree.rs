//! A snapshot's tree: every file, directory and symlink with its metadata and, for files, the
//! ordered chunk IDs of its content. Serialised as JSON and stored as a blob in the chunk store,
//! so an unchanged tree is stored once.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::id::Id;

pub const TREE_VERSION: u32 = 1;

/// A relative path inside a snapshot, as raw bytes (`/`-separated), so non-UTF-8 names survive.
/// Serialised as a JSON string when it is UTF-8, else as `{"hex": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodePath(pub Vec<u8>);

impl NodePath {
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    pub fn to_path_buf(&self) -> PathBuf {
        PathBuf::from(self.as_os_str())
    }

    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/')
    }

    /// The parent directory's path, `None` at the top level.
    pub fn parent(&self) -> Option<NodePath> {
        let cut = self.0.iter().rposition(|&b| b == b'/')?;
        Some(NodePath(self.0[..cut].to_vec()))
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &NodePath) -> bool {
        self.0.starts_with(&other.0)
            && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/')
    }

    /// A path is safe to join under a restore target: relative, with no empty, `.` or `..`
    /// component and no NUL. Anything else in a tree is corruption (or an attack).
    pub fn is_safe(&self) -> bool {
        !self.0.is_empty()
            && !self.0.contains(&0)
            && self
                .components()
                .all(|c| !c.is_empty() && c != b"." && c != b"..")
    }
}

impl Serialize for NodePath {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for NodePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<NodePath, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Hex { hex: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(s) => Ok(NodePath(s.into_bytes())),
            Repr::Hex { hex } => {
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                    .collect();
                bytes
                    .map(NodePath)
                    .ok_or_else(|| serde::de::Error::custom("invalid hex path"))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub path: NodePath,
    pub kind: NodeKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub mtime_ns: i64,
    /// ctime, inode and device decide whether an incremental backup may skip reading the file.
    pub ctime_ns: i64,
    pub inode: u64,
    pub dev: u64,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<NodePath>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub version: u32,
    /// Sorted by path, so a directory comes before everything below it.
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn new(mut nodes: Vec<Node>) -> Tree {
        nodes.sort_by(|a, b| a.path.cmp(&b.path));
        Tree {
            version: TREE_VERSION,
            nodes,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a tree always serialises")
    }

    /// Parses a tree and checks what restore relies on: known version, safe paths, sorted and
    /// unique, and every entry's parent present as a directory.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Tree> {
        let tree: Tree = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(name, format!("tree does not parse: {e}")))?;
        if tree.version != TREE_VERSION {
            return Err(Error::corrupt(
                name,
                format!("unknown tree version {}", tree.version),
            ));
        }
        let mut dirs = std::collections::HashSet::new();
        for (i, node) in tree.nodes.iter().enumerate() {
            if !node.path.is_safe() {
                return Err(Error::corrupt(
                    name,
                    format!("unsafe path {:?} in tree", node.path.display()),
                ));
            }
            if i > 0 && tree.nodes[i - 1].path >= node.path {
                return Err(Error::corrupt(
                    name,
                    "tree entries are not sorted and unique",
                ));
            }
            if let Some(parent) = node.path.parent() {
                if !dirs.contains(&parent) {
                    return Err(Error::corrupt(
                        name,
                        format!(
                            "{:?} has no parent directory in the tree",
                            node.path.display()
                        ),
                    ));
                }
            }
            if node.kind == NodeKind::Dir {
                dirs.insert(node.path.clone());
            }
            if node.kind == NodeKind::Symlink && node.target.is_none() {
                return Err(Error::corrupt(name, "symlink without target"));
            }
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &[u8], kind: NodeKind) -> Node {
        Node {
            path: NodePath(path.to_vec()),
            kind,
            mode: 0o644,
            mtime_ns: 1,
            ctime_ns: 2,
            inode: 3,
            dev: 4,
            uid: 0,
            gid: 0,
            size: 0,
            chunks: vec![],
            target: (kind == NodeKind::Symlink).then(|| NodePath(b"x".to_vec())),
        }
    }

    #[test]
    fn tree_round_trips_including_non_utf8_names() {
        let tree = Tree::new(vec![
            node(b"d/f\xff\xfe", NodeKind::File),
            node(b"d", NodeKind::Dir),
            node(b"d/link", NodeKind::Symlink),
        ]);
        let bytes = tree.to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains("\"hex\""));
        assert_eq!(Tree::from_bytes("t", &bytes).unwrap(), tree);
    }

    #[test]
    fn escaping_paths_are_rejected_as_corrupt() {
        for bad in [
            &b"../etc"[..],
            b"/etc",
            b"d/../../x",
            b"d//x",
            b"./x",
            b"a\0b",
            b"",
        ] {
            let tree = Tree {
                version: TREE_VERSION,
                nodes: vec![node(bad, NodeKind::File)],
            };
            let err = Tree::from_bytes("t", &tree.to_bytes()).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn orphans_and_unsorted_entries_are_rejected() {
        let orphan = Tree::new(vec![node(b"nodir/f", NodeKind::File)]);
        assert!(Tree::from_bytes("t", &orphan.to_bytes()).is_err());
        // A file cannot be the parent of another entry (no writing through it).
        let through_file = Tree::new(vec![
            node(b"f", NodeKind::File),
            node(b"f/g", NodeKind::File),
        ]);
        assert!(Tree::from_bytes("t", &through_file.to_bytes()).is_err());
        let unsorted = Tree {
            version: TREE_VERSION,
            nodes: vec![node(b"b", NodeKind::File), node(b"a", NodeKind::File)],
        };
        assert!(Tree::from_bytes("t", &unsorted.to_bytes()).is_err());
    }

    #[test]
    fn path_prefixes_respect_components() {
        let p = NodePath(b"ckpt/model.safetensors".to_vec());
        assert!(p.starts_with(&NodePath(b"ckpt".to_vec())));
        assert!(!p.starts_with(&NodePath(b"ck".to_vec())));
        assert_eq!(p.parent(), Some(NodePath(b"ckpt".to_vec())));
    }
}

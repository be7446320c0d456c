//! Delta bases read from the files they came from. A trainer writes each checkpoint into a new
//! folder and keeps the previous one beside it (`checkpoint-500/` next to `checkpoint-1000/`),
//! so when a backup takes the previous step's tensor blocks as bases, their plain bytes are
//! usually still on disk, in a file the parent snapshot holds and that has not changed since.
//! Reading them there costs a read and a hash; rebuilding them from the repository costs the
//! keyframe's decode plus every link of the chain (a backup at depth 39 ran at half the speed
//! of a first backup). A block read from disk is used only when its hash is the base's ID, so
//! a file changed behind the metadata's back costs the read, never a wrong delta.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::codec;
use crate::id::Id;
use crate::index::IdMap;
use crate::repo::Repository;
use crate::tree::NodePath;

/// Where the plain bytes of base blobs lie in files on disk, noted as bases are chosen.
#[derive(Default)]
pub(crate) struct DiskBases {
    /// The parent snapshot's files that are unchanged on disk: their path there.
    files: HashMap<NodePath, Arc<PathBuf>>,
    /// A base blob's file and offset.
    at: Mutex<IdMap<(Arc<PathBuf>, u64)>>,
}

impl DiskBases {
    /// `files`: the paths (in the snapshot) of the parent's files that are still on disk as the
    /// parent stored them, and where they are.
    pub(crate) fn new(files: HashMap<NodePath, PathBuf>) -> DiskBases {
        DiskBases {
            files: files.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            at: Mutex::default(),
        }
    }

    /// Notes that the blob `id` is `offset` bytes into the parent's file `path`, if that file
    /// is on disk unchanged.
    pub(crate) fn note(&self, path: &NodePath, offset: u64, id: Id) {
        if let Some(file) = self.files.get(path) {
            let mut at = self.at.lock().expect("disk bases");
            at.entry(id).or_insert_with(|| (file.clone(), offset));
        }
    }

    /// The plain bytes of those of `ids` found on disk with the right content.
    pub(crate) fn read(&self, repo: &Repository, ids: &[Id]) -> IdMap<Vec<u8>> {
        let wanted: Vec<(Id, Arc<PathBuf>, u64, usize)> = {
            let at = self.at.lock().expect("disk bases");
            let index = repo.index();
            ids.iter()
                .filter_map(|id| {
                    let (file, offset) = at.get(id)?;
                    let len = index.get(id)?.plain_len as usize;
                    Some((*id, file.clone(), *offset, len))
                })
                .collect()
        };
        let ids_of = repo.ids();
        wanted
            .into_par_iter()
            .filter_map(|(id, file, offset, len)| {
                let mut plain = codec::plain_buffer(len);
                File::open(&*file)
                    .and_then(|f| f.read_exact_at(&mut plain, offset))
                    .ok()?;
                if ids_of.of(&plain) == id {
                    Some((id, plain))
                } else {
                    codec::recycle(plain);
                    None
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use super::*;
    use crate::ops::backup::{self, BackupOptions};
    use crate::progress::NoProgress;
    use crate::repo::MemBackend;

    #[test]
    fn a_block_is_taken_from_disk_only_when_its_hash_is_the_bases_id() {
        let src = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..64 << 10).map(|i: u32| (i * 7 % 251) as u8).collect();
        let file = src.path().join("w.bin");
        fs::write(&file, &data).unwrap();
        let mut repo =
            Repository::init_with(Arc::new(MemBackend::default()), "mem".into()).unwrap();
        backup::run(
            &mut repo,
            &BackupOptions::new(vec![src.path().to_path_buf()]),
            &NoProgress,
        )
        .unwrap();
        repo.load_index().unwrap();
        let id = repo.ids().of(&data);
        assert!(repo.index().get(&id).is_some(), "one chunk of 64 KiB");
        let path = NodePath(b"w.bin".to_vec());
        let bases = DiskBases::new(HashMap::from([(path.clone(), file.clone())]));
        bases.note(&path, 0, id);
        // A path the parent does not hold unchanged is not noted.
        bases.note(&NodePath(b"other".to_vec()), 0, Id([1; 32]));
        assert_eq!(bases.at.lock().unwrap().len(), 1);

        let read = bases.read(&repo, &[id, Id([1; 32])]);
        assert_eq!(read.get(&id), Some(&data));
        assert_eq!(read.len(), 1);
        // The same length, other bytes (changed behind the metadata's back): not used.
        let mut other = data.clone();
        other[100] ^= 1;
        fs::write(&file, &other).unwrap();
        assert!(bases.read(&repo, &[id]).is_empty());
        // Gone: not used either.
        fs::remove_file(&file).unwrap();
        assert!(bases.read(&repo, &[id]).is_empty());
    }
}

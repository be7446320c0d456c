//! `upgrade`: raises a version-2 or version-3 repository to the format this build writes
//! (version 4), so that its next backups store the newer encodings. Nothing stored is
//! rewritten: version 4 only adds what a writer may use, and every version-2/3 blob is a
//! valid version-4 blob. The `config` is the one object replaced in place (written under a
//! temporary name, then renamed over the old one; a single PUT on an object store), under the
//! exclusive lock so that no backup of this build writes in between with the old version's
//! rules — a backup already running keeps writing version-3 encodings, which version 4 reads.

use super::{Config, Repository, FORMAT_VERSION};
use crate::error::{Error, Result};

/// What `upgrade` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgraded {
    pub from: u32,
    pub to: u32,
}

impl Repository {
    /// Raises the repository to [`FORMAT_VERSION`]; a repository already there is left as it
    /// is (`from == to`). A version-1 repository is refused: its chunking differs, so it
    /// stays version 1 (copy its snapshots into a new repository instead).
    pub fn upgrade(&mut self) -> Result<Upgraded> {
        let from = self.config.version;
        if from == 1 {
            return Err(Error::Invalid(format!(
                "{} is a version-1 repository: its files are chunked without model-aware \
                 blocks, so it cannot be raised in place; create a new repository \
                 (`tvault init`) and `tvault copy` its snapshots into it",
                self.location.display()
            )));
        }
        if from >= FORMAT_VERSION {
            return Ok(Upgraded { from, to: from });
        }
        let _lock = self.lock(true, "upgrade")?;
        // Re-read: another upgrade may have run while this one waited for the lock.
        let current: Config = serde_json::from_slice(&self.storage.get_config()?)
            .map_err(|e| Error::Invalid(format!("the repository's config does not parse: {e}")))?;
        if current != self.config {
            return Err(Error::Invalid(
                "the repository's config changed while tvault had it open; run the command \
                 again"
                    .into(),
            ));
        }
        let raised = Config {
            version: FORMAT_VERSION,
            ..current
        };
        let bytes = serde_json::to_vec_pretty(&raised).expect("config serialises");
        self.storage.put_config(&bytes)?;
        self.config = raised;
        Ok(Upgraded {
            from,
            to: FORMAT_VERSION,
        })
    }
}

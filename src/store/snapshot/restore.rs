//! Restoring a backup (offline): a new data directory seeded with a verified backup's state,
//! installed through the same path as a received Raft snapshot and recorded as one at log id
//! 0-0-1, with the chosen voters. See [`super::backup`] for the file itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use openraft::{BasicNode, CommittedLeaderId, Membership};
use uuid::Uuid;

use super::backup::{verify, BackupError, BackupHeader, Verified, RESTORED_INDEX};
use super::{build, install};
use crate::store::view::StateView;
use crate::store::{keys, Error as StoreError, Store};
use crate::types::{LogId, SnapshotMeta, StoredMembership};

/// Memory for the block cache while restoring.
const RESTORE_CACHE_MIB: u64 = 16;

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub header: BackupHeader,
    pub members: BTreeSet<u64>,
    pub tokens: u64,
    pub dir: PathBuf,
}

/// The log id a restored state is recorded at: term 0, index [`RESTORED_INDEX`].
pub fn restored_log_id() -> LogId {
    LogId::new(CommittedLeaderId::new(0, 0), RESTORED_INDEX)
}

/// Seeds a new data directory from a backup: the state as if installed from a snapshot at
/// [`restored_log_id`] L, with voters `members` at L, the log purged up to L, no vote and no
/// cluster id (the first leader commits a fresh one). `dir` must be absent or empty; the
/// file is verified completely before anything is written.
pub fn restore(file: &Path, dir: &Path, members: &BTreeSet<u64>) -> Result<Restored, BackupError> {
    if members.is_empty() || members.contains(&0) {
        return Err(BackupError::Refused(
            "the members must be one or more node ids above 0, e.g. --members 1,2,3".into(),
        ));
    }
    let existed = check_empty(dir)?;
    let verified = verify(file)?;
    let res = seed(file, dir, members, &verified);
    if res.is_err() {
        // Leave the directory as it was found.
        if existed {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir_all(e.path())
                        .or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    res?;
    Ok(Restored {
        header: verified.header,
        members: members.clone(),
        tokens: verified.tokens,
        dir: dir.to_path_buf(),
    })
}

/// Refuses a data directory that holds anything; returns whether it exists.
fn check_empty(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(true);
            }
            let what = if dir.join("db").exists() {
                "holds a Concord store"
            } else {
                "is not empty"
            };
            Err(BackupError::Refused(format!(
                "data directory {} {what}: restore only into a new, empty directory (stop the node and move its data away first)",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(BackupError::Refused(
            format!("{} is not a directory", dir.display()),
        )),
        Err(e) => Err(BackupError::Io {
            file: dir.to_path_buf(),
            source: e,
        }),
    }
}

fn seed(
    file: &Path,
    dir: &Path,
    members: &BTreeSet<u64>,
    verified: &Verified,
) -> Result<(), BackupError> {
    let at = restored_log_id();
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|&id| (id, BasicNode::default()))
        .collect();
    let membership = Membership::new(vec![members.clone()], nodes);
    let meta = SnapshotMeta {
        last_log_id: Some(at),
        last_membership: StoredMembership::new(Some(at), membership),
        snapshot_id: format!("restored-{}", Uuid::new_v4().simple()),
    };
    let store = Store::open(dir, RESTORE_CACHE_MIB, true)?;
    let view = StateView::open(store.clone())?;
    let mut body = File::open(file).map_err(|source| BackupError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    body.seek(SeekFrom::Start(verified.body_offset))
        .map_err(|source| BackupError::Io {
            file: file.to_path_buf(),
            source,
        })?;
    // The same path as a received snapshot, then the current snapshot from the installed
    // state: a member that starts empty gets it by snapshot install, as no log precedes L.
    install(&view, &meta, body)?;
    build(&view)?;
    // As `purge` records it: the log starts after L.
    let purged = bincode::serialize(&Some(at))
        .map_err(|e| StoreError::Corrupt(format!("purge point: {e}")))?;
    store
        .meta
        .insert(keys::META_LAST_PURGED, purged)
        .map_err(StoreError::from)?;
    store
        .db
        .persist(fjall::PersistMode::SyncAll)
        .map_err(StoreError::from)?;
    if store.is_pristine()? {
        return Err(BackupError::Store(StoreError::Corrupt(
            "the restored store reads as pristine".into(),
        )));
    }
    Ok(())
}

//! The `sm_meta` schema: the state machine's metadata beside its key space, as one struct
//! with one read and one write. Every writer of `sm_meta` (an apply's flush, a snapshot
//! install) and every reader (open, `applied_state`, snapshot builds) goes through here, so
//! the keys and their encodings are written out once.
//!
//! Each field is bincode under its own key of [`keys`]; a missing key reads as the default
//! (a fresh store, or `data_bytes` before format 2).

use std::sync::Arc;

use fjall::Readable;
use serde::Serialize;
use uuid::Uuid;

use super::{keys, Error, Store};
use crate::types::{LogId, StoredMembership};

/// `sm_meta` entries (key, encoded value), ready for a write batch.
pub type MetaEntries = Vec<(&'static [u8], Vec<u8>)>;

/// The state machine's metadata, as of one applied index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SmMeta {
    pub last_applied: Option<LogId>,
    /// Shared with the view: every apply batch writes it, and it changes rarely.
    pub membership: Arc<StoredMembership>,
    /// Revision of the newest write.
    pub revision: u64,
    /// Set once by the cluster's first command.
    pub cluster_id: Option<Uuid>,
    /// Which `kv_<generation>` keyspace holds the keys (an install fills the next one).
    pub kv_generation: u64,
    /// Exact number of live keys.
    pub key_count: u64,
    /// Live data size: key bytes + stored value bytes of every live key.
    pub data_bytes: u64,
    /// The log format the cluster writes: 1 until a format switch applied (0 reads as 1).
    pub cluster_format: u8,
    /// Cluster time (ms) of the newest applied format-2 entry; never decreases.
    pub cluster_time: u64,
    /// The first revision this node's change log holds: the format switch's, or an
    /// installed snapshot's, next revision (0: no change log, before format 2).
    pub history_start: u64,
}

impl SmMeta {
    /// Reads the metadata as `read_view` (one fjall read snapshot) holds it.
    pub fn read(read_view: &fjall::Snapshot, store: &Store) -> Result<SmMeta, Error> {
        let field = |key: &'static [u8]| -> Result<Option<fjall::Slice>, Error> {
            Ok(read_view.get(&store.sm_meta, key)?)
        };
        Ok(SmMeta {
            last_applied: de::<Option<LogId>>(field(keys::SM_LAST_APPLIED)?, "last_applied")?
                .flatten(),
            membership: Arc::new(
                de(field(keys::SM_MEMBERSHIP)?, "membership")?.unwrap_or_default(),
            ),
            revision: de(field(keys::SM_REVISION)?, "revision")?.unwrap_or(0),
            cluster_id: de::<Option<Uuid>>(field(keys::SM_CLUSTER_ID)?, "cluster_id")?.flatten(),
            kv_generation: de(field(keys::SM_KV_GENERATION)?, "kv_generation")?.unwrap_or(0),
            key_count: de(field(keys::SM_KEY_COUNT)?, "key_count")?.unwrap_or(0),
            data_bytes: de(field(keys::SM_DATA_BYTES)?, "data_bytes")?.unwrap_or(0),
            cluster_format: de(field(keys::SM_CLUSTER_FORMAT)?, "cluster_format")?.unwrap_or(1),
            cluster_time: de(field(keys::SM_CLUSTER_TIME)?, "cluster_time")?.unwrap_or(0),
            history_start: de(field(keys::SM_HISTORY_START)?, "history_start")?.unwrap_or(0),
        })
    }

    /// Every field as an `sm_meta` entry, to go into one write batch with the state it
    /// describes.
    pub fn write(&self) -> MetaEntries {
        vec![
            (keys::SM_LAST_APPLIED, enc(&self.last_applied)),
            (keys::SM_MEMBERSHIP, enc(self.membership.as_ref())),
            (keys::SM_REVISION, enc(&self.revision)),
            (keys::SM_CLUSTER_ID, enc(&self.cluster_id)),
            (keys::SM_KV_GENERATION, enc(&self.kv_generation)),
            (keys::SM_KEY_COUNT, enc(&self.key_count)),
            (keys::SM_DATA_BYTES, enc(&self.data_bytes)),
            (keys::SM_CLUSTER_FORMAT, enc(&self.cluster_format.max(1))),
            (keys::SM_CLUSTER_TIME, enc(&self.cluster_time)),
            (keys::SM_HISTORY_START, enc(&self.history_start)),
        ]
    }
}

fn de<T: serde::de::DeserializeOwned>(
    v: Option<fjall::Slice>,
    what: &str,
) -> Result<Option<T>, Error> {
    v.map(|b| crate::binary::decode(&b).map_err(|e| Error::Corrupt(format!("{what}: {e}"))))
        .transpose()
}

/// Encodes plain metadata; serializing such data into a `Vec` cannot fail.
pub(super) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).unwrap_or_default()
}

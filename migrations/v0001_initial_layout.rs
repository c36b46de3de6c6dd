//! Format 1: the keyspaces of `Store` (`meta`, `raft_log`, `sm_meta`, `tokens`, `kv_<n>`).
//!
//! Nothing to convert: a new directory gets its keyspaces when the store opens them.

use fjall::OwnedWriteBatch;

use crate::store::{Error, Store};

pub fn run(store: &Store) -> Result<OwnedWriteBatch, Error> {
    Ok(store.db.batch())
}

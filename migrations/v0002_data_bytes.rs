//! Format 2: the state machine keeps the live data size (`sm_meta` key `data_bytes`: key +
//! stored value bytes of every live key), which the storage quota checks.
//!
//! Format 1 had no such counter: count it once over the current key space. The count goes
//! out in the same atomic, durable batch as the new format version, so a crash before it
//! leaves format 1 and the step runs again from scratch.

use fjall::OwnedWriteBatch;

use crate::store::log_store::read_bincode;
use crate::store::{keys, state_machine, Error, Store};

pub fn run(store: &Store) -> Result<OwnedWriteBatch, Error> {
    let generation: u64 = read_bincode(&store.sm_meta, keys::SM_KV_GENERATION)?.unwrap_or(0);
    let kv = store.db.keyspace(
        &keys::kv_keyspace_name(generation),
        state_machine::kv_options,
    )?;
    let mut data_bytes = 0u64;
    for guard in kv.iter() {
        let (k, v) = guard.into_inner()?;
        data_bytes += keys::entry_bytes(k.len(), v.len());
    }
    let encoded =
        bincode::serialize(&data_bytes).map_err(|e| Error::Corrupt(format!("data_bytes: {e}")))?;
    let mut batch = store.db.batch();
    batch.insert(&store.sm_meta, keys::SM_DATA_BYTES, encoded);
    Ok(batch)
}

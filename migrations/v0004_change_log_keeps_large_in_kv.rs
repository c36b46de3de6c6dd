//! Format 4: the change log may leave a large put's record in kv, where the same flush
//! wrote it, and keep a moved copy once kv's is replaced (`store::history::chunk`).
//!
//! Nothing is rewritten: chunks written before keep their records inline, which every build
//! of format 4 reads. The step only records the new version, so that a build of format 3,
//! which would read such a put as one without a record, refuses the directory. Like step 3
//! it is entered by the cluster's format switch for a directory still at 2; one at 3 (its
//! cluster switched already) enters it at open.

use fjall::OwnedWriteBatch;

use super::{Error, Store};

pub fn run(store: &Store) -> Result<OwnedWriteBatch, Error> {
    Ok(store.db.batch())
}

//! Format 3: the directory may hold log format 2 (cluster-time stamps, per-command request
//! ids) and full key records (`create_revision`, `version`, `lease`).
//!
//! Nothing is rewritten: a format-2 record (`revision | JSON`) reads as version 1 with
//! `create_revision = revision` and no lease, which is exactly what DESIGN.md gives a key
//! migrated from format 1 (`store::keys::decode_record`). The step only records the new
//! version, so that an older build refuses the directory. It is entered when the node
//! applies the cluster's format switch (or installs a snapshot taken after it), in that
//! same batch, never at open: until the switch a directory stays readable by the build
//! before, so a rolling upgrade can still be rolled back.

use fjall::OwnedWriteBatch;

use super::{Error, Store};

pub fn run(store: &Store) -> Result<OwnedWriteBatch, Error> {
    Ok(store.db.batch())
}

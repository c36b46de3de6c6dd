//! The numbered steps of the on-disk format. A node records the version it has applied,
//! runs the missing steps at start, and refuses a data directory from a newer build.
//!
//! Each step is idempotent and ends with a durable write of its version, so a crash in the
//! middle of a step reruns it.

use fjall::PersistMode;

use super::{keys, Error, Store};

/// The format this build writes.
pub const CURRENT_FORMAT: u32 = 1;

type Step = fn(&Store) -> Result<(), Error>;

/// `STEPS[i]` brings a store from format `i` to `i + 1`.
const STEPS: [Step; CURRENT_FORMAT as usize] = [v1_initial_layout];

/// Format 1: the keyspaces of [`super::Store`]; nothing to convert from an empty directory.
fn v1_initial_layout(_store: &Store) -> Result<(), Error> {
    Ok(())
}

pub fn format_version(store: &Store) -> Result<u32, Error> {
    match store.meta.get(keys::META_FORMAT_VERSION)? {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 4] = v
                .as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt("format_version is not a 4-byte integer".into()))?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

pub fn run(store: &Store) -> Result<(), Error> {
    let found = format_version(store)?;
    if found > CURRENT_FORMAT {
        return Err(Error::NewerFormat {
            dir: store.dir.clone(),
            found,
            known: CURRENT_FORMAT,
        });
    }
    for version in found..CURRENT_FORMAT {
        STEPS[version as usize](store)?;
        store
            .meta
            .insert(keys::META_FORMAT_VERSION, (version + 1).to_be_bytes())?;
        store.db.persist(PersistMode::SyncAll)?;
        tracing::info!(from = version, to = version + 1, "migrated data directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_directory_gets_current_format_and_newer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8, true).unwrap();
            assert_eq!(format_version(&store).unwrap(), CURRENT_FORMAT);
            store
                .meta
                .insert(
                    keys::META_FORMAT_VERSION,
                    (CURRENT_FORMAT + 1).to_be_bytes(),
                )
                .unwrap();
            store.db.persist(PersistMode::SyncAll).unwrap();
        }
        let err = Store::open(dir.path(), 8, true).err().expect("refused");
        let msg = err.to_string();
        assert!(msg.contains("newer Concord"), "{msg}");
        assert!(
            msg.contains(&format!("format version {}", CURRENT_FORMAT + 1)),
            "{msg}"
        );
    }
}

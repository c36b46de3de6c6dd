//! The numbered steps of the on-disk format, one file each in the top-level `migrations/`
//! (its README holds the rules). A node records the version it has applied, runs the
//! missing steps at start, and refuses a data directory from a newer build.
//!
//! Each step is idempotent and returns its final writes as a batch; the new version is
//! committed durably in that same batch, so a crash in the middle of a step reruns it.

use fjall::{OwnedWriteBatch, PersistMode};

use super::{keys, Error, Store};

#[path = "../../migrations/v0001_initial_layout.rs"]
mod v0001_initial_layout;
#[path = "../../migrations/v0002_data_bytes.rs"]
mod v0002_data_bytes;
#[path = "../../migrations/v0003_log_format_v2.rs"]
mod v0003_log_format_v2;
#[path = "../../migrations/v0004_change_log_keeps_large_in_kv.rs"]
mod v0004_change_log_keeps_large_in_kv;

/// The newest format this build reads and writes.
pub const CURRENT_FORMAT: u32 = 4;
/// What opening a directory brings it to while its cluster has not switched to log format 2.
/// The switch (`store::apply`, `keys::FORMAT_V2_DATA_DIR`) brings it to [`CURRENT_FORMAT`];
/// a directory that is past the switch already is brought there at open.
pub const OPEN_FORMAT: u32 = 2;

/// One migration: the writes that bring a store from one format to the next.
type Migration = fn(&Store) -> Result<OwnedWriteBatch, Error>;

/// `MIGRATIONS[i]` brings a store from format `i` to `i + 1`.
const MIGRATIONS: [Migration; CURRENT_FORMAT as usize] = [
    v0001_initial_layout::run,
    v0002_data_bytes::run,
    v0003_log_format_v2::run,
    v0004_change_log_keeps_large_in_kv::run,
];

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

/// Brings the store to [`OPEN_FORMAT`], or to [`CURRENT_FORMAT`] once its cluster switched
/// (refusing one newer than [`CURRENT_FORMAT`]).
pub fn run(store: &Store) -> Result<(), Error> {
    // Only the cluster's format switch takes a directory past the open format.
    let target = match format_version(store)? > OPEN_FORMAT {
        true => CURRENT_FORMAT,
        false => OPEN_FORMAT,
    };
    run_to(store, target)
}

/// Brings the store to format `target` (tests stop early to build old formats).
pub(crate) fn run_to(store: &Store, target: u32) -> Result<(), Error> {
    let found = format_version(store)?;
    if found > CURRENT_FORMAT {
        return Err(Error::NewerFormat {
            dir: store.dir.clone(),
            found,
            known: CURRENT_FORMAT,
        });
    }
    for version in found..target.min(CURRENT_FORMAT) {
        let mut batch = MIGRATIONS[version as usize](store)?;
        batch.insert(
            &store.meta,
            keys::META_FORMAT_VERSION,
            (version + 1).to_be_bytes(),
        );
        batch.durability(Some(PersistMode::SyncAll)).commit()?;
        tracing::info!(from = version, to = version + 1, "migrated data directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, LogCommand};
    use crate::observe::Observer;
    use crate::store::{StateMachine, StateView};

    fn set_version(store: &Store, version: u32) {
        store
            .meta
            .insert(keys::META_FORMAT_VERSION, version.to_be_bytes())
            .unwrap();
        store.db.persist(PersistMode::SyncAll).unwrap();
    }

    #[test]
    fn new_directory_gets_current_format_and_newer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8, true).unwrap();
            assert_eq!(format_version(&store).unwrap(), OPEN_FORMAT);
            set_version(&store, CURRENT_FORMAT + 1);
        }
        let err = Store::open(dir.path(), 8, true).err().expect("refused");
        let msg = err.to_string();
        assert!(msg.contains("newer Concord"), "{msg}");
        assert!(
            msg.contains(&format!("format version {}", CURRENT_FORMAT + 1)),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("knows up to {CURRENT_FORMAT}")),
            "{msg}"
        );
        // Refused without being touched: the version found is still there.
        let store = Store::open_unmigrated(dir.path(), 8, true).unwrap();
        assert_eq!(format_version(&store).unwrap(), CURRENT_FORMAT + 1);
    }

    /// Writes what a format-1 node's apply path wrote: `kv_0` records (revision + JSON) and
    /// the `sm_meta` figures of that layout, with no `data_bytes`.
    fn write_format_1_data(store: &Store, records: &[(&str, &str)]) -> u64 {
        let kv = store
            .db
            .keyspace(&keys::kv_keyspace_name(0), super::super::view::kv_options)
            .unwrap();
        let mut batch = store.db.batch();
        let mut expected = 0;
        for (i, (k, json)) in records.iter().enumerate() {
            let stored = keys::encode_value(i as u64 + 1, json.as_bytes());
            expected += (k.len() + stored.len()) as u64;
            batch.insert(&kv, k.as_bytes(), stored);
        }
        let enc = |v: u64| bincode::serialize(&v).unwrap();
        batch.insert(&store.sm_meta, keys::SM_REVISION, enc(records.len() as u64));
        batch.insert(
            &store.sm_meta,
            keys::SM_KEY_COUNT,
            enc(records.len() as u64),
        );
        batch.insert(&store.sm_meta, keys::SM_KV_GENERATION, enc(0));
        batch.commit().unwrap();
        store.db.persist(PersistMode::SyncAll).unwrap();
        expected
    }

    #[test]
    fn format_1_directory_is_migrated_and_rerun_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let records = [
            ("user:1", r#"{"name":"ada"}"#),
            ("user:2", "42"),
            ("ñ-key", r#""text""#),
        ];
        let expected = {
            let store = Store::open_unmigrated(dir.path(), 8, true).unwrap();
            run_to(&store, 1).unwrap();
            assert_eq!(format_version(&store).unwrap(), 1);
            let expected = write_format_1_data(&store, &records);
            assert!(store.sm_meta.get(keys::SM_DATA_BYTES).unwrap().is_none());
            expected
        };

        for _ in 0..2 {
            let store = Store::open(dir.path(), 8, true).unwrap();
            assert_eq!(format_version(&store).unwrap(), OPEN_FORMAT);
            let view = StateView::open(store.clone()).unwrap();
            assert_eq!(view.data_bytes(), expected);
            assert_eq!(view.key_count(), records.len() as u64);
            let (rev, json) = view.get("user:1").unwrap().unwrap();
            assert_eq!((rev, json.as_slice()), (1, &br#"{"name":"ada"}"#[..]));
            assert_eq!(view.get("ñ-key").unwrap().unwrap().1, br#""text""#);
        }

        // A crash before the version was written reruns step 2: same result.
        let store = Store::open_unmigrated(dir.path(), 8, true).unwrap();
        set_version(&store, 1);
        run(&store).unwrap();
        let view = StateView::open(store).unwrap();
        assert_eq!(view.data_bytes(), expected);
    }

    /// After the migration the counter goes on with the apply path of the current format.
    #[tokio::test]
    async fn migrated_counter_follows_later_writes() {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let store = Store::open_unmigrated(dir.path(), 8, true).unwrap();
            run_to(&store, 1).unwrap();
            write_format_1_data(&store, &[("a", "1"), ("b", "22")])
        };
        let store = Store::open(dir.path(), 8, true).unwrap();
        let view = StateView::open(store).unwrap();
        assert_eq!(view.data_bytes(), expected);
        let mut sm = StateMachine::new(view.clone(), Observer::noop());
        let entry = |index: u64, command: Command| crate::types::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(LogCommand::new(command)),
        };
        sm.apply(vec![
            entry(
                1,
                Command::Put {
                    key: "b".into(),
                    value: "3".into(),
                },
            ),
            entry(2, Command::Delete { key: "a".into() }),
        ])
        .await
        .unwrap();
        // "a" gone (1 + 8 + 1), "b" shrank by one byte.
        assert_eq!(view.data_bytes(), expected - 10 - 1);
    }
}

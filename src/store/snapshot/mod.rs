//! Snapshots: the state machine as one file. A Raft snapshot is built from a fjall read view
//! (`build`), streamed to followers by openraft, and installed into a fresh keyspace
//! (`install`); a backup ([`backup`]) is the same stream with a header and a checksum, and
//! a restore ([`restore`]) seeds a new data directory from one through the install path.
//!
//! - `file`: the snapshot stream format (`CNCDSNAP`), written and read record by record;
//! - `build`: a snapshot file from the applied state, made the current snapshot;
//! - `install`: a received snapshot file into a fresh keyspace, switched to atomically;
//! - [`backup`]: backup files (create, verify); [`restore`]: a backup into a new data dir.
//!
//! Everything here runs on the blocking pool; nothing holds a snapshot whole in memory.

pub mod backup;
pub(crate) mod build;
pub mod file;
pub(crate) mod install;
pub mod restore;

pub(crate) use build::{build, current, publish};
pub use file::{Record, SnapshotHeader, SnapshotReader, SnapshotWriter, SNAPSHOT_FORMAT};
pub(crate) use install::install;

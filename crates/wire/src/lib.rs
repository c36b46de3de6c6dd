//! Concord's wire vocabulary, shared by the node and by the tools that talk to it over NATS
//! (the test harness, the fault suite, the load generator).
//!
//! [`subjects`] is the only place NATS subjects are built; [`error`] holds the wire error codes
//! and the error reply envelope; [`watch`] the watch request, reply, messages and events.
//! Nothing here does IO or knows about Raft or storage: the node
//! library (`concord`) re-exports both modules under their old paths and maps its own layer
//! errors onto [`ErrorKind`] itself.

pub mod error;
pub mod subjects;
pub mod watch;

pub use error::{ErrorKind, WireError};

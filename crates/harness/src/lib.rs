//! The process harness shared by the integration tests (`tests/`) and the fault suite
//! (`concord check`): it starts `nats-server` and `concord serve` nodes as child processes,
//! waits for a leader, and kills, pauses, restarts and partitions them.
//!
//! - [`nats_server`]: the one way to find `nats-server`, and one server on a loopback port.
//! - [`cluster`]: nodes on one `nats-server`, each in its own data dir, for the integration
//!   tests.
//! - [`mesh`]: three nodes, each on its own `nats-server` (in network namespaces when root),
//!   so that the fault suite can partition them.
//! - [`process`]: what both do to processes and status replies (signals, log tails, which
//!   node leads).
//!
//! It never links the node library: it is handed the path of the `concord` binary, and the
//! `concord` binary itself depends on the fault suite that uses this crate.

pub mod cluster;
pub mod mesh;
pub mod nats_server;
pub mod process;

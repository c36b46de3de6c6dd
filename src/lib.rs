//! Concord: a distributed, strongly consistent key-value store. This crate is the node; the
//! `concord` binary (`src/main.rs`, `src/cli/`) adds the command line, and the workspace's
//! `crates/` hold what must not live in the node: the wire vocabulary (`concord-wire`:
//! subjects and error codes, re-exported here as [`subjects`] and [`error`]), the one test
//! harness (`concord-harness`: nats-server, node processes, faults), the fault suite with its
//! checker (`concord-check`) and the load generator (`concord-bench`).
//!
//! A request's path through the node:
//!
//! ```text
//! client ─NATS req─▶ api::server ─▶ api::codec ─▶ api::validate ─▶ api::handler (kv) | api::admin
//!                                                                   │ api::route: deadline, then serve here or forward
//!                                                                   │ leader: api::propose (group commit ─▶ client_write)
//!                                                                   │         api::read_index (batched ensure_linearizable)
//!                                                                   │ follower: forward to P.node.<leader>.kv.<op>
//!                                                                   ▼
//!                        openraft ─▶ store::log_store (fjall, fsynced) ─AppendObserver─▶ raft::replication
//!                           │                                          (log tail, early appends, commit notices)
//!                           │        raft::network ─▶ raft::rpc ─NATS─▶ raft::service (peers)
//!                           ▼
//!                        store::state_machine ─▶ store::apply (one arm per Command) ─▶ store::view ─▶ reply
//!                                                    └─▶ store::history (change log) ─▶ watch ─NATS─▶ watchers
//! ```
//!
//! Layers, each importing only those below it (scripts/layout-check.py keeps it so):
//!
//! ```text
//! node        opens, wires, bootstraps, health (/readyz), shutdown order
//! watch       watches: create/cancel, one task per watch, dispatch, acks, retention
//! api         request handling: routing, group commit, ReadIndex, admin (status, members, tokens, backup)
//! raft        openraft over NATS: network, rpc, service, replication, inbox, hand-off
//! store       fjall: log_store, state_machine, apply, view, meta, snapshot/ (Raft snapshots, backups)
//! signing, nats   cluster.secret MACs; the NATS connection
//! observe     metrics and telemetry events
//! config      figment: defaults < file < env < flags; validate
//! auth, command, types, limits, subjects, error   records, log commands, openraft's TypeConfig, limits
//! binary      bincode decoding of outside bytes with a size limit
//! ```
//!
//! [`client::Client`] speaks the protocol for the CLI, the tests and `examples/`; `client::retry`
//! holds its retry rules (writes carry a `request_id` and are retried after `timeout` too);
//! `client::{cas, incr, prefix, txn}` its conditional writes, counters, deletes by prefix and
//! transactions.

// openraft's error types are large and fixed by its trait signatures.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod binary;
pub mod client;
pub mod command;
pub mod config;
pub mod failpoints;
#[cfg(test)]
mod golden;
pub mod limits;
pub mod lock;
pub mod nats;
pub mod node;
pub mod observe;
pub mod raft;
pub mod signing;
pub mod store;
pub mod types;
pub mod watch;

// The wire vocabulary lives in its own crate, shared with the tools (harness, fault suite,
// load generator) that must not link the node; these paths keep `crate::subjects::…` and
// `crate::error::…` working throughout the node.
pub use concord_wire::{error, subjects};

pub use client::Client;
pub use error::{ErrorKind, WireError};

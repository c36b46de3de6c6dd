//! Concord: a distributed, strongly consistent key-value store.
//!
//! ```text
//! client ─NATS req─▶ api::server ─▶ api::codec ─▶ api::validate ─▶ api::handler, api::admin
//!                                                                   │ api::route: deadline, leader or forward
//!                                                                   │ leader: api::propose (client_write) /
//!                                                                   │         api::read_index (ensure_linearizable)
//!                                                                   │ follower: forward to P.node.<leader>.kv.<op>
//!                                                                   ▼
//!            raft::network ──NATS──▶ raft::service (peers)     store::log_store (fjall, fsynced)
//!                                                                   ▼
//!                                     store::state_machine ─▶ store::apply (fjall kv) ─▶ reply
//! ```
//!
//! Below every layer, so any may use them without closing an import circle: [`types`]
//! (openraft's `TypeConfig` and aliases), [`limits`] (protocol limits), [`command`] (what
//! the log replicates) and [`config`]. `store` does not import `api`, and of `raft` only
//! `store::log_store` does.
//!
//! [`node`] opens, wires and bootstraps the pieces, answers `/readyz` (`node::health`) and
//! owns shutdown; [`client::Client`] speaks the protocol;
//! [`observe`] turns what happens along the way into metrics and telemetry events.

// openraft's error types are large and fixed by its trait signatures.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
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

// The wire vocabulary lives in its own crate, shared with the tools (harness, fault suite,
// load generator) that must not link the node; these paths keep `crate::subjects::…` and
// `crate::error::…` working throughout the node.
pub use concord_wire::{error, subjects};

pub use client::Client;
pub use error::{ErrorKind, WireError};

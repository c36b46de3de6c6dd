//! The fault suite behind `concord check`: a workload that records a history over the wire
//! protocol ([`workload`], [`history`]), a nemesis that injects faults into real node processes
//! ([`nemesis`], on the cluster of [`concord_harness::mesh`]), and a linearizability checker
//! ([`linearizable`]); the bank workload has its own client and checker ([`bank`]), and so
//! has the watch workload ([`watch`]), and so have the lease and lock workloads ([`lease`],
//! [`lock`], over [`call`]); [`run`] puts them together and gives the verdict.
//!
//! It speaks to nodes only over NATS, like any client, and never links the node library: the
//! `concord` binary depends on this crate, so this crate cannot depend on it.

pub mod bank;
pub mod call;
pub mod exactly_once;
pub mod gaps;
pub mod history;
pub mod lease;
pub mod linearizable;
pub mod lock;
pub mod nemesis;
pub mod retry;
pub mod run;
pub mod watch;
pub mod workload;

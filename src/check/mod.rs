//! The fault suite: a workload that records a history over the wire protocol, a nemesis
//! that injects faults into real node processes, and a linearizability checker.

pub mod cluster;
pub mod history;
pub mod linearizable;
pub mod nemesis;
pub mod run;
pub mod workload;

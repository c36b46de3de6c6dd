//! The openraft type configuration and aliases used across the crate, at the crate root as
//! in openraft's own examples: `store`, `raft`, `api` and `observe` all name these types, and
//! none of them has to import another for it. Imports nothing of the crate but the command.

use crate::command::{Applied, LogCommand};

openraft::declare_raft_types!(
    /// Concord's Raft types: commands in, outcomes out, snapshots as files on disk.
    pub TypeConfig:
        D = LogCommand,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;

/// A Raft role as status replies, events and logs spell it.
pub fn role_name(state: openraft::ServerState) -> &'static str {
    use openraft::ServerState;
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

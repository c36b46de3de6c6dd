//! openraft's network: one [`Connection`] per target, made by the [`Network`] factory.
//!
//! Votes and snapshot chunks go straight out as one RPC each ([`rpc`](super::rpc)).
//! openraft's appends go through [`replication`](super::replication), which may answer them
//! without sending: a commit notice that the next append will carry, or entries that
//! already went out early and were accepted.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::replication::{PeerAppends, Replication};
use super::rpc::{Peer, Transport};
use super::types::{Node, NodeId, RaftMetrics, TypeConfig};
use crate::store::log_store::AppendObserver;
use crate::subjects::RaftRpc;

pub use super::rpc::PAYLOAD_HEADROOM;

#[derive(Clone)]
pub struct Network {
    transport: Arc<Transport>,
    replication: Arc<Replication>,
}

impl Network {
    /// The network of a node. An early append waits `early_ttl` for its reply; its task is
    /// spawned on `tracker`.
    pub fn new(transport: Transport, early_ttl: Duration, tracker: TaskTracker) -> Network {
        let transport = Arc::new(transport);
        let replication = Arc::new(Replication::new(transport.clone(), early_ttl, tracker));
        Network {
            transport,
            replication,
        }
    }

    /// What the log store tells replication as it saves the log; pass it to
    /// [`LogStore::with_observer`](crate::store::log_store::LogStore::with_observer).
    pub fn append_observer(&self) -> Arc<dyn AppendObserver> {
        self.replication.clone()
    }

    /// Gives replication the Raft metrics, which name the followers; see
    /// [`Replication::set_raft_metrics`].
    pub fn set_raft_metrics(&self, metrics: watch::Receiver<RaftMetrics>) {
        self.replication.set_raft_metrics(metrics);
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Connection {
        let peer = self.transport.peer(target);
        Connection {
            appends: self.replication.peer_appends(peer.clone()),
            peer,
        }
    }
}

pub struct Connection {
    peer: Peer,
    /// openraft's appends to this target, with what its last replies told.
    appends: PeerAppends,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.appends.append(rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.peer
            .call(
                RaftRpc::Snapshot,
                RPCTypes::InstallSnapshot,
                rpc,
                option.hard_ttl(),
                0,
            )
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.peer
            .call(RaftRpc::Vote, RPCTypes::Vote, rpc, option.hard_ttl(), 0)
            .await
    }
}

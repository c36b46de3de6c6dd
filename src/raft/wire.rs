//! The Raft RPC encoding: a versioned binary envelope (bincode), so snapshot chunks and log
//! entries travel as raw bytes rather than JSON arrays of numbers.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Bumped when the envelope changes shape; a node refuses formats it does not know.
pub const RPC_FORMAT: u8 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct RpcRequest<T> {
    pub format: u8,
    pub cluster_name: String,
    /// `None` until the sender has applied the cluster's first command.
    pub cluster_id: Option<Uuid>,
    pub from: u64,
    pub to: u64,
    pub body: T,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply<T, E> {
    Ok(T),
    /// The Raft error of the remote node.
    Err(E),
    /// The receiver refused the envelope (other cluster, unknown format).
    Refused(String),
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    crate::binary::encode(v)
}

/// Decodes an envelope from a peer (or from anyone who can publish, when `cluster.secret` is
/// unset): bounded by the payload's length, and a batch inside a batch is refused.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    crate::binary::decode(bytes)
}

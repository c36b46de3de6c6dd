//! The only place NATS subjects are built. `P` is the configured subject prefix.

/// Client operations on the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvOp {
    Put,
    Get,
    Delete,
    Scan,
    Incr,
    Txn,
    /// `P.kv.touch`: renews a key's lease without a new revision.
    Touch,
    /// `P.lease.grant`, `keepalive`, `revoke`, `get`, `list`.
    LeaseGrant,
    LeaseKeepalive,
    LeaseRevoke,
    LeaseGet,
    LeaseList,
    /// `P.lock.acquire`, `release`.
    LockAcquire,
    LockRelease,
}

impl KvOp {
    pub const ALL: [KvOp; 14] = [
        KvOp::Put,
        KvOp::Get,
        KvOp::Delete,
        KvOp::Scan,
        KvOp::Incr,
        KvOp::Txn,
        KvOp::Touch,
        KvOp::LeaseGrant,
        KvOp::LeaseKeepalive,
        KvOp::LeaseRevoke,
        KvOp::LeaseGet,
        KvOp::LeaseList,
        KvOp::LockAcquire,
        KvOp::LockRelease,
    ];

    /// The operation's name in metrics and telemetry (`op` label, `api.<name>` events).
    pub fn as_str(self) -> &'static str {
        match self {
            KvOp::Put => "put",
            KvOp::Get => "get",
            KvOp::Delete => "delete",
            KvOp::Scan => "scan",
            KvOp::Incr => "incr",
            KvOp::Txn => "txn",
            KvOp::Touch => "touch",
            KvOp::LeaseGrant => "lease_grant",
            KvOp::LeaseKeepalive => "lease_keepalive",
            KvOp::LeaseRevoke => "lease_revoke",
            KvOp::LeaseGet => "lease_get",
            KvOp::LeaseList => "lease_list",
            KvOp::LockAcquire => "lock_acquire",
            KvOp::LockRelease => "lock_release",
        }
    }

    /// The subject after the prefix (or after `node.<id>.`): `kv.put`, `lease.grant`,
    /// `lock.acquire`.
    pub fn subject_tail(self) -> &'static str {
        match self {
            KvOp::Put => "kv.put",
            KvOp::Get => "kv.get",
            KvOp::Delete => "kv.delete",
            KvOp::Scan => "kv.scan",
            KvOp::Incr => "kv.incr",
            KvOp::Txn => "kv.txn",
            KvOp::Touch => "kv.touch",
            KvOp::LeaseGrant => "lease.grant",
            KvOp::LeaseKeepalive => "lease.keepalive",
            KvOp::LeaseRevoke => "lease.revoke",
            KvOp::LeaseGet => "lease.get",
            KvOp::LeaseList => "lease.list",
            KvOp::LockAcquire => "lock.acquire",
            KvOp::LockRelease => "lock.release",
        }
    }

    /// The operation a subject tail names (`kv.put`, `lease.grant`, ...).
    pub fn parse_tail(tail: &str) -> Option<KvOp> {
        KvOp::ALL.into_iter().find(|op| op.subject_tail() == tail)
    }

    /// The operation a `kv.` subject names by its last token (`put`, `touch`, ...).
    pub fn parse(s: &str) -> Option<KvOp> {
        KvOp::parse_tail(&format!("kv.{s}"))
    }

    /// Whether it goes through the log (lease get and list are reads).
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            KvOp::Get | KvOp::Scan | KvOp::LeaseGet | KvOp::LeaseList
        )
    }
}

/// The subject families the key-space requests come in: `P.kv.*`, `P.lease.*`, `P.lock.*`.
pub const KV_FAMILIES: [&str; 3] = ["kv", "lease", "lock"];

/// Admin operations answered by the cluster or by one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOp {
    Status,
    Members,
    TokenCreate,
    TokenRevoke,
    TokenList,
    /// Build a snapshot now (`P.node.<id>.admin.snapshot`).
    Snapshot,
    /// Write a backup file on the leader (`P.admin.backup`).
    Backup,
    /// Read part of a backup file (`P.node.<id>.admin.backup.chunk`).
    BackupChunk,
    /// Add a node as a learner.
    MemberAdd,
    /// Make a caught-up learner a voter.
    MemberPromote,
    /// Remove a voter or learner.
    MemberRemove,
    /// Sent by the leader to a node it removed (`P.node.<id>.admin.member.removed`).
    MemberRemoved,
    /// Compact the change log through a revision (`P.admin.compact`).
    Compact,
}

impl AdminOp {
    pub const ALL: [AdminOp; 13] = [
        AdminOp::Status,
        AdminOp::Members,
        AdminOp::TokenCreate,
        AdminOp::TokenRevoke,
        AdminOp::TokenList,
        AdminOp::Snapshot,
        AdminOp::Backup,
        AdminOp::BackupChunk,
        AdminOp::MemberAdd,
        AdminOp::MemberPromote,
        AdminOp::MemberRemove,
        AdminOp::MemberRemoved,
        AdminOp::Compact,
    ];

    /// The subject after `P.admin.`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminOp::Status => "status",
            AdminOp::Members => "members",
            AdminOp::TokenCreate => "token.create",
            AdminOp::TokenRevoke => "token.revoke",
            AdminOp::TokenList => "token.list",
            AdminOp::Snapshot => "snapshot",
            AdminOp::Backup => "backup",
            AdminOp::BackupChunk => "backup.chunk",
            AdminOp::MemberAdd => "member.add",
            AdminOp::MemberPromote => "member.promote",
            AdminOp::MemberRemove => "member.remove",
            AdminOp::MemberRemoved => "member.removed",
            AdminOp::Compact => "compact",
        }
    }

    pub fn parse(s: &str) -> Option<AdminOp> {
        AdminOp::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

/// Raft RPC kinds carried on `P.raft.<cluster>.<id>.<rpc>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftRpc {
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRpc::Append => "append",
            RaftRpc::Vote => "vote",
            RaftRpc::Snapshot => "snapshot",
        }
    }

    pub fn parse(s: &str) -> Option<RaftRpc> {
        [RaftRpc::Append, RaftRpc::Vote, RaftRpc::Snapshot]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Last token of the hand-off request [`Subjects::raft_elect`]. Not a [`RaftRpc`]: it is
/// ours, not openraft's, and has no RPC metrics.
pub const RAFT_ELECT: &str = "elect";

/// Header marking a request forwarded by a follower: it is never forwarded again.
pub const HEADER_FORWARDED: &str = "Concord-Forwarded";
/// Header carrying a request deadline in milliseconds.
pub const HEADER_TIMEOUT_MS: &str = "Concord-Timeout-Ms";
/// Header carrying the cluster id on forwarded requests.
pub const HEADER_CLUSTER_ID: &str = "Concord-Cluster-Id";
/// Header carrying, on a forwarded request, the Raft term its sender was in: the receiver
/// refuses a request from another term (so a captured one cannot be replayed later).
pub const HEADER_TERM: &str = "Concord-Term";
/// Header carrying, on a forwarded request, `<epoch>-<sequence>`: the sender's process-random
/// epoch (16 hex digits) and a sequence number it never repeats in that epoch. The receiver
/// refuses a nonce it has already seen in its current term.
pub const HEADER_NONCE: &str = "Concord-Nonce";

#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
    cluster: String,
}

impl Subjects {
    pub fn new(prefix: &str, cluster: &str) -> Self {
        Subjects {
            prefix: prefix.to_string(),
            cluster: cluster.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P.kv.<op>`: answered by whichever voter NATS picks.
    /// (`P.lease.<op>` and `P.lock.<op>` for the lease and lock operations.)
    pub fn kv(&self, op: KvOp) -> String {
        format!("{}.{}", self.prefix, op.subject_tail())
    }

    /// `P.kv.*`: the queue-group subscription of voters.
    pub fn kv_wildcard(&self) -> String {
        self.family_wildcard("kv")
    }

    /// `P.<family>.*` for each of [`KV_FAMILIES`] (`kv`, `lease`, `lock`).
    pub fn family_wildcard(&self, family: &str) -> String {
        format!("{}.{family}.*", self.prefix)
    }

    /// `P.node.<id>.kv.<op>` (`.lease.<op>`, `.lock.<op>`): one node, used for forwarding
    /// to the leader.
    pub fn node_kv(&self, node: u64, op: KvOp) -> String {
        format!("{}.node.{}.{}", self.prefix, node, op.subject_tail())
    }

    pub fn node_kv_wildcard(&self, node: u64) -> String {
        self.node_family_wildcard(node, "kv")
    }

    /// `P.node.<id>.<family>.*`.
    pub fn node_family_wildcard(&self, node: u64, family: &str) -> String {
        format!("{}.node.{}.{family}.*", self.prefix, node)
    }

    pub fn admin(&self, op: AdminOp) -> String {
        format!("{}.admin.{}", self.prefix, op.as_str())
    }

    /// `P.admin.>`: status, members and the token operations.
    pub fn admin_wildcard(&self) -> String {
        format!("{}.admin.>", self.prefix)
    }

    pub fn node_admin(&self, node: u64, op: AdminOp) -> String {
        format!("{}.node.{}.admin.{}", self.prefix, node, op.as_str())
    }

    pub fn node_admin_wildcard(&self, node: u64) -> String {
        format!("{}.node.{}.admin.>", self.prefix, node)
    }

    /// `P.watch.create`: any voter or learner, in the watch queue group.
    pub fn watch_create(&self) -> String {
        format!("{}.watch.create", self.prefix)
    }

    /// `P.node.<id>.watch.<op>` (`create`, `cancel`): that node's watches.
    pub fn node_watch(&self, node: u64, op: &str) -> String {
        format!("{}.node.{}.watch.{}", self.prefix, node, op)
    }

    pub fn node_watch_wildcard(&self, node: u64) -> String {
        format!("{}.node.{}.watch.*", self.prefix, node)
    }

    /// The queue group of `P.watch.create`: apart from the key space's, so that the
    /// leader's extra `P.kv.*` subscriptions do not draw the watches to it.
    pub fn watch_queue_group(&self) -> String {
        format!("{}-{}-watch", self.prefix, self.cluster)
    }

    /// What a subject this node subscribed to asks for: `kv.<op>` or `admin.<op>`, from
    /// `P.…` or `P.node.<id>.…`.
    pub fn classify<'a>(&self, subject: &'a str) -> Option<Addressed<'a>> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let rest = match rest.strip_prefix("node.") {
            Some(r) => r.split_once('.')?.1,
            None => rest,
        };
        if let Some(op) = rest.strip_prefix("kv.") {
            return Some(Addressed::Kv(op));
        }
        if rest.starts_with("lease.") || rest.starts_with("lock.") {
            // The whole tail: `lease.grant` is parsed by `KvOp::parse_tail`.
            return Some(Addressed::Family(rest));
        }
        rest.strip_prefix("admin.").map(Addressed::Admin)
    }

    pub fn raft(&self, node: u64, rpc: RaftRpc) -> String {
        format!(
            "{}.raft.{}.{}.{}",
            self.prefix,
            self.cluster,
            node,
            rpc.as_str()
        )
    }

    /// `P.raft.<cluster>.<node>.elect`: a leader that shuts down asks a caught-up follower
    /// to campaign at once (see `raft::handoff`).
    pub fn raft_elect(&self, node: u64) -> String {
        format!(
            "{}.raft.{}.{}.{RAFT_ELECT}",
            self.prefix, self.cluster, node
        )
    }

    pub fn raft_wildcard(&self, node: u64) -> String {
        format!("{}.raft.{}.{}.*", self.prefix, self.cluster, node)
    }

    /// `P.telemetry.<path>`, e.g. `concord.telemetry.api.put`.
    pub fn telemetry(&self, path: &str) -> String {
        format!("{}.telemetry.{}", self.prefix, path)
    }

    /// `P.telemetry.>`: every event of every node.
    pub fn telemetry_wildcard(&self) -> String {
        format!("{}.telemetry.>", self.prefix)
    }

    /// The queue group shared by the voters of this cluster.
    pub fn queue_group(&self) -> String {
        format!("{}-{}", self.prefix, self.cluster)
    }
}

/// The operation part of a client subject, see [`Subjects::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressed<'a> {
    /// `kv.<op>`: the op's last token.
    Kv(&'a str),
    /// `lease.<op>` or `lock.<op>`: the whole tail.
    Family(&'a str),
    Admin(&'a str),
}

impl Addressed<'_> {
    /// The key-space operation it names, if it names one this build knows.
    pub fn kv_op(&self) -> Option<KvOp> {
        match self {
            Addressed::Kv(op) => KvOp::parse(op),
            Addressed::Family(tail) => KvOp::parse_tail(tail),
            Addressed::Admin(_) => None,
        }
    }
}

/// The last `.`-separated token of a subject: the operation name.
pub fn last_token(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        let s = Subjects::new("concord", "main");
        assert_eq!(s.kv(KvOp::Put), "concord.kv.put");
        assert_eq!(s.node_kv(3, KvOp::Get), "concord.node.3.kv.get");
        assert_eq!(s.admin(AdminOp::Status), "concord.admin.status");
        assert_eq!(s.raft(2, RaftRpc::Append), "concord.raft.main.2.append");
        assert_eq!(last_token("concord.node.3.kv.scan"), "scan");
        assert_eq!(KvOp::parse("delete"), Some(KvOp::Delete));
        assert_eq!(KvOp::parse("nope"), None);
        let t = Subjects::new("corp.admin", "main");
        assert_eq!(t.classify("corp.admin.kv.put"), Some(Addressed::Kv("put")));
        assert_eq!(
            t.classify("corp.admin.node.2.admin.token.create"),
            Some(Addressed::Admin("token.create"))
        );
        assert_eq!(t.classify("corp.kv.put"), None);
        assert_eq!(AdminOp::parse("token.list"), Some(AdminOp::TokenList));
        assert_eq!(
            s.node_admin(2, AdminOp::Snapshot),
            "concord.node.2.admin.snapshot"
        );
        assert_eq!(AdminOp::parse("backup.chunk"), Some(AdminOp::BackupChunk));
        assert_eq!(
            s.node_admin(3, AdminOp::BackupChunk),
            "concord.node.3.admin.backup.chunk"
        );
        assert_eq!(s.telemetry("api.put"), "concord.telemetry.api.put");
        assert_eq!(s.telemetry_wildcard(), "concord.telemetry.>");
    }
}

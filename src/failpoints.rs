//! Deliberate bugs for proving that the fault suite can fail, and lost messages for proving
//! that a node copes. Compiled in only with the
//! `failpoints` cargo feature (the tests use it), and then active only when named in
//! `CONCORD_FAILPOINTS` (comma-separated). A release build has none of this code.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// Serve linearizable reads from the local state machine: no ReadIndex, no forwarding.
    StaleReads,
    /// Never fsync the log or the vote.
    SkipFsync,
    /// Drop the leader's notice that this node was removed, as a partition would.
    IgnoreRemovalNotice,
}

impl Failpoint {
    pub fn name(self) -> &'static str {
        match self {
            Failpoint::StaleReads => "stale-reads",
            Failpoint::SkipFsync => "skip-fsync",
            Failpoint::IgnoreRemovalNotice => "ignore-removal-notice",
        }
    }
}

#[cfg(feature = "failpoints")]
pub fn enabled(fp: Failpoint) -> bool {
    use std::sync::OnceLock;
    static ACTIVE: OnceLock<Vec<String>> = OnceLock::new();
    ACTIVE
        .get_or_init(|| {
            let list: Vec<String> = std::env::var("CONCORD_FAILPOINTS")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if !list.is_empty() {
                tracing::warn!(failpoints = ?list, "FAILPOINTS ACTIVE: this node is deliberately broken");
            }
            list
        })
        .iter()
        .any(|n| n == fp.name())
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn enabled(_fp: Failpoint) -> bool {
    false
}

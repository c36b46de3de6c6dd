//! The lease table (DESIGN.md "Leases and TTL"): each lease's ttl, the cluster-time stamp of
//! its last renewal, and the keys attached to it.
//!
//! Decided at apply, in log order, on every node alike: a renewal takes the stamp of the
//! entry that records it, and a lease ends only by a log entry (`Command::LeaseExpire`, which
//! names the renewal the leader judged, or a revoke). No node ever ends a lease by its own
//! clock; the leader only proposes the end.
//!
//! Stored as reserved keys of `kv_<g>` (`keys::RESERVED`), through the recent-writes table
//! like any put, so they reach fjall in the same atomic flush as the keys they belong with,
//! and snapshots, installs, backups and restores carry them:
//!
//! ```text
//! \0l/<id, 16 hex>          → LeaseRecord (bincode)
//! \0k/<id, 16 hex>/<key>    → ()            one per attached key
//! \0s/lease_next            → u64           the next id the state machine picks
//! ```
//!
//! In memory ([`LeaseTable`]): every lease with its keys, and the deadlines of those counting
//! down, so that the leader finds the due ones without a scan.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Error;

/// Reserved key prefixes and key of the lease table.
pub const LEASE_PREFIX: &str = "\0l/";
pub const LEASE_KEY_PREFIX: &str = "\0k/";
pub const LEASE_NEXT: &str = "\0s/lease_next";

/// Largest lease id: ids are 1 ≤ id < 2^53, so that every JSON reader holds them exactly.
pub const MAX_LEASE_ID: u64 = (1 << 53) - 1;
/// Longest ttl a lease may have: 30 days.
pub const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most keys one lease may hold (DESIGN.md `limits.max_keys_per_lease`). Decided at apply,
/// so it is one constant for the whole cluster, not a per-node setting.
pub const MAX_KEYS_PER_LEASE: usize = 10_000;

/// One lease as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl_ms: u64,
    /// Cluster time (ms) of the entry that last renewed it (a grant counts as one).
    pub renewal: u64,
    /// A lease of one key's own (a put or incr with `ttl_ms`, a lock acquire with `ttl_ms`):
    /// it ends when its last key goes.
    pub own: bool,
    /// Whether it counts down: a lock claim's own lease starts at the grant, not while the
    /// claim waits.
    pub counting: bool,
}

impl LeaseRecord {
    /// The cluster time at which it ends unless renewed; `None` while it does not count.
    pub fn deadline(&self) -> Option<u64> {
        self.counting
            .then(|| self.renewal.saturating_add(self.ttl_ms))
    }
}

/// One lease in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub record: LeaseRecord,
    pub keys: BTreeSet<String>,
}

/// What a lease read gives a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_ms: u64,
    /// `None` while it does not count down (a waiting lock claim's).
    pub deadline: Option<u64>,
    pub key_count: usize,
    pub keys: Option<Vec<String>>,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<u64, Lease>,
    /// (deadline, id) of each counting lease.
    deadlines: BTreeSet<(u64, u64)>,
    /// The id the state machine picks next (skipping taken ones).
    next_id: u64,
    /// Keys attached to leases, in all (kept with each attach and detach: every node
    /// publishes it every `lease.check_ms`).
    key_count: usize,
}

pub fn lease_key(id: u64) -> String {
    format!("{LEASE_PREFIX}{id:016x}")
}

pub fn attachment_key(id: u64, key: &str) -> String {
    format!("{LEASE_KEY_PREFIX}{id:016x}/{key}")
}

fn parse_id(hex: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(hex.get(..16)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

impl LeaseTable {
    /// The table as keyspace `kv` holds it (at open, and after an install).
    pub fn load(kv: &fjall::Keyspace) -> Result<LeaseTable, Error> {
        let mut t = LeaseTable::default();
        for guard in kv.prefix(LEASE_PREFIX.as_bytes()) {
            let (k, v) = guard.into_inner()?;
            let id = parse_id(&k[LEASE_PREFIX.len()..])
                .ok_or_else(|| Error::Corrupt(format!("lease key {k:?}")))?;
            let record: LeaseRecord =
                bincode::deserialize(&v).map_err(|e| Error::Corrupt(format!("lease {id}: {e}")))?;
            t.insert(id, record);
        }
        for guard in kv.prefix(LEASE_KEY_PREFIX.as_bytes()) {
            let k = guard.key()?;
            let rest = &k[LEASE_KEY_PREFIX.len()..];
            let (Some(id), Some(key)) = (parse_id(rest), rest.get(17..)) else {
                return Err(Error::Corrupt(format!("lease attachment key {k:?}")));
            };
            let key = String::from_utf8_lossy(key).into_owned();
            if let Some(lease) = t.leases.get_mut(&id) {
                t.key_count += usize::from(lease.keys.insert(key));
            }
        }
        if let Some(v) = kv.get(LEASE_NEXT.as_bytes())? {
            t.next_id = bincode::deserialize(&v).unwrap_or(1);
        }
        Ok(t)
    }

    pub fn get(&self, id: u64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Keys attached to leases, in all.
    pub fn key_count(&self) -> usize {
        self.key_count
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Adds or replaces lease `id`'s record (its keys stay).
    pub fn insert(&mut self, id: u64, record: LeaseRecord) {
        let lease = self.leases.entry(id).or_insert_with(|| Lease {
            record,
            keys: BTreeSet::new(),
        });
        if let Some(d) = lease.record.deadline() {
            self.deadlines.remove(&(d, id));
        }
        lease.record = record;
        if let Some(d) = record.deadline() {
            self.deadlines.insert((d, id));
        }
    }

    /// Removes lease `id`, giving back its keys.
    pub fn remove(&mut self, id: u64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.key_count -= lease.keys.len();
        if let Some(d) = lease.record.deadline() {
            self.deadlines.remove(&(d, id));
        }
        Some(lease)
    }

    pub fn attach(&mut self, id: u64, key: &str) {
        if let Some(lease) = self.leases.get_mut(&id) {
            self.key_count += usize::from(lease.keys.insert(key.to_owned()));
        }
    }

    /// Detaches `key` from lease `id`; whether the lease is one of a key's own that has no
    /// key left (so it ends).
    pub fn detach(&mut self, id: u64, key: &str) -> bool {
        match self.leases.get_mut(&id) {
            Some(lease) => {
                self.key_count -= usize::from(lease.keys.remove(key));
                lease.record.own && lease.keys.is_empty()
            }
            None => false,
        }
    }

    /// The next free id the state machine picks, and the counter after it.
    pub fn pick_id(&mut self) -> u64 {
        let mut id = self.next_id.max(1);
        while self.leases.contains_key(&id) {
            id += 1;
        }
        // Past the largest id: start again at 1 (ids are taken back when leases end).
        if id > MAX_LEASE_ID {
            id = 1;
            while self.leases.contains_key(&id) {
                id += 1;
            }
        }
        self.next_id = id + 1;
        id
    }

    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Leases whose deadline is at or before `now`, with the renewal stamp each was judged
    /// by, oldest first, at most `limit`.
    pub fn due(&self, now: u64, limit: usize) -> Vec<(u64, u64)> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .take(limit)
            .filter_map(|(_, id)| Some((*id, self.leases.get(id)?.record.renewal)))
            .collect()
    }

    /// A client's view of lease `id`.
    pub fn info(&self, id: u64, with_keys: bool) -> Option<LeaseInfo> {
        let lease = self.leases.get(&id)?;
        Some(LeaseInfo {
            id,
            ttl_ms: lease.record.ttl_ms,
            deadline: lease.record.deadline(),
            key_count: lease.keys.len(),
            keys: with_keys.then(|| lease.keys.iter().cloned().collect()),
        })
    }

    /// Up to `limit` leases with ids above `after`, and whether more follow.
    pub fn page(&self, after: u64, limit: usize) -> (Vec<LeaseInfo>, bool) {
        let mut items: Vec<LeaseInfo> = self
            .leases
            .range(after.saturating_add(1)..)
            .take(limit.saturating_add(1))
            .filter_map(|(id, _)| self.info(*id, false))
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        (items, more)
    }
}

/// A stored lease record.
pub fn encode(record: &LeaseRecord) -> Vec<u8> {
    bincode::serialize(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(renewal: u64, counting: bool) -> LeaseRecord {
        LeaseRecord {
            ttl_ms: 100,
            renewal,
            own: false,
            counting,
        }
    }

    #[test]
    fn deadlines_follow_renewals_and_removal() {
        let mut t = LeaseTable::default();
        t.insert(1, rec(0, true));
        t.insert(2, rec(50, true));
        t.insert(3, rec(0, false));
        assert_eq!(t.due(100, 10), vec![(1, 0)]);
        t.insert(1, rec(200, true));
        assert_eq!(t.due(150, 10), vec![(2, 50)]);
        assert_eq!(t.due(300, 10), vec![(2, 50), (1, 200)]);
        t.remove(2);
        assert_eq!(t.due(300, 10), vec![(1, 200)]);
        assert_eq!(t.info(3, false).map(|i| i.deadline), Some(None));
    }

    #[test]
    fn picked_ids_skip_taken_ones() {
        let mut t = LeaseTable::default();
        t.insert(1, rec(0, true));
        t.insert(2, rec(0, true));
        assert_eq!(t.pick_id(), 3);
        assert_eq!(t.pick_id(), 4);
        t.insert(5, rec(0, true));
        assert_eq!(t.pick_id(), 6);
    }

    #[test]
    fn an_own_lease_ends_with_its_last_key() {
        let mut t = LeaseTable::default();
        t.insert(
            7,
            LeaseRecord {
                own: true,
                ..rec(0, true)
            },
        );
        t.attach(7, "a");
        t.attach(7, "b");
        assert!(!t.detach(7, "a"));
        assert!(t.detach(7, "b"));
        let (page, more) = t.page(0, 10);
        assert_eq!((page.len(), more), (1, false));
    }
}

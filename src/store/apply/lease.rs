//! Leases at apply (`store::lease` holds the table): grant, keepalive, touch, revoke and the
//! leader's expiry, and the bookkeeping of which keys each lease holds, kept by the record
//! writes themselves (`write::set_record`, `write::remove_record`) so that every write path
//! (put, delete, txn, prefix delete, expiry) keeps it true.
//!
//! Every decision reads only the log: a renewal takes the applied cluster time (the newest
//! entry stamp), and an expiry applies only if the lease was not renewed since the renewal
//! it names and the entry's time is past that renewal's deadline.

use fjall::Slice;

use super::write::{self, Old};
use super::ApplyBatch;
use crate::command::{Applied, ConflictReason};
use crate::store::history::EventKind;
use crate::store::keys;
use crate::store::lease::{self, LeaseRecord, MAX_KEYS_PER_LEASE};
use crate::store::Error;

/// Bytes a lease record counts towards the live data size: its reserved key (`\0l/` and 16
/// hex digits) and its record (two u64 and two flags), as an install counts them.
const LEASE_RECORD_BYTES: u64 = 3 + 16 + 18;

/// Writes lease `id`'s record, in memory and to the batch.
fn store(b: &mut ApplyBatch, id: u64, record: LeaseRecord) {
    if b.leases.get(id).is_none() {
        b.data_bytes += LEASE_RECORD_BYTES;
    }
    b.leases.insert(id, record);
    b.writes.set(
        lease::lease_key(id),
        Some(Slice::from(lease::encode(&record))),
    );
}

/// Drops lease `id`'s record and its attachment entries (its keys are already gone, or
/// are being deleted by the caller).
fn drop_lease(b: &mut ApplyBatch, id: u64) {
    if let Some(gone) = b.leases.remove(id) {
        b.data_bytes = b.data_bytes.saturating_sub(LEASE_RECORD_BYTES);
        for key in gone.keys {
            unlink(b, id, &key);
        }
        b.writes.set(lease::lease_key(id), None);
    }
}

fn attachment_bytes(key: &str) -> u64 {
    keys::entry_bytes(lease::attachment_key(0, key).len(), 0)
}

fn unlink(b: &mut ApplyBatch, id: u64, key: &str) {
    b.data_bytes = b.data_bytes.saturating_sub(attachment_bytes(key));
    b.writes.set(lease::attachment_key(id, key), None);
}

/// Moves `key` from lease `old` to lease `new` (0: none) as its record changes.
pub(super) fn reattach(b: &mut ApplyBatch, key: &str, old: u64, new: u64) {
    if old == new {
        return;
    }
    if old != 0 {
        let ends = b.leases.detach(old, key);
        unlink(b, old, key);
        if ends {
            drop_lease(b, old);
        }
    }
    if new != 0 && b.leases.get(new).is_some() {
        b.leases.attach(new, key);
        b.data_bytes += attachment_bytes(key);
        b.writes
            .set(lease::attachment_key(new, key), Some(Slice::from(&[][..])));
    }
}

/// A fresh lease of a key's own (a put, incr or lock claim with `ttl_ms`); it counts down
/// from now unless `counting` is false (a waiting lock claim's).
pub(super) fn grant_own(b: &mut ApplyBatch, ttl_ms: u64, counting: bool) -> u64 {
    let id = b.leases.pick_id();
    b.lease_next_changed = true;
    let record = LeaseRecord {
        ttl_ms,
        renewal: b.cluster_time,
        own: true,
        counting,
    };
    store(b, id, record);
    id
}

/// Whether `key` may be attached to lease `id`: `None` if so, else the refusal.
pub(super) fn attachable(b: &ApplyBatch, id: u64, key: &str) -> Option<Applied> {
    match b.leases.get(id) {
        None => Some(Applied::LeaseNotFound { id }),
        Some(l) if l.keys.len() >= MAX_KEYS_PER_LEASE && !l.keys.contains(key) => {
            Some(Applied::LeaseFull {
                id,
                limit: MAX_KEYS_PER_LEASE as u64,
            })
        }
        Some(_) => None,
    }
}

/// `P.lease.grant`: a new lease, counting from this entry's time.
pub(super) fn grant(b: &mut ApplyBatch, id: Option<u64>, ttl_ms: u64) -> Applied {
    let id = match id {
        Some(id) if b.leases.get(id).is_some() => {
            return Applied::Conflict {
                reason: ConflictReason::LeaseExists,
                revision: None,
            }
        }
        Some(id) => id,
        None => {
            b.lease_next_changed = true;
            b.leases.pick_id()
        }
    };
    let record = LeaseRecord {
        ttl_ms,
        renewal: b.cluster_time,
        own: false,
        counting: true,
    };
    store(b, id, record);
    Applied::Lease { id, ttl_ms }
}

/// `P.lease.keepalive` (and `touch`): the lease counts again from this entry's time, with
/// `ttl_ms` if one is given.
pub(super) fn renew(b: &mut ApplyBatch, id: u64, ttl_ms: Option<u64>) -> Applied {
    let Some(l) = b.leases.get(id) else {
        return Applied::LeaseNotFound { id };
    };
    let record = LeaseRecord {
        ttl_ms: ttl_ms.unwrap_or(l.record.ttl_ms),
        renewal: b.cluster_time,
        ..l.record
    };
    store(b, id, record);
    Applied::Lease {
        id,
        ttl_ms: record.ttl_ms,
    }
}

/// `P.kv.touch`: renews the lease of `key`.
pub(super) fn touch(b: &mut ApplyBatch, key: &str, ttl_ms: Option<u64>) -> Result<Applied, Error> {
    let lease = write::current(b, key)?.map_or(0, |c| c.meta.lease);
    if lease == 0 || b.leases.get(lease).is_none() {
        return Ok(Applied::KeyNotLeased);
    }
    Ok(renew(b, lease, ttl_ms))
}

/// Ends lease `id`: every key attached to it deleted at one revision (none taken when it
/// holds none), with events of `kind` (`delete` for a revoke, `expire` for an expiry).
pub(super) fn end(b: &mut ApplyBatch, id: u64, kind: EventKind) -> Result<Applied, Error> {
    let Some(l) = b.leases.get(id) else {
        return Ok(Applied::LeaseNotFound { id });
    };
    let keys: Vec<String> = l.keys.iter().cloned().collect();
    let mut count = 0;
    if !keys.is_empty() {
        b.revision += 1;
        for key in keys {
            if let Some(old) = b.writes.get(&key)? {
                write::remove_record_as(b, key, Old::Record(old), kind);
                count += 1;
            }
        }
    }
    // An own lease went with its last key already; a shared one goes here.
    drop_lease(b, id);
    Ok(Applied::LeaseEnded {
        revision: b.revision,
        count,
    })
}

/// The leader's expiry of lease `id`, judged by renewal `renewal`: applies only if that is
/// still the lease's last renewal and this entry's time is past its deadline, so a renewal
/// that applied first (or a lease already gone) makes it a no-op.
pub(super) fn expire(b: &mut ApplyBatch, id: u64, renewal: u64) -> Result<Applied, Error> {
    let due = b.leases.get(id).is_some_and(|l| {
        l.record.renewal == renewal
            && l.record
                .deadline()
                .is_some_and(|deadline| b.cluster_time >= deadline)
    });
    if !due {
        return Ok(Applied::LeaseKept);
    }
    b.leases_expired += 1;
    end(b, id, EventKind::Expire)
}

/// Starts the countdown of a lock claim's own lease when the claim is granted.
pub(super) fn start_counting(b: &mut ApplyBatch, id: u64) {
    if let Some(l) = b.leases.get(id) {
        if !l.record.counting {
            let record = LeaseRecord {
                counting: true,
                renewal: b.cluster_time,
                ..l.record
            };
            store(b, id, record);
        }
    }
}

/// Records the id counter when a batch picked ids (so every node picks the same next).
pub(super) fn finish(b: &mut ApplyBatch) {
    if b.lease_next_changed {
        let next = b.leases.next_id();
        b.writes.set(
            lease::LEASE_NEXT.to_owned(),
            Some(Slice::from(bincode::serialize(&next).unwrap_or_default())),
        );
        b.lease_next_changed = false;
    }
}

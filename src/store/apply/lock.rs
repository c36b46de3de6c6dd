//! Locks at apply (DESIGN.md "Locks and fencing"): a lock is the set of claim keys under
//! `_lock/<name>/`, one per lease, each attached to its lease. The holder is the live claim
//! with the lowest create revision, and its fence is that create revision: a later claim is
//! always created later, so fences grow with every holder. Waiters are served in log order
//! because a claim's place is its create revision.
//!
//! Nothing else is stored: the claims are keys (readable, watchable, in snapshots), and
//! every decision reads them as this batch leaves them.

use super::write::{self, Old};
use super::{lease, ApplyBatch};
use crate::command::{Applied, ConflictReason, Fence};
use crate::store::keys::KeyMeta;
use crate::store::Error;

/// Reserved key prefix of lock claims (`api::coord_codec` refuses client writes under it).
pub const LOCK_PREFIX: &str = "_lock/";
/// Most claims read when deciding a lock: beyond that many waiters the later ones wait
/// unseen until earlier ones go (the holder is always among the first).
const MAX_CLAIMS: usize = 100_000;
/// A claim's value.
const CLAIM_VALUE: &[u8] = b"{}";

/// One live claim: its key, create revision and lease.
struct Claim {
    key: String,
    create_revision: u64,
    lease: u64,
}

fn prefix(name: &str) -> String {
    format!("{LOCK_PREFIX}{name}/")
}

fn claim_key(name: &str, lease: u64) -> String {
    format!("{LOCK_PREFIX}{name}/{lease:016x}")
}

/// The lock a claim key belongs to (`_lock/<name>/<id>` → name).
pub(super) fn lock_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(LOCK_PREFIX)?;
    rest.rsplit_once('/').map(|(name, _)| name)
}

/// Lock `name`'s claims, in line order (the holder first).
fn claims(b: &ApplyBatch, name: &str) -> Result<Vec<Claim>, Error> {
    let (keys, _) = b.writes.keys_under(&prefix(name), MAX_CLAIMS)?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(c) = write::current(b, &key)? {
            out.push(Claim {
                key,
                create_revision: c.meta.create_revision,
                lease: c.meta.lease,
            });
        }
    }
    out.sort_by_key(|c| c.create_revision);
    Ok(out)
}

/// The holder's fence of lock `name`, 0 when it is free.
pub(super) fn fence_of(b: &ApplyBatch, name: &str) -> Result<u64, Error> {
    Ok(claims(b, name)?.first().map_or(0, |c| c.create_revision))
}

/// A fenced write's check: `None` when `fence` is the holder's, else the conflict.
pub(super) fn fenced(b: &mut ApplyBatch, fence: Option<&Fence>) -> Result<Option<Applied>, Error> {
    let Some(f) = fence else {
        return Ok(None);
    };
    let current = fence_of(b, &f.lock)?;
    if current != 0 && current == f.token {
        b.condition = Some("held");
        return Ok(None);
    }
    b.condition = Some("failed");
    Ok(Some(Applied::Conflict {
        reason: ConflictReason::Fence,
        revision: Some(current),
    }))
}

/// `P.lock.acquire`: a claim for lock `name` with `lease` (an existing one) or a lease of
/// its own of `ttl_ms` (counting from the grant). A claim that exists already (a retry, or
/// the same lease again) is answered as it stands.
pub(super) fn acquire(
    b: &mut ApplyBatch,
    name: &str,
    ttl_ms: Option<u64>,
    lease: Option<u64>,
    wait: bool,
) -> Result<Applied, Error> {
    let line = claims(b, name)?;
    if let Some(id) = lease {
        if let Some(pos) = line.iter().position(|c| c.lease == id) {
            let c = &line[pos];
            return Ok(match pos {
                0 => Applied::LockGranted {
                    fence: c.create_revision,
                    lease: id,
                },
                _ if !wait => held(line[0].create_revision),
                _ => Applied::LockWaiting {
                    claim: c.create_revision,
                    lease: id,
                },
            });
        }
        if let Some(refused) = lease::attachable(b, id, &claim_key(name, id)) {
            return Ok(refused);
        }
    }
    if let (Some(holder), false) = (line.first(), wait) {
        return Ok(held(holder.create_revision));
    }
    let free = line.is_empty();
    let id = match (lease, ttl_ms) {
        (Some(id), _) => id,
        (None, Some(ttl)) => lease::grant_own(b, ttl, free),
        (None, None) => return Ok(Applied::LeaseNotFound { id: 0 }),
    };
    b.revision += 1;
    let revision = b.revision;
    let meta = KeyMeta {
        lease: id,
        ..KeyMeta::plain(revision)
    };
    write::set_record(b, claim_key(name, id), &meta, CLAIM_VALUE, None);
    Ok(if free {
        Applied::LockGranted {
            fence: revision,
            lease: id,
        }
    } else {
        Applied::LockWaiting {
            claim: revision,
            lease: id,
        }
    })
}

fn held(fence: u64) -> Applied {
    Applied::Conflict {
        reason: ConflictReason::LockHeld,
        revision: Some(fence),
    }
}

/// `P.lock.release`: deletes the holder's claim if `fence` is the holder's.
pub(super) fn release(b: &mut ApplyBatch, name: &str, fence: u64) -> Result<Applied, Error> {
    let line = claims(b, name)?;
    match line.into_iter().next() {
        Some(holder) if holder.create_revision == fence => {
            b.revision += 1;
            remove_claim(b, holder.key)?;
            Ok(Applied::LockReleased {
                revision: b.revision,
            })
        }
        other => Ok(Applied::Conflict {
            reason: ConflictReason::Fence,
            revision: Some(other.map_or(0, |h| h.create_revision)),
        }),
    }
}

/// The end of a waiter's wait: its claim withdrawn unless it was granted first.
pub(super) fn withdraw(b: &mut ApplyBatch, name: &str, claim: u64) -> Result<Applied, Error> {
    let line = claims(b, name)?;
    match line.iter().position(|c| c.create_revision == claim) {
        None => Ok(Applied::LockWithdrawn),
        Some(0) => Ok(Applied::LockGranted {
            fence: claim,
            lease: line[0].lease,
        }),
        Some(pos) => {
            b.revision += 1;
            let key = line[pos].key.clone();
            remove_claim(b, key)?;
            Ok(Applied::LockWithdrawn)
        }
    }
}

fn remove_claim(b: &mut ApplyBatch, key: String) -> Result<(), Error> {
    if let Some(old) = b.writes.get(&key)? {
        write::remove_record(b, key, Old::Record(old));
    }
    Ok(())
}

/// After a command removed claims of the locks in `b.locks_touched`: each new holder whose
/// lease is a claim's own starts counting down now (a `ttl_ms` lease starts at the grant).
pub(super) fn grant_next(b: &mut ApplyBatch) -> Result<(), Error> {
    let touched = std::mem::take(&mut b.locks_touched);
    for name in touched {
        if let Some(holder) = claims(b, &name)?.first() {
            lease::start_counting(b, holder.lease);
        }
    }
    Ok(())
}

/// Whether a stored record's key is a lock claim (for `locks_touched`).
pub(super) fn note_removed(b: &mut ApplyBatch, key: &str) {
    if let Some(name) = lock_of(key) {
        if !b.locks_touched.iter().any(|n| n == name) {
            b.locks_touched.push(name.to_owned());
        }
    }
}

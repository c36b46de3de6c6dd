//! The key-space writes every command is made of (a record set, a record removed, with the
//! live key count and data size kept true), and the two single-key commands built on them
//! that read before they write: `incr` and the delete by prefix.

use fjall::Slice;

use super::ApplyBatch;
use crate::command::{Applied, ConflictReason};
use crate::store::history::{self, ChangeEvent, EventKind};
use crate::store::keys::{self, KeyMeta};
use crate::store::Error;

/// The record a write replaces: read whole from format 2 on (its event names the version
/// it replaces), only its size before (no change log is kept then).
pub(super) enum Old {
    Record(Slice),
    Size(u64),
}

impl Old {
    pub fn size(&self) -> u64 {
        match self {
            Old::Record(r) => r.len() as u64,
            Old::Size(s) => *s,
        }
    }
}

/// The metadata of a key written at `revision` (format 2): it keeps its create revision and
/// counts one more version, or starts again when it did not exist. A put without a lease
/// leaves none.
pub(super) fn next_meta(old: Option<KeyMeta>, revision: u64) -> KeyMeta {
    match old {
        Some(old) => KeyMeta {
            revision,
            create_revision: old.create_revision,
            version: old.version.saturating_add(1),
            lease: 0,
        },
        None => KeyMeta::plain(revision),
    }
}

/// Sets `key`'s record over `old`, the record it replaces, if any.
pub(super) fn set_record(
    b: &mut ApplyBatch,
    key: String,
    meta: &KeyMeta,
    json: &[u8],
    old: Option<Old>,
) {
    match &old {
        Some(old) => {
            b.data_bytes = b
                .data_bytes
                .saturating_sub(keys::entry_bytes(key.len(), old.size() as usize))
        }
        None => b.key_count += 1,
    }
    let stored = Slice::from(keys::encode_record(meta, json));
    b.data_bytes += keys::entry_bytes(key.len(), stored.len());
    change(b, EventKind::Put, &key, stored.clone(), old.as_ref());
    super::lease::reattach(b, &key, old_lease(old.as_ref()), meta.lease);
    b.writes.set(key, Some(stored));
}

/// The lease a replaced record was attached to (0: none, or no record read).
fn old_lease(old: Option<&Old>) -> u64 {
    match old {
        Some(Old::Record(r)) => keys::decode_record(r).map_or(0, |(meta, _)| meta.lease),
        _ => 0,
    }
}

/// Removes `key`, whose stored record is `old`.
pub(super) fn remove_record(b: &mut ApplyBatch, key: String, old: Old) {
    remove_record_as(b, key, old, EventKind::Delete)
}

/// Removes `key` with a change-log event of `kind` (`expire` when its lease ended).
pub(super) fn remove_record_as(b: &mut ApplyBatch, key: String, old: Old, kind: EventKind) {
    b.key_count = b.key_count.saturating_sub(1);
    b.data_bytes = b
        .data_bytes
        .saturating_sub(keys::entry_bytes(key.len(), old.size() as usize));
    change(b, kind, &key, Slice::from(&[][..]), Some(&old));
    super::lease::reattach(b, &key, old_lease(Some(&old)), 0);
    super::lock::note_removed(b, &key);
    b.writes.set(key, None);
}

/// The change-log event of a write at the batch's revision, once the cluster keeps one.
/// The version it replaces is named by revision; it is copied in only when the change log
/// no longer holds it (older than its start, or compacted).
fn change(b: &mut ApplyBatch, kind: EventKind, key: &str, record: Slice, old: Option<&Old>) {
    if b.history_start == 0 {
        return;
    }
    let prev = match old {
        Some(Old::Record(r)) => keys::decode_value(r).map(|(revision, _)| (revision, r)),
        _ => None,
    };
    let prev_revision = prev.map_or(0, |(revision, _)| revision);
    let gone = prev_revision < b.history_start || prev_revision <= b.compact_revision;
    b.writes.event(ChangeEvent {
        kind,
        revision: b.revision,
        key: key.to_owned(),
        record,
        prev_revision,
        prev_inline: prev.filter(|_| gone).map(|(_, r)| r.clone()),
        prev_large: prev
            .filter(|(_, r)| !gone && r.len() >= history::chunk::LARGE_RECORD)
            .map(|(_, r)| r.clone()),
        stamp: b.cluster_time,
    });
}

/// A key's record as this batch sees it: its metadata and its stored bytes, the JSON text
/// from `header` on (kept in place: no copy per conditional write).
pub(super) struct Current {
    pub meta: KeyMeta,
    pub stored: Slice,
    pub header: usize,
}

impl Current {
    pub fn json(&self) -> &[u8] {
        &self.stored[self.header..]
    }
}

pub(super) fn current(b: &ApplyBatch, key: &str) -> Result<Option<Current>, Error> {
    let Some(stored) = b.writes.get(key)? else {
        return Ok(None);
    };
    let (meta, json) = keys::decode_record(&stored)
        .ok_or_else(|| Error::Corrupt(format!("record of key {key:?} is too short")))?;
    let header = stored.len() - json.len();
    Ok(Some(Current {
        meta,
        stored,
        header,
    }))
}

/// A counter's step: its value now as an integer, or the conflict that refuses it.
pub(super) fn step(
    key: Option<&str>,
    found: Option<&Current>,
    by: i64,
    (min, max): (Option<i64>, Option<i64>),
) -> Result<i64, Applied> {
    let revision = found.map_or(0, |c| c.meta.revision);
    let conflict = |reason, value: Option<String>| Applied::ConflictValue {
        reason,
        key: key.map(str::to_owned),
        revision,
        value,
    };
    let now = match found {
        None => 0,
        Some(c) => match serde_json::from_slice::<i64>(c.json()) {
            Ok(n) => n,
            Err(_) => {
                let text = String::from_utf8_lossy(c.json()).into_owned();
                return Err(conflict(ConflictReason::NotInteger, Some(text)));
            }
        },
    };
    now.checked_add(by)
        .filter(|n| min.is_none_or(|m| *n >= m) && max.is_none_or(|m| *n <= m))
        .ok_or_else(|| conflict(ConflictReason::Bound, Some(now.to_string())))
}

/// `P.kv.incr`: a missing key counts as 0; out of bounds, an overflow or a value that is not
/// an integer is a conflict and writes nothing. `by` 0 on a key that exists writes nothing.
pub(super) fn incr(
    b: &mut ApplyBatch,
    key: String,
    by: i64,
    bounds: (Option<i64>, Option<i64>),
    ttl_ms: Option<u64>,
) -> Result<Applied, Error> {
    let found = current(b, &key)?;
    let value = match step(None, found.as_ref(), by, bounds) {
        Ok(value) => value,
        Err(conflict) => {
            b.condition = Some("failed");
            return Ok(conflict);
        }
    };
    if bounds != (None, None) {
        b.condition = Some("held");
    }
    if let (0, Some(c)) = (by, &found) {
        return Ok(Applied::Incr {
            value,
            revision: c.meta.revision,
        });
    }
    // An incr never changes a key's lease; `ttl_ms` gives a key it creates one of its own
    // (a fixed window: later incrs do not renew it).
    let lease = match (&found, ttl_ms) {
        (Some(c), _) => c.meta.lease,
        (None, Some(ttl)) => super::lease::grant_own(b, ttl, true),
        (None, None) => 0,
    };
    let revision = write_next(b, key, value.to_string().as_bytes(), found, lease);
    Ok(Applied::Incr { value, revision })
}

/// A delete by prefix: up to `limit` keys at one revision (none taken when nothing was
/// there), and whether more remain.
pub(super) fn delete_prefix(
    b: &mut ApplyBatch,
    prefix: &str,
    limit: u64,
) -> Result<Applied, Error> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let (mut keys, more) = b.writes.keys_under(prefix, limit)?;
    // Lock claims are not a client's to delete, even under a prefix that covers them.
    keys.retain(|k| !k.starts_with(super::lock::LOCK_PREFIX));
    if keys.is_empty() {
        return Ok(Applied::DeletePrefix {
            count: 0,
            more,
            revision: b.revision,
        });
    }
    b.revision += 1;
    let count = remove_all(b, keys)?;
    Ok(Applied::DeletePrefix {
        count,
        more,
        revision: b.revision,
    })
}

/// Removes `keys` (each known to exist); how many went.
pub(super) fn remove_all(b: &mut ApplyBatch, keys: Vec<String>) -> Result<u64, Error> {
    let mut count = 0;
    for key in keys {
        if let Some(old) = b.writes.get(&key)? {
            remove_record(b, key, Old::Record(old));
            count += 1;
        }
    }
    Ok(count)
}

/// A put with any of `if_revision`, `lease`, `ttl_ms`, `fence`: every condition decided
/// before anything is written, then the lease it names (or a new one of its own) attached.
pub(super) fn put_full(
    b: &mut ApplyBatch,
    key: String,
    value: &str,
    opts: PutOpts,
) -> Result<Applied, Error> {
    if let Some(refused) = super::lock::fenced(b, opts.fence)? {
        return Ok(refused);
    }
    let found = match opts.if_revision {
        Some(expected) => match super::revision_held(b, &key, expected)? {
            Ok(found) => found,
            Err(conflict) => return Ok(conflict),
        },
        None => current(b, &key)?,
    };
    if let Some(id) = opts.lease {
        if let Some(refused) = super::lease::attachable(b, id, &key) {
            return Ok(refused);
        }
    }
    let lease = match (opts.lease, opts.ttl_ms) {
        (Some(id), _) => id,
        (None, Some(ttl)) => super::lease::grant_own(b, ttl, true),
        (None, None) => 0,
    };
    let revision = write_next(b, key, value.as_bytes(), found, lease);
    Ok(match lease {
        0 => Applied::Put { revision },
        lease => Applied::PutLeased { revision, lease },
    })
}

/// Writes `key` at a new revision over `found` (its record as read), attached to `lease`
/// (0: none); the revision.
fn write_next(
    b: &mut ApplyBatch,
    key: String,
    json: &[u8],
    found: Option<Current>,
    lease: u64,
) -> u64 {
    b.revision += 1;
    let revision = b.revision;
    let meta = KeyMeta {
        lease,
        ..next_meta(found.as_ref().map(|c| c.meta), revision)
    };
    set_record(b, key, &meta, json, found.map(|c| Old::Record(c.stored)));
    revision
}

/// The conditions and lease of a [`put_full`].
pub(super) struct PutOpts<'a> {
    pub if_revision: Option<u64>,
    pub lease: Option<u64>,
    pub ttl_ms: Option<u64>,
    pub fence: Option<&'a crate::command::Fence>,
}

//! Apply: committed log entries into the state machine, one batch at a time, on openraft's
//! state-machine task (small batches) or the blocking pool ([`super::state_machine`] picks).
//!
//! Key-space writes go to the in-memory `RecentWrites` (`store::recent`) table only, with the
//! batch's `sm_meta` ([`SmMeta`]); a flush writes them to fjall later, in one batch. What
//! changes rarely (membership, cluster id, tokens) goes to fjall with the batch that changed
//! it. [`apply_command`] is the one place that says what each [`Command`] does; whether a
//! command makes its batch flush at once is the command's own answer
//! ([`Command::flushes_at_once`]). Never blocks on the network and never fsyncs: the log is
//! durable and openraft re-applies it past `last_applied` after a crash.

mod lease;
mod lock;
mod txn;
mod write;

use fjall::Keyspace;
use openraft::EntryPayload;
use uuid::Uuid;

use super::idempotency::{self, IdemKey, IdemTable, Known};
use super::keys::KeyMeta;
use super::meta::{enc, SmMeta};
use super::recent::BatchWrites;
use super::view::StateView;
use super::{keys, Error};
use crate::auth::{TokenDigest, TokenRecord, TokenTable};
use crate::command::{Applied, Command, ConflictReason, Op, Request, COMMAND_FORMAT, FORMAT_V2};
use crate::observe::{AppliedFigures, ApplyProbe, ApplyTags, Observer};
use crate::store::history::EventKind;
use crate::types::{Entry, StoredMembership};
use write::Old;

/// Whether applying `entry` writes to fjall at once: a membership change, or a command that
/// says so. Such a batch goes to the blocking pool, never inline on the async workers.
pub(super) fn flushes_at_once(entry: &Entry) -> bool {
    match &entry.payload {
        EntryPayload::Normal(c) => c.command.flushes_at_once(),
        EntryPayload::Membership(_) => true,
        EntryPayload::Blank => false,
    }
}

/// Client commands in one log entry: each command of a batch counts.
pub(super) fn commands_in(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(c) => c.command.client_commands(),
        EntryPayload::Membership(_) | EntryPayload::Blank => 1,
    }
}

/// One apply batch in progress: its writes, the state machine's figures as it leaves them,
/// and the apply events of its commands.
struct ApplyBatch<'a> {
    /// Token changes, committed to fjall with this batch's flush.
    fjall_batch: fjall::OwnedWriteBatch,
    /// Key-space writes, published to the recent-writes table.
    writes: BatchWrites<'a>,
    revision: u64,
    cluster_id: Option<Uuid>,
    key_count: u64,
    data_bytes: u64,
    /// The cluster's log format: a put counts versions only from format 2 on, so that every
    /// node, whatever its build, gives a key the same record before the switch.
    cluster_format: u8,
    /// Cluster time of the newest format-2 entry applied so far.
    cluster_time: u64,
    /// The first revision the change log holds (0: none kept yet), and the compact
    /// revision: an event copies in the version it replaces when that is older than both.
    history_start: u64,
    compact_revision: u64,
    /// Token changes of this batch, applied to the in-memory table after the commit.
    token_changes: Vec<(TokenDigest, Option<TokenRecord>)>,
    token_table: &'a TokenTable,
    tokens_ks: &'a Keyspace,
    /// The apply events so far, and the index of the entry being applied.
    events: ApplyProbe<'a>,
    index: u64,
    /// The idempotency table, held for the batch (applies run one at a time).
    idem: std::sync::MutexGuard<'a, IdemTable>,
    /// Retries answered from the table, and ids reused with another command.
    idem_replays: u64,
    idem_conflicts: u64,
    /// What the table made of the command being applied, and whether its condition held,
    /// for its apply event.
    idem_outcome: Option<&'static str>,
    condition: Option<&'static str>,
    /// The lease table, held for the batch like the idempotency table.
    leases: std::sync::MutexGuard<'a, super::lease::LeaseTable>,
    /// Whether the batch picked lease ids (the counter is written at its end).
    lease_next_changed: bool,
    /// Leases this batch ended by expiry.
    leases_expired: u64,
    /// Locks whose claims the current command removed: their next holder is granted.
    locks_touched: Vec<String>,
}

impl<'a> ApplyBatch<'a> {
    /// A batch of about `commands` commands on keyspace `kv` of `generation`, starting from
    /// the state `view` holds.
    fn start(
        view: &'a StateView,
        observer: &'a Observer,
        kv: &'a Keyspace,
        generation: u64,
        commands: usize,
    ) -> ApplyBatch<'a> {
        ApplyBatch {
            fjall_batch: view.store.db.batch(),
            writes: view.recent.batch(kv, generation, commands),
            revision: view.revision(),
            cluster_id: view.cluster_id(),
            key_count: view.key_count(),
            data_bytes: view.data_bytes(),
            cluster_format: view.cluster_format(),
            cluster_time: view.applied_cluster_time(),
            history_start: view.history_start(),
            compact_revision: view.compact_revision(),
            token_changes: Vec::new(),
            token_table: &view.tokens,
            tokens_ks: &view.store.tokens,
            events: observer.apply_probe(),
            index: 0,
            idem: view.idempotency.lock().unwrap_or_else(|e| e.into_inner()),
            idem_replays: 0,
            idem_conflicts: 0,
            idem_outcome: None,
            condition: None,
            leases: view.leases.lock().unwrap_or_else(|e| e.into_inner()),
            lease_next_changed: false,
            leases_expired: 0,
            locks_touched: Vec::new(),
        }
    }

    /// The idempotency table with this batch's writes and figures.
    fn idem(&mut self) -> idempotency::Apply<'_, &mut BatchWrites<'a>> {
        idempotency::Apply {
            table: &mut self.idem,
            records: &mut self.writes,
            data_bytes: &mut self.data_bytes,
            replays: &mut self.idem_replays,
            conflicts: &mut self.idem_conflicts,
        }
    }

    fn has_token(&self, d: &TokenDigest) -> bool {
        match self.token_changes.iter().rev().find(|(x, _)| x == d) {
            Some((_, rec)) => rec.is_some(),
            None => self.token_table.contains(d),
        }
    }
}

/// Applies one command: key-space writes to the batch's writes (flushed later), token
/// changes to its fjall batch. A batch command is applied by its parts, each with its own
/// apply event.
fn apply_command(cmd: Command, b: &mut ApplyBatch) -> Result<Applied, Error> {
    let cmd_name = cmd.name();
    let event = match &cmd {
        Command::Batch(_) => None,
        other => b.events.start().map(|started| {
            let key = match other {
                _ if !b.events.include_keys() => None,
                Command::Put { key, .. } | Command::Delete { key } => Some(key.clone()),
                Command::Client(r) => r.op.key().map(str::to_owned),
                _ => None,
            };
            (started, cmd_name, key)
        }),
    };
    let outcome = match cmd {
        Command::SetClusterId { id } => {
            // Set once: a second initializer cannot rename a live cluster.
            let id = *b.cluster_id.get_or_insert(id);
            Applied::ClusterId { id }
        }
        Command::Put { key, value } => put(b, key, &value)?,
        Command::Delete { key } => delete(b, key)?,
        Command::Client(request) => client_write(b, request)?,
        Command::IdempotencySettings(settings) => {
            b.idem().set_settings(settings)?;
            Applied::None
        }
        Command::FormatSwitch { format } => {
            if format > COMMAND_FORMAT {
                return Err(Error::Corrupt(format!(
                    "log entry {} switches the cluster to log format {format}, this build reads 1 to {COMMAND_FORMAT}; upgrade this node",
                    b.index
                )));
            }
            b.cluster_format = b.cluster_format.max(format);
            if b.cluster_format >= FORMAT_V2 && b.history_start == 0 {
                // The change log starts with the first revision written in format 2.
                b.history_start = b.revision + 1;
            }
            Applied::Format {
                format: b.cluster_format,
            }
        }
        Command::Compact { revision } => compact(b, revision)?,
        Command::LeaseExpire { id, renewal } => lease::expire(b, id, renewal)?,
        Command::LockWithdraw { name, claim } => lock::withdraw(b, &name, claim)?,
        Command::Batch(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                out.push(apply_command(part, b)?);
            }
            Applied::Batch(out)
        }
        Command::TokenCreate { digest, record } => {
            // Ids are digest prefixes: refuse a (vanishingly unlikely) clash too.
            let clash = b.has_token(&digest) || b.token_table.find_id(&record.id).is_some();
            if !clash {
                b.fjall_batch.insert(b.tokens_ks, digest, enc(&record));
                b.token_changes.push((digest, Some(record)));
            }
            Applied::Token { changed: !clash }
        }
        Command::TokenRevoke { digest } => {
            let present = b.has_token(&digest);
            if present {
                b.fjall_batch.remove(b.tokens_ks, digest);
                b.token_changes.push((digest, None));
            }
            Applied::Token { changed: present }
        }
    };
    if !b.locks_touched.is_empty() {
        lock::grant_next(b)?;
    }
    // Taken whether or not the event is sampled, so they never leak into the next command's.
    let tags = ApplyTags {
        request_id: b.idem_outcome.take(),
        condition: b.condition.take(),
    };
    if let Some((started, operation, key)) = event {
        b.events.record(started, operation, b.index, key, tags);
    }
    Ok(outcome)
}

/// A client write of format 2: answered from the idempotency table when its request id is
/// known, else applied and its reply remembered under the id. Judged at the entry's cluster
/// time, so every node decides alike.
fn client_write(b: &mut ApplyBatch, request: Request) -> Result<Applied, Error> {
    let Some(id) = request.request_id else {
        return apply_op(b, request.op);
    };
    let key = IdemKey::new(&id, request.token_id.as_deref());
    let digest = idempotency::digest(&request.op);
    let now = b.cluster_time;
    match b.idem().check(&key, &digest, now)? {
        Known::Replay(reply) => {
            b.idem_outcome = Some("replayed");
            return Ok(reply);
        }
        Known::Conflict(reply) => {
            b.idem_outcome = Some("conflict");
            return Ok(reply);
        }
        Known::New => b.idem_outcome = Some("new"),
    }
    let reply = apply_op(b, request.op)?;
    b.idem().remember(key, digest, &reply, now)?;
    Ok(reply)
}

/// What one client operation does.
fn apply_op(b: &mut ApplyBatch, op: Op) -> Result<Applied, Error> {
    Ok(match op {
        Op::Put {
            key,
            value,
            if_revision: None,
            lease: None,
            ttl_ms: None,
            fence: None,
        } => put(b, key, &value)?,
        Op::Delete {
            key,
            if_revision: None,
            fence: None,
        } => delete(b, key)?,
        // Compare-and-swap: decided here, in log order, against the key as this batch
        // leaves it, so every node decides alike and no write slips in between.
        Op::Put {
            key,
            value,
            if_revision,
            lease,
            ttl_ms,
            fence,
        } => write::put_full(
            b,
            key,
            &value,
            write::PutOpts {
                if_revision,
                lease,
                ttl_ms,
                fence: fence.as_ref(),
            },
        )?,
        Op::Delete {
            key,
            if_revision,
            fence,
        } => {
            if let Some(refused) = lock::fenced(b, fence.as_ref())? {
                return Ok(refused);
            }
            match if_revision {
                Some(expected) => match revision_held(b, &key, expected)? {
                    Err(conflict) => conflict,
                    Ok(old) => delete_over(b, key, old.map(|c| Old::Record(c.stored))),
                },
                None => delete(b, key)?,
            }
        }
        Op::Incr {
            key,
            by,
            min,
            max,
            ttl_ms,
            fence,
        } => match lock::fenced(b, fence.as_ref())? {
            Some(refused) => refused,
            None => write::incr(b, key, by, (min, max), ttl_ms)?,
        },
        Op::DeletePrefix {
            prefix,
            limit,
            fence,
        } => match lock::fenced(b, fence.as_ref())? {
            Some(refused) => refused,
            None => write::delete_prefix(b, &prefix, limit)?,
        },
        Op::Txn(t) => match lock::fenced(b, t.fence.as_ref())? {
            Some(refused) => refused,
            None => txn::apply(b, t)?,
        },
        Op::Touch { key, ttl_ms } => lease::touch(b, &key, ttl_ms)?,
        Op::LeaseGrant { id, ttl_ms } => lease::grant(b, id, ttl_ms),
        Op::LeaseKeepalive { id } => lease::renew(b, id, None),
        Op::LeaseRevoke { id } => lease::end(b, id, EventKind::Delete)?,
        Op::LockAcquire {
            name,
            ttl_ms,
            lease,
            wait,
        } => lock::acquire(b, &name, ttl_ms, lease, wait)?,
        Op::LockRelease { name, fence } => lock::release(b, &name, fence)?,
    })
}

/// The key as found (`None`: absent) when its revision is `expected` (0: the key is absent),
/// for the write to go on from without reading it again; else `conflict` (reason
/// `revision`, with the key's current revision, 0 when absent, and its value when it is at
/// most [`CONFLICT_VALUE_BYTES`]). The value lets an optimistic update retry without another
/// read: it is the key as of this write's place in the log, a linearizable read.
fn revision_held(
    b: &mut ApplyBatch,
    key: &str,
    expected: u64,
) -> Result<Result<Option<write::Current>, Applied>, Error> {
    let found = write::current(b, key)?;
    let current = found.as_ref().map_or(0, |c| c.meta.revision);
    if current == expected {
        b.condition = Some("held");
        return Ok(Ok(found));
    }
    b.condition = Some("failed");
    let value = found
        .filter(|c| c.json().len() <= CONFLICT_VALUE_BYTES)
        .map(|c| String::from_utf8_lossy(c.json()).into_owned());
    Ok(Err(match value {
        Some(value) => Applied::ConflictValue {
            reason: ConflictReason::Revision,
            key: None,
            revision: current,
            value: Some(value),
        },
        None => Applied::Conflict {
            reason: ConflictReason::Revision,
            revision: Some(current),
        },
    }))
}

/// Largest value a `revision` conflict carries. Replies are kept in the idempotency table:
/// larger values would make it hold many copies of large values, so past this the conflict
/// carries the revision only (decided here, the same on every node and on every replay).
const CONFLICT_VALUE_BYTES: usize = 4096;

/// Whether this batch switched the cluster's log format; if so, the data directory moves to
/// format 4 (`keys::FORMAT_V2_DATA_DIR`) in the same fjall batch: from here on it may hold
/// format-2 entries and records, and an older build must refuse it (`migrations`).
fn format_switched(view: &StateView, b: &mut ApplyBatch) -> bool {
    let switched = b.cluster_format != view.cluster_format();
    if switched && b.cluster_format >= FORMAT_V2 {
        b.fjall_batch.insert(
            &view.store.meta,
            keys::META_FORMAT_VERSION,
            keys::FORMAT_V2_DATA_DIR.to_be_bytes(),
        );
    }
    switched
}

/// A put: a new revision; from format 2 on the key keeps its create revision and counts
/// its versions, before it every write gives the plain record a format-1 build would (and
/// only the old record's size is read).
fn put(b: &mut ApplyBatch, key: String, value: &str) -> Result<Applied, Error> {
    let old = if b.cluster_format >= FORMAT_V2 {
        match b.writes.get(&key)? {
            Some(stored) => Some((record_meta(&key, &stored)?, Old::Record(stored))),
            None => None,
        }
    } else {
        b.writes
            .size(&key)?
            .map(|size| (KeyMeta::plain(0), Old::Size(size)))
    };
    Ok(put_over(b, key, value, old))
}

fn record_meta(key: &str, stored: &[u8]) -> Result<KeyMeta, Error> {
    keys::decode_record(stored)
        .map(|(meta, _)| meta)
        .ok_or_else(|| Error::Corrupt(format!("record of key {key:?} is too short")))
}

/// A put over `old`, the key's metadata and record as already read (`None`: absent).
fn put_over(b: &mut ApplyBatch, key: String, value: &str, old: Option<(KeyMeta, Old)>) -> Applied {
    b.revision += 1;
    let revision = b.revision;
    let meta = if b.cluster_format >= FORMAT_V2 {
        write::next_meta(old.as_ref().map(|(meta, _)| *meta), revision)
    } else {
        KeyMeta::plain(revision)
    };
    write::set_record(b, key, &meta, value.as_bytes(), old.map(|(_, old)| old));
    Applied::Put { revision }
}

/// A delete: a new revision only if the key was there.
fn delete(b: &mut ApplyBatch, key: String) -> Result<Applied, Error> {
    let old = if b.cluster_format >= FORMAT_V2 {
        b.writes.get(&key)?.map(Old::Record)
    } else {
        b.writes.size(&key)?.map(Old::Size)
    };
    Ok(delete_over(b, key, old))
}

/// A delete of a key whose record was already read (`None`: absent).
fn delete_over(b: &mut ApplyBatch, key: String, old: Option<Old>) -> Applied {
    let Some(old) = old else {
        return Applied::Delete {
            deleted: false,
            revision: b.revision,
        };
    };
    b.revision += 1;
    write::remove_record(b, key, old);
    Applied::Delete {
        deleted: true,
        revision: b.revision,
    }
}

/// Applies one batch of entries (`commands` client commands in all), on the blocking pool
/// unless it is small and flushes nothing (`inline`). Each command's apply event is emitted
/// once the batch is applied.
pub(super) fn apply_entries(
    view: &StateView,
    observer: &Observer,
    entries: Vec<Entry>,
    commands: usize,
    inline: bool,
) -> Result<Vec<Applied>, Error> {
    let started = std::time::Instant::now();
    let (generation, kv) = view.kv();
    let mut b = ApplyBatch::start(view, observer, &kv, generation, commands);
    let mut last_applied = None;
    let mut membership = None;
    let mut outcomes = Vec::with_capacity(entries.len());
    for entry in entries {
        last_applied = Some(entry.log_id);
        let outcome = match entry.payload {
            EntryPayload::Blank => Applied::None,
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                Applied::None
            }
            EntryPayload::Normal(cmd) => {
                // Applying a format this build does not know could diverge from the nodes
                // that do: stop instead (the rolling-upgrade rule keeps this from happening).
                if cmd.format == 0 || cmd.format > COMMAND_FORMAT {
                    return Err(Error::Corrupt(format!(
                        "log entry {} has command format {}, this build reads 1 to {COMMAND_FORMAT}; upgrade this node",
                        entry.log_id.index, cmd.format
                    )));
                }
                b.index = entry.log_id.index;
                if let Some(stamp) = cmd.cluster_time() {
                    // Stamps of entries proposed at once may cross by a little; the applied
                    // time takes the newest, so it never runs backwards.
                    b.cluster_time = b.cluster_time.max(stamp);
                }
                apply_command(cmd.command, &mut b)?
            }
        };
        outcomes.push(outcome);
    }

    b.idem().finish()?; // The idempotency segment and lease id counter go with the writes.
    lease::finish(&mut b);
    let switched = format_switched(view, &mut b);
    // Membership, cluster id, tokens and the format change rarely and are not in the write
    // table: they go to fjall with this batch, so later flushes' `sm_meta` stays true.
    let flush_now = membership.is_some() || switched || !b.fjall_batch.is_empty();
    let flush_now = flush_now || b.cluster_id != view.cluster_id();
    let mut applied_membership = view.membership.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = membership {
        *applied_membership = std::sync::Arc::new(m);
    }
    let meta = SmMeta {
        last_applied,
        membership: std::sync::Arc::clone(&applied_membership),
        revision: b.revision,
        cluster_id: b.cluster_id,
        kv_generation: generation,
        key_count: b.key_count,
        data_bytes: b.data_bytes,
        cluster_format: b.cluster_format,
        cluster_time: b.cluster_time,
        history_start: b.history_start,
    };
    drop(applied_membership);
    let compact_revision = b.compact_revision;
    let ApplyBatch {
        fjall_batch,
        writes,
        token_changes,
        events,
        idem,
        idem_replays,
        idem_conflicts,
        ..
    } = b;
    view.idempotency_figures
        .publish(&idem, idem_replays, idem_conflicts);
    drop(idem);
    let changes = writes.applied(meta.write(), commands);
    // Before the revision is published: a watch woken by it finds the events.
    view.history.tail.push(changes, meta.revision);
    view.history
        .compact_revision
        .store(compact_revision, std::sync::atomic::Ordering::Relaxed);
    // A due flush waits for an apply off the async workers (`apply` sends it there).
    if flush_now || (!inline && view.recent.flush_due(generation, 0)) {
        view.flush_with(fjall_batch)?;
    }
    view.tokens.apply(token_changes);
    publish_figures(view, &meta);
    let figures = AppliedFigures {
        revision: meta.revision,
        key_count: meta.key_count,
        data_bytes: meta.data_bytes,
    };
    observer.applied(events, started.elapsed(), figures);
    Ok(outcomes)
}

/// Makes the figures of an applied batch visible to the request handlers.
pub(super) fn publish_figures(view: &StateView, meta: &SmMeta) {
    use std::sync::atomic::Ordering::Relaxed;
    view.key_count.store(meta.key_count, Relaxed);
    view.data_bytes.store(meta.data_bytes, Relaxed);
    view.cluster_format
        .store(meta.cluster_format.max(1), Relaxed);
    view.cluster_time.store(meta.cluster_time, Relaxed);
    view.history.start.store(meta.history_start, Relaxed);
    if meta.cluster_time > 0 {
        // Only a stamp moves the clock: before the first one it must not start counting.
        view.clock.observe(meta.cluster_time);
    }
    view.revision.send_if_modified(|r| {
        let changed = *r != meta.revision;
        *r = meta.revision;
        changed
    });
    view.cluster_id.send_if_modified(|c| {
        let changed = *c != meta.cluster_id;
        *c = meta.cluster_id;
        changed
    });
}

/// Compaction of the change log through `revision` (never past the store's revision, never
/// back): recorded under a reserved key, so snapshots carry it; each node removes the
/// compacted chunks later (`StateView::remove_compacted`).
fn compact(b: &mut ApplyBatch, revision: u64) -> Result<Applied, Error> {
    let to = revision.min(b.revision).max(b.compact_revision);
    if to != b.compact_revision {
        // Not counted in the live data size (an install skips it too).
        let stored = super::meta::enc(&to);
        b.compact_revision = to;
        b.writes.set(
            keys::COMPACT_REVISION.to_owned(),
            Some(fjall::Slice::from(stored)),
        );
    }
    Ok(Applied::Compacted { revision: to })
}

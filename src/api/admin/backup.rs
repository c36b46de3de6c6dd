//! `P.admin.backup`: the leader writes a backup of the whole state from a linearizable point
//! (admin credential), and `P.node.<id>.admin.backup.chunk` serves that file in pieces.
//!
//! The point: a ReadIndex round that started after the request arrived, then the state as
//! applied at least up to the commit index it saw, read from one fjall snapshot. The file
//! lives in `<data_dir>/backups/` until it was read to its end or [`BACKUP_TTL`] passed;
//! the directory is emptied when the node starts.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::Message;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::api::handler::confirm_leadership;
use crate::api::route::{self, AttemptError, DeadlineWording, Delivery, Routed};
use crate::api::{codec, Ctx};
use crate::auth::{Credential, Role};
use crate::error::{bad_request, internal, not_found, WireError};
use crate::store::backup;
use crate::subjects::AdminOp;

/// A backup file not read to its end is deleted after this long.
pub const BACKUP_TTL: Duration = Duration::from_secs(10 * 60);
/// Largest chunk of file in one reply (before base64).
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// Room for the JSON around a chunk's data.
const CHUNK_ENVELOPE: usize = 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkBody {
    id: String,
    offset: u64,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Written<'a> {
    ok: bool,
    id: &'a str,
    /// The node holding the file: fetch its chunks from `P.node.<node>.admin.backup.chunk`.
    node: u64,
    size: u64,
    revision: u64,
    key_count: u64,
    cluster_id: Option<uuid::Uuid>,
    created: &'a str,
    /// SHA-256 of the whole file, hex.
    sha256: &'a str,
}

#[derive(Debug, Serialize)]
struct Chunk<'a> {
    ok: bool,
    id: &'a str,
    offset: u64,
    size: u64,
    eof: bool,
    /// The bytes at `offset`, base64 (standard alphabet, padded).
    data: String,
}

/// Where this node keeps backup files.
pub fn backups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("backups")
}

/// Deletes what an earlier run left in `backups/` (files of a previous process are never
/// served: their TTL timers died with it).
pub fn clear_backups(data_dir: &Path) {
    let dir = backups_dir(data_dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(file = %e.path().display(), error = %err, "cannot delete an old backup file");
            }
        }
    }
}

pub async fn handle_backup(ctx: &Ctx, msg: &Message) -> Vec<u8> {
    let arrival = Instant::now();
    match backup_inner(ctx, msg, arrival).await {
        Ok(b) => b,
        Err(e) => codec::encode_error(&e),
    }
}

async fn backup_inner(ctx: &Ctx, msg: &Message, arrival: Instant) -> Result<Vec<u8>, WireError> {
    let body: BackupBody = super::decode(&msg.payload)?;
    let timeout = body.timeout_ms.map(Duration::from_millis);
    // Delivered once the leader starts writing: past the deadline, the backup may still
    // finish.
    let r = Routed::new(ctx, msg, arrival, timeout, false).worded(DeadlineWording::Backup);
    let cred = Credential::of(body.token.as_deref(), msg.headers.as_ref());
    r.to_leader_within_deadline(
        ctx,
        |leader| ctx.cluster.subjects.node_admin(leader, AdminOp::Backup),
        || write_on_leader(ctx, cred, &r.delivery, r.deadline),
    )
    .await
}

async fn write_on_leader(
    ctx: &Ctx,
    cred: Credential<'_>,
    started: &Delivery,
    deadline: Instant,
) -> Result<Vec<u8>, AttemptError> {
    route::authorize_on_leader(ctx, cred, Role::Admin).await?;
    // The linearizable point: every write acknowledged before the request arrived is
    // applied here once this returns.
    confirm_leadership(ctx).await?;
    // On the heavy pool, off tokio's blocking pool (the log fsync's): `busy` when it stays
    // taken until the deadline (issue #20, item 7).
    let heavy = ctx.workers.heavy.clone();
    let permit = heavy
        .permit(deadline, "writing a backup")
        .await
        .map_err(AttemptError::Fail)?;
    started.mark();
    let view = ctx.consensus.view.clone();
    let dir = backups_dir(&view.store().dir);
    let name = ctx.cluster.name.clone();
    let me = ctx.cluster.me;
    let (tracker, cancel) = (&ctx.lifecycle.tracker, ctx.lifecycle.cancel.clone());
    let expiry_tracker = tracker.clone();
    // Detached: a request that gives up does not stop the write, and the file still expires.
    let task = tracker.spawn(async move {
        let written = heavy
            .run_with(permit, "writing a backup", move || {
                backup::create(&view, &dir, &name, me)
            })
            .await;
        if let Ok(Ok(w)) = &written {
            expiry_tracker.spawn(expire(w.path.clone(), cancel));
        }
        written
    });
    let w = match task.await {
        Ok(Ok(Ok(w))) => w,
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "writing a backup failed");
            return Err(AttemptError::Fail(internal(format!(
                "writing the backup failed: {e}"
            ))));
        }
        Ok(Err(e)) => return Err(AttemptError::Fail(e)),
        Err(e) => return Err(AttemptError::Fail(internal(format!("backup task: {e}")))),
    };
    tracing::info!(
        id = %w.id,
        size_bytes = w.size,
        revision = w.header.revision,
        keys = w.header.key_count,
        "backup written"
    );
    Ok(codec::encode_ok(&Written {
        ok: true,
        id: &w.id,
        node: me,
        size: w.size,
        revision: w.header.revision,
        key_count: w.header.key_count,
        cluster_id: w.header.cluster_id,
        created: &w.header.created,
        sha256: &w.sha256,
    }))
}

/// Deletes a backup file not read to its end within [`BACKUP_TTL`]. At shutdown it stops
/// waiting: the next start empties `backups/`.
async fn expire(path: PathBuf, cancel: tokio_util::sync::CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(BACKUP_TTL) => {
            if tokio::fs::remove_file(&path).await.is_ok() {
                tracing::info!(file = %path.display(), "backup file expired unread");
            }
        }
    }
}

pub async fn handle_chunk(ctx: &Ctx, msg: &Message) -> Vec<u8> {
    match chunk_inner(ctx, msg).await {
        Ok(b) => b,
        Err(e) => codec::encode_error(&e),
    }
}

async fn chunk_inner(ctx: &Ctx, msg: &Message) -> Result<Vec<u8>, WireError> {
    let arrival = Instant::now();
    let own = ctx
        .cluster
        .subjects
        .node_admin(ctx.cluster.me, AdminOp::BackupChunk);
    if msg.subject.as_str() != own {
        return Err(bad_request(
            "backup chunks are served by the node that wrote the backup: ask P.node.<node>.admin.backup.chunk with the node from the backup reply",
        ));
    }
    let body: ChunkBody = super::decode(&msg.payload)?;
    let cred = Credential::of(body.token.as_deref(), msg.headers.as_ref());
    ctx.security
        .auth
        .check(ctx.consensus.view.tokens(), cred, Role::Admin)?;
    // An id is a simple UUID: nothing else may reach the file system.
    if body.id.len() != 32 || !body.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_request(
            "id must be the 32 hex digits of a backup id from P.admin.backup",
        ));
    }
    let path = backups_dir(&ctx.consensus.view.store().dir).join(format!("{}.backup", body.id));
    let room = ctx.limits.max_payload.saturating_sub(CHUNK_ENVELOPE) / 4 * 3;
    let max = MAX_CHUNK_BYTES.min(room).max(1);
    let offset = body.offset;
    let id = body.id.clone();
    let timeout_len =
        route::timeout_len(msg, body.timeout_ms.map(Duration::from_millis), &ctx.limits);
    // A bounded file read, on the scan pool: off the async workers and off tokio's blocking
    // pool (the log fsync's), `busy` when the pool stays taken until the deadline.
    let read = ctx
        .workers
        .scans
        .run(
            route::deadline_for(arrival, timeout_len),
            "reading a backup chunk",
            move || read_chunk(&path, offset, max),
        )
        .await?;
    let (data, size) = match read {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_found(format!(
                "node {} has no backup '{id}' (it was read to its end, expired after {} minutes, or the node restarted)",
                ctx.cluster.me,
                BACKUP_TTL.as_secs() / 60
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(bad_request(e.to_string()))
        }
        Err(e) => return Err(internal(format!("reading backup '{id}': {e}"))),
    };
    let eof = offset + data.len() as u64 >= size;
    if eof {
        // Read to its end: the client has it all.
        let path = backups_dir(&ctx.consensus.view.store().dir).join(format!("{id}.backup"));
        let _ = tokio::fs::remove_file(path).await;
    }
    Ok(codec::encode_ok(&Chunk {
        ok: true,
        id: &id,
        offset,
        size,
        eof,
        data: base64::engine::general_purpose::STANDARD.encode(&data),
    }))
}

/// Up to `max` bytes at `offset`, and the file's size.
fn read_chunk(path: &Path, offset: u64, max: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    if offset > size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("offset {offset} is past the end of the backup ({size} bytes)"),
        ));
    }
    f.seek(SeekFrom::Start(offset))?;
    let len = (size - offset).min(max as u64) as usize;
    let mut data = vec![0u8; len];
    f.read_exact(&mut data)?;
    Ok((data, size))
}

//! `concord backup --out FILE` (online: the leader writes it, this fetches it in chunks) and
//! `concord restore FILE --data-dir DIR` (offline: seeds a new node's data directory).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{out, report, show, Global, RestoreArgs};
use concord::client::{Client, ClientError};
use concord::error::{bad_request, internal, ErrorKind, WireError};
use concord::store::backup::{self, BackupError};
use concord::subjects::AdminOp;

/// Least time the leader gets to write a backup, whatever `--timeout-ms` says.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(120);

fn local(e: impl std::fmt::Display) -> ClientError {
    ClientError::Server(internal(e.to_string()))
}

fn part_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    out.with_file_name(name)
}

/// Asks the leader for a backup, downloads it to `FILE.part`, checks it, renames it to FILE.
pub async fn backup(client: &Client, global: &Global, out_file: &Path) -> Result<i32, ClientError> {
    if out_file.as_os_str().is_empty() || out_file.file_name().is_none() {
        return Err(ClientError::Server(bad_request("--out needs a file name")));
    }
    let long = client
        .clone()
        .with_timeout(client.timeout().max(BACKUP_TIMEOUT));
    if !global.json {
        eprintln!("backup: the leader is writing the backup ...");
    }
    let made = long.admin(AdminOp::Backup, json!({})).await?;
    let field = |k: &str| {
        made.get(k)
            .cloned()
            .ok_or_else(|| ClientError::Decode(format!("backup reply has no {k}: {made}")))
    };
    let id = field("id")?.as_str().unwrap_or_default().to_string();
    let node = field("node")?
        .as_u64()
        .ok_or_else(|| ClientError::Decode("backup reply: node is not a number".into()))?;
    let size = field("size")?.as_u64().unwrap_or(0);
    let sha256 = field("sha256")?.as_str().unwrap_or_default().to_string();

    let part = part_path(out_file);
    let res = async {
        let got = download(client, global, node, &id, size, &part).await?;
        if got != sha256 {
            return Err(local(format!(
                "the downloaded backup does not match its checksum (got {got}, the node reported {sha256}); run the backup again"
            )));
        }
        let checked = part.clone();
        let verified = tokio::task::spawn_blocking(move || backup::verify(&checked))
            .await
            .map_err(local)?
            .map_err(local)?;
        std::fs::rename(&part, out_file).map_err(|e| {
            local(format!(
                "renaming {} to {}: {e}",
                part.display(),
                out_file.display()
            ))
        })?;
        Ok(verified)
    }
    .await;
    let verified = match res {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    let h = &verified.header;
    let summary = json!({
        "ok": true,
        "file": out_file.display().to_string(),
        "id": id,
        "node": node,
        "size": size,
        "sha256": sha256,
        "cluster_name": h.cluster_name,
        "cluster_id": h.cluster_id,
        "revision": h.revision,
        "key_count": h.key_count,
        "tokens": verified.tokens,
        "created": h.created,
    });
    Ok(out(global, summary, || {
        format!(
            "backup written to {}: {} keys, {} tokens at revision {} of cluster '{}' ({} bytes, sha256 {})",
            out_file.display(),
            h.key_count,
            verified.tokens,
            h.revision,
            h.cluster_name,
            size,
            sha256
        )
    }))
}

/// Fetches every chunk into `part`; returns the SHA-256 of what was written, hex.
async fn download(
    client: &Client,
    global: &Global,
    node: u64,
    id: &str,
    size: u64,
    part: &Path,
) -> Result<String, ClientError> {
    let mut file = std::fs::File::create(part)
        .map_err(|e| local(format!("creating {}: {e}", part.display())))?;
    let mut hash = Sha256::new();
    let mut offset = 0u64;
    loop {
        let reply = client
            .node_admin(
                node,
                AdminOp::BackupChunk,
                json!({"id": id, "offset": offset}),
            )
            .await?;
        let at = reply["offset"].as_u64();
        let data = reply["data"]
            .as_str()
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
            .ok_or_else(|| ClientError::Decode("chunk reply without base64 data".into()))?;
        if at != Some(offset) {
            return Err(ClientError::Decode(format!(
                "asked for the chunk at {offset}, got {}",
                show(&reply["offset"])
            )));
        }
        file.write_all(&data)
            .map_err(|e| local(format!("writing {}: {e}", part.display())))?;
        hash.update(&data);
        offset += data.len() as u64;
        if !global.json {
            let pct = (offset * 100).checked_div(size).unwrap_or(100);
            eprint!("\rbackup: {offset} / {size} bytes ({pct}%)");
        }
        if reply["eof"] == json!(true) {
            break;
        }
        if data.is_empty() {
            return Err(ClientError::Decode(format!(
                "empty chunk at {offset} before the end"
            )));
        }
    }
    if !global.json {
        eprintln!();
    }
    if offset != size {
        return Err(local(format!(
            "downloaded {offset} bytes, the backup has {size}"
        )));
    }
    file.sync_all()
        .map_err(|e| local(format!("syncing {}: {e}", part.display())))?;
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Parses `1,2,3`.
fn parse_members(s: &str) -> Result<BTreeSet<u64>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u64>()
                .map_err(|_| format!("--members: '{p}' is not a node id"))
        })
        .collect()
}

/// `concord restore`: offline; needs no NATS.
pub async fn restore(global: &Global, args: &RestoreArgs) -> anyhow::Result<i32> {
    let fail = |code: ErrorKind, msg: String| {
        Ok(report(
            global,
            &ClientError::Server(WireError::new(code, msg)),
        ))
    };
    let (config, _) = match super::load_config(global, None) {
        Ok(c) => c,
        Err(e) => return fail(ErrorKind::BadRequest, e.to_string()),
    };
    let members = match &args.members {
        Some(m) => match parse_members(m) {
            Ok(m) => m,
            Err(e) => return fail(ErrorKind::BadRequest, e),
        },
        None => config.initial_members(),
    };
    let dir = args.data_dir.clone().unwrap_or(config.data_dir.clone());
    let file = args.file.clone();
    let target = dir.clone();
    let wanted = members.clone();
    let res = tokio::task::spawn_blocking(move || backup::restore(&file, &target, &wanted)).await?;
    let r = match res {
        Ok(r) => r,
        Err(e) => {
            let code = if e.is_bad_input() {
                ErrorKind::BadRequest
            } else {
                ErrorKind::Internal
            };
            return fail(code, restore_message(&e));
        }
    };
    let h = &r.header;
    let ids: Vec<String> = r.members.iter().map(u64::to_string).collect();
    let v = json!({
        "ok": true,
        "data_dir": r.dir.display().to_string(),
        "revision": h.revision,
        "key_count": h.key_count,
        "tokens": r.tokens,
        "members": r.members,
        "backup": {
            "cluster_name": h.cluster_name,
            "cluster_id": h.cluster_id,
            "created": h.created,
            "node": h.node,
        },
    });
    Ok(out(global, v, || {
        format!(
            "restored {} keys and {} tokens at revision {} into {}\n\
             backup of cluster '{}' ({}), written {} by node {}\n\
             voters: {}\n\
             next: restore the same backup into the (new, empty) data dir of every other voter, \
             or leave theirs empty to be filled by snapshot install; then start the nodes. \
             The first leader gives the restored cluster a new cluster id.",
            h.key_count,
            r.tokens,
            h.revision,
            r.dir.display(),
            h.cluster_name,
            h.cluster_id
                .map(|u| u.to_string())
                .unwrap_or_else(|| "no id".into()),
            h.created,
            h.node,
            ids.join(","),
        )
    }))
}

fn restore_message(e: &BackupError) -> String {
    match e {
        BackupError::Store(s) => format!("restore failed, nothing kept: {s}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse() {
        assert_eq!(parse_members("1, 2,3").unwrap(), [1, 2, 3].into());
        assert!(parse_members("1,x").is_err());
        assert_eq!(
            part_path(Path::new("/tmp/a.backup")),
            Path::new("/tmp/a.backup.part")
        );
    }
}

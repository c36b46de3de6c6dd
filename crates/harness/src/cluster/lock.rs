//! Serializing cluster tests across test binaries: an exclusive lock file, and the guard a test
//! takes when it runs a cluster of its own.

use super::*;

/// Exclusive lock across processes: a file created with `create_new` holding our pid. A lock
/// file whose pid is dead is stale and removed.
pub(super) struct FileLock {
    path: PathBuf,
    pid: u32,
}

impl FileLock {
    pub(super) async fn acquire(path: &Path, timeout: Duration) -> Result<FileLock> {
        let pid = std::process::id();
        let deadline = Instant::now() + timeout;
        let mut announced = false;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    file.write_all(pid.to_string().as_bytes())?;
                    file.sync_all()?;
                    return Ok(FileLock {
                        path: path.to_path_buf(),
                        pid,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating lock file {path:?}")),
            }
            let holder = read_pid(path);
            match holder {
                // Our own pid can only be a leftover: this process holds `LOCK` right now,
                // so no live cluster of ours owns the file.
                Some(holder)
                    if holder == pid || !Path::new(&format!("/proc/{holder}")).exists() =>
                {
                    // Re-read right before removing, to narrow the race with another waiter
                    // that removed it and created its own in between.
                    if read_pid(path) == Some(holder) {
                        let _ = std::fs::remove_file(path);
                    }
                    continue;
                }
                Some(holder) if !announced => {
                    eprintln!(
                        "waiting for {path:?}: another test process (pid {holder}) runs a cluster"
                    );
                    announced = true;
                }
                Some(_) => {}
                // Empty or unreadable: the holder is between create and write, or died
                // there. A file that stays empty for 10 s is stale.
                None => {
                    let age = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok());
                    if age.is_some_and(|a| a > Duration::from_secs(10)) && read_pid(path).is_none()
                    {
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for the cluster test lock {path:?} (holder pid {holder:?})");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

pub(super) fn read_pid(path: &Path) -> Option<u32> {
    let mut s = String::new();
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(0)).ok()?;
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if read_pid(&self.path) == Some(self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Holds the cluster-test locks for a test that runs its own cluster (e.g. `concord check`).
pub struct Exclusive {
    _guard: MutexGuard<'static, ()>,
    _file: FileLock,
}

/// Takes the same locks as [`Cluster::start`], so such a test never overlaps another
/// cluster test.
#[allow(clippy::await_holding_lock)]
pub async fn exclusive() -> Result<Exclusive> {
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let file = FileLock::acquire(Path::new(FILE_LOCK_PATH), FILE_LOCK_WAIT).await?;
    Ok(Exclusive {
        _guard: guard,
        _file: file,
    })
}

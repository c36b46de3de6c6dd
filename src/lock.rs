//! The data directory lock: `<data_dir>/concord.lock`, held with an OS advisory lock
//! (`flock`) for as long as a process uses the directory, and holding that process's PID as
//! text so that a refused second process can name the first.
//!
//! The lock, not the file, is what counts: the kernel drops it when the holder exits in any
//! way (`kill -9` included), so a stale file never blocks a restart. `concord serve` takes it
//! before it connects to NATS or opens the store; offline tools that touch a data directory
//! take it the same way with [`DataDirLock::acquire`].

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "concord.lock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data directory {} is in use by another Concord process ({}); stop it first", dir.display(), holder_text(*pid))]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("data directory {}: cannot take the lock {}: {source}", dir.display(), LOCK_FILE)]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "another process".into(),
    }
}

/// Held while the process uses the data directory; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `dir` if needed and takes its lock without waiting. Refuses with
    /// [`Error::InUse`], naming the holder's PID when it can be read, if another process
    /// (or another handle in this one) holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, Error> {
        let io = |source| Error::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: the holder's PID must stay readable for the refusal.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::InUse {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours now: replace a previous holder's PID with ours. Best effort for the reader,
        // who only uses it in a message.
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()))
            .and_then(|()| file.flush())
            .map_err(io)?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The PID written by the holder; `None` if the file is empty (the holder is between taking
/// the lock and writing) or holds something else.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_pid_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = DataDirLock::acquire(&dir).expect("first lock");
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // A second open file description conflicts even within one process.
        let err = DataDirLock::acquire(&dir).unwrap_err().to_string();
        let want = format!(
            "data directory {} is in use by another Concord process (pid {}); stop it first",
            dir.display(),
            std::process::id()
        );
        assert_eq!(err, want);
        drop(first);
        DataDirLock::acquire(&dir).expect("lock after release");
    }

    #[test]
    fn stale_file_without_a_holder_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(LOCK_FILE), "999999999\n").unwrap();
        let lock = DataDirLock::acquire(tmp.path()).expect("stale file is no lock");
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
    }

    #[test]
    fn unreadable_pid_says_another_process() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = DataDirLock::acquire(tmp.path()).unwrap();
        std::fs::write(tmp.path().join(LOCK_FILE), "").unwrap();
        let err = DataDirLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("(another process)"), "{err}");
    }
}

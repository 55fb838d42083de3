//! Atomic file writes and the node lock.
//!
//! A firewall can lose power in the middle of any write. Configuration files
//! are therefore replaced whole (temp file in the same directory, fsync,
//! rename, fsync of the directory), never rewritten in place, and tools that
//! change a node's state take one exclusive lock so they never interleave.

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::exit::{fail, Code};

/// Replace `path` with `data` atomically, with permission bits `mode`.
/// Creates missing parent directories (mode 0755).
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_replacing(path, data, mode, true)
}

/// Like [`atomic_write`] without the two fsyncs: a crash of the process
/// leaves the old or the new version, a power cut may leave either or a
/// damaged file. Only for records whose loss costs work, never correctness
/// (a hash cache, the primary's note of its last push): their readers treat
/// a damaged file as absent. Each fsync costs milliseconds to tens of
/// milliseconds on a loaded flash or VM disk, on the sync's hot path.
pub fn replace_cache_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_replacing(path, data, mode, false)
}

fn write_replacing(path: &Path, data: &[u8], mode: u32, durable: bool) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.ns-ha-tmp.{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // The umask may have narrowed the mode at creation; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        if durable {
            f.sync_all()
                .with_context(|| format!("syncing {}", tmp.display()))?;
        }
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory so that a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Read a file to a string, naming the file in the error.
pub fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Remove a file if it exists.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// An exclusive advisory lock (flock) on a file, released on drop.
pub struct NodeLock {
    _lock: Flock<File>,
}

impl NodeLock {
    /// Take the lock at `path`, waiting at most `wait`.
    pub fn acquire(path: &Path, wait: Duration) -> Result<NodeLock> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let deadline = Instant::now() + wait;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(NodeLock { _lock: lock }),
                Err((f, errno)) => {
                    if errno != nix::errno::Errno::EWOULDBLOCK {
                        return Err(anyhow::anyhow!(errno))
                            .with_context(|| format!("locking {}", path.display()));
                    }
                    if Instant::now() >= deadline {
                        return Err(fail(
                            Code::Conflict,
                            format!(
                                "another ns-ha tool holds {} (waited {:?}): retry when it finishes",
                                path.display(),
                                wait
                            ),
                        ));
                    }
                    file = f;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/secret");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/lock");
        let first = NodeLock::acquire(&p, Duration::from_millis(10)).unwrap();
        let second = NodeLock::acquire(&p, Duration::from_millis(50));
        assert_eq!(crate::exit::code_of(&second.err().unwrap()), Code::Conflict);
        drop(first);
        NodeLock::acquire(&p, Duration::from_millis(10)).unwrap();
    }
}

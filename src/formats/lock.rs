//! Exclusive locks on files that several processes write at once: the tasks of a job array
//! sharing one output folder (on one machine, or on a cluster's shared file system).
//!
//! A lock is an advisory lock (`flock`) on a small lock file beside what it guards, named
//! `.<name>.<purpose>.lock`. The operating system releases it when its holder exits or is
//! killed, so a killed task never leaves a stale lock behind: the next task that asks gets
//! it at once. Lock files stay on disk (removing them would race with a waiting task) and
//! hold nothing. On a network file system, locks need its flock support (NFSv4; Lustre
//! mounted with `-o flock`; GPFS); where it has none, taking a lock is an error that says
//! so.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Waits for and takes the lock `purpose` of `guarded` (which need not exist yet).
    pub fn acquire(guarded: &Path, purpose: &str) -> Result<FileLock> {
        let path = lock_path(guarded, purpose)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!("waiting for {} (another task holds it)", path.display());
                file.lock().map_err(|e| lock_error(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(&path, e)),
        }
        Ok(FileLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_path(guarded: &Path, purpose: &str) -> Result<PathBuf> {
    let name = guarded
        .file_name()
        .ok_or_else(|| Error::config(format!("{} is not a file path", guarded.display())))?;
    let mut lock = std::ffi::OsString::from(".");
    lock.push(name);
    lock.push(format!(".{purpose}.lock"));
    Ok(guarded.with_file_name(lock))
}

fn lock_error(path: &Path, e: std::io::Error) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            e.kind(),
            format!("cannot lock it ({e}); the file system must support flock"),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_lock_is_held_by_one_holder_at_a_time_and_released_on_drop() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let guarded = dir.path().join("cache.safetensors");
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (guarded, inside, most) = (guarded.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || -> Result<()> {
                    for _ in 0..5 {
                        let lock = FileLock::acquire(&guarded, "write")?;
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(lock);
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread")?;
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        let lock = FileLock::acquire(&guarded, "write")?;
        assert_eq!(
            lock.path(),
            dir.path().join(".cache.safetensors.write.lock")
        );
        // Another purpose is another lock.
        FileLock::acquire(&guarded, "build")?;
        Ok(())
    }
}

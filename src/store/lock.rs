//! The exclusive per-project build lock (`.ttv/lock`).

use std::fs::{self, File};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Whether taking the build lock waits for another holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Yes,
    /// `--no-wait` was given: the message says how to wait instead.
    NotAsked,
    /// A command that never waits (clean, gc, verify).
    Never,
}

/// The exclusive per-project build lock (`.ttv/lock`). Held until dropped.
pub struct BuildLock {
    _file: File,
}

impl BuildLock {
    /// Takes the lock; when another build holds it, `on_wait` is called once and this waits,
    /// unless `wait` is false, in which case it fails at once.
    pub fn acquire(dir: &Path, wait: Wait, on_wait: impl FnOnce()) -> Result<BuildLock> {
        fs::create_dir_all(dir)?;
        let path = dir.join("lock");
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                if wait != Wait::Yes {
                    bail!(
                        "another ttv build is running in this project (it holds {}); run this \
                         again when it ends{}",
                        path.display(),
                        if wait == Wait::NotAsked {
                            ", or drop --no-wait to wait for it"
                        } else {
                            ""
                        }
                    );
                }
                on_wait();
                file.lock()
                    .with_context(|| format!("waiting for {}", path.display()))?;
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(BuildLock { _file: file })
    }

    /// Takes the lock if no other process holds it (None if one does).
    pub fn try_acquire(dir: &Path) -> Result<Option<BuildLock>> {
        let path = dir.join("lock");
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(BuildLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

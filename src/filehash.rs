//! Hashing input files through a stat cache, as git's index and DVC's state db do: a file whose
//! (size, mtime, inode) match the row recorded when it was last read is not read again.
//! Git's racy-timestamp rule applies: a row recorded in the same second as the file's mtime is
//! not trusted (the file may have changed again within that second), so the file is re-hashed.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;

use crate::store::{FileStat, Store, now_ns};

const NS: i64 = 1_000_000_000;

#[derive(Default)]
pub struct StatCache {
    known: HashMap<String, FileStat>,
    updates: Vec<(String, FileStat)>,
}

fn mtime_ns(m: &Metadata) -> i64 {
    m.mtime() * NS + m.mtime_nsec()
}

impl StatCache {
    pub fn load(store: Option<&Store>) -> Result<StatCache> {
        Ok(StatCache {
            known: match store {
                Some(s) => s.file_stats()?,
                None => HashMap::new(),
            },
            ..Default::default()
        })
    }

    /// The recorded hash of `rel` if the file on disk still matches its row (and the row is not
    /// racy).
    pub fn lookup(&self, rel: &str, meta: &Metadata) -> Option<&str> {
        let row = self.known.get(rel)?;
        let mtime = mtime_ns(meta);
        let fresh = row.size == meta.len() as i64
            && row.mtime_ns == mtime
            && row.inode == meta.ino() as i64
            && mtime / NS < row.checked_at / NS;
        fresh.then_some(row.hash.as_str())
    }

    /// The row of `rel`, if there is one.
    pub fn row(&self, rel: &str) -> Option<&FileStat> {
        self.known.get(rel)
    }

    /// Records that `rel`, as `meta` describes it, has `hash`.
    pub fn record(&mut self, rel: &str, meta: &Metadata, hash: &str) {
        let row = FileStat {
            size: meta.len() as i64,
            mtime_ns: mtime_ns(meta),
            inode: meta.ino() as i64,
            hash: hash.to_string(),
            checked_at: now_ns(),
        };
        self.known.insert(rel.to_string(), row.clone());
        self.updates.push((rel.to_string(), row));
    }

    /// blake3 of `root/rel`, read only when the stat cache cannot vouch for it. `check` sees the
    /// bytes when they are new: read, and not the bytes already checked under this path (a
    /// touched file costs one hash, not a decode).
    pub fn hash(
        &mut self,
        root: &Path,
        rel: &str,
        check: impl FnOnce(&[u8]) -> Result<(), String>,
    ) -> io::Result<Result<String, String>> {
        let path = root.join(rel);
        let meta = std::fs::metadata(&path)?;
        if let Some(h) = self.lookup(rel, &meta) {
            return Ok(Ok(h.to_string()));
        }
        let bytes = std::fs::read(&path)?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let known = self.known.get(rel).is_some_and(|row| row.hash == hash);
        if !known && let Err(e) = check(&bytes) {
            return Ok(Err(e));
        }
        // Stat again: a file rewritten while it was read must not be recorded with old bytes.
        let after = std::fs::metadata(&path)?;
        if after.len() == meta.len() && mtime_ns(&after) == mtime_ns(&meta) {
            self.record(rel, &meta, &hash);
        }
        Ok(Ok(hash))
    }

    /// Writes the rows learned in this run (one transaction).
    pub fn save(&mut self, store: &Store) -> Result<()> {
        store.put_file_stats(&self.updates)?;
        self.updates.clear();
        Ok(())
    }
}

//! The local tier: blobs in `.ttv/objects/ab/cdef…` (this file) and the SQLite action index
//! ([`Store`], in `mod.rs`), as the fast tier every build works from. Both sides of the tier
//! interfaces ([`BlobTier`], [`ActionTier`]) are implemented here for [`Store`].

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::tier::{ActionRecord, ActionTier, BlobTier, OperationRecord, Tier};
use super::{Action, Store, blob_mode, hash_file, write_error};
use crate::media::Media;

/// The local blob folder, `.ttv/objects/ab/cdef...`.
pub struct LocalBlobs {
    pub(super) objects: PathBuf,
    pub(super) tmp: PathBuf,
}

/// Files in `.ttv/tmp` older than this were left by a build that was killed or lost power (a
/// build's own temp files live minutes at most, under the build lock).
const STALE_TMP: Duration = Duration::from_secs(3600);

impl LocalBlobs {
    pub fn path_of(&self, hash: &str) -> PathBuf {
        self.objects.join(&hash[..2]).join(&hash[2..])
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Whether the blob is in place with exactly its bytes. A file of the right name is not
    /// enough: one damaged on disk must be replaced when the same bytes are made again.
    fn holds(&self, hash: &str, size: u64) -> bool {
        self.get(hash, size)
            .is_some_and(|p| hash_file(&p).is_ok_and(|(h, _)| h == hash))
    }

    /// Renames a checked, synced temp file to the blob's name (over a damaged blob of that name).
    fn install(&self, tmp: tempfile::TempPath, hash: &str) -> Result<()> {
        let dest = self.path_of(hash);
        let dir = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).map_err(|e| write_error(e, dir))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(blob_mode()))
            .with_context(|| format!("making {} read-only", tmp.display()))?;
        tmp.persist(&dest)
            .map_err(|e| write_error(e.error, &dest))?;
        File::open(dir).and_then(|d| d.sync_all()).ok();
        Ok(())
    }

    /// Removes the temp files that builds which ended abruptly left behind. Run under the build
    /// lock.
    pub fn sweep_tmp(&self) {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let stale = entry.metadata().is_ok_and(|m| {
                m.is_file()
                    && m.modified()
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_TMP)
            });
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

impl LocalBlobs {
    /// Moves a finished temp file in: checks it is a whole file of its media type, hashes it,
    /// fsyncs, renames. Returns the hash and size. Nothing is kept when any step fails.
    pub fn put_file(&self, tmp: tempfile::TempPath, media: Media) -> Result<(String, u64)> {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| write_error(e, &tmp))?;
        media
            .check_file(&tmp)
            .with_context(|| format!("reading {}", tmp.display()))?
            .map_err(|e| anyhow!("the result is {e}; nothing was stored"))?;
        let (hash, size) = hash_file(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
        if !self.holds(&hash, size) {
            self.install(tmp, &hash)?;
        }
        Ok((hash, size))
    }

    pub fn put_bytes(&self, bytes: &[u8], media: Media) -> Result<(String, u64)> {
        media
            .check_bytes(bytes)
            .map_err(|e| anyhow!("the result is {e}; nothing was stored"))?;
        let hash = blake3::hash(bytes).to_hex().to_string();
        let size = bytes.len() as u64;
        if self.holds(&hash, size) {
            return Ok((hash, size));
        }
        let mut f =
            tempfile::NamedTempFile::new_in(&self.tmp).map_err(|e| write_error(e, &self.tmp))?;
        f.write_all(bytes)
            .and_then(|_| f.as_file().sync_all())
            .map_err(|e| write_error(e, f.path()))?;
        self.install(f.into_temp_path(), &hash)?;
        Ok((hash, size))
    }

    /// The blob's path, if it is present with the expected size (a cheap check).
    pub fn get(&self, hash: &str, size: u64) -> Option<PathBuf> {
        let p = self.path_of(hash);
        match fs::metadata(&p) {
            Ok(m) if m.len() == size => Some(p),
            _ => None,
        }
    }

    /// Re-hashes a blob: true when its bytes match its name.
    pub fn verify(&self, hash: &str) -> Result<bool> {
        match hash_file(&self.path_of(hash)) {
            Ok((h, _)) => Ok(h == hash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).context("reading a blob"),
        }
    }
}

/// An action row and its recipe as a tier record.
fn record_of(a: Action, recipe: String) -> ActionRecord {
    ActionRecord {
        key: a.key,
        base_key: a.base_key,
        take: a.take,
        node_kind: a.node_kind,
        node_id: a.node_id,
        blob: a.blob,
        size: a.size,
        media_type: a.media_type,
        backend: a.backend,
        model: a.model,
        cost_usd: a.cost_usd,
        created_at: a.created_at,
        gen_ms: a.gen_ms,
        provenance: a.provenance,
        recipe,
        machine: String::new(),
    }
}

/// A tier record as an action row (and its recipe).
pub(super) fn action_of(r: &ActionRecord) -> Action {
    Action {
        key: r.key.clone(),
        base_key: r.base_key.clone(),
        node_kind: r.node_kind.clone(),
        node_id: r.node_id.clone(),
        blob: r.blob.clone(),
        media_type: r.media_type.clone(),
        backend: r.backend.clone(),
        model: r.model.clone(),
        created_at: r.created_at,
        gen_ms: r.gen_ms,
        cost_usd: r.cost_usd,
        take: r.take,
        size: r.size,
        provenance: r.provenance.clone(),
    }
}

impl Store {
    /// A local result as a tier record (with its recipe).
    pub(super) fn record_by_key(&self, key: &str) -> Result<Option<ActionRecord>> {
        let (Some(a), Some(recipe)) = (self.action(key)?, self.recipe_json(key)?) else {
            return Ok(None);
        };
        Ok(Some(record_of(a, recipe)))
    }
}

/// The media type of a blob from the MIME type its action records.
pub(super) fn media_of(mime: &str) -> Option<Media> {
    Media::from_mime(mime)
}

#[async_trait]
impl BlobTier for Store {
    async fn blob_size(&self, hash: &str) -> Result<Option<u64>> {
        match fs::metadata(self.blobs.path_of(hash)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("looking up a blob"),
        }
    }

    /// A hard link when it can (blobs are read-only, so the link is safe to read), else a copy.
    async fn read_blob(&self, hash: &str, dest: &Path) -> Result<bool> {
        let src = self.blobs.path_of(hash);
        if !src.exists() {
            return Ok(false);
        }
        let _ = fs::remove_file(dest);
        if fs::hard_link(&src, dest).is_err() {
            fs::copy(&src, dest).map_err(|e| write_error(e, dest))?;
        }
        Ok(true)
    }

    /// Installs a copy of `src` (which stays where it is) after checking its media type.
    async fn write_blob(&self, hash: &str, src: &Path) -> Result<()> {
        let sniffed = Media::sniff(src)
            .with_context(|| format!("reading {}", src.display()))?
            .ok_or_else(|| anyhow!("{} is not a PNG, an MP4 or a JSON document", src.display()))?;
        let tmp = tempfile::NamedTempFile::new_in(&self.blobs.tmp)
            .map_err(|e| write_error(e, &self.blobs.tmp))?
            .into_temp_path();
        fs::copy(src, &tmp).map_err(|e| write_error(e, &tmp))?;
        let (stored, _) = self.blobs.put_file(tmp, sniffed)?;
        anyhow::ensure!(
            stored == hash,
            "{} does not hash to {hash}: not stored under that name",
            src.display()
        );
        Ok(())
    }
}

#[async_trait]
impl ActionTier for Store {
    async fn takes(&self, base_key: &str) -> Result<Vec<u32>> {
        let conn = self.conn();
        let mut st =
            conn.prepare_cached("SELECT take FROM actions WHERE base_key = ?1 ORDER BY take")?;
        let rows = st.query_map([base_key], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    async fn action(&self, base_key: &str, take: u32) -> Result<Option<ActionRecord>> {
        let key: Option<String> = self
            .conn()
            .query_row(
                "SELECT key FROM actions WHERE base_key = ?1 AND take = ?2",
                params![base_key, take],
                |r| r.get(0),
            )
            .optional()?;
        match key {
            Some(k) => self.record_by_key(&k),
            None => Ok(None),
        }
    }

    async fn record(&self, a: &ActionRecord) -> Result<u32> {
        let mut a = a.clone();
        loop {
            match ActionTier::action(self, &a.base_key, a.take).await? {
                Some(there) if there.blob == a.blob => return Ok(a.take),
                Some(_) => {
                    let next = ActionTier::takes(self, &a.base_key)
                        .await?
                        .last()
                        .copied()
                        .unwrap_or(0)
                        + 1;
                    a = a.renumbered(next.max(a.take + 1));
                }
                None => {
                    self.record_action(&action_of(&a), &a.recipe)?;
                    return Ok(a.take);
                }
            }
        }
    }

    async fn operation(&self, key: &str) -> Result<Option<OperationRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT backend, operation_name, submitted_at FROM operations
                 WHERE key = ?1 AND state = 'submitted' AND operation_name != ''",
                [key],
                |r| {
                    Ok(OperationRecord {
                        backend: r.get(0)?,
                        operation: r.get(1)?,
                        machine: String::new(),
                        submitted_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    async fn record_operation(&self, key: &str, op: &OperationRecord) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at, state)
             VALUES (?1, ?2, ?3, ?4, 'submitted')",
            params![key, op.backend, op.operation, op.submitted_at],
        )?;
        Ok(())
    }

    async fn clear_operation(&self, key: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM operations WHERE key = ?1", [key])?;
        Ok(())
    }
}

impl Tier for Store {
    fn name(&self) -> String {
        "local".into()
    }
}

//! Materialized outputs: build/ holds hard links to (or copies of) cached blobs, plus
//! manifest.json saying what each file is. build/ is disposable: it is re-made from the cache
//! with zero generations.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::filehash::StatCache;
use crate::store::{blob_mode, file_mode, hash_file, write_error};

pub const BUILD_DIR: &str = "build";
pub const MANIFEST: &str = "manifest.json";

/// What happened to one output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// The file was already there with the right bytes (checked by stat, not by reading).
    UpToDate,
    Written,
    /// The blob's bytes do not match its hash: the cache entry is unusable.
    CorruptBlob,
}

pub struct Materializer<'a> {
    root: &'a Path,
    stats: &'a Mutex<StatCache>,
}

impl<'a> Materializer<'a> {
    pub fn new(root: &'a Path, stats: &'a Mutex<StatCache>) -> Self {
        Materializer { root, stats }
    }

    /// True when `out` (`build/...`) already holds the blob named `hash`: one stat compared with
    /// the stat cache row written when it was placed, no read.
    pub fn is_current(&self, out: &str, hash: &str) -> bool {
        fs::metadata(self.root.join(out)).is_ok_and(|meta| self.vouches(out, &meta, hash))
    }

    /// Whether the stat cache's row for `out` matches `meta` and names `hash`, and the file has
    /// the mode of a blob (a link) or of a copy: an output an older ttv made owner-only is
    /// placed again, which fixes its blob's mode.
    fn vouches(&self, out: &str, meta: &fs::Metadata, hash: &str) -> bool {
        let mode = meta.mode() & 0o777;
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.lookup(out, meta) == Some(hash) && (mode == blob_mode() || mode == file_mode())
    }

    /// Makes `out` (`build/...`) hold the blob at `blob_path` (named `hash`): a hard link to
    /// it, or a copy when the blob is on another file system.
    pub fn place(&self, out: &str, blob_path: &Path, hash: &str) -> Result<Placed> {
        let dest = self.root.join(out);
        let blob =
            fs::metadata(blob_path).with_context(|| format!("reading {}", blob_path.display()))?;
        let existing = fs::metadata(&dest).ok();
        let linked = existing
            .as_ref()
            .is_some_and(|m| m.dev() == blob.dev() && m.ino() == blob.ino());
        // The stat cache vouches for the file's bytes; on the blob's file system the file must
        // also still be the blob itself: a damaged blob replaced by good bytes leaves a link to
        // the damaged one behind, which the stat cache alone would take for current.
        if let Some(m) = &existing
            && (linked || m.dev() != blob.dev())
            && self.vouches(out, m, hash)
        {
            return Ok(Placed::UpToDate);
        }
        // A blob is checked against its name before it is shown to the user: a corrupt cache
        // entry must become a miss, never a wrong output.
        let (actual, _) =
            hash_file(blob_path).with_context(|| format!("reading {}", blob_path.display()))?;
        if actual != hash {
            return Ok(Placed::CorruptBlob);
        }
        // Blobs of an older ttv are owner-only (0400); build/ shares their mode.
        if blob.permissions().mode() & 0o777 != blob_mode() {
            fs::set_permissions(blob_path, fs::Permissions::from_mode(blob_mode()))
                .with_context(|| format!("setting the mode of {}", blob_path.display()))?;
        }
        // Already a link to the blob (a touched output, a copied project, the racy second of the
        // stat cache): renaming a second link over it would do nothing and leave the temp name.
        if !linked {
            self.link_or_copy(blob_path, &dest)?;
        }
        let meta = fs::metadata(&dest)?;
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(out, &meta, hash);
        Ok(Placed::Written)
    }

    /// Replaces `dest` with a hard link to `blob_path` (or a copy, which follows the umask like
    /// any file the user makes), through a temp name beside it.
    fn link_or_copy(&self, blob_path: &Path, dest: &Path) -> Result<()> {
        let dir = dest.parent().expect("outputs live under build/");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            dest.file_name()
                .expect("outputs have file names")
                .to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        let placed = fs::hard_link(blob_path, &tmp)
            .or_else(|_| {
                fs::copy(blob_path, &tmp)?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(file_mode()))
            })
            .map_err(|e| write_error(e, &tmp))
            .and_then(|()| fs::rename(&tmp, dest).map_err(|e| write_error(e, dest)));
        if placed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        placed
    }
}

/// What one file in build/ is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub node: String,
    pub output: String,
    pub key: String,
    pub blob: String,
    pub take: u32,
    pub backend: String,
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    project: String,
    outputs: Vec<ManifestEntry>,
}

/// The entries of build/manifest.json, if it is there and readable.
pub fn read_manifest(root: &Path) -> Option<Vec<ManifestEntry>> {
    let text = fs::read_to_string(root.join(BUILD_DIR).join(MANIFEST)).ok()?;
    serde_json::from_str::<Manifest>(&text)
        .ok()
        .map(|m| m.outputs)
}

/// Writes build/manifest.json: this build's `outputs`, plus the entries of earlier builds whose
/// files are still in build/.
///
/// The stat-cache row of manifest.json holds a digest of the entries it was written from (not a
/// hash of its bytes), kept only when the file lists nothing else: while the file is unchanged
/// and the digest is this build's, it is exactly what would be written, and is left alone
/// without being read, merged and serialized again (a tenth of a no-op build).
pub fn write_manifest(
    root: &Path,
    project: &str,
    mut outputs: Vec<ManifestEntry>,
    stats: &Mutex<StatCache>,
) -> Result<()> {
    let dir = root.join(BUILD_DIR);
    let path = dir.join(MANIFEST);
    let rel = format!("{BUILD_DIR}/{MANIFEST}");
    outputs.sort_by(|a, b| a.output.cmp(&b.output));
    let digest = entries_digest(project, &outputs);
    let lock = || stats.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(meta) = fs::metadata(&path)
        && lock().lookup(&rel, &meta) == Some(digest.as_str())
    {
        return Ok(());
    }
    fs::create_dir_all(&dir)?;
    let old_text = fs::read_to_string(&path).ok();
    let mut by_node: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    if let Some(old) = old_text
        .as_deref()
        .and_then(|t| serde_json::from_str::<Manifest>(t).ok())
    {
        for e in old.outputs {
            by_node.insert(e.node.clone(), e);
        }
    }
    let built: HashSet<String> = outputs.iter().map(|e| e.node.clone()).collect();
    by_node.retain(|node, e| built.contains(node) || root.join(&e.output).exists());
    let only_these = by_node.keys().all(|node| built.contains(node));
    for e in outputs {
        by_node.insert(e.node.clone(), e);
    }
    let mut outputs: Vec<ManifestEntry> = by_node.into_values().collect();
    outputs.sort_by(|a, b| a.output.cmp(&b.output));
    let mut text = serde_json::to_string_pretty(&Manifest {
        project: project.to_string(),
        outputs,
    })?;
    text.push('\n');
    if old_text.as_deref() != Some(text.as_str()) {
        let tmp = dir.join(".manifest.json.tmp");
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    if only_these {
        lock().record(&rel, &fs::metadata(&path)?, &digest);
    }
    Ok(())
}

/// A digest of what a manifest is written from (see [`write_manifest`]): the fields
/// length-prefixed into one buffer, hashed once (blake3's per-call cost dominates on small
/// updates).
fn entries_digest(project: &str, outputs: &[ManifestEntry]) -> String {
    let mut buf = Vec::with_capacity(64 + outputs.len() * 320);
    let mut field = |bytes: &[u8]| {
        buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        buf.extend_from_slice(bytes);
    };
    field(b"ttv manifest entries 1");
    field(project.as_bytes());
    for e in outputs {
        for s in [&e.node, &e.output, &e.key, &e.blob, &e.backend] {
            field(s.as_bytes());
        }
        field(&e.take.to_le_bytes());
        field(&e.cost_usd.to_bits().to_le_bytes());
    }
    format!("entries:{}", blake3::hash(&buf).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn entry(node: &str, take: u32) -> ManifestEntry {
        ManifestEntry {
            node: node.into(),
            output: format!("build/{node}.png"),
            key: format!("key-{node}-{take}"),
            blob: format!("blob-{node}"),
            take,
            backend: "preview".into(),
            cost_usd: 0.04,
        }
    }

    fn listed(root: &Path) -> Vec<(String, u32)> {
        let text = fs::read_to_string(root.join("build/manifest.json")).unwrap();
        let m: Manifest = serde_json::from_str(&text).unwrap();
        m.outputs.into_iter().map(|e| (e.node, e.take)).collect()
    }

    /// Makes the stat-cache row of manifest.json one the next call trusts (outside the racy
    /// second), as it is for a no-op build a second or more after the last change.
    fn settle(root: &Path, project: &str, outputs: &[ManifestEntry], stats: &Mutex<StatCache>) {
        let path = root.join("build/manifest.json");
        let past = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(past)
            .unwrap();
        write_manifest(root, project, outputs.to_vec(), stats).unwrap();
        let meta = fs::metadata(&path).unwrap();
        let stats = stats.lock().unwrap();
        assert!(
            stats.lookup("build/manifest.json", &meta).is_some(),
            "the row is trusted now"
        );
    }

    #[test]
    fn an_unchanged_manifest_is_kept_and_any_change_still_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stats = Mutex::new(StatCache::default());
        let all = vec![entry("a", 1), entry("b", 1)];
        write_manifest(root, "p", all.clone(), &stats).unwrap();
        settle(root, "p", &all, &stats);
        let path = root.join("build/manifest.json");
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        write_manifest(root, "p", all.clone(), &stats).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        // Not even read: the same size and mtime in place (what the stat cache trusts, as for
        // every input) stand for the same entries.
        let text = fs::read(&path).unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &file, &vec![b' '; text.len()]).unwrap();
        file.set_modified(before).unwrap();
        write_manifest(root, "p", all.clone(), &stats).unwrap();
        assert_eq!(fs::read(&path).unwrap(), vec![b' '; text.len()]);
        fs::write(&path, &text).unwrap();

        // A new take of the same bytes: the entry changes, so the file does.
        let rerolled = vec![entry("a", 2), entry("b", 1)];
        write_manifest(root, "p", rerolled.clone(), &stats).unwrap();
        assert_eq!(listed(root), vec![("a".into(), 2), ("b".into(), 1)]);

        // Edited by hand: written again, whole.
        settle(root, "p", &rerolled, &stats);
        fs::write(&path, "{}").unwrap();
        write_manifest(root, "p", rerolled.clone(), &stats).unwrap();
        assert_eq!(listed(root), vec![("a".into(), 2), ("b".into(), 1)]);

        // A build of fewer nodes keeps the others listed while their files exist.
        settle(root, "p", &rerolled, &stats);
        fs::write(root.join("build/b.png"), "b").unwrap();
        write_manifest(root, "p", vec![entry("a", 2)], &stats).unwrap();
        assert_eq!(listed(root), vec![("a".into(), 2), ("b".into(), 1)]);
        // ...and from then on the row is not kept (the file lists more than the build), so
        // once b's file is gone the next build drops it.
        fs::remove_file(root.join("build/b.png")).unwrap();
        write_manifest(root, "p", vec![entry("a", 2)], &stats).unwrap();
        assert_eq!(listed(root), vec![("a".into(), 2)]);
    }
}

//! Materialized outputs: build/ holds hard links to (or copies of) cached blobs, plus
//! manifest.json saying what each file is. build/ is disposable: it is re-made from the cache
//! with zero generations.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::filehash::StatCache;
use crate::store::hash_file;

pub const BUILD_DIR: &str = "build";

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
    root: PathBuf,
    stats: &'a Mutex<StatCache>,
}

impl<'a> Materializer<'a> {
    pub fn new(root: &Path, stats: &'a Mutex<StatCache>) -> Self {
        Materializer {
            root: root.to_path_buf(),
            stats,
        }
    }

    /// True when `build/<rel>` already holds the blob named `hash`: one stat compared with the
    /// stat cache row written when it was placed, no read.
    pub fn is_current(&self, rel: &Path, hash: &str) -> bool {
        let rel_key = build_rel(rel);
        let Ok(meta) = fs::metadata(self.root.join(&rel_key)) else {
            return false;
        };
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.lookup(&rel_key, &meta) == Some(hash)
    }

    /// Makes `build/<rel>` hold the blob at `blob_path` (named `hash`).
    pub fn place(&self, rel: &Path, blob_path: &Path, hash: &str) -> Result<Placed> {
        if self.is_current(rel, hash) {
            return Ok(Placed::UpToDate);
        }
        let rel_key = build_rel(rel);
        let dest = self.root.join(&rel_key);
        // A blob is checked against its name before it is shown to the user: a corrupt cache
        // entry must become a miss, never a wrong output.
        let (actual, _) =
            hash_file(blob_path).with_context(|| format!("reading {}", blob_path.display()))?;
        if actual != hash {
            return Ok(Placed::CorruptBlob);
        }
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
        if fs::hard_link(blob_path, &tmp).is_err() {
            fs::copy(blob_path, &tmp)
                .with_context(|| format!("copying {} to {}", blob_path.display(), tmp.display()))?;
        }
        fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
        let meta = fs::metadata(&dest)?;
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&rel_key, &meta, hash);
        Ok(Placed::Written)
    }
}

/// `build/<rel>` as the stat cache names it.
fn build_rel(rel: &Path) -> String {
    Path::new(BUILD_DIR)
        .join(rel)
        .to_string_lossy()
        .into_owned()
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

/// Writes build/manifest.json atomically: this build's outputs, plus the entries of earlier
/// builds for other nodes whose files are still there (`ttv build frames` after a full build
/// keeps the segments listed). Unchanged content is not rewritten.
pub fn write_manifest(root: &Path, project: &str, outputs: Vec<ManifestEntry>) -> Result<()> {
    let dir = root.join(BUILD_DIR);
    fs::create_dir_all(&dir)?;
    let path = dir.join("manifest.json");
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
    if old_text.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let tmp = dir.join(".manifest.json.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

//! The commands around builds: `init`, `clean`, `gc`, `verify`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::error::UsageError;
use crate::materialize::BUILD_DIR;
use crate::media::Media;
use crate::plan::Session;
use crate::progress::{Progress, emit};
use crate::project::CONFIG_FILE;
use crate::store::tier::ActionTier;
use crate::store::{BuildLock, Store, Wait, hash_file, write_error};

const INIT_YAML: &str = r#"version: 1
name: my-film

keyframes:
  backend: preview              # preview (offline, free) | gemini
  model: gemini-3.1-flash-image # Nano Banana 2 (`ttv doctor` checks it with Google)
  aspect_ratio: "16:9"
  # image_size: 2K              # 1K | 2K | 4K (priced per size)
  references: references
  chain: true
  jobs: 4

video:
  backend: preview              # preview (offline, free) | veo
  api: vertex                   # vertex (project + OAuth)
  model: veo-3.1-generate-001
  mode: first-last              # Veo 3.1 moves from each shot's start frame to its end frame
  duration_seconds: 8
  resolution: 720p              # 720p | 1080p | 4k (1080p and 4k need 8 s)
  aspect_ratio: "16:9"
  generate_audio: true
  sample_count: 1               # videos per request (each a take; N times the price)
  # fallback:                   # with backend: veo, tried when the model fails for good
  #   - {backend: veo, model: veo-3.1-fast-generate-001}
  jobs: 2

final:
  output: final.mp4

shots:
  - id: opening
    start: "Wide shot: the place where the story begins"
    end: "The main character enters the frame"
    motion: "Slow dolly in"
"#;

/// Writes a starter project into `dir`. Refuses to overwrite an existing ttv.yaml.
pub fn init(dir: &Path) -> Result<()> {
    let config = dir.join(CONFIG_FILE);
    if config.exists() {
        return Err(UsageError::new(format!(
            "{} already exists; ttv init does not overwrite it",
            config.display()
        ))
        .into());
    }
    fs::create_dir_all(dir.join("references"))
        .with_context(|| format!("creating {}", dir.join("references").display()))?;
    fs::write(&config, INIT_YAML).with_context(|| format!("writing {}", config.display()))?;
    let gitignore = dir.join(".gitignore");
    let mut text = fs::read_to_string(&gitignore).unwrap_or_default();
    for line in [".ttv/", "build/"] {
        if !text.lines().any(|l| l.trim() == line) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(line);
            text.push('\n');
        }
    }
    fs::write(&gitignore, text).with_context(|| format!("writing {}", gitignore.display()))?;
    Ok(())
}

/// Removes build/, and with `cache` (confirmed by `yes`) .ttv/ too.
pub fn clean(root: &Path, cache: bool, yes: bool, progress: &Progress) -> Result<()> {
    let cache_dir = root.join(".ttv");
    if cache && !yes {
        let (n, cost) = match Store::open_existing(&cache_dir)? {
            Some(s) => s.paid_generations()?,
            None => (0, 0.0),
        };
        return Err(UsageError::new(format!(
            "`ttv clean --cache` deletes the cache with {n} generation(s) (${cost:.2} spent on them); add --yes to confirm"
        ))
        .into());
    }
    let _lock = if cache_dir.exists() {
        Some(BuildLock::acquire(&cache_dir, Wait::Never, || {})?)
    } else {
        None
    };
    let build = root.join(crate::materialize::BUILD_DIR);
    if build.exists() {
        fs::remove_dir_all(&build).with_context(|| format!("removing {}", build.display()))?;
        progress.info("removed build/ (the cache is kept: the next build re-makes it at no cost)");
    } else {
        progress.info("nothing to clean in build/");
    }
    if cache && cache_dir.exists() {
        let (n, cost) = match Store::open_existing(&cache_dir)? {
            Some(s) => s.paid_generations()?,
            None => (0, 0.0),
        };
        fs::remove_dir_all(&cache_dir)
            .with_context(|| format!("removing {}", cache_dir.display()))?;
        progress.info(&format!(
            "removed .ttv/: {n} cached generation(s) (${cost:.2}) discarded"
        ));
    }
    Ok(())
}

/// Drops actions whose recipe no current node has (every take of a current recipe is kept, so
/// it can still be pinned), then blobs nothing references.
pub fn gc(session: &Session, yes: bool, remote: bool, json_out: bool) -> Result<()> {
    let Some(store) = &session.store else {
        if json_out {
            emit(&json!({"dropped": 0, "freed_bytes": 0}).to_string())?;
        }
        return Ok(());
    };
    let report = session.plan()?;
    let mut keep_bases = HashSet::new();
    let mut keep_nodes = HashSet::new();
    for n in &report.nodes {
        match n
            .key
            .as_deref()
            .map(|k| store.action(k))
            .transpose()?
            .flatten()
        {
            Some(a) => {
                keep_bases.insert(a.base_key);
            }
            // Inputs not built yet: which recipe it will have is unknown, keep its history.
            None => {
                keep_nodes.insert(n.id.clone());
            }
        }
    }
    if remote {
        gc_remote(session, store, &keep_bases, &keep_nodes, yes)?;
    }
    let drop: Vec<_> = store
        .all_actions()?
        .into_iter()
        // Storyboard drafts are no node of the graph: paid for, and kept.
        .filter(|a| {
            !keep_bases.contains(&a.base_key)
                && !keep_nodes.contains(&a.node_id)
                && a.node_kind != crate::storyboard::NODE_ID
        })
        .collect();
    // Folded from +0.0: an empty f64 sum is -0.0, printed "$-0.00".
    let cost = drop.iter().fold(0.0, |sum, a| sum + a.cost_usd);
    if !yes {
        session.progress_info(&format!(
            "gc would drop {} cache entries (${cost:.2} of generations no current node uses); run `ttv gc --yes` to drop them",
            drop.len()
        ));
        if json_out {
            emit(&json!({"dropped": 0, "would_drop": drop.len(), "freed_bytes": 0}).to_string())?;
        }
        return Ok(());
    }
    let keys: Vec<String> = drop.iter().map(|a| a.key.clone()).collect();
    let sizes: std::collections::HashMap<String, u64> = store.all_blobs()?.into_iter().collect();
    let orphans = store.delete_actions(&keys)?;
    let mut freed = 0u64;
    for h in &orphans {
        let p = store.blob_path(h);
        if fs::remove_file(&p).is_ok() {
            freed += sizes.get(h).copied().unwrap_or(0);
        }
    }
    session.progress_info(&format!(
        "dropped {} cache entries and {} blobs ({:.1} MiB freed)",
        keys.len(),
        orphans.len(),
        freed as f64 / (1024.0 * 1024.0)
    ));
    if json_out {
        emit(&json!({"dropped": keys.len(), "freed_bytes": freed}).to_string())?;
    }
    Ok(())
}

/// `ttv gc --remote`: the same rule in the remote cache (results of recipes no current node
/// has), then the remote blobs no remaining result references.
fn gc_remote(
    session: &Session,
    store: &Store,
    keep_bases: &HashSet<String>,
    keep_nodes: &HashSet<String>,
    yes: bool,
) -> Result<()> {
    let Some(remote) = store.configured_remote().cloned() else {
        session.progress_info("no remote cache is configured: nothing to drop there");
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (actions, blobs) = rt.block_on(async {
        let inv = remote.inventory().await?;
        let mut drop = Vec::new();
        let mut used = HashSet::new();
        for (base, take) in &inv.actions {
            let a = remote.action(base, *take).await?;
            let keep = keep_bases.contains(base)
                || a.as_ref().is_some_and(|a| {
                    keep_nodes.contains(&a.node_id) || a.node_kind == crate::storyboard::NODE_ID
                });
            match a {
                Some(a) if keep => {
                    used.insert(a.blob);
                }
                _ => drop.push((base.clone(), *take)),
            }
        }
        let orphans: Vec<(String, u64)> = inv
            .blobs
            .into_iter()
            .filter(|(h, _)| !used.contains(h))
            .collect();
        if yes {
            for (base, take) in &drop {
                remote.delete_action(base, *take).await?;
            }
            for (h, _) in &orphans {
                remote.delete_blob(h).await?;
            }
        }
        anyhow::Ok((drop.len(), orphans))
    })?;
    let bytes: u64 = blobs.iter().map(|(_, n)| n).sum();
    session.progress_info(&format!(
        "remote {}: {} {actions} result(s) and {} blob(s) ({:.1} MiB){}",
        remote.url,
        if yes { "dropped" } else { "would drop" },
        blobs.len(),
        bytes as f64 / (1024.0 * 1024.0),
        if yes {
            ""
        } else {
            "; run `ttv gc --remote --yes` to drop them"
        }
    ));
    Ok(())
}

/// Checks the cache and repairs what it can, so that the next build makes what is lost:
/// SQLite's integrity check of the database (a damaged one is moved aside and rebuilt, see
/// [`Store::rebuild`]), then every blob re-hashed. A damaged or missing blob comes back from a
/// file recorded with its bytes (an output in build/, a reference) that still has them;
/// otherwise it is dropped, and so are the outputs in build/ that show its damaged bytes (with
/// their stat-cache rows: the next build places or makes them again). Returns how many blobs
/// were damaged or missing, plus one for a damaged database.
pub fn verify(mut store: Store, progress: &Progress, json_out: bool) -> Result<usize> {
    let problems = store.integrity_problems();
    if !problems.is_empty() {
        let dir = store.dir.clone();
        drop(store);
        let shown: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
        store = Store::rebuild(
            &dir,
            &format!("SQLite's integrity check: {}", shown.join("; ")),
        )?;
    }
    let root = store
        .dir
        .parent()
        .context("the cache folder has no project folder")?
        .to_path_buf();
    let blobs = store.all_blobs()?;
    let mut files_with: HashMap<String, Vec<String>> = HashMap::new();
    for (path, stat) in store.file_stats()? {
        files_with.entry(stat.hash).or_default().push(path);
    }
    let mut damaged = Vec::new();
    let mut restored = Vec::new();
    let mut forget = Vec::new();
    for (hash, _) in &blobs {
        if store.verify_blob(hash)? {
            continue;
        }
        damaged.push(hash.clone());
        let blob_path = store.blob_path(hash);
        let _ = fs::remove_file(&blob_path);
        let mut source = None;
        for rel in files_with.get(hash).into_iter().flatten() {
            let path = root.join(rel);
            if hash_file(&path).is_ok_and(|(h, _)| h == *hash) {
                source.get_or_insert_with(|| rel.clone());
                continue;
            }
            // A link to the damaged blob, or a file changed since: an output must never show
            // other bytes than its blob's.
            if rel.starts_with(&format!("{BUILD_DIR}/")) {
                let _ = fs::remove_file(&path);
            }
            forget.push(rel.clone());
        }
        match source {
            Some(rel) if restore(&store, &root.join(&rel), hash)? => {
                progress.warn(&format!(
                    "blob {hash} was missing or damaged; restored it from {rel}"
                ));
                restored.push(hash.clone());
            }
            _ => {
                progress.warn(&format!(
                    "blob {hash} is missing or damaged; the nodes that used it will be made again"
                ));
                store.forget_blob(hash)?;
            }
        }
    }
    store.forget_file_stats(&forget)?;
    if json_out {
        emit(
            &json!({
                "checked": blobs.len(),
                "damaged": damaged,
                "restored": restored,
                "database": if problems.is_empty() { "ok" } else { "rebuilt" },
                "database_problems": problems,
            })
            .to_string(),
        )?;
    }
    progress.info(&format!(
        "verified {} blobs: {} damaged ({} restored); database {}",
        blobs.len(),
        damaged.len(),
        restored.len(),
        if problems.is_empty() {
            "sound"
        } else {
            "damaged, rebuilt"
        }
    ));
    Ok(damaged.len() + usize::from(!problems.is_empty()))
}

/// Puts a copy of `source` back into the store as blob `hash`, if it still has those bytes.
fn restore(store: &Store, source: &Path, hash: &str) -> Result<bool> {
    let Some(media) = Media::sniff(source)? else {
        return Ok(false);
    };
    let tmp = tempfile::NamedTempFile::new_in(store.tmp_dir())?.into_temp_path();
    fs::copy(source, &tmp).map_err(|e| write_error(e, &tmp))?;
    let (restored, _) = store.put_file(tmp, media)?;
    Ok(restored == hash)
}

/// `2026-11-25 04:08` (UTC) for a unix time.
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn format_time_is_utc_civil_time() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00");
        assert_eq!(super::format_time(1_795_234_080), "2026-11-21 04:08");
    }
}

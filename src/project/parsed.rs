//! A parsed copy of ttv.yaml, `.ttv/ttv.yaml.json`, so that a build that changes nothing does
//! not parse YAML again (a fifth of a no-op build's instructions on 200 shots; JSON reads about
//! ten times faster).
//!
//! The copy is used only when ttv.yaml is byte for byte the text it was made from (blake3) and
//! the running ttv is the executable that made it (version, path, size, mtime): a rebuilt or
//! upgraded ttv, whose settings may differ, parses the YAML again. Only a build writes it (a
//! build owns `.ttv/`), atomically, and only when the JSON reads back equal to the parsed
//! settings: so never when ttv.yaml holds an `api_key`, which is written as `<redacted>` and
//! would not read back. Everything else `Project::load` checks is checked on the copy as well.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Config;

const FILE: &str = "ttv.yaml.json";

/// What the copy was made from: the first line of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Stamp {
    format: u32,
    yaml: String,
    ttv: String,
}

impl Stamp {
    /// None when the running executable cannot be found (then nothing is cached).
    pub(super) fn new(source: &str) -> Option<Stamp> {
        Some(Stamp {
            format: 1,
            yaml: blake3::hash(source.as_bytes()).to_hex().to_string(),
            ttv: ttv_identity()?,
        })
    }
}

/// The running ttv executable: version, path, size and mtime (a rebuilt one differs). None
/// when it cannot be found.
pub(crate) fn ttv_identity() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let meta = fs::metadata(&exe).ok()?;
    Some(format!(
        "{} {} {} {}.{}",
        env!("CARGO_PKG_VERSION"),
        exe.display(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

/// The settings parsed from the same ttv.yaml by the same ttv, if `cache_dir` has them.
pub(super) fn load(cache_dir: &Path, stamp: &Stamp) -> Option<Config> {
    let text = fs::read_to_string(cache_dir.join(FILE)).ok()?;
    let (head, body) = text.split_once('\n')?;
    if serde_json::from_str::<Stamp>(head).ok()? != *stamp {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// Keeps `config` for the next run, when it survives the trip through JSON unchanged.
pub(super) fn save(cache_dir: &Path, stamp: &Stamp, config: &Config) -> Result<()> {
    let body = serde_json::to_string(config)?;
    if serde_json::from_str::<Config>(&body).ok().as_ref() != Some(config) {
        return Ok(());
    }
    let mut tmp = tempfile::NamedTempFile::new_in(cache_dir.join("tmp"))?;
    serde_json::to_writer(&mut tmp, stamp)?;
    tmp.write_all(b"\n")?;
    tmp.write_all(body.as_bytes())?;
    tmp.persist(cache_dir.join(FILE))?;
    Ok(())
}

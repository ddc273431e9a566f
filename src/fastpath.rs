//! The no-op fast path: `ttv build` answers "nothing to do" from one small file, without opening
//! the cache database or walking the graph, when nothing it could depend on has changed since
//! a build that generated nothing.
//!
//! `.ttv/noop` is written at the end of a build (under its lock) that generated, failed, skipped
//! and held back nothing, fetched nothing from a remote cache and warned about nothing. It holds what that build's answer rested on:
//! the blake3 of ttv.yaml's bytes, the ttv executable (as the parsed copy of ttv.yaml names
//! it), the environment variables ttv reads, the targets, the stat-cache rows of every input and
//! output it vouched for (references, start images, every output in build/, the manifest) and of
//! the references folder (whose listing is the set of references), and its `--json` report.
//!
//! The next build with the same targets and no `--reroll` / `--force` reads it, reads ttv.yaml,
//! stats each file once, and compares with git's racy-timestamp rule, as the stat cache does: a
//! row is trusted only if the file was last modified in an earlier second than the row was
//! recorded. Any difference, or anything it cannot read, falls back to the full build, which
//! is unchanged. Commands that change what a build would answer without changing a file it
//! stats (approve, reject, a build that starts) remove the file first.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::build::BuildOptions;
use crate::filehash::StatCache;
use crate::materialize::{BUILD_DIR, MANIFEST};
use crate::plan::{Report, Session, Status};
use crate::project::{self, CACHE_DIR, CONFIG_FILE};
use crate::store::{FileStat, now_ns};

const FILE: &str = "noop";
const FORMAT: u32 = 1;
const NS: i64 = 1_000_000_000;

/// Environment variables whose values can change what a build does or says; those named like a
/// secret are recorded as set or not, never by value.
const ENV_PREFIXES: &[&str] = &["TTV_", "GEMINI_", "GOOGLE_", "GCP_"];
const ENV_NAMES: &[&str] = &["PATH", "HOME"];

/// The first line of `.ttv/noop`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Header {
    format: u32,
    targets: Vec<String>,
    ttv: String,
    env: String,
    yaml: String,
    cached: usize,
    saved_usd: f64,
}

/// A build the fast path answered.
pub struct Noop {
    /// The `--json` report of the build that recorded it (every node cached).
    pub report_json: String,
    pub cached: usize,
    pub saved_usd: f64,
}

fn path_of(root: &Path) -> PathBuf {
    root.join(CACHE_DIR).join(FILE)
}

/// Removes the record: what it vouches for may be about to change.
pub fn forget(root: &Path) {
    let _ = fs::remove_file(path_of(root));
}

/// Whether a build with `opts` may be answered from the record at all.
fn applies(opts: &BuildOptions) -> bool {
    opts.reroll.is_empty() && opts.force.is_empty()
}

fn env_digest() -> String {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            let read =
                ENV_NAMES.contains(&k.as_str()) || ENV_PREFIXES.iter().any(|p| k.starts_with(p));
            let secret = k.contains("KEY") || k.contains("TOKEN");
            read.then(|| {
                let v = if secret {
                    (!v.is_empty()).to_string()
                } else {
                    v.to_string_lossy().into_owned()
                };
                (k, v)
            })
        })
        .collect();
    vars.sort();
    let mut h = blake3::Hasher::new();
    for (k, v) in vars {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\0");
    }
    h.finalize().to_hex().to_string()
}

fn yaml_hash(root: &Path) -> Option<String> {
    let bytes = fs::read(root.join(CONFIG_FILE)).ok()?;
    Some(blake3::hash(&bytes).to_hex().to_string())
}

/// Whether `meta` is the file a row describes, and the row may be trusted (not racy).
fn matches(row: &FileStat, meta: &fs::Metadata) -> bool {
    let mtime = meta.mtime() * NS + meta.mtime_nsec();
    row.size == meta.len() as i64
        && row.mtime_ns == mtime
        && row.inode == meta.ino() as i64
        && mtime / NS < row.checked_at / NS
}

/// The answer of the last no-op build, if nothing it rested on has changed.
pub fn check(root: &Path, opts: &BuildOptions) -> Option<Noop> {
    if !applies(opts) {
        return None;
    }
    let text = fs::read_to_string(path_of(root)).ok()?;
    let mut lines = text.split('\n');
    let header: Header = serde_json::from_str(lines.next()?).ok()?;
    if header.format != FORMAT || header.targets != opts.targets {
        return None;
    }
    if header.ttv != project::ttv_identity()? || header.env != env_digest() {
        return None;
    }
    let report_json = lines.next()?;
    for line in lines.filter(|l| !l.is_empty()) {
        let (row, rel) = parse_row(line)?;
        let meta = fs::metadata(root.join(rel)).ok()?;
        if !matches(&row, &meta) {
            return None;
        }
    }
    // Last, so that an edit that lands while the files are compared is not missed.
    if header.yaml != yaml_hash(root)? {
        return None;
    }
    Some(Noop {
        report_json: report_json.to_string(),
        cached: header.cached,
        saved_usd: header.saved_usd,
    })
}

/// `size mtime_ns inode checked_at path`
fn parse_row(line: &str) -> Option<(FileStat, &str)> {
    let mut parts = line.splitn(5, ' ');
    let mut num = || parts.next()?.parse::<i64>().ok();
    let (size, mtime_ns, inode, checked_at) = (num()?, num()?, num()?, num()?);
    let rel = parts.next()?;
    Some((
        FileStat {
            size,
            mtime_ns,
            inode,
            hash: String::new(),
            checked_at,
        },
        rel,
    ))
}

fn row_of(meta: &fs::Metadata, checked_at: i64) -> FileStat {
    FileStat {
        size: meta.len() as i64,
        mtime_ns: meta.mtime() * NS + meta.mtime_nsec(),
        inode: meta.ino() as i64,
        hash: String::new(),
        checked_at,
    }
}

/// What a build is watched for, from before it loads the project until it is done.
pub struct Watch {
    root: PathBuf,
    started_ns: i64,
    yaml: Option<String>,
    /// The references folder(s) as they were before the project listed them.
    dirs: Vec<(String, FileStat)>,
    /// Input files the build's answer rests on (references, start images), once known.
    inputs: Vec<String>,
    /// The session's stat cache: its rows are what the build vouched for.
    stats: Option<Arc<Mutex<StatCache>>>,
}

impl Watch {
    /// Called before the project is loaded. Forgets the last record: this build may change
    /// what it vouches for, and writes a new one if it turns out to be a no-op.
    pub fn start(root: &Path) -> Watch {
        forget(root);
        let started_ns = now_ns();
        Watch {
            root: root.to_path_buf(),
            started_ns,
            yaml: yaml_hash(root),
            dirs: Vec::new(),
            inputs: Vec::new(),
            stats: None,
        }
    }

    /// Notes the inputs of the session about to build (after its final load).
    pub fn inputs(&mut self, session: &Session) {
        let root = &self.root;
        self.stats = Some(session.stats.clone());
        self.dirs.clear();
        let refs = &session.project.config.keyframes.references;
        if let Ok(meta) = fs::metadata(root.join(refs)) {
            self.dirs
                .push((refs.clone(), row_of(&meta, self.started_ns)));
        }
        self.inputs = session
            .refs
            .iter()
            .map(|r| r.rel_path.to_string_lossy().into_owned())
            .chain(
                session
                    .project
                    .config
                    .shots
                    .iter()
                    .filter_map(|s| s.start_image.clone()),
            )
            .collect();
    }

    /// Records a build that generated nothing, so that the next one can be answered without
    /// work. Called with the build lock held; `clean` says nothing was
    /// warned about. Best effort: a record that cannot be written only means a full no-op.
    pub fn finish(self, opts: &BuildOptions, report: &Report, clean: bool) {
        // Every node from the local cache: one fetched from the remote says so in the report,
        // which the next build (a local hit) would not.
        let nothing_done =
            report.remote == 0 && report.nodes.iter().all(|n| n.status == Status::Cached);
        if !clean || !applies(opts) || report.interrupted || !nothing_done {
            return;
        }
        let _ = self.write(opts, report);
    }

    fn write(self, opts: &BuildOptions, report: &Report) -> Option<()> {
        let root = &self.root;
        // The bytes the build read must still be the ones it started with, and so must the
        // folders it listed.
        let yaml = self.yaml.clone()?;
        if yaml_hash(root)? != yaml {
            return None;
        }
        for (rel, row) in &self.dirs {
            if !matches(row, &fs::metadata(root.join(rel)).ok()?) {
                return None;
            }
        }
        let stats = self
            .stats
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut rows = String::new();
        let mut row = |rel: &str, r: &FileStat| {
            let _ = writeln!(
                rows,
                "{} {} {} {} {rel}",
                r.size, r.mtime_ns, r.inode, r.checked_at
            );
        };
        for (rel, r) in &self.dirs {
            row(rel, r);
        }
        let outputs = report.nodes.iter().filter_map(|n| n.output.as_deref());
        for rel in self.inputs.iter().map(String::as_str).chain(outputs) {
            row(rel, stats.row(rel)?);
        }
        // The manifest has a row only while it lists nothing but this build's outputs; as it is
        // now, then, trusted only if it was last written before this build started.
        let manifest = format!("{BUILD_DIR}/{MANIFEST}");
        let meta = fs::metadata(root.join(&manifest)).ok()?;
        row(&manifest, &row_of(&meta, self.started_ns));
        let header = Header {
            format: FORMAT,
            targets: opts.targets.clone(),
            ttv: project::ttv_identity()?,
            env: env_digest(),
            yaml,
            cached: report.cached,
            saved_usd: report.saved_usd,
        };
        let dir = root.join(CACHE_DIR);
        let mut tmp = tempfile::NamedTempFile::new_in(dir.join("tmp")).ok()?;
        writeln!(tmp, "{}", serde_json::to_string(&header).ok()?).ok()?;
        writeln!(tmp, "{}", serde_json::to_string(report).ok()?).ok()?;
        tmp.write_all(rows.as_bytes()).ok()?;
        tmp.persist(dir.join(FILE)).ok()?;
        Some(())
    }
}

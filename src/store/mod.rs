//! The cache (DESIGN.md §6): content-addressed blobs under `.ttv/objects`, and the SQLite action
//! index (`.ttv/ttv.db`, WAL). A paid result is made durable (blob fsynced and renamed, then the
//! row committed) before anything else happens to it.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{Connection, OptionalExtension, params};

use crate::materialize::{BUILD_DIR, MANIFEST, read_manifest};
use crate::media::Media;
use crate::recipe::TakeKeys;

mod local;
mod lock;
mod operations;
pub mod remote;
mod schema;
pub mod tier;
mod tiers;

use local::LocalBlobs;

pub use lock::{BuildLock, Wait};
pub use remote::{Remote, RemoteMode};
use schema::{migrate, set_wal};
pub use tiers::{Flight, RemoteLookup};

const DB_FILE: &str = "ttv.db";
/// The base key of a result recovered from build/manifest.json, before the node's node id.
const RECOVERED_BASE: &str = "recovered:";
/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    now_ns() / 1_000_000_000
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A finished generation (or derivation) recorded under its cache key.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub key: String,
    pub base_key: String,
    pub node_kind: String,
    pub node_id: String,
    pub blob: String,
    pub media_type: String,
    /// Who made it (`preview`, `veo (vertex)`, ...): with fallbacks, not always the configured one.
    pub backend: String,
    pub model: String,
    pub created_at: i64,
    pub gen_ms: i64,
    pub cost_usd: f64,
    pub take: u32,
    /// Size of the blob in bytes.
    pub size: u64,
    /// JSON: `model_version`, `response_id` and `params` as the service reported and ttv sent.
    pub provenance: Option<String>,
}

/// What a node needs of a cached result. The plan's lookups read only these columns, from the
/// covering index: the rest of an [`Action`] (who asked, when, how long it took) is for `ttv
/// takes` and `ttv gc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub key: String,
    pub take: u32,
    pub blob: String,
    /// Size of the blob in bytes.
    pub size: u64,
    pub backend: String,
    pub cost_usd: f64,
    /// Found in the remote cache by this build (downloaded, then recorded locally).
    pub from_remote: bool,
}

impl From<&Action> for Hit {
    fn from(a: &Action) -> Hit {
        Hit {
            key: a.key.clone(),
            take: a.take,
            blob: a.blob.clone(),
            size: a.size,
            backend: a.backend.clone(),
            cost_usd: a.cost_usd,
            from_remote: false,
        }
    }
}

/// The columns [`hit_from_row`] reads, in its order.
const HIT_SELECT: &str = "SELECT key, take, blob, size, backend, cost_usd FROM actions";

fn hit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Hit> {
    Ok(Hit {
        key: r.get(0)?,
        take: r.get(1)?,
        blob: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        backend: r.get(4)?,
        cost_usd: r.get(5)?,
        from_remote: false,
    })
}

/// The columns [`action_from_row`] reads, in its order. The blob's size is kept in the row (not
/// joined from `blobs`): a lookup is one index probe on one table, no join, no sort. The recipe
/// (a kilobyte or more per row) is read only when asked for, by [`Store::recipe_json`].
const ACTION_SELECT: &str = "SELECT key, base_key, node_kind, node_id, blob,
    media_type, backend, model, created_at, gen_ms, cost_usd, take, size, provenance FROM actions";

/// A stat-cache row: the hash of a file as it was when last read.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStat {
    pub size: i64,
    pub mtime_ns: i64,
    pub inode: i64,
    pub hash: String,
    pub checked_at: i64,
}

/// What a person decided about a frame (`ttv approve`, `ttv reject`, the review page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    Rejected,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
        }
    }
}

/// Totals of one build, kept for history.
#[derive(Debug, Clone, Default)]
pub struct BuildRecord {
    pub started_at: i64,
    pub generated: usize,
    pub cached: usize,
    pub failed: usize,
    pub cost_usd: f64,
    pub saved_usd: f64,
}

/// The mode of every blob: no write bits (a blob's bytes are its name), readable by whom the
/// umask lets read. The files in build/ are hard links to blobs, so this is their mode too:
/// 0444 under the usual umask 022, so other users can play final.mp4, and never writable,
/// since writing through a link would change the cached blob.
pub fn blob_mode() -> u32 {
    0o444 & !umask()
}

/// The mode of a plain file the user's programs would make: what a copy in build/ gets.
pub fn file_mode() -> u32 {
    0o666 & !umask()
}

fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        // POSIX reads the umask only by setting it. Meanwhile it is 077: a file another thread
        // creates in that instant is made tighter, never looser.
        // SAFETY: umask(2) cannot fail and touches no memory.
        let old = unsafe { libc::umask(0o077) };
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        #[allow(clippy::useless_conversion, reason = "mode_t is u16 on macOS")]
        u32::from(old)
    })
}

/// Whether an I/O error means the disk (or the quota, or the file-size limit) is full.
fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}

/// The error for a full disk while writing `what`: what happened and what to do.
pub fn out_of_space(what: &dyn Display, cause: &dyn Display) -> anyhow::Error {
    anyhow!(
        "no space left on device while writing {what} ({cause}): free space and build again; nothing partial was stored"
    )
}

/// An error writing `path`, said plainly when the disk is full.
pub fn write_error(e: io::Error, path: &Path) -> anyhow::Error {
    if is_out_of_space(&e) {
        out_of_space(&path.display(), &e)
    } else {
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    }
}

/// blake3 of a file's bytes, streamed.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// The action index and the rest of the SQLite state.
pub struct Store {
    pub dir: PathBuf,
    blobs: LocalBlobs,
    db: Mutex<Connection>,
    /// The remote tier, when ttv.yaml or `TTV_REMOTE_CACHE` names one.
    remote: OnceLock<Arc<Remote>>,
    /// Uploads to the remote still running (write-behind), awaited by [`Store::flush_remote`].
    uploads: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating if needed) the cache in `dir` (the project's `.ttv`). A damaged database
    /// is moved aside and rebuilt, with a warning (see [`Store::rebuild`]).
    pub fn open(dir: &Path) -> Result<Store> {
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        for d in [dir, &objects, &tmp] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let db_path = dir.join(DB_FILE);
        let damage = match damage_on_disk(dir, &db_path) {
            Some(why) => why,
            None => match connect(&db_path) {
                Ok(conn) => return Ok(Store::with(dir, conn)),
                Err(e) => damage_in(&e).ok_or(e)?,
            },
        };
        // Moving the database aside from under a running build would lose what that build
        // records next: it is rebuilt only while no other ttv holds the project.
        let Some(_lock) = BuildLock::try_acquire(dir)? else {
            bail!(
                "the cache database {} is damaged ({damage}), and another ttv command is using this project (it holds {}): run this again when it ends, and the database will be moved aside and rebuilt",
                db_path.display(),
                dir.join("lock").display()
            );
        };
        // Another ttv may have rebuilt it meanwhile.
        if damage_on_disk(dir, &db_path).is_none()
            && let Ok(conn) = connect(&db_path)
        {
            return Ok(Store::with(dir, conn));
        }
        Store::rebuild(dir, &damage)
    }

    fn with(dir: &Path, conn: Connection) -> Store {
        // The umask is read here, before the build's threads start (see `umask`).
        umask();
        Store {
            dir: dir.to_path_buf(),
            blobs: LocalBlobs {
                objects: dir.join("objects"),
                tmp: dir.join("tmp"),
            },
            db: Mutex::new(conn),
            remote: OnceLock::new(),
            uploads: Mutex::default(),
        }
    }

    /// Where a blob of the local tier is (the file build/ links to). The remote tier fills the
    /// local one, so every blob in use is here.
    pub fn blob_path(&self, hash: &str) -> PathBuf {
        self.blobs.path_of(hash)
    }

    /// Where temp files of results being made go (same file system as the blobs).
    pub fn tmp_dir(&self) -> &Path {
        self.blobs.tmp_dir()
    }

    /// Stores a finished temp file (see [`BlobStore::put_file`]).
    pub fn put_file(&self, tmp: tempfile::TempPath, media: Media) -> Result<(String, u64)> {
        self.blobs.put_file(tmp, media)
    }

    pub fn put_bytes(&self, bytes: &[u8], media: Media) -> Result<(String, u64)> {
        self.blobs.put_bytes(bytes, media)
    }

    /// Whether a blob is present with its size (a cheap check).
    pub fn has_blob(&self, hash: &str, size: u64) -> bool {
        self.blobs.get(hash, size).is_some()
    }

    /// Re-hashes a blob: true when its bytes match its name.
    pub fn verify_blob(&self, hash: &str) -> Result<bool> {
        self.blobs.verify(hash)
    }

    /// Removes temp files that builds which ended abruptly left behind.
    pub fn sweep_tmp(&self) {
        self.blobs.sweep_tmp()
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    /// Opens the cache if the project has one (read-only commands must not create it). Blobs
    /// without a database are a cache whose database was lost: it is rebuilt.
    pub fn open_existing(dir: &Path) -> Result<Option<Store>> {
        if dir.join(DB_FILE).exists() || has_blobs(dir) {
            Store::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Moves a damaged database aside (`ttv.db.damaged-TIME`, with its WAL) and makes a new one
    /// from what can be trusted, each result checked against its blob (blobs are named by their
    /// bytes): the rows still readable in the damaged file ([`Store::salvage`]), then the
    /// results build/manifest.json lists. Those cost nothing at the next build; other blobs
    /// stay on disk, unindexed. `why` says what was found, for the warning. The caller holds
    /// the build lock.
    pub fn rebuild(dir: &Path, why: &str) -> Result<Store> {
        let db_path = dir.join(DB_FILE);
        let aside = dir.join(format!("{DB_FILE}.damaged-{}", now_secs()));
        let moved = match fs::rename(&db_path, &aside) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "the cache database {} is damaged ({why}) and cannot be moved aside",
                        db_path.display()
                    )
                });
            }
        };
        let wal = |db: &Path, suffix: &str| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        if moved {
            let _ = fs::rename(wal(&db_path, "-wal"), wal(&aside, "-wal"));
        } else {
            let _ = fs::remove_file(wal(&db_path, "-wal"));
        }
        let _ = fs::remove_file(wal(&db_path, "-shm"));
        let conn = connect(&db_path)?;
        let store = Store::with(dir, conn);
        let mut checked: HashMap<String, bool> = HashMap::new();
        let mut intact = |hash: &str| {
            *checked
                .entry(hash.to_string())
                .or_insert_with(|| store.blobs.verify(hash).unwrap_or(false))
        };
        let salvaged = if moved {
            store.salvage(&aside, &mut intact)
        } else {
            0
        };
        let root = dir.parent().unwrap_or(Path::new("."));
        let from_manifest = store.recover_from_manifest(root, &mut intact)?;
        let was = if moved {
            format!("moved it to {}", aside.display())
        } else {
            "there was nothing to move aside".into()
        };
        let manifest = format!("{BUILD_DIR}/{MANIFEST}");
        let from_manifest = from_manifest.unwrap_or(0);
        let rebuilt = match (salvaged, from_manifest) {
            (0, 0) => format!(
                "nothing could be recovered from it or {manifest}: the next build makes everything again"
            ),
            (n, 0) => format!("rebuilt it with the {n} result(s) still readable in it"),
            (0, m) => format!("rebuilt it with {m} result(s) from {manifest}"),
            (n, m) => format!(
                "rebuilt it with the {n} result(s) still readable in it and {m} from {manifest}"
            ),
        };
        let kept = if salvaged + from_manifest > 0 {
            " (each checked against its blob: they cost nothing at the next build)"
        } else {
            ""
        };
        crate::progress::say(&format!(
            "ttv: warning: the cache database {} was damaged ({why}); {was}; {rebuilt}{kept}; other blobs stay in {}, unindexed",
            db_path.display(),
            store.blobs.objects.display()
        ));
        Ok(store)
    }

    /// Reads back what can still be read of the damaged database at `aside` and can be checked:
    /// the actions whose keys are the hashes of their recipe (so the recipe is theirs) and whose
    /// blob is `intact`, with their takes and provenance; the node keys of the last build; the
    /// video operations in flight, so that none is paid for twice. A table is read until its
    /// first damaged page. Returns how many actions came back.
    fn salvage(&self, aside: &Path, intact: &mut impl FnMut(&str) -> bool) -> usize {
        let Ok(old) = Connection::open(aside) else {
            return 0;
        };
        let mut actions = Vec::new();
        let select = ACTION_SELECT.replace(" FROM actions", ", recipe_json FROM actions");
        if let Ok(mut st) = old.prepare(&select)
            && let Ok(rows) =
                st.query_map([], |r| Ok((action_from_row(r)?, r.get::<_, String>(14)?)))
        {
            actions.extend(
                rows.map_while(Result::ok)
                    .filter(|(a, recipe)| keys_match(a, recipe) && intact(&a.blob)),
            );
        }
        let saved: Vec<&str> = actions
            .iter()
            .filter(|(a, recipe)| self.record_action(a, recipe).is_ok())
            .map(|(a, _)| a.key.as_str())
            .collect();
        let nodes: Vec<(String, String)> = read_rows(&old, "SELECT node_id, key FROM nodes")
            .into_iter()
            .filter(|(_, key): &(String, String)| saved.contains(&key.as_str()))
            .collect();
        let _ = self.set_node_keys(&nodes);
        let operations: Vec<(String, String, String, i64, String, Option<String>)> = read_rows(
            &old,
            "SELECT key, backend, operation_name, submitted_at, state, detail FROM operations",
        );
        for op in operations {
            let _ = self.conn().execute(
                "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at,
                    state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![op.0, op.1, op.2, op.3, op.4, op.5],
            );
        }
        saved.len()
    }

    /// Indexes again the results build/manifest.json lists that the database lacks and whose
    /// blobs are `intact`. Their recipes were only in the lost database: each is filed under
    /// its node (see [`Store::recovered_take`]) with an empty recipe, so `explain` says it
    /// cannot compare. The manifest's node keys become the last build's. Returns how many
    /// results were added (None: no manifest).
    fn recover_from_manifest(
        &self,
        root: &Path,
        intact: &mut impl FnMut(&str) -> bool,
    ) -> Result<Option<usize>> {
        let Some(entries) = read_manifest(root) else {
            return Ok(None);
        };
        let mut added = 0;
        let mut nodes = Vec::new();
        for e in &entries {
            if self.hit(&e.key)?.is_some() {
                nodes.push((e.node.clone(), e.key.clone()));
                continue;
            }
            let path = self.blobs.path_of(&e.blob);
            if e.blob.len() != 64 || !intact(&e.blob) {
                continue;
            }
            let (Ok(Some(media)), Ok(meta)) = (Media::sniff(&path), fs::metadata(&path)) else {
                continue;
            };
            self.record_action(
                &Action {
                    key: e.key.clone(),
                    base_key: format!("{RECOVERED_BASE}{}", e.node),
                    node_kind: e.node.split('/').next().unwrap_or_default().into(),
                    node_id: e.node.clone(),
                    blob: e.blob.clone(),
                    media_type: media.mime().into(),
                    backend: e.backend.clone(),
                    model: String::new(),
                    created_at: now_secs(),
                    gen_ms: 0,
                    cost_usd: e.cost_usd,
                    take: e.take,
                    size: meta.len(),
                    provenance: None,
                },
                "{}",
            )?;
            added += 1;
            nodes.push((e.node.clone(), e.key.clone()));
        }
        self.set_node_keys(&nodes)?;
        Ok(Some(added))
    }

    /// What SQLite's integrity check finds wrong with the database (nothing: it is sound).
    pub fn integrity_problems(&self) -> Vec<String> {
        let conn = self.conn();
        let rows = conn.prepare("PRAGMA integrity_check").and_then(|mut st| {
            st.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        });
        match rows {
            Ok(rows) if rows == ["ok"] => Vec::new(),
            Ok(rows) => rows,
            Err(e) => vec![e.to_string()],
        }
    }

    /// Opens a read transaction that lasts until the guard is dropped: the lookups in between
    /// see one snapshot and take no lock each. Only for single-threaded walks (the plan).
    pub fn read_snapshot(&self) -> Result<ReadSnapshot<'_>> {
        self.conn().execute_batch("BEGIN DEFERRED")?;
        Ok(ReadSnapshot { store: self })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn action(&self, key: &str) -> Result<Option<Action>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!("{ACTION_SELECT} WHERE key = ?1"))?;
        Ok(st.query_row([key], action_from_row).optional()?)
    }

    /// The canonical recipe JSON recorded with a key.
    pub fn recipe_json(&self, key: &str) -> Result<Option<String>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached("SELECT recipe_json FROM actions WHERE key = ?1")?;
        Ok(st.query_row([key], |r| r.get(0)).optional()?)
    }

    /// Every take recorded for a base key, oldest first.
    pub fn takes(&self, base_key: &str) -> Result<Vec<Action>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "{ACTION_SELECT} WHERE base_key = ?1 ORDER BY take"
        ))?;
        let rows = st.query_map([base_key], action_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every action ever recorded for a node id, oldest first (all recipes, all takes).
    pub fn actions_of_node(&self, node_id: &str) -> Result<Vec<Action>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "{ACTION_SELECT} WHERE node_id = ?1 ORDER BY created_at, take"
        ))?;
        let rows = st.query_map([node_id], action_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The highest take recorded for a base key. (Picked here rather than with ORDER BY: with
    /// SQLite's STAT4 a sorted query is re-prepared at every call.)
    pub fn latest_take(&self, base_key: &str) -> Result<Option<Hit>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!("{HIT_SELECT} WHERE base_key = ?1"))?;
        let rows = st.query_map([base_key], hit_from_row)?;
        let mut latest: Option<Hit> = None;
        for h in rows {
            let h = h?;
            if latest.as_ref().is_none_or(|l| h.take > l.take) {
                latest = Some(h);
            }
        }
        Ok(latest)
    }

    /// The cached result recorded under a key.
    pub fn hit(&self, key: &str) -> Result<Option<Hit>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!("{HIT_SELECT} WHERE key = ?1"))?;
        Ok(st.query_row([key], hit_from_row).optional()?)
    }

    /// A result recovered from build/manifest.json for this node, whose base key was lost with
    /// the database (see [`Store::recover_from_manifest`]), that is a take of the recipe whose
    /// keys `key_at` gives. The plan asks when the recipe has no take of its own.
    pub fn recovered_take(
        &self,
        node_id: &str,
        key_at: impl Fn(u32) -> String,
    ) -> Result<Option<Hit>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!("{HIT_SELECT} WHERE base_key = ?1"))?;
        let rows = st.query_map([format!("{RECOVERED_BASE}{node_id}")], hit_from_row)?;
        for h in rows {
            let h = h?;
            if key_at(h.take) == h.key {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// Records a result whose blob is already in place (so a crash between the two leaves at
    /// worst an unreferenced blob, never a row without its bytes).
    pub fn record_action(&self, a: &Action, recipe_json: &str) -> Result<()> {
        self.record_actions(&[(a, recipe_json)])
    }

    /// Records the results of one request (the takes of one Veo operation) in one
    /// transaction: a crash keeps all of them or none.
    pub fn record_actions(&self, actions: &[(&Action, &str)]) -> Result<()> {
        self.insert_actions(actions).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                out_of_space(&self.db_path().display(), &f)
            }
            e => e.into(),
        })
    }

    fn insert_actions(&self, actions: &[(&Action, &str)]) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (a, recipe_json) in actions {
            Self::insert_action(&tx, a, recipe_json)?;
        }
        tx.commit()
    }

    fn insert_action(tx: &Connection, a: &Action, recipe_json: &str) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR IGNORE INTO blobs(hash, size, media_type, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![a.blob, a.size as i64, a.media_type, a.created_at],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO actions(key, base_key, node_kind, node_id, recipe_json, blob,
                media_type, backend, model, created_at, gen_ms, cost_usd, take, size, provenance)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                a.key,
                a.base_key,
                a.node_kind,
                a.node_id,
                recipe_json,
                a.blob,
                a.media_type,
                a.backend,
                a.model,
                a.created_at,
                a.gen_ms,
                a.cost_usd,
                a.take,
                a.size as i64,
                a.provenance
            ],
        )?;
        Ok(())
    }

    /// The key each node had at its last build: what `explain` compares against.
    pub fn node_keys(&self) -> Result<HashMap<String, String>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached("SELECT node_id, key FROM nodes")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_node_keys(&self, entries: &[(String, String)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO nodes(node_id, key, built_at) VALUES (?1, ?2, ?3)",
            )?;
            let now = now_secs();
            for (id, key) in entries {
                st.execute(params![id, key, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn file_stats(&self) -> Result<HashMap<String, FileStat>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT path, size, mtime_ns, inode, hash, checked_at FROM file_hashes",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get(0)?,
                FileStat {
                    size: r.get(1)?,
                    mtime_ns: r.get(2)?,
                    inode: r.get(3)?,
                    hash: r.get(4)?,
                    checked_at: r.get(5)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn put_file_stats(&self, entries: &[(String, FileStat)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO file_hashes(path, size, mtime_ns, inode, hash, checked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (p, s) in entries {
                st.execute(params![
                    p,
                    s.size,
                    s.mtime_ns,
                    s.inode,
                    s.hash,
                    s.checked_at
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a verdict (`approved` / `rejected`) on the frame `node_id` made as `blob`.
    pub fn set_verdict(&self, blob: &str, node_id: &str, verdict: Verdict) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO approvals(blob, node_id, verdict, decided_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![blob, node_id, verdict.as_str(), now_secs()],
        )?;
        Ok(())
    }

    /// Every verdict, by blob.
    pub fn verdicts(&self) -> Result<HashMap<String, Verdict>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached("SELECT blob, verdict FROM approvals")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = HashMap::new();
        for row in rows {
            let (blob, verdict) = row?;
            out.insert(
                blob,
                if verdict == "approved" {
                    Verdict::Approved
                } else {
                    Verdict::Rejected
                },
            );
        }
        Ok(out)
    }

    pub fn record_build(&self, b: &BuildRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO builds(started_at, finished_at, generated, cached, failed, cost_usd, saved_usd)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                b.started_at,
                now_secs(),
                b.generated as i64,
                b.cached as i64,
                b.failed as i64,
                b.cost_usd,
                b.saved_usd
            ],
        )?;
        Ok(())
    }

    /// Number of paid generations recorded, and what they cost.
    pub fn paid_generations(&self) -> Result<(usize, f64)> {
        let conn = self.conn();
        let (n, cost): (i64, f64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM actions WHERE node_kind IN ('frame', 'segment', 'reference')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n as usize, cost))
    }

    /// What reusing cached work has saved, summed over every recorded build.
    pub fn saved_by_builds(&self) -> Result<f64> {
        let conn = self.conn();
        Ok(
            conn.query_row("SELECT COALESCE(SUM(saved_usd), 0) FROM builds", [], |r| {
                r.get(0)
            })?,
        )
    }

    /// Every action, for gc and verify.
    pub fn all_actions(&self) -> Result<Vec<Action>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(ACTION_SELECT)?;
        let rows = st.query_map([], action_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn all_blobs(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached("SELECT hash, size FROM blobs")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a blob that is gone for good (its actions stay, as history: a lookup of one
    /// finds no blob and makes it again).
    pub fn forget_blob(&self, hash: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM blobs WHERE hash = ?1", [hash])?;
        Ok(())
    }

    /// Forgets the stat-cache rows of these files: the next build reads them again.
    pub fn forget_file_stats(&self, paths: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for p in paths {
            tx.execute("DELETE FROM file_hashes WHERE path = ?1", [p])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the given actions, and the blobs no remaining action references.
    pub fn delete_actions(&self, keys: &[String]) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for k in keys {
            tx.execute("DELETE FROM actions WHERE key = ?1", [k])?;
        }
        let orphans: Vec<String> = {
            let mut st =
                tx.prepare("SELECT hash FROM blobs WHERE hash NOT IN (SELECT blob FROM actions)")?;
            st.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for h in &orphans {
            tx.execute("DELETE FROM blobs WHERE hash = ?1", [h])?;
        }
        tx.commit()?;
        Ok(orphans)
    }
}

/// Opens the database file and brings its schema up to date.
fn connect(db_path: &Path) -> Result<Connection> {
    let conn = Connection::open(db_path)
        .with_context(|| format!("opening the cache database {}", db_path.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    set_wal(&conn)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Pages are read from the page cache of the OS, not copied into SQLite's own (a no-op
    // build reads most of the index once per run).
    conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
    migrate(&conn).with_context(|| format!("in {}", db_path.display()))?;
    Ok(conn)
}

/// What to do about an error that reached the top, when the cache database caused it: a
/// damaged one is repaired by `ttv verify`; a full disk needs room. `db` names the database.
pub fn advice(e: &anyhow::Error, db: impl FnOnce() -> PathBuf) -> Option<String> {
    if damage_in(e).is_some() {
        return Some(format!(
            "the cache database {} is damaged: run `ttv verify`, which moves it aside and rebuilds it from the blobs and build/manifest.json",
            db().display()
        ));
    }
    let full = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull
        )
    });
    full.then(|| {
        format!(
            "no space left on device for the cache database {}: free space and build again (its transactions are whole: nothing partial was stored)",
            db().display()
        )
    })
}

/// SQLite's words for the damage an error reports, if it reports one.
fn damage_in(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<rusqlite::Error>() {
            Some(rusqlite::Error::SqliteFailure(f, msg))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                ) =>
            {
                Some(msg.clone().unwrap_or_else(|| f.to_string()))
            }
            _ => None,
        })
}

/// Whether `.ttv/objects` holds anything.
fn has_blobs(dir: &Path) -> bool {
    fs::read_dir(dir.join("objects")).is_ok_and(|mut d| d.next().is_some())
}

/// Damage that a look at the database file's size and 100-byte header shows, before SQLite
/// reads it (a cut-short file opens fine and fails later, at whichever query reaches past its
/// end). Not a full check: `ttv verify` runs SQLite's.
fn damage_on_disk(dir: &Path, db: &Path) -> Option<String> {
    let meta = fs::metadata(db).ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    if len == 0 {
        // SQLite would take an empty file for a new database, and everything would be paid
        // for again.
        let state = if meta.is_some() { "empty" } else { "missing" };
        return has_blobs(dir).then(|| format!("it is {state}, while .ttv/objects holds results"));
    }
    // After a crash in a checkpoint the file can be shorter than its header says until SQLite
    // finishes the checkpoint from the WAL: with a WAL, SQLite is the judge.
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    if fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return None;
    }
    let mut head = [0u8; 100];
    if File::open(db)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_err()
    {
        return Some(format!("it is cut short ({len} bytes)"));
    }
    if !head.starts_with(b"SQLite format 3\0") {
        return Some("it is not an SQLite database".into());
    }
    let be32 = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("four bytes"));
    let page_size = match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    // The page count in the header is valid when the change counter matches its copy.
    let expected = u64::from(be32(28)) * page_size;
    (be32(24) == be32(92) && expected > len)
        .then(|| format!("it is cut short ({len} of {expected} bytes)"))
}

/// Whether an action read back from a damaged database is what it says: its key is the hash of
/// its recipe at its take, and its base key that of the same recipe at take 0.
fn keys_match(a: &Action, recipe: &str) -> bool {
    let Some(prefix) = recipe.strip_suffix(&format!("{}}}", a.take)) else {
        return false;
    };
    if !prefix.ends_with("\"take\":") {
        return false;
    }
    let keys = TakeKeys::new(&format!("{prefix}0}}"));
    keys.at(0) == a.base_key && keys.at(a.take) == a.key
}

/// The rows of a query on a damaged database, up to the first that cannot be read.
fn read_rows<T>(conn: &Connection, sql: &str) -> Vec<T>
where
    T: for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error>,
{
    let Ok(mut st) = conn.prepare(sql) else {
        return Vec::new();
    };
    let Ok(rows) = st.query_map([], |r| T::try_from(r)) else {
        return Vec::new();
    };
    rows.map_while(Result::ok).collect()
}

pub struct ReadSnapshot<'a> {
    store: &'a Store,
}

impl Drop for ReadSnapshot<'_> {
    fn drop(&mut self) {
        let _ = self.store.conn().execute_batch("COMMIT");
    }
}

fn action_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Action> {
    Ok(Action {
        key: r.get(0)?,
        base_key: r.get(1)?,
        node_kind: r.get(2)?,
        node_id: r.get(3)?,
        blob: r.get(4)?,
        media_type: r.get(5)?,
        backend: r.get(6)?,
        model: r.get(7)?,
        created_at: r.get(8)?,
        gen_ms: r.get(9)?,
        cost_usd: r.get(10)?,
        take: r.get(11)?,
        size: r.get::<_, i64>(12)? as u64,
        provenance: r.get(13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::schema::{SCHEMA, SCHEMA_VERSION};
    use super::*;
    use std::io::Write;

    /// Two `ttv build`s started together both open a cache that does not exist yet; the
    /// build lock comes later, so the schema must be made once without either failing.
    #[test]
    fn many_openers_of_a_fresh_cache_make_the_schema_once() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let cache = dir.path().join(".ttv");
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Store::open(&cache).map(|_| ())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap().unwrap();
                }
            });
            let store = Store::open(&cache).unwrap();
            let rows: i64 = store
                .conn()
                .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(rows, 1);
        }
    }

    fn tiny_png() -> Vec<u8> {
        let mut out = io::Cursor::new(Vec::new());
        image::RgbImage::new(2, 2)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// Issue 7: ffmpeg exited 0 after "Error writing trailer ... No space left on device", and
    /// its cut-short MP4 (an `ftyp`, media data, no `moov` index) was stored as a result.
    #[test]
    fn a_cut_short_result_is_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(".ttv")).unwrap();
        let mut cut = tempfile::NamedTempFile::new_in(store.blobs.tmp_dir()).unwrap();
        cut.write_all(
            b"\0\0\0\x10ftypisom\0\0\x02\0\0\0\0\x10mdat\x01\x02\x03\x04\x05\x06\x07\x08",
        )
        .unwrap();
        let err = store
            .blobs
            .put_file(cut.into_temp_path(), Media::Mp4)
            .unwrap_err();
        assert!(err.to_string().contains("no `moov` box"), "{err}");
        assert!(err.to_string().ends_with("nothing was stored"), "{err}");
        let png = tiny_png();
        let err = store
            .blobs
            .put_bytes(&png[..png.len() - 4], Media::Png)
            .unwrap_err();
        assert!(err.to_string().contains("IEND"), "{err}");
        for d in [&store.blobs.objects, &store.blobs.tmp] {
            assert_eq!(
                fs::read_dir(d).unwrap().count(),
                0,
                "{} is empty",
                d.display()
            );
        }
        assert!(store.all_blobs().unwrap().is_empty());

        let full = write_error(
            io::Error::from(io::ErrorKind::StorageFull),
            Path::new(".ttv/tmp/x"),
        );
        assert!(
            full.to_string()
                .starts_with("no space left on device while writing .ttv/tmp/x"),
            "{full}"
        );
    }

    /// A damaged database is not moved aside while another ttv holds the project (a running
    /// build would go on recording into the file moved aside); once it is free, it is.
    #[test]
    fn a_damaged_database_waits_for_the_project_to_be_free_before_it_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(".ttv");
        let png = tiny_png();
        Store::open(&cache)
            .unwrap()
            .blobs
            .put_bytes(&png, Media::Png)
            .unwrap();
        fs::write(cache.join(DB_FILE), "").unwrap();

        let running = BuildLock::acquire(&cache, Wait::Never, || {}).unwrap();
        let err = Store::open(&cache)
            .err()
            .expect("refused while the project is held");
        assert!(
            err.to_string()
                .contains("another ttv command is using this project"),
            "{err}"
        );
        assert_eq!(fs::metadata(cache.join(DB_FILE)).unwrap().len(), 0);
        drop(running);
        Store::open(&cache).unwrap();
        let aside = fs::read_dir(&cache)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("ttv.db.damaged-")
            })
            .count();
        assert_eq!(aside, 1);
    }

    /// A cache made by the first release (schema 1) is upgraded in place: its results are
    /// kept, and the plan's lookup reads the covering index only.
    #[test]
    fn a_version_1_cache_is_upgraded_and_keeps_its_results() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(".ttv");
        fs::create_dir_all(&cache).unwrap();
        {
            let conn = Connection::open(cache.join("ttv.db")).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "INSERT INTO schema_version VALUES ('ttv cache', 1);
                 INSERT INTO actions VALUES ('k2', 'b', 'frame', 'frame/a/end', '{}', 'blob2',
                     'image/png', 'preview', 'preview-1', 0, 5, 0.0, 2, 10);
                 INSERT INTO actions VALUES ('k1', 'b', 'frame', 'frame/a/end', '{}', 'blob1',
                     'image/png', 'preview', 'preview-1', 0, 5, 0.0, 1, 10);",
            )
            .unwrap();
        }
        let store = Store::open(&cache).unwrap();
        let conn = store.conn();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let plan: String = conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN {HIT_SELECT} WHERE base_key = 'b'"),
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("COVERING INDEX actions_cover"), "{plan}");
        drop(conn);
        let latest = store.latest_take("b").unwrap().unwrap();
        assert_eq!((latest.key.as_str(), latest.take), ("k2", 2));
        assert_eq!(store.recipe_json("k1").unwrap().as_deref(), Some("{}"));
    }
}

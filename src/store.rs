//! The cache (DESIGN.md §6): content-addressed blobs under `.ttv/objects`, and the SQLite action
//! index (`.ttv/ttv.db`, WAL). A paid result is made durable (blob fsynced and renamed, then the
//! row committed) before anything else happens to it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};

use crate::backends::{OperationLog, Pending};

/// The schema a cache is at: version 1 ([`SCHEMA`]) plus every step of [`MIGRATIONS`].
const SCHEMA_VERSION: i64 = 1 + MIGRATIONS.len() as i64;
const SIGNATURE: &str = "ttv cache";

const SCHEMA: &str = "
CREATE TABLE schema_version(signature TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE blobs(
    hash TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE actions(
    key TEXT PRIMARY KEY, base_key TEXT NOT NULL, node_kind TEXT NOT NULL, node_id TEXT NOT NULL,
    recipe_json TEXT NOT NULL, blob TEXT NOT NULL, media_type TEXT NOT NULL, backend TEXT NOT NULL,
    model TEXT NOT NULL, created_at INTEGER NOT NULL, gen_ms INTEGER NOT NULL,
    cost_usd REAL NOT NULL, take INTEGER NOT NULL, size INTEGER NOT NULL);
CREATE INDEX actions_by_base ON actions(base_key, take);
CREATE TABLE nodes(node_id TEXT PRIMARY KEY, key TEXT NOT NULL, built_at INTEGER NOT NULL);
CREATE TABLE file_hashes(
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    hash TEXT NOT NULL, checked_at INTEGER NOT NULL);
CREATE TABLE operations(
    key TEXT PRIMARY KEY, backend TEXT NOT NULL, operation_name TEXT NOT NULL,
    submitted_at INTEGER NOT NULL);
CREATE TABLE builds(
    id INTEGER PRIMARY KEY, started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL,
    generated INTEGER NOT NULL, cached INTEGER NOT NULL, failed INTEGER NOT NULL,
    cost_usd REAL NOT NULL, saved_usd REAL NOT NULL);
";

/// The schema changes after version 1, in order: `MIGRATIONS[i]` takes a cache from version
/// `i + 1` to `i + 2`. A new cache is made at version 1 and brought up by the same steps, so an
/// upgraded cache and a new one are the same.
const MIGRATIONS: &[&str] = &[
    // 2: the plan's lookup by base key ([`HIT_SELECT`]) is answered from this index alone; the
    // row, with its kilobyte of recipe JSON, is not read (a tenth of a no-op build's time on
    // 200 shots).
    "CREATE INDEX actions_cover ON actions(base_key, take, key, blob, size, backend, cost_usd);
     DROP INDEX actions_by_base;",
    // 3: provenance of each generation (what the service reported, what was sent), and
    // submissions recorded before they are sent: `intent` (sending), `uncertain` (sent, no
    // answer read), `submitted` (the operation is named).
    "ALTER TABLE actions ADD COLUMN provenance TEXT;
     ALTER TABLE operations ADD COLUMN state TEXT NOT NULL DEFAULT 'submitted';
     ALTER TABLE operations ADD COLUMN detail TEXT;",
    // 4: approvals of frames, by the blob approved (a new take needs a new approval).
    "CREATE TABLE approvals(
         blob TEXT PRIMARY KEY, node_id TEXT NOT NULL, verdict TEXT NOT NULL,
         decided_at INTEGER NOT NULL);",
];

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

/// Content-addressed blobs by blake3 hash. The local folder today; a remote tier (S3/GCS)
/// later sits behind the same calls.
pub trait BlobStore: Send + Sync {
    /// Moves a finished temp file in: hashes it, fsyncs, renames. Returns the hash and size.
    fn put_file(&self, tmp: tempfile::TempPath) -> Result<(String, u64)>;
    fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64)>;
    /// The blob's path, if it is present with the expected size (a cheap check).
    fn get(&self, hash: &str, size: u64) -> Option<PathBuf>;
    /// Re-hashes a blob: true when its bytes match its name.
    fn verify(&self, hash: &str) -> Result<bool>;
}

/// The local blob folder, `.ttv/objects/ab/cdef...`.
pub struct LocalBlobs {
    objects: PathBuf,
    tmp: PathBuf,
}

impl LocalBlobs {
    pub fn path_of(&self, hash: &str) -> PathBuf {
        self.objects.join(&hash[..2]).join(&hash[2..])
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    fn install(&self, tmp: tempfile::TempPath, hash: &str) -> Result<()> {
        let dest = self.path_of(hash);
        if dest.exists() {
            // Same name, same bytes: the temp copy is simply dropped (and deleted).
            return Ok(());
        }
        let dir = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut perms = fs::metadata(&tmp)?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(&tmp, perms)?;
        tmp.persist(&dest)
            .with_context(|| format!("moving a new blob to {}", dest.display()))?;
        File::open(dir).and_then(|d| d.sync_all()).ok();
        Ok(())
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

impl BlobStore for LocalBlobs {
    fn put_file(&self, tmp: tempfile::TempPath) -> Result<(String, u64)> {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        let (hash, size) = hash_file(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
        self.install(tmp, &hash)?;
        Ok((hash, size))
    }

    fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if self.get(&hash, bytes.len() as u64).is_some() {
            return Ok((hash, bytes.len() as u64));
        }
        let mut f = tempfile::NamedTempFile::new_in(&self.tmp)
            .with_context(|| format!("creating a temp file in {}", self.tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.as_file().sync_all())
            .with_context(|| format!("writing a new blob to {}", self.tmp.display()))?;
        self.install(f.into_temp_path(), &hash)?;
        Ok((hash, bytes.len() as u64))
    }

    fn get(&self, hash: &str, size: u64) -> Option<PathBuf> {
        let p = self.path_of(hash);
        match fs::metadata(&p) {
            Ok(m) if m.len() == size => Some(p),
            _ => None,
        }
    }

    fn verify(&self, hash: &str) -> Result<bool> {
        match hash_file(&self.path_of(hash)) {
            Ok((h, _)) => Ok(h == hash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).context("reading a blob"),
        }
    }
}

/// The action index and the rest of the SQLite state.
pub struct Store {
    pub dir: PathBuf,
    pub blobs: LocalBlobs,
    db: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the cache in `dir` (the project's `.ttv`).
    pub fn open(dir: &Path) -> Result<Store> {
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        for d in [dir, &objects, &tmp] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let db_path = dir.join("ttv.db");
        let conn = Connection::open(&db_path)
            .with_context(|| format!("opening the cache database {}", db_path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        set_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Pages are read from the page cache of the OS, not copied into SQLite's own (a no-op
        // build reads most of the index once per run).
        conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
        migrate(&conn).with_context(|| format!("in {}", db_path.display()))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            blobs: LocalBlobs { objects, tmp },
            db: Mutex::new(conn),
        })
    }

    /// Opens the cache if the project has one (read-only commands must not create it).
    pub fn open_existing(dir: &Path) -> Result<Option<Store>> {
        if dir.join("ttv.db").exists() {
            Store::open(dir).map(Some)
        } else {
            Ok(None)
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

    /// Records a result whose blob is already in place (so a crash between the two leaves at
    /// worst an unreferenced blob, never a row without its bytes).
    pub fn record_action(&self, a: &Action, recipe_json: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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
        tx.commit()?;
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

/// Switches a new database to WAL (the mode is kept in the file, so later opens only read it).
/// SQLite answers BUSY at once, without the busy handler, when two connections switch a fresh
/// file together, so the switch is retried here for as long as the busy timeout.
fn set_wal(conn: &Connection) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mode =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0));
        match mode {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    if let Some(stored) = stored_schema(conn)?
        && checked(stored)? == SCHEMA_VERSION
    {
        return Ok(());
    }
    // A new or older cache: made or upgraded under SQLite's write lock (BEGIN IMMEDIATE), and
    // looked at again once it is held: two processes can open the same cache at the same moment
    // (the build lock is taken after the store opens), and the second must find the first one's
    // work done, not do it again.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let upgraded = upgrade(conn);
    conn.execute_batch(if upgraded.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    })?;
    upgraded
}

/// The signature and version of the cache, or None when it has no schema yet.
fn stored_schema(conn: &Connection) -> Result<Option<(String, i64)>> {
    let has_table: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    Ok(Some(conn.query_row(
        "SELECT signature, version FROM schema_version",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?))
}

/// The version of a cache this ttv can use.
fn checked((signature, version): (String, i64)) -> Result<i64> {
    if signature != SIGNATURE {
        bail!("not a ttv cache (signature `{signature}`): move .ttv/ aside and build again");
    }
    if version > SCHEMA_VERSION {
        bail!(
            "the cache was written by a newer ttv (schema {version}, this ttv knows {SCHEMA_VERSION}): upgrade ttv"
        );
    }
    Ok(version)
}

/// Inside the write transaction of [`migrate`]: makes the schema or brings it up to date.
fn upgrade(conn: &Connection) -> Result<()> {
    let version = match stored_schema(conn)? {
        Some(stored) => checked(stored)?,
        None => {
            conn.execute_batch(SCHEMA)?;
            conn.execute(
                "INSERT INTO schema_version(signature, version) VALUES (?1, 1)",
                [SIGNATURE],
            )?;
            1
        }
    };
    for step in &MIGRATIONS[(version - 1) as usize..] {
        conn.execute_batch(step)?;
    }
    conn.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])?;
    Ok(())
}

impl OperationLog for Store {
    fn pending(&self, key: &str, backend: &str) -> Option<Pending> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT operation_name, state, submitted_at, detail FROM operations
                 WHERE key = ?1 AND backend = ?2",
            )
            .ok()?;
        let row: (String, String, i64, Option<String>) = st
            .query_row([key, backend], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .ok()??;
        let (name, state, since, detail) = row;
        Some(match state.as_str() {
            "submitted" if !name.is_empty() => Pending::Operation(name),
            // An intent still there was sent by a build that ended (killed, crashed) before the
            // answer was recorded.
            "intent" => Pending::Uncertain {
                since,
                detail: "the build that sent it ended before its answer was recorded".into(),
            },
            _ => Pending::Uncertain {
                since,
                detail: detail.unwrap_or_else(|| "no answer was read".into()),
            },
        })
    }

    fn intend(&self, key: &str, backend: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at, state)
             VALUES (?1, ?2, '', ?3, 'intent')",
            params![key, backend, now_secs()],
        )?;
        Ok(())
    }

    fn uncertain(&self, key: &str, backend: &str, detail: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at, state,
                detail)
             VALUES (?1, ?2, '', ?3, 'uncertain', ?4)",
            params![key, backend, now_secs(), detail],
        )?;
        Ok(())
    }

    fn record(&self, key: &str, backend: &str, operation_name: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at, state)
             VALUES (?1, ?2, ?3, ?4, 'submitted')",
            params![key, backend, operation_name, now_secs()],
        )?;
        Ok(())
    }

    fn clear(&self, key: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM operations WHERE key = ?1", [key])?;
        Ok(())
    }
}

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
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

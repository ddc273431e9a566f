//! The cache database's schema: version 1, the migrations after it, and bringing a file up to
//! date (under SQLite's write lock, so that two openers of a new cache make it once).

use anyhow::{Result, bail};
use rusqlite::Connection;

/// The schema a cache is at: version 1 ([`SCHEMA`]) plus every step of [`MIGRATIONS`].
pub(super) const SCHEMA_VERSION: i64 = 1 + MIGRATIONS.len() as i64;
pub(super) const SIGNATURE: &str = "ttv cache";

pub(super) const SCHEMA: &str = "
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
    // 5: results made with a remote cache configured and not yet uploaded to it (the upload
    // failed, or the build ended first): the next build and `ttv cache push` send them.
    "CREATE TABLE unpushed(key TEXT PRIMARY KEY, queued_at INTEGER NOT NULL);",
];

/// Switches a new database to WAL (the mode is kept in the file, so later opens only read it).
/// SQLite answers BUSY at once, without the busy handler, when two connections switch a fresh
/// file together, so the switch is retried here for as long as the busy timeout.
pub(super) fn set_wal(conn: &Connection) -> Result<()> {
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

pub(super) fn migrate(conn: &Connection) -> Result<()> {
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

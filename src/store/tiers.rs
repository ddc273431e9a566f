//! The tiers of the cache composed: the local one (SQLite + `.ttv/objects`) first, the remote
//! one ([`Remote`]) behind it. A local miss asks the remote; a remote hit is downloaded, checked
//! against its hash and recorded locally (a hit in the slower tier fills the faster one, as in
//! sccache's multi-level storage). New results are stored locally first, then uploaded
//! (write-behind): an upload that fails is queued in the `unpushed` table and sent by the next
//! build or `ttv cache push`, never failing the build.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rusqlite::params;

use super::remote::{Lease, LeaseOutcome, Remote, SharedAction};
use super::{Action, BlobStore, Hit, Store, now_secs};
use crate::backends::OperationLog;
use crate::media::Media;
use crate::recipe::{Recipe, TakeKeys};

/// Which result of a recipe the build wants from the remote.
#[derive(Debug, Clone)]
pub struct RemoteLookup<'a> {
    pub node_id: &'a str,
    /// The canonical recipe JSON at take 0 (the keys of all takes derive from it).
    pub base_json: &'a str,
    pub base_key: &'a str,
    /// A take pinned in ttv.yaml, or already chosen locally; `None`: the remote's latest.
    pub take: Option<u32>,
}

/// What single flight ([`Store::single_flight`]) decided for a dirty node.
pub enum Flight {
    /// Another machine made it meanwhile (or had made it): fetched, nothing to pay.
    Fetched(Hit),
    /// This process holds the lease: it makes the node, then publishes and releases.
    Leased(LeaseGuard),
    /// No usable remote (none, read-only, or down): make it locally.
    Alone,
}

/// A lease held while a node is made; renewed in the background until it is published.
pub struct LeaseGuard {
    lease: Arc<tokio::sync::Mutex<Lease>>,
    renewer: tokio::task::JoinHandle<()>,
}

impl LeaseGuard {
    /// Stops renewing and gives the lease back.
    async fn give_back(self, remote: &Remote) {
        self.renewer.abort();
        let lease = self.lease.lock().await.clone();
        let _ = remote.release(&lease).await;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// The media type of a blob from the MIME type an action records.
fn media_of(mime: &str) -> Option<Media> {
    match mime {
        "image/png" => Some(Media::Png),
        "video/mp4" => Some(Media::Mp4),
        _ => None,
    }
}

/// The key of take `take` of the recipe recorded as `recipe_json` (at any take).
fn key_for_take(recipe_json: &str, take: u32) -> Option<String> {
    let r: Recipe = serde_json::from_str(recipe_json).ok()?;
    Some(Recipe::key_at_take(
        &Recipe { take: 0, ..r }.canonical_json(),
        take,
    ))
}

impl Store {
    /// Attaches the remote tier (once, when the session opens the cache).
    pub fn attach_remote(&self, remote: Remote) {
        let _ = self.remote.set(Arc::new(remote));
    }

    /// The remote tier, unless there is none or it failed earlier in this run.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.get().filter(|r| r.down().is_none())
    }

    /// The remote tier as configured, up or not (for messages).
    pub fn configured_remote(&self) -> Option<&Arc<Remote>> {
        self.remote.get()
    }

    /// A writable remote that is up.
    fn shared(&self) -> Option<&Arc<Remote>> {
        self.remote().filter(|r| r.writable())
    }

    /// Looks a result up in the remote after a local miss. A hit is downloaded, checked against
    /// its hash and media type, and recorded locally; then it is a local hit like any other.
    /// A damaged or mismatched remote result is a miss, with a warning; so is a remote that does
    /// not answer (`warn` is told once, by the caller's dedup).
    pub async fn fetch_remote(
        &self,
        want: &RemoteLookup<'_>,
        warn: &(dyn Fn(&str) + Send + Sync),
    ) -> Option<Hit> {
        let remote = self.remote()?;
        let found = async {
            let take = match want.take {
                Some(t) => t,
                None => match remote.takes(want.base_key).await?.last() {
                    Some(&t) => t,
                    None => return Ok(None),
                },
            };
            let Some(a) = remote.action(want.base_key, take).await? else {
                return Ok(None);
            };
            self.adopt(remote, want, a).await
        }
        .await;
        match found {
            Ok(hit) => hit,
            Err(e) => {
                warn(&self.remote_trouble(&e));
                None
            }
        }
    }

    /// What to tell the user when a remote call fails.
    fn remote_trouble(&self, e: &anyhow::Error) -> String {
        format!(
            "{e:#}; continuing with the local cache only (results made now are uploaded by the next build or `ttv cache push`)"
        )
    }

    /// Checks a remote action against the recipe wanted, downloads and checks its blob, and
    /// records it locally.
    async fn adopt(
        &self,
        remote: &Remote,
        want: &RemoteLookup<'_>,
        a: SharedAction,
    ) -> Result<Option<Hit>> {
        // The key is recomputed here: an action is only trusted for the recipe it names.
        let key = TakeKeys::new(want.base_json).at(a.take);
        let Some(media) = media_of(&a.media_type) else {
            return Ok(None);
        };
        if a.key != key || a.base_key != want.base_key || a.blob.len() != 64 {
            return Ok(None);
        }
        if self.blobs.get(&a.blob, a.size).is_none() || !self.blobs.verify(&a.blob).unwrap_or(false)
        {
            let tmp = tempfile::NamedTempFile::new_in(self.blobs.tmp_dir())
                .map_err(|e| super::write_error(e, self.blobs.tmp_dir()))?
                .into_temp_path();
            if !remote.get_blob(&a.blob, &tmp).await? {
                return Ok(None);
            }
            let (hash, _) = super::hash_file(&tmp).context("reading a downloaded blob")?;
            if hash != a.blob {
                anyhow::bail!(
                    "{}: the remote's blob {} is damaged (its bytes hash to {}); not used",
                    want.node_id,
                    &a.blob[..12],
                    &hash[..12]
                );
            }
            self.blobs.put_file(tmp, media).with_context(|| {
                format!("{}: the remote's blob {}", want.node_id, &a.blob[..12])
            })?;
        }
        let action = Action {
            key: a.key.clone(),
            base_key: a.base_key.clone(),
            node_kind: a.node_kind.clone(),
            node_id: want.node_id.to_string(),
            blob: a.blob.clone(),
            media_type: a.media_type.clone(),
            backend: a.backend.clone(),
            model: a.model.clone(),
            created_at: a.created_at,
            gen_ms: a.gen_ms,
            cost_usd: a.cost_usd,
            take: a.take,
            size: a.size,
            provenance: a.provenance.clone(),
        };
        self.record_action(&action, &a.recipe)?;
        let mut hit = Hit::from(&action);
        hit.from_remote = true;
        Ok(Some(hit))
    }

    /// Before paying for a dirty node: with a writable remote, either another machine's result
    /// (made meanwhile: fetched), or the lease on the key (this process makes it), waiting
    /// while another machine holds it. `status` shows the wait.
    pub async fn single_flight(
        &self,
        want: &RemoteLookup<'_>,
        status: &(dyn Fn(String) + Send + Sync),
        warn: &(dyn Fn(&str) + Send + Sync),
    ) -> Flight {
        let Some(remote) = self.shared().cloned() else {
            return Flight::Alone;
        };
        let key = match want.take {
            Some(t) => TakeKeys::new(want.base_json).at(t),
            None => return Flight::Alone,
        };
        let poll = (remote.lease_ttl / 6).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut waited = false;
        loop {
            let step = async {
                if waited && let Some(hit) = self.fetch_remote(want, warn).await {
                    return Ok(Some(Flight::Fetched(hit)));
                }
                match remote.try_lease(&key, want.node_id).await? {
                    LeaseOutcome::Held(lease) => {
                        // It may have been published between the lookup and the lease.
                        if let Some(hit) = self.fetch_remote(want, warn).await {
                            let _ = remote.release(&lease).await;
                            return Ok(Some(Flight::Fetched(hit)));
                        }
                        // A submission another machine left running is resumed, not resent.
                        self.adopt_operation(&remote, &key).await?;
                        let lease = Arc::new(tokio::sync::Mutex::new(lease));
                        let renewer = tokio::spawn(renew(
                            remote.clone(),
                            lease.clone(),
                            want.node_id.to_string(),
                        ));
                        Ok(Some(Flight::Leased(LeaseGuard { lease, renewer })))
                    }
                    LeaseOutcome::Busy {
                        holder,
                        expires_at_ms,
                    } => {
                        let left = (expires_at_ms - super::now_ns() / 1_000_000).max(0) / 1000;
                        status(format!(
                            "waiting: {holder} is making it (lease for {left}s more)"
                        ));
                        Ok(None)
                    }
                }
            }
            .await;
            match step {
                Ok(Some(flight)) => return flight,
                Ok(None) => {
                    waited = true;
                    tokio::time::sleep(poll).await;
                }
                Err(e) => {
                    warn(&self.remote_trouble(&e));
                    return Flight::Alone;
                }
            }
        }
    }

    /// Records locally a video operation another machine submitted for `key` (and did not
    /// finish), so the backend polls it instead of submitting again.
    async fn adopt_operation(&self, remote: &Remote, key: &str) -> Result<()> {
        if let Some(op) = remote.operation(key).await?
            && self.pending(key, &op.backend).is_none()
        {
            self.conn().execute(
                "INSERT OR REPLACE INTO operations(key, backend, operation_name, submitted_at, state)
                 VALUES (?1, ?2, ?3, ?4, 'submitted')",
                params![key, op.backend, op.operation, op.submitted_at],
            )?;
        }
        Ok(())
    }

    /// Lets a lease go without publishing (the node failed or was not made).
    pub async fn release(&self, guard: LeaseGuard) {
        match self.remote() {
            Some(remote) => guard.give_back(remote).await,
            None => guard.renewer.abort(),
        }
    }

    /// Shares a submitted operation with the remote (`None`: it is over), in the background.
    pub(super) fn share_operation(&self, key: &str, op: Option<(&str, &str)>) {
        let Some(remote) = self.shared().cloned() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = key.to_string();
        let op = op.map(|(b, o)| (b.to_string(), o.to_string()));
        let task = rt.spawn(async move {
            let _ = match op {
                Some((backend, name)) => remote.put_operation(&key, &backend, &name).await,
                None => remote.clear_operation(&key).await,
            };
        });
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Queues new results for the remote and starts uploading them (write-behind); the lease,
    /// if held, is released once they are there. Nothing here fails the build.
    pub fn publish(&self, keys: &[String], lease: Option<LeaseGuard>) {
        // Queued even while the remote is down: the next build or `ttv cache push` sends them.
        if !self.configured_remote().is_some_and(|r| r.writable()) {
            return;
        }
        let queued = (|| -> Result<()> {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            for k in keys {
                tx.execute(
                    "INSERT OR REPLACE INTO unpushed(key, queued_at) VALUES (?1, ?2)",
                    params![k, now_secs()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })();
        // Not queued (the database refused): `ttv cache push` still finds it by comparing
        // with the remote.
        drop(queued);
        let Some(remote) = self.shared().cloned() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let work: Vec<_> = keys
            .iter()
            .filter_map(|k| {
                let a = self.action(k).ok()??;
                let recipe = self.recipe_json(k).ok()??;
                let path = self.blobs.path_of(&a.blob);
                Some((a, recipe, path))
            })
            .collect();
        let store_dir = self.dir.clone();
        let task = rt.spawn(async move {
            let mut done = Vec::new();
            for (a, recipe, path) in work {
                if upload(&remote, &a, &recipe, &path).await.is_ok() {
                    done.push(a.key.clone());
                }
            }
            if let Some(guard) = lease {
                guard.give_back(&remote).await;
            }
            // Marked as sent on a connection of its own: this task may outlive the caller's.
            if !done.is_empty()
                && let Ok(conn) = super::connect(&store_dir.join(super::DB_FILE))
            {
                for k in done {
                    let _ = conn.execute("DELETE FROM unpushed WHERE key = ?1", [k]);
                }
            }
        });
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Sends what earlier builds queued and could not upload. Returns how many were queued.
    pub fn publish_queued(&self) -> usize {
        if self.shared().is_none() {
            return 0;
        }
        let keys: Vec<String> = (|| -> Result<Vec<String>> {
            let conn = self.conn();
            let mut st = conn.prepare("SELECT key FROM unpushed")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })()
        .unwrap_or_default();
        if !keys.is_empty() {
            self.publish(&keys, None);
        }
        keys.len()
    }

    /// How many results wait to be uploaded.
    pub fn unpushed_count(&self) -> usize {
        self.conn()
            .query_row("SELECT COUNT(*) FROM unpushed", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0) as usize
    }

    /// Waits for the uploads started in this run. Returns the reason the remote failed, if it
    /// did (the results stay queued).
    pub async fn flush_remote(&self) -> Option<String> {
        loop {
            let tasks: Vec<_> =
                std::mem::take(&mut *self.uploads.lock().unwrap_or_else(|e| e.into_inner()));
            if tasks.is_empty() {
                break;
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        self.configured_remote().and_then(|r| r.down())
    }

    /// Uploads every local result the remote lacks (`ttv cache push`): (uploaded, already
    /// there).
    pub async fn push_all(&self, progress: &dyn Fn(&str)) -> Result<(usize, usize)> {
        let remote = self
            .remote()
            .ok_or_else(|| {
                anyhow!(
                    "no remote cache is configured (ttv.yaml `cache.remote` or TTV_REMOTE_CACHE)"
                )
            })?
            .clone();
        if !remote.writable() {
            anyhow::bail!(
                "the remote cache {} is read-only here (`cache.mode: read-only` or --remote-read-only): nothing is uploaded",
                remote.url
            );
        }
        let inv = remote.inventory().await?;
        let mut sent = 0;
        let mut there = 0;
        for a in self.all_actions()? {
            if a.base_key.starts_with(super::RECOVERED_BASE) {
                continue;
            }
            if inv.actions.contains(&(a.base_key.clone(), a.take)) {
                there += 1;
                continue;
            }
            let Some(recipe) = self.recipe_json(&a.key)? else {
                continue;
            };
            let path = self.blobs.path_of(&a.blob);
            if !inv.blobs.contains_key(&a.blob) || inv.blobs[&a.blob] != a.size {
                remote.put_blob(&a.blob, &path).await?;
            }
            let shared = shared_action(&remote, &a, &recipe);
            remote
                .put_action(&shared, |t| {
                    key_for_take(&recipe, t).unwrap_or_else(|| a.key.clone())
                })
                .await?;
            progress(&format!("pushed {} (take {})", a.node_id, a.take));
            sent += 1;
        }
        self.conn().execute("DELETE FROM unpushed", [])?;
        Ok((sent, there))
    }
}

fn shared_action(remote: &Remote, a: &Action, recipe: &str) -> SharedAction {
    SharedAction {
        key: a.key.clone(),
        base_key: a.base_key.clone(),
        take: a.take,
        node_kind: a.node_kind.clone(),
        node_id: a.node_id.clone(),
        blob: a.blob.clone(),
        size: a.size,
        media_type: a.media_type.clone(),
        backend: a.backend.clone(),
        model: a.model.clone(),
        cost_usd: a.cost_usd,
        created_at: a.created_at,
        gen_ms: a.gen_ms,
        provenance: a.provenance.clone(),
        recipe: recipe.to_string(),
        machine: remote.machine.clone(),
    }
}

/// One result to the remote: its blob (unless there), then its action, the commit point.
async fn upload(remote: &Remote, a: &Action, recipe: &str, path: &std::path::Path) -> Result<u32> {
    if remote.has_blob(&a.blob).await? != Some(a.size) {
        remote.put_blob(&a.blob, path).await?;
    }
    let take = remote
        .put_action(&shared_action(remote, a, recipe), |t| {
            key_for_take(recipe, t).unwrap_or_else(|| a.key.clone())
        })
        .await?;
    let _ = remote.clear_operation(&a.key).await;
    Ok(take)
}

/// Keeps a lease alive while its node is made.
async fn renew(remote: Arc<Remote>, lease: Arc<tokio::sync::Mutex<Lease>>, node: String) {
    let every = remote.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let mut lease = lease.lock().await;
        if remote.renew(&mut lease, &node).await.is_err() {
            return;
        }
    }
}

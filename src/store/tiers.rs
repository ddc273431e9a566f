//! The tiers of the cache composed, fastest first: the local one (SQLite + `.ttv/objects`),
//! then the remote one ([`Remote`]). A local miss asks the slower tiers; a hit there is copied,
//! checked against its hash, into every faster tier (as sccache's multi-level storage fills
//! its faster levels). New results are stored locally first, then copied to the remote
//! (write-behind): a copy that fails is queued in the `unpushed` table and sent by the next
//! build or `ttv cache push`, never failing the build. Every move between tiers is the same
//! [`copy_result`], over the tier interfaces of [`super::tier`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::params;

use super::local::media_of;
use super::remote::{Lease, LeaseOutcome, Remote};
use super::tier::{ActionRecord, OperationRecord, Tier};
use super::{Hit, Store, now_secs};
use crate::backends::OperationLog;
use crate::recipe::TakeKeys;

/// Which result of a recipe the build wants from the slower tiers.
#[derive(Debug, Clone)]
pub struct RemoteLookup<'a> {
    pub node_id: &'a str,
    /// The canonical recipe JSON at take 0 (the keys of all takes derive from it).
    pub base_json: &'a str,
    pub base_key: &'a str,
    /// A take pinned in ttv.yaml, or already chosen locally; `None`: the tier's latest.
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

/// Copies one result from `from` into each tier of `to`: its blob (unless there with its
/// size), checked against its hash and media type on the way, then its record, the commit
/// point. `tmp` is a folder for the bytes in transit. Returns the take each tier recorded it as
/// (a tier that already had that take with other bytes gives it the next free one).
async fn copy_result(
    tmp: &Path,
    from: &dyn Tier,
    to: &[&dyn Tier],
    rec: &ActionRecord,
) -> Result<Vec<u32>> {
    let mut in_transit: Option<tempfile::TempPath> = None;
    let mut takes = Vec::new();
    for tier in to {
        if tier.blob_size(&rec.blob).await? != Some(rec.size) {
            if in_transit.is_none() {
                let path = tempfile::NamedTempFile::new_in(tmp)
                    .map_err(|e| super::write_error(e, tmp))?
                    .into_temp_path();
                if !from.read_blob(&rec.blob, &path).await? {
                    bail!("{} lacks the blob {}", from.name(), &rec.blob[..12]);
                }
                let (hash, _) = super::hash_file(&path).context("reading a blob in transit")?;
                if hash != rec.blob {
                    bail!(
                        "{}: the blob {} in {} is damaged (its bytes hash to {}); not used",
                        rec.node_id,
                        &rec.blob[..12],
                        from.name(),
                        &hash[..12]
                    );
                }
                let whole = media_of(&rec.media_type)
                    .map(|m| m.check_file(&path))
                    .transpose()
                    .context("reading a blob in transit")?;
                if let Some(Err(e)) = whole {
                    bail!(
                        "{}: the blob {} in {} is {e}",
                        rec.node_id,
                        &rec.blob[..12],
                        from.name()
                    );
                }
                in_transit = Some(path);
            }
            let path = in_transit.as_ref().expect("read above");
            tier.write_blob(&rec.blob, path).await?;
        }
        takes.push(tier.record(rec).await?);
    }
    Ok(takes)
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

    /// The tiers that answer now, fastest first: this local one, then the remote.
    fn tiers(&self) -> Vec<&dyn Tier> {
        let mut tiers: Vec<&dyn Tier> = vec![self];
        if let Some(r) = self.remote() {
            tiers.push(r.as_ref());
        }
        tiers
    }

    /// Looks a result up in the slower tiers after a local miss. A hit is copied into every
    /// faster tier (downloaded, checked against its hash and media type, recorded); then it is
    /// a local hit like any other. A damaged or mismatched result is a miss, with a warning;
    /// so is a tier that does not answer.
    pub async fn fetch_remote(
        &self,
        want: &RemoteLookup<'_>,
        warn: &(dyn Fn(&str) + Send + Sync),
    ) -> Option<Hit> {
        let tiers = self.tiers();
        for (i, tier) in tiers.iter().enumerate().skip(1) {
            let found = async {
                let Some(rec) = find(*tier, want).await? else {
                    return Ok(None);
                };
                let takes = copy_result(self.tmp_dir(), *tier, &tiers[..i], &rec).await?;
                // The take the local tier recorded it as (the next free one if its number
                // was taken here by other bytes).
                let take = takes[0];
                anyhow::Ok(Some(Hit {
                    key: TakeKeys::new(want.base_json).at(take),
                    take,
                    blob: rec.blob,
                    size: rec.size,
                    backend: rec.backend,
                    cost_usd: rec.cost_usd,
                    from_remote: true,
                }))
            }
            .await;
            match found {
                Ok(Some(hit)) => return Some(hit),
                Ok(None) => {}
                Err(e) => warn(&self.remote_trouble(&e)),
            }
        }
        None
    }

    /// What to tell the user when a remote call fails.
    fn remote_trouble(&self, e: &anyhow::Error) -> String {
        if self.remote().is_some() {
            // The remote answers: one result was not usable.
            format!("{e:#}")
        } else {
            format!(
                "{e:#}; continuing with the local cache only (results made now are uploaded by the next build or `ttv cache push`)"
            )
        }
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
        let Some(take) = want.take else {
            return Flight::Alone;
        };
        let key = TakeKeys::new(want.base_json).at(take);
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
                        anyhow::Ok(None)
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
        use super::tier::ActionTier;
        if let Some(op) = remote.operation(key).await?
            && self.pending(key, &op.backend).is_none()
        {
            self.record_operation(key, &op).await?;
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
        use super::tier::ActionTier;
        let Some(remote) = self.shared().cloned() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = key.to_string();
        let op = op.map(|(backend, name)| OperationRecord {
            backend: backend.into(),
            operation: name.into(),
            machine: String::new(),
            submitted_at: now_secs(),
        });
        let task = rt.spawn(async move {
            let _ = match op {
                Some(op) => remote.record_operation(&key, &op).await,
                None => remote.clear_operation(&key).await,
            };
        });
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Queues new results for the remote and starts copying them there (write-behind); the
    /// lease, if held, is released once they are there. Nothing here fails the build.
    pub fn publish(self: &Arc<Self>, keys: &[String], lease: Option<LeaseGuard>) {
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
        let records: Vec<ActionRecord> = keys
            .iter()
            .filter_map(|k| self.record_by_key(k).ok().flatten())
            .collect();
        let store = self.clone();
        let task = rt.spawn(async move {
            let mut done = Vec::new();
            for rec in records {
                let to: [&dyn Tier; 1] = [remote.as_ref()];
                if copy_result(store.tmp_dir(), store.as_ref(), &to, &rec)
                    .await
                    .is_ok()
                {
                    use super::tier::ActionTier;
                    let _ = remote.clear_operation(&rec.key).await;
                    done.push(rec.key);
                }
            }
            if let Some(guard) = lease {
                guard.give_back(&remote).await;
            }
            store.unqueue(&done);
        });
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    fn unqueue(&self, keys: &[String]) {
        let conn = self.conn();
        for k in keys {
            let _ = conn.execute("DELETE FROM unpushed WHERE key = ?1", [k]);
        }
    }

    /// Sends what earlier builds queued and could not upload. Returns how many were queued.
    pub fn publish_queued(self: &Arc<Self>) -> usize {
        if self.shared().is_none() {
            return 0;
        }
        let keys: Vec<String> = (|| -> Result<Vec<String>> {
            let conn = self.conn();
            let mut st = conn.prepare_cached("SELECT key FROM unpushed")?;
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

    /// Copies every local result the remote lacks (`ttv cache push`): (copied, already there).
    pub async fn push_all(&self, progress: &dyn Fn(&str)) -> Result<(usize, usize)> {
        let remote = self
            .remote()
            .ok_or_else(|| match self.configured_remote().and_then(|r| r.down()) {
                Some(why) => anyhow!("{why}"),
                None => anyhow!(
                    "no remote cache is configured (ttv.yaml `cache.remote` or TTV_REMOTE_CACHE)"
                ),
            })?
            .clone();
        if !remote.writable() {
            bail!(
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
            let Some(rec) = self.record_by_key(&a.key)? else {
                continue;
            };
            let to: [&dyn Tier; 1] = [remote.as_ref()];
            copy_result(self.tmp_dir(), self, &to, &rec).await?;
            progress(&format!("pushed {} (take {})", a.node_id, a.take));
            sent += 1;
        }
        self.conn().execute("DELETE FROM unpushed", [])?;
        Ok((sent, there))
    }
}

/// The result a tier has for what is wanted: the take asked for, or its latest; trusted only
/// for the recipe it names (its key is recomputed here).
async fn find(tier: &dyn Tier, want: &RemoteLookup<'_>) -> Result<Option<ActionRecord>> {
    let take = match want.take {
        Some(t) => t,
        None => match tier.takes(want.base_key).await?.last() {
            Some(&t) => t,
            None => return Ok(None),
        },
    };
    let Some(rec) = tier.action(want.base_key, take).await? else {
        return Ok(None);
    };
    let fits = rec.key == TakeKeys::new(want.base_json).at(rec.take)
        && rec.base_key == want.base_key
        && rec.blob.len() == 64
        && media_of(&rec.media_type).is_some();
    Ok(fits.then(|| ActionRecord {
        node_id: want.node_id.to_string(),
        ..rec
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::FinalRecipe;
    use crate::media::Media;
    use crate::recipe::{Body, Recipe};
    use crate::store::RemoteMode;
    use crate::store::tier::BlobTier;

    fn png(shade: u8) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(2, 2, image::Rgb([shade, 0, 0]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// Take 1 of one recipe, with the blob `blob`.
    fn take_one(blob: &str, size: u64) -> ActionRecord {
        let recipe = Recipe::new(
            Body::Final(FinalRecipe {
                segments: vec!["a".repeat(64)],
                stitch: "concat".into(),
                trims: Default::default(),
            }),
            1,
        );
        ActionRecord {
            key: recipe.key(),
            base_key: recipe.base_key(),
            take: 1,
            node_kind: "frame".into(),
            node_id: "frame/a/start".into(),
            blob: blob.into(),
            size,
            media_type: "image/png".into(),
            backend: "preview".into(),
            model: String::new(),
            cost_usd: 0.5,
            created_at: 1,
            gen_ms: 1,
            provenance: None,
            recipe: recipe.canonical_json(),
            machine: String::new(),
        }
    }

    /// Two machines recording take 1 of the same recipe with different bytes: neither
    /// overwrites the other, the second becomes take 2, in the local tier and in the remote.
    #[tokio::test]
    async fn a_take_is_never_overwritten_and_the_second_maker_gets_the_next_number() {
        let dir = tempfile::tempdir().unwrap();
        let local = Store::open(&dir.path().join(".ttv")).unwrap();
        let shared = tempfile::tempdir().unwrap();
        let remote = Remote::open(
            &format!("file://{}", shared.path().display()),
            RemoteMode::ReadWrite,
        )
        .unwrap();
        let (one, two) = (png(1), png(2));
        let (h1, n1) = local.put_bytes(&one, Media::Png).unwrap();
        let (h2, n2) = local.put_bytes(&two, Media::Png).unwrap();
        let (a, b) = (take_one(&h1, n1), take_one(&h2, n2));
        let tiers: [&dyn Tier; 2] = [&local, &remote];
        for tier in tiers {
            assert_eq!(tier.record(&a).await.unwrap(), 1, "{}", tier.name());
            assert_eq!(
                tier.record(&a).await.unwrap(),
                1,
                "the same result again is a no-op"
            );
            assert_eq!(tier.record(&b).await.unwrap(), 2, "{}", tier.name());
            assert_eq!(tier.takes(&a.base_key).await.unwrap(), vec![1, 2]);
            let second = tier.action(&a.base_key, 2).await.unwrap().unwrap();
            assert_eq!(second.blob, h2);
            assert_eq!(second.key, a.key_at(2).unwrap(), "take 2 has take 2's key");
            assert_eq!(tier.action(&a.base_key, 1).await.unwrap().unwrap().blob, h1);
        }
        // Blobs move between tiers checked; a damaged one is refused.
        let to: [&dyn Tier; 1] = [&remote];
        copy_result(local.tmp_dir(), &local, &to, &a).await.unwrap();
        assert_eq!(remote.blob_size(&h1).await.unwrap(), Some(n1));
        // The remote's bytes, downloaded and hashed.
        let holds = |hash: &str| {
            let (remote, hash) = (&remote, hash.to_string());
            async move {
                let tmp = tempfile::NamedTempFile::new().unwrap().into_temp_path();
                remote.read_blob(&hash, &tmp).await.unwrap()
                    && crate::store::hash_file(&tmp).unwrap().0 == hash
            }
        };
        assert!(holds(&h1).await);
        let on_disk = shared.path().join("v1/blobs").join(&h1[..2]).join(&h1);
        std::fs::write(&on_disk, &two).unwrap();
        assert!(!holds(&h1).await);
        let elsewhere = tempfile::tempdir().unwrap();
        let fresh = Store::open(&elsewhere.path().join(".ttv")).unwrap();
        let back: [&dyn Tier; 1] = [&fresh];
        let err = copy_result(fresh.tmp_dir(), &remote, &back, &a)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("is damaged"), "{err:#}");
        assert_eq!(fresh.blob_size(&h1).await.unwrap(), None, "nothing placed");
        assert!(fresh.takes(&a.base_key).unwrap_or_default().is_empty());
    }
}

//! The remote tier: a cache shared by a team and its CI on object storage (S3 and S3-compatible
//! servers, GCS, Azure, or a shared folder), through the `object_store` crate.
//!
//! Layout under the URL's prefix (all JSON small, blobs as they are):
//!
//! ```text
//! v1/blobs/ab/abcdef…                   a blob, named by its blake3 hash
//! v1/actions/<base key>/<take>.json     one result: key, take, recipe, blob, size, backend,
//!                                       model, cost, time, machine; written after its blob
//!                                       (the action is the commit point), never overwritten
//! v1/operations/<key>.json              a submitted video operation, so a build resumed on
//!                                       another machine polls it instead of paying again
//! v1/leases/<key>/<n>.json              who is making a key now, until when (single flight)
//! ```
//!
//! Credentials come only from the environment (the providers' usual variables and files):
//! the URL may not carry any. Every call is bounded (connect timeout, few retries); the first
//! call that fails for a reason other than "not there" marks the remote down for the rest of the
//! run, with one warning, so a build never waits on a remote that is gone.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path as OPath;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::now_ns;
use super::tier::{ActionRecord, ActionTier, BlobTier, OperationRecord, Tier};

/// How long a lease lasts without renewal (`TTV_LEASE_SECONDS` shortens it, e.g. in tests).
const LEASE_SECONDS: u64 = 90;

/// Read-write (the default) or read-only: CI machines that must not publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteMode {
    #[default]
    ReadWrite,
    ReadOnly,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    node: String,
    expires_at_ms: i64,
}

/// A lease this process holds on a key: renewed by [`Remote::renew`], given back by
/// [`Remote::release`].
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    n: u64,
}

/// What asking for a lease found.
#[derive(Debug)]
pub enum LeaseOutcome {
    Held(Lease),
    /// Another machine holds it until `expires_at_ms`.
    Busy {
        holder: String,
        expires_at_ms: i64,
    },
}

/// What the remote holds, listed once (`ttv cache status`, `ttv cache push`).
#[derive(Debug, Default)]
pub struct Inventory {
    pub blobs: std::collections::HashMap<String, u64>,
    /// `(base key, take)` of every action.
    pub actions: std::collections::HashSet<(String, u32)>,
}

/// The remote tier.
pub struct Remote {
    /// The URL as configured (it carries no credentials: those are refused).
    pub url: String,
    pub mode: RemoteMode,
    client: OnceLock<Arc<dyn ObjectStore>>,
    root: OPath,
    /// Why the remote is not used for the rest of this run (the first failure), if it failed.
    down: Mutex<Option<String>>,
    /// `user@host` and the process, for leases and the records it writes.
    pub machine: String,
    holder: String,
    pub lease_ttl: Duration,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("mode", &self.mode)
            .finish()
    }
}

/// Whether an object_store error is "it is not there" (an answer, not a failure).
fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

fn is_conflict(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

/// Checks a remote URL as ttv.yaml or `TTV_REMOTE_CACHE` gives it: a supported scheme, and
/// no credentials in it.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "`{url}` is not a URL: give s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///shared/path"
        ));
    };
    match scheme {
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "file" => {}
        other => {
            return Err(format!(
                "unsupported remote scheme `{other}://`: use s3://, gs://, az:// or file://"
            ));
        }
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "the remote URL carries credentials: remove them; ttv reads them only from the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY, ...)".into(),
        );
    }
    if scheme == "file" && !rest.starts_with('/') {
        return Err(format!(
            "`{url}`: a file remote takes an absolute path, e.g. file:///srv/ttv-cache"
        ));
    }
    if scheme != "file" && authority.is_empty() {
        return Err(format!("`{url}` names no bucket"));
    }
    Ok(())
}

/// `user@host`, or `TTV_MACHINE_NAME`.
fn machine_name() -> String {
    if let Ok(name) = std::env::var("TTV_MACHINE_NAME")
        && !name.trim().is_empty()
    {
        return name.trim().to_string();
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// Makes the object store client for a checked URL. Sends nothing.
fn connect(url: &str) -> Result<Arc<dyn ObjectStore>> {
    crate::backends::http::install_crypto_provider();
    let (scheme, rest) = url.split_once("://").expect("checked");
    // Timeouts set key by key, over what the environment configures (AWS_ALLOW_HTTP, a proxy,
    // ...), which a whole ClientOptions would replace.
    let client_keys = [
        (ClientConfigKey::ConnectTimeout, "5s"),
        (ClientConfigKey::Timeout, "300s"),
    ];
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
        ..Default::default()
    };
    if scheme == "file" {
        std::fs::create_dir_all(rest)
            .with_context(|| format!("creating the remote cache folder {rest}"))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(rest)
            .with_context(|| format!("opening the remote cache folder {rest}"))?
            .with_automatic_cleanup(true);
        return Ok(Arc::new(fs));
    }
    let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
    let bucket_url = format!("{scheme}://{bucket}");
    // The providers' builders differ in type, not in how they are set up.
    macro_rules! cloud {
        ($builder:ty, $key:path, $what:literal) => {{
            let mut b = <$builder>::from_env()
                .with_url(&bucket_url)
                .with_retry(retry);
            for (k, v) in client_keys {
                b = b.with_config($key(k), v);
            }
            let store = b
                .build()
                .with_context(|| format!("configuring the {} remote {url}", $what))?;
            Arc::new(store) as Arc<dyn ObjectStore>
        }};
    }
    Ok(match scheme {
        "s3" | "s3a" => cloud!(
            object_store::aws::AmazonS3Builder,
            object_store::aws::AmazonS3ConfigKey::Client,
            "S3"
        ),
        "gs" => cloud!(
            object_store::gcp::GoogleCloudStorageBuilder,
            object_store::gcp::GoogleConfigKey::Client,
            "GCS"
        ),
        _ => cloud!(
            object_store::azure::MicrosoftAzureBuilder,
            object_store::azure::AzureConfigKey::Client,
            "Azure"
        ),
    })
}

impl Remote {
    /// Checks the URL and notes the settings. The client is made on first use, so a build
    /// that never asks the remote (a no-op) pays nothing for it.
    pub fn open(url: &str, mode: RemoteMode) -> Result<Remote> {
        check_url(url).map_err(|e| anyhow!(e))?;
        let (scheme, rest) = url.split_once("://").expect("checked");
        let prefix = match scheme {
            "file" => "",
            _ => rest.split_once('/').map_or("", |(_, p)| p),
        };
        let root = OPath::from(prefix.trim_matches('/')).join("v1");
        let machine = machine_name();
        let lease_ttl = std::env::var("TTV_LEASE_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map_or(Duration::from_secs(LEASE_SECONDS), Duration::from_secs_f64);
        Ok(Remote {
            url: url.to_string(),
            mode,
            client: OnceLock::new(),
            root,
            down: Mutex::new(None),
            holder: format!("{machine} (pid {})", std::process::id()),
            machine,
            lease_ttl,
        })
    }

    /// The object store client, made on first use (a failure to make it is a failure of the
    /// remote, like any other).
    fn store(&self) -> Result<&Arc<dyn ObjectStore>> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let made = connect(&self.url).map_err(|e| self.fail("setting up", &format!("{e:#}")))?;
        Ok(self.client.get_or_init(|| made))
    }

    pub fn writable(&self) -> bool {
        self.mode == RemoteMode::ReadWrite
    }

    /// Why the remote is not used any more in this run, if a call failed.
    pub fn down(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes the first failure (later ones are the same outage) and returns the error to report.
    fn fail(&self, what: &str, e: &dyn fmt::Display) -> anyhow::Error {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let msg = format!("remote cache {}: {what}: {e}", self.url);
        if down.is_none() {
            *down = Some(msg.clone());
        }
        anyhow!(msg)
    }

    fn check_up(&self) -> Result<()> {
        match self.down() {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }

    fn blob_path(&self, hash: &str) -> OPath {
        self.root
            .clone()
            .join("blobs")
            .join(&hash[..2.min(hash.len())])
            .join(hash)
    }

    fn actions_dir(&self, base_key: &str) -> OPath {
        self.root.clone().join("actions").join(base_key)
    }

    fn action_path(&self, base_key: &str, take: u32) -> OPath {
        self.actions_dir(base_key).join(format!("{take:06}.json"))
    }

    fn operation_path(&self, key: &str) -> OPath {
        self.root
            .clone()
            .join("operations")
            .join(format!("{key}.json"))
    }

    fn leases_dir(&self, key: &str) -> OPath {
        self.root.clone().join("leases").join(key)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &OPath) -> Result<Option<T>> {
        self.check_up()?;
        let bytes = match self.store()?.get(path).await {
            Ok(r) => r.bytes().await.map_err(|e| self.fail("reading", &e))?,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.fail("reading", &e)),
        };
        // A record that does not parse is not used (and does not make the remote down).
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Writes `value` at `path` only if nothing is there: `Ok(false)` when something is.
    async fn create_json<T: Serialize>(&self, path: &OPath, value: &T) -> Result<bool> {
        self.check_up()?;
        let bytes = serde_json::to_vec_pretty(value)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store()?
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.fail("writing", &e)),
        }
    }

    async fn delete(&self, path: &OPath) -> Result<()> {
        self.check_up()?;
        match self.store()?.delete(path).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.fail("deleting", &e)),
        }
    }

    /// The names (last path part) of the objects directly under `dir`.
    async fn list_names(&self, dir: &OPath) -> Result<Vec<(String, u64)>> {
        self.check_up()?;
        let metas: Vec<_> = self
            .store()?
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|e| self.fail("listing", &e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(|n| (n.to_string(), m.size)))
            .collect())
    }

    /// The leases on record for a key, by number.
    async fn leases(&self, key: &str) -> Result<Vec<u64>> {
        self.numbered(&self.leases_dir(key)).await
    }

    /// The numbers of the `<n>.json` objects directly under `dir` (takes, leases), in order.
    async fn numbered<N: std::str::FromStr + Ord>(&self, dir: &OPath) -> Result<Vec<N>> {
        let mut ns: Vec<N> = self
            .list_names(dir)
            .await?
            .into_iter()
            .filter_map(|(n, _)| n.strip_suffix(".json")?.parse().ok())
            .collect();
        ns.sort_unstable();
        Ok(ns)
    }

    fn lease_record(&self, node: &str) -> LeaseRecord {
        LeaseRecord {
            holder: self.holder.clone(),
            node: node.into(),
            expires_at_ms: now_ns() / 1_000_000 + self.lease_ttl.as_millis() as i64,
        }
    }

    fn lease_path(&self, key: &str, n: u64) -> OPath {
        self.leases_dir(key).join(format!("{n:09}.json"))
    }

    /// Takes the lease on `key` unless another machine holds it unexpired. A lease is a
    /// numbered object made by conditional create: the holder is whoever made the highest
    /// number; an expired one (its holder crashed) is taken over by making the next number.
    pub async fn try_lease(&self, key: &str, node: &str) -> Result<LeaseOutcome> {
        loop {
            let ns = self.leases(key).await?;
            let next = match ns.last() {
                Some(&n) => {
                    let current: Option<LeaseRecord> =
                        self.get_json(&self.lease_path(key, n)).await?;
                    match current {
                        Some(r) if r.expires_at_ms > now_ns() / 1_000_000 => {
                            return Ok(LeaseOutcome::Busy {
                                holder: r.holder,
                                expires_at_ms: r.expires_at_ms,
                            });
                        }
                        // Expired, released between the listing and the read, or unreadable.
                        _ => n + 1,
                    }
                }
                None => 1,
            };
            if self
                .create_json(&self.lease_path(key, next), &self.lease_record(node))
                .await?
            {
                // Older numbers are expired or released: tidy them away.
                for n in ns {
                    let _ = self.delete(&self.lease_path(key, n)).await;
                }
                return Ok(LeaseOutcome::Held(Lease {
                    key: key.into(),
                    n: next,
                }));
            }
        }
    }

    /// Extends a lease held: the next number, made by the same holder, then the old one goes.
    /// Fails when someone else made that number (the lease had expired and was taken over).
    pub async fn renew(&self, lease: &mut Lease, node: &str) -> Result<()> {
        let next = lease.n + 1;
        if !self
            .create_json(&self.lease_path(&lease.key, next), &self.lease_record(node))
            .await?
        {
            bail!("the lease on {node} was taken over by another machine");
        }
        let old = std::mem::replace(&mut lease.n, next);
        self.delete(&self.lease_path(&lease.key, old)).await
    }

    pub async fn release(&self, lease: &Lease) -> Result<()> {
        self.delete(&self.lease_path(&lease.key, lease.n)).await
    }

    /// Everything the remote holds (one listing of blobs and actions).
    pub async fn inventory(&self) -> Result<Inventory> {
        self.check_up()?;
        let mut inv = Inventory::default();
        let blobs = self.root.clone().join("blobs");
        let metas: Vec<_> = self
            .store()?
            .list(Some(&blobs))
            .try_collect()
            .await
            .map_err(|e| self.fail("listing blobs", &e))?;
        for m in metas {
            if let Some(name) = m.location.filename() {
                inv.blobs.insert(name.to_string(), m.size);
            }
        }
        let actions = self.root.clone().join("actions");
        let metas: Vec<_> = self
            .store()?
            .list(Some(&actions))
            .try_collect()
            .await
            .map_err(|e| self.fail("listing actions", &e))?;
        for m in metas {
            let parts: Vec<_> = m.location.parts().collect();
            if parts.len() >= 2
                && let Some(take) = parts[parts.len() - 1]
                    .as_ref()
                    .strip_suffix(".json")
                    .and_then(|t| t.parse().ok())
            {
                inv.actions
                    .insert((parts[parts.len() - 2].as_ref().to_string(), take));
            }
        }
        Ok(inv)
    }

    /// Deletes blobs and actions (`ttv gc --remote`).
    pub async fn delete_blob(&self, hash: &str) -> Result<()> {
        self.delete(&self.blob_path(hash)).await
    }

    pub async fn delete_action(&self, base_key: &str, take: u32) -> Result<()> {
        self.delete(&self.action_path(base_key, take)).await
    }
}

#[async_trait]
impl BlobTier for Remote {
    async fn blob_size(&self, hash: &str) -> Result<Option<u64>> {
        self.check_up()?;
        match self.store()?.head(&self.blob_path(hash)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.fail("looking up a blob", &e)),
        }
    }

    async fn read_blob(&self, hash: &str, dest: &Path) -> Result<bool> {
        self.check_up()?;
        let result = match self.store()?.get(&self.blob_path(hash)).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(self.fail("downloading a blob", &e)),
        };
        let mut file = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("writing {}", dest.display()))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| self.fail("downloading a blob", &e))?
        {
            file.write_all(&chunk)
                .await
                .map_err(|e| super::write_error(e, dest))?;
        }
        file.flush().await?;
        Ok(true)
    }

    /// Unconditional: same name, same bytes (a damaged copy is replaced).
    async fn write_blob(&self, hash: &str, src: &Path) -> Result<()> {
        self.check_up()?;
        let bytes = tokio::fs::read(src)
            .await
            .with_context(|| format!("reading {}", src.display()))?;
        self.store()?
            .put(&self.blob_path(hash), PutPayload::from(bytes))
            .await
            .map_err(|e| self.fail("uploading a blob", &e))?;
        Ok(())
    }
}

#[async_trait]
impl ActionTier for Remote {
    async fn takes(&self, base_key: &str) -> Result<Vec<u32>> {
        self.numbered(&self.actions_dir(base_key)).await
    }

    async fn action(&self, base_key: &str, take: u32) -> Result<Option<ActionRecord>> {
        self.get_json(&self.action_path(base_key, take)).await
    }

    /// A conditional create: the action is the commit point of an upload, and never
    /// overwrites another machine's.
    async fn record(&self, a: &ActionRecord) -> Result<u32> {
        let mut a = ActionRecord {
            machine: self.machine.clone(),
            ..a.clone()
        };
        loop {
            if self
                .create_json(&self.action_path(&a.base_key, a.take), &a)
                .await?
            {
                return Ok(a.take);
            }
            if let Some(there) = self.action(&a.base_key, a.take).await?
                && there.blob == a.blob
            {
                return Ok(a.take);
            }
            let next = self.takes(&a.base_key).await?.last().copied().unwrap_or(0) + 1;
            a = a.renumbered(next.max(a.take + 1));
        }
    }

    async fn operation(&self, key: &str) -> Result<Option<OperationRecord>> {
        self.get_json(&self.operation_path(key)).await
    }

    async fn record_operation(&self, key: &str, op: &OperationRecord) -> Result<()> {
        self.check_up()?;
        let op = OperationRecord {
            machine: self.machine.clone(),
            ..op.clone()
        };
        self.store()?
            .put(
                &self.operation_path(key),
                PutPayload::from(serde_json::to_vec_pretty(&op)?),
            )
            .await
            .map_err(|e| self.fail("recording an operation", &e))?;
        Ok(())
    }

    async fn clear_operation(&self, key: &str) -> Result<()> {
        self.delete(&self.operation_path(key)).await
    }
}

impl Tier for Remote {
    fn name(&self) -> String {
        self.url.clone()
    }
}

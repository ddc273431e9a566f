//! `ttv cache status` and `ttv cache push` (`ttv cache pull` is a build that generates
//! nothing: see [`crate::build::BuildOptions::remote_only`]).

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::error::{EXIT_OK, UsageError};
use crate::plan::{Session, remote_url};
use crate::progress::{Progress, Verbosity, emit};
use crate::project::Project;
use crate::store::tier::ActionTier;
use crate::store::{BuildLock, Remote, RemoteMode, Store, Wait};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// One node of the project and where its result is.
#[derive(Debug, Serialize)]
struct NodeRow {
    id: String,
    /// `None`: its key is not known (an input is in neither cache).
    local: Option<bool>,
    /// `None`: no remote, or its key is not known.
    remote: Option<bool>,
}

/// `ttv cache status`.
pub fn status(project: Project, json_out: bool, progress: Progress) -> Result<i32> {
    let targets = crate::graph::all_targets(&project);
    let url = remote_url(&project)?;
    let mode = project.config.cache.mode;
    let session = Session::open(project, &targets, &[], progress.clone())?;
    let store = session.store.clone();
    let (actions, blobs, bytes, unpushed) = match &store {
        Some(s) => {
            let blobs = s.all_blobs()?;
            (
                s.all_actions()?.len(),
                blobs.len(),
                blobs.iter().map(|(_, n)| n).sum::<u64>(),
                s.unpushed_count(),
            )
        }
        None => (0, 0, 0, 0),
    };
    let remote = url.as_deref().map(|u| Remote::open(u, mode)).transpose()?;
    let rt = runtime()?;
    let (inventory, rows) = rt.block_on(async {
        let inventory = match &remote {
            Some(r) => Some(r.inventory().await),
            None => None,
        };
        let rows = walk(&session, remote.as_ref()).await;
        (inventory, rows)
    });
    let rows = rows?;
    let remote_json = match (&remote, &inventory) {
        (Some(r), Some(Ok(inv))) => json!({
            "url": r.url,
            "mode": mode,
            "actions": inv.actions.len(),
            "blobs": inv.blobs.len(),
            "bytes": inv.blobs.values().sum::<u64>(),
        }),
        (Some(r), Some(Err(e))) => json!({"url": r.url, "mode": mode, "error": format!("{e:#}")}),
        _ => serde_json::Value::Null,
    };
    if json_out {
        emit(
            &json!({
                "local": {"actions": actions, "blobs": blobs, "bytes": bytes, "unpushed": unpushed},
                "remote": remote_json,
                "nodes": rows,
            })
            .to_string(),
        )?;
    }
    if progress.verbosity() == Verbosity::Quiet {
        return Ok(EXIT_OK);
    }
    let waiting = if unpushed > 0 {
        format!(" ({unpushed} waiting to be uploaded: `ttv cache push`)")
    } else {
        String::new()
    };
    progress.println(&format!(
        "local   .ttv/: {actions} result(s), {blobs} blob(s), {}{waiting}",
        mib(bytes)
    ));
    match (&remote, inventory) {
        (Some(r), Some(Ok(inv))) => progress.println(&format!(
            "remote  {} ({}): {} result(s), {} blob(s), {}",
            r.url,
            match mode {
                RemoteMode::ReadWrite => "read-write",
                RemoteMode::ReadOnly => "read-only",
            },
            inv.actions.len(),
            inv.blobs.len(),
            mib(inv.blobs.values().sum())
        )),
        (Some(r), Some(Err(e))) => {
            progress.println(&format!("remote  {}: unreachable ({e:#})", r.url))
        }
        _ => progress.println(
            "remote  none (set `cache.remote` in ttv.yaml or TTV_REMOTE_CACHE to share results)",
        ),
    }
    let yes_no = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    };
    progress.println(&format!("  {:<32} {:<6} {}", "node", "local", "remote"));
    for r in &rows {
        progress.println(&format!(
            "  {:<32} {:<6} {}",
            r.id,
            yes_no(r.local),
            if remote.is_some() {
                yes_no(r.remote)
            } else {
                "-"
            }
        ));
    }
    Ok(EXIT_OK)
}

/// Where each node's result is: the graph walked in order, each key made from its inputs'
/// blobs as either cache knows them.
async fn walk(session: &Session, remote: Option<&Remote>) -> Result<Vec<NodeRow>> {
    let mut blobs: HashMap<usize, String> = HashMap::new();
    let mut rows = Vec::new();
    let mut remote = remote;
    for &i in &session.needed {
        let node = &session.graph.nodes[i];
        if !node.deps.iter().all(|d| blobs.contains_key(d)) {
            rows.push(NodeRow {
                id: node.id.clone(),
                local: None,
                remote: None,
            });
            continue;
        }
        let plan = session.plan_node(i, &blobs)?;
        let mut blob = plan.hit.as_ref().map(|h| h.blob.clone());
        let mut in_remote = None;
        if let Some(r) = remote {
            let base_key = plan.recipe.base_key();
            let found = async {
                let takes = r.takes(&base_key).await?;
                let take = if takes.contains(&plan.take) {
                    Some(plan.take)
                } else if plan.hit.is_none() {
                    takes.last().copied()
                } else {
                    None
                };
                match take {
                    Some(t) => r.action(&base_key, t).await,
                    None => Ok(None),
                }
            }
            .await;
            match found {
                Ok(a) => {
                    in_remote = Some(a.is_some());
                    if blob.is_none() {
                        blob = a.map(|a| a.blob);
                    }
                }
                // Reported once, with the totals; the walk goes on locally.
                Err(_) => remote = None,
            }
        }
        if let Some(b) = blob {
            blobs.insert(i, b);
        }
        rows.push(NodeRow {
            id: node.id.clone(),
            local: Some(plan.hit.is_some()),
            remote: in_remote,
        });
    }
    Ok(rows)
}

/// `ttv cache push`.
pub fn push(project: Project, json_out: bool, progress: Progress) -> Result<i32> {
    let Some(url) = remote_url(&project)? else {
        return Err(UsageError::new(
            "no remote cache is configured: set `cache: {remote: s3://bucket/prefix}` in ttv.yaml, or TTV_REMOTE_CACHE",
        )
        .into());
    };
    let Some(store) = Store::open_existing(&project.cache_dir())? else {
        progress.info("no local cache yet: nothing to push");
        if json_out {
            emit(&json!({"pushed": 0, "already": 0}).to_string())?;
        }
        return Ok(EXIT_OK);
    };
    let _lock = BuildLock::acquire(&store.dir, Wait::Never, || {})?;
    store.attach_remote(Remote::open(&url, project.config.cache.mode)?);
    let rt = runtime()?;
    let (pushed, already) = rt.block_on(store.push_all(&|m| {
        if progress.verbosity() == Verbosity::Verbose {
            progress.println(m)
        }
    }))?;
    progress.info(&format!(
        "pushed {pushed} result(s) to {url}; {already} were there already"
    ));
    if json_out {
        emit(&json!({"pushed": pushed, "already": already}).to_string())?;
    }
    Ok(EXIT_OK)
}

//! The scheduler (DESIGN.md §7): starts every node whose inputs are ready, bounded per backend
//! and globally; stores each result durably before anything else; a failure stops only its
//! dependents; Ctrl-C starts nothing new.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};
use tokio::task::JoinSet;

use crate::backends::{GenContext, ImageInput, OperationLog, Provenance};
use crate::kinds::Pool;
use crate::limiter::{Limiter, LoadFn, Permit};
use crate::materialize::{ManifestEntry, Materializer, Placed, write_manifest};
use crate::media::Media;
use crate::plan::{NodePlan, NodeReport, Report, Session, Status};
use crate::recipe::Recipe;
use crate::store::{self, Action, BuildRecord, Flight, Hit, RemoteLookup, Store, now_secs};

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub targets: Vec<String>,
    pub jobs: Option<usize>,
    pub reroll: Vec<String>,
    pub force: Vec<String>,
    pub no_wait: bool,
    /// `--max-cost`: the most this build may spend (else `budget_usd` of ttv.yaml).
    pub max_cost: Option<f64>,
    pub allow_unknown_cost: bool,
    /// `--partial`: with a budget smaller than the estimate, make what fits instead of refusing.
    pub partial: bool,
    /// `--remote-read-only`: use the remote cache without writing to it.
    pub remote_read_only: bool,
    /// `ttv cache pull`: take results from the caches only; generate nothing.
    pub remote_only: bool,
}

fn mime_of(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        _ => "image/png",
    }
}

/// How one node ended in a build.
#[derive(Debug)]
enum Outcome {
    /// Generated or cached: `result` is what it made (or found).
    Done {
        status: Status,
        plan: Box<NodePlan>,
        result: Box<Hit>,
    },
    Failed {
        plan: Option<Box<NodePlan>>,
        error: String,
        /// What the failed attempts may have been billed (requests whose outcome is unknown).
        cost_usd: f64,
    },
    /// Ctrl-C came first.
    NotStarted,
    /// Not made, by rule: waiting for approval of its frames, or past the budget (skipped).
    Held {
        status: Status,
        reasons: Vec<String>,
    },
}

/// A new output, in the blob store.
pub(crate) struct Produced {
    blob: String,
    size: u64,
    /// Who made it (with fallbacks, not always the configured backend).
    backend: String,
    model: String,
    /// The whole cost of the request (all its samples, and attempts that may have been billed).
    cost_usd: f64,
    media: Media,
    pub(crate) provenance: Provenance,
    /// Further videos of the same request (`sample_count` > 1): `(blob, size)`, each a take.
    pub(crate) more: Vec<(String, u64)>,
}

/// Why `produce` made nothing.
pub(crate) struct NotProduced {
    pub(crate) error: String,
    /// What attempts whose outcome is unknown may have been billed.
    pub(crate) cost_usd: f64,
}

impl NotProduced {
    /// A local failure (the store, ffmpeg), with its causes.
    pub(crate) fn from_error(e: anyhow::Error) -> NotProduced {
        format!("{e:#}").into()
    }
}

impl From<String> for NotProduced {
    fn from(error: String) -> NotProduced {
        NotProduced {
            error,
            cost_usd: 0.0,
        }
    }
}

impl From<&str> for NotProduced {
    fn from(error: &str) -> NotProduced {
        error.to_string().into()
    }
}

/// The scheduler's shared state (what a node kind's production may use).
pub(crate) struct Runner {
    pub(crate) session: Session,
    pub(crate) store: Arc<Store>,
    global: Semaphore,
    frame_jobs: Arc<Limiter>,
    video_jobs: Arc<Limiter>,
    /// Seconds each generation took, by pool, for the ETA.
    latencies: std::sync::Mutex<HashMap<Pool, (f64, u32)>>,
    /// Reference bytes, read once, on the first frame generation that needs them.
    ref_bytes: OnceCell<Vec<ImageInput>>,
    /// Set on the first Ctrl-C: nothing new starts.
    stopping: std::sync::atomic::AtomicBool,
    /// Nodes named by `--force`: a submission recorded as uncertain may be sent again.
    forced: std::collections::HashSet<usize>,
    budget: Budget,
    /// `ttv cache pull`: nothing is generated.
    remote_only: bool,
}

/// The most a build may spend, and what it has spent and holds for generations running.
struct Budget {
    limit: Option<f64>,
    /// An unknown price counts as 0 (`--allow-unknown-cost`) rather than as over any budget.
    allow_unknown: bool,
    /// (spent, reserved for running generations)
    money: std::sync::Mutex<(f64, f64)>,
}

impl Budget {
    /// Holds `estimate` for a generation about to start, or says why it must not start.
    fn reserve(&self, estimate: Option<f64>) -> Option<String> {
        let limit = self.limit?;
        let amount = match estimate {
            Some(a) => a,
            None if self.allow_unknown => 0.0,
            None => {
                return Some(format!(
                    "its price is unknown, and the budget is ${limit:.2} (--allow-unknown-cost \
                     to make it anyway)"
                ));
            }
        };
        let mut money = self.money.lock().unwrap_or_else(|e| e.into_inner());
        let (spent, reserved) = *money;
        if spent + reserved + amount > limit + 1e-9 {
            return Some(format!(
                "its ${amount:.2} would pass the budget of ${limit:.2} (${spent:.2} spent, \
                 ${reserved:.2} in flight)"
            ));
        }
        money.1 += amount;
        None
    }

    fn spend(&self, amount: f64) {
        self.money.lock().unwrap_or_else(|e| e.into_inner()).0 += amount;
    }
}

/// A running generation's hold on the budget, released when it ends (what it really cost is
/// then counted by [`Budget::spend`]).
struct Reservation<'a> {
    budget: &'a Budget,
    amount: f64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget
            .money
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1 -= self.amount;
    }
}

/// Runs a build of the session's needed nodes. Returns the report; `failed > 0` means exit 1.
pub async fn build(session: Session, opts: &BuildOptions) -> Result<Report> {
    let store = session
        .store
        .clone()
        .ok_or_else(|| anyhow!("the build has no cache open"))?;
    let cfg = &session.project.config;
    let jobs = opts
        .jobs
        .unwrap_or(cfg.keyframes.jobs.most() + cfg.video.jobs.most())
        .max(1);
    let budget = Budget {
        limit: opts.max_cost.or(cfg.budget_usd),
        allow_unknown: opts.allow_unknown_cost,
        money: Default::default(),
    };
    let forced = opts
        .force
        .iter()
        .filter_map(|f| session.graph.index_of(f))
        .collect();
    let runner = Arc::new(Runner {
        global: Semaphore::new(jobs),
        // `jobs: auto` starts where fixed limits used to be by default.
        frame_jobs: Limiter::new(cfg.keyframes.jobs, 4),
        video_jobs: Limiter::new(cfg.video.jobs, 2),
        latencies: Default::default(),
        store,
        session,
        ref_bytes: OnceCell::new(),
        stopping: Default::default(),
        forced,
        budget,
        remote_only: opts.remote_only,
    });
    let started_at = now_secs();
    runner.store.sweep_tmp();
    let s = &runner.session;
    let queued = runner.store.publish_queued();
    if queued > 0 {
        s.progress.info(&format!(
            "uploading {queued} result(s) that earlier builds could not send to the remote cache"
        ));
    }
    let mut t = Tracker::new(s);
    // Nodes the plan found cached (with all their inputs cached) are placed in build/ right
    // here, without a task each: a no-op build spawns nothing.
    let mut planned =
        std::mem::take(&mut *s.cached_plans.lock().unwrap_or_else(|e| e.into_inner()));
    for &i in &s.needed {
        let inputs_done = s.graph.nodes[i]
            .deps
            .iter()
            .all(|d| t.blobs.contains_key(d));
        if let Some(plan) = planned.remove(&i).filter(|_| inputs_done)
            && let Some(outcome) = runner.reuse(i, plan)?
        {
            t.finish(s, i, outcome);
        }
    }
    let mut ready: Vec<usize> = s
        .needed
        .iter()
        .copied()
        .filter(|i| t.waiting.get(i) == Some(&0))
        .collect();
    let mut set: JoinSet<(usize, Outcome)> = JoinSet::new();
    let progress = s.progress.clone();
    let mut ctrl_c = 0u32;
    // Running tasks -> their node, and a handle to stop them.
    let mut running: HashMap<tokio::task::Id, (usize, tokio::task::AbortHandle)> = HashMap::new();
    loop {
        if ctrl_c == 0 {
            for i in ready.drain(..) {
                t.waiting.remove(&i);
                let deps: HashMap<usize, String> = s.graph.nodes[i]
                    .deps
                    .iter()
                    .map(|d| (*d, t.blobs[d].clone()))
                    .collect();
                let r = runner.clone();
                let handle = set.spawn(async move { (i, r.run_node(i, deps).await) });
                running.insert(handle.id(), (i, handle));
            }
        }
        if set.is_empty() {
            break;
        }
        let joined = tokio::select! {
            j = set.join_next_with_id() => j,
            _ = tokio::signal::ctrl_c() => {
                ctrl_c += 1;
                match ctrl_c {
                    1 => {
                        runner.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                        progress.warn(&format!(
                            "interrupted: starting nothing new; waiting for {} running node(s), whose results are paid for (Ctrl-C again to stop waiting for video)",
                            set.len()
                        ));
                    }
                    2 => {
                        // Video can be left: its operation is recorded and the next build polls
                        // it again at no cost. An image request already sent is paid for and
                        // answers within seconds: it is waited for.
                        let (videos, images) = abort_resumable(&running, s);
                        progress.warn(&format!(
                            "interrupted again: stopped waiting for {videos} video(s), which the next build resumes without paying again; waiting for {images} image request(s) already sent (paid): Ctrl-C a third time to drop them"
                        ));
                    }
                    _ => {
                        progress.warn(&format!(
                            "interrupted a third time: dropping {} request(s) in flight; an image dropped now may be paid for again",
                            set.len()
                        ));
                        set.abort_all();
                        break;
                    }
                }
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (id, (i, outcome)) = match joined {
            Ok(done) => done,
            // A task stopped by a second Ctrl-C: reported as not started (skipped).
            Err(e) if e.is_cancelled() => {
                running.remove(&e.id());
                continue;
            }
            Err(e) => return Err(anyhow!("a build task panicked: {e}")),
        };
        running.remove(&id);
        ready.extend(t.finish(s, i, outcome));
        progress.set_message(|| runner.status_line(&t));
    }
    let interrupted = ctrl_c > 0;
    // Nodes never started (interrupted, or downstream of a failure) are reported as skipped.
    for &i in &s.needed {
        t.results.entry(i).or_insert_with(|| NodeReport {
            id: s.graph.nodes[i].id.clone(),
            kind: s.graph.nodes[i].kind_name(),
            status: Status::Skipped,
            key: None,
            blob: None,
            output: None,
            reasons: vec!["interrupted before it started".into()],
            take: None,
            backend: None,
            cost_usd: 0.0,
            error: None,
            cost_unknown: false,
            source: None,
        });
    }
    let uploads_left = runner.store.unpushed_count();
    if let Some(remote) = runner.store.configured_remote()
        && remote.writable()
        && uploads_left > 0
    {
        progress.set_message(|| format!("uploading {uploads_left} result(s) to {}", remote.url));
    }
    if let Some(why) = runner.store.flush_remote().await {
        progress.warn(&format!(
            "{why}; {} result(s) wait to be uploaded: the next build or `ttv cache push` sends them",
            runner.store.unpushed_count()
        ));
    }
    progress.finish();
    let mut report = Report::from_nodes(t.results.into_values().collect());
    report.interrupted = interrupted;
    for (name, limiter) in [
        ("frames", &runner.frame_jobs),
        ("video", &runner.video_jobs),
    ] {
        let stats = limiter.stats();
        if stats.used {
            report.concurrency.insert(name.to_string(), stats);
        }
    }
    runner.finish(&report, started_at)?;
    Ok(report)
}

/// Aborts the running tasks whose work resumes for free (video polling, the final stitch);
/// returns how many were stopped and how many others still run.
fn abort_resumable(
    running: &HashMap<tokio::task::Id, (usize, tokio::task::AbortHandle)>,
    s: &Session,
) -> (usize, usize) {
    let mut stopped = 0;
    for (i, handle) in running.values() {
        // A frame request already sent is paid for and answers within seconds; anything else
        // resumes (a video operation) or is free to make again.
        if s.graph.nodes[*i].kind().pool(&s.project.config) != Pool::Frames {
            handle.abort();
            stopped += 1;
        }
    }
    (stopped, running.len() - stopped)
}

/// The scheduler's bookkeeping: inputs still missing per node, outputs so far, the report.
struct Tracker {
    /// Needed nodes not started yet -> number of inputs not finished yet.
    waiting: HashMap<usize, usize>,
    blobs: HashMap<usize, String>,
    results: BTreeMap<usize, NodeReport>,
    /// Money so far, for the progress display.
    spent: f64,
    saved: f64,
}

impl Tracker {
    fn new(s: &Session) -> Tracker {
        Tracker {
            waiting: s
                .needed
                .iter()
                .map(|&i| (i, s.graph.nodes[i].deps.len()))
                .collect(),
            blobs: HashMap::new(),
            results: BTreeMap::new(),
            spent: 0.0,
            saved: 0.0,
        }
    }

    /// Records how node `i` ended; returns the nodes that became ready.
    fn finish(&mut self, s: &Session, i: usize, outcome: Outcome) -> Vec<usize> {
        let node = &s.graph.nodes[i];
        let progress = &s.progress;
        self.waiting.remove(&i);
        let mut ready = Vec::new();
        let report = match outcome {
            Outcome::Done {
                status,
                plan,
                result,
            } => {
                self.blobs.insert(i, result.blob.clone());
                for &d in &s.graph.dependents[i] {
                    if let Some(w) = self.waiting.get_mut(&d) {
                        *w -= 1;
                        if *w == 0 {
                            ready.push(d);
                        }
                    }
                }
                let reasons = if status == Status::Generated {
                    s.reasons(i, &plan)
                } else {
                    Vec::new()
                };
                NodeReport {
                    id: node.id.clone(),
                    kind: node.kind_name(),
                    status,
                    key: Some(plan.key),
                    blob: Some(result.blob),
                    output: Some(node.output.clone()),
                    reasons,
                    take: Some(plan.take),
                    backend: Some(result.backend),
                    cost_usd: result.cost_usd,
                    error: None,
                    cost_unknown: status == Status::Generated && s.estimate(i).is_none(),
                    source: (status == Status::Cached).then_some(if result.from_remote {
                        "remote"
                    } else {
                        "local"
                    }),
                }
            }
            Outcome::Failed {
                plan,
                error,
                cost_usd,
            } => {
                let mut r = failed_report(s, i, plan.as_deref(), error);
                r.cost_usd = cost_usd;
                r
            }
            // Reported as skipped with everything else that did not start.
            Outcome::NotStarted => return ready,
            Outcome::Held { status, reasons } => {
                let mut r = failed_report(s, i, None, String::new());
                r.status = status;
                r.error = None;
                r.reasons = reasons;
                let why = match status {
                    Status::Waiting => format!("{} is waiting for approval", node.id),
                    _ => format!("{} was not made", node.id),
                };
                progress.finished(
                    &format!(
                        "{:<9} {}: {}",
                        status_word(status),
                        node.id,
                        r.reasons.join("; ")
                    ),
                    true,
                );
                self.hold_dependents(s, i, status, &why);
                self.results.insert(i, r);
                return ready;
            }
        };
        match report.status {
            Status::Generated => self.spent += report.cost_usd,
            Status::Cached => self.saved += report.cost_usd,
            _ => {}
        }
        match report.status {
            Status::Generated => progress.finished(
                &format!(
                    "generated {} ({}{})",
                    report.id,
                    report.backend.as_deref().unwrap_or("?"),
                    money_suffix(report.cost_usd)
                ),
                true,
            ),
            Status::Cached if report.source == Some("remote") => progress.finished(
                &format!("remote    {} (from the shared cache)", report.id),
                true,
            ),
            Status::Cached if progress.verbosity() == crate::progress::Verbosity::Verbose => {
                progress.finished(&format!("cached    {}", report.id), true)
            }
            Status::Cached => progress.finished("", true),
            _ => {
                progress.finished(
                    &format!(
                        "FAILED    {}: {}",
                        report.id,
                        report.error.as_deref().unwrap_or("")
                    ),
                    true,
                );
                let why = format!("{} failed", node.id);
                self.hold_dependents(s, i, Status::Skipped, &why);
            }
        }
        self.results.insert(i, report);
        ready
    }

    /// Marks everything downstream of a node that was not made (failed, waiting, past the
    /// budget) with `status` and `why`: it will never be ready in this build.
    fn hold_dependents(&mut self, s: &Session, from: usize, status: Status, why: &str) {
        let mut stack = vec![from];
        while let Some(i) = stack.pop() {
            for &d in &s.graph.dependents[i] {
                if self.waiting.remove(&d).is_none() {
                    continue;
                }
                self.results.insert(
                    d,
                    NodeReport {
                        id: s.graph.nodes[d].id.clone(),
                        kind: s.graph.nodes[d].kind_name(),
                        status,
                        key: None,
                        blob: None,
                        output: None,
                        reasons: vec![why.to_string()],
                        take: None,
                        backend: None,
                        cost_usd: 0.0,
                        error: None,
                        cost_unknown: false,
                        source: None,
                    },
                );
                stack.push(d);
            }
        }
    }
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Waiting => "WAITING",
        _ => "SKIPPED",
    }
}

fn money_suffix(cost: f64) -> String {
    if cost > 0.0 {
        format!(", ${cost:.2}")
    } else {
        String::new()
    }
}

fn failed_report(s: &Session, i: usize, plan: Option<&NodePlan>, error: String) -> NodeReport {
    let node = &s.graph.nodes[i];
    NodeReport {
        id: node.id.clone(),
        kind: node.kind_name(),
        status: Status::Failed,
        key: plan.map(|p| p.key.clone()),
        blob: None,
        output: None,
        reasons: Vec::new(),
        take: plan.map(|p| p.take),
        backend: None,
        cost_usd: 0.0,
        error: Some(error),
        cost_unknown: false,
        source: None,
    }
}

impl Runner {
    async fn run_node(self: Arc<Self>, i: usize, deps: HashMap<usize, String>) -> Outcome {
        self.try_run_node(i, &deps)
            .await
            .unwrap_or_else(|e| Outcome::Failed {
                plan: None,
                error: match store::advice(&e, || self.store.db_path()) {
                    Some(help) => format!("{e:#}; {help}"),
                    None => format!("{e:#}"),
                },
                cost_usd: 0.0,
            })
    }

    /// Places a cache hit in build/. `None` when its blob turns out damaged (a miss, then).
    fn reuse(&self, i: usize, plan: NodePlan) -> Result<Option<Outcome>> {
        let s = &self.session;
        let node = &s.graph.nodes[i];
        let Some(hit) = plan.hit.clone() else {
            return Ok(None);
        };
        if !plan.in_build
            && Materializer::new(&s.project.root, &s.stats).place(
                &node.output,
                &self.store.blob_path(&hit.blob),
                &hit.blob,
            )? == Placed::CorruptBlob
        {
            s.progress.warn(&format!(
                "{}: cached blob {} is damaged; making it again",
                node.id,
                &hit.blob[..12]
            ));
            return Ok(None);
        }
        Ok(Some(Outcome::Done {
            status: Status::Cached,
            result: Box::new(hit),
            plan: Box::new(plan),
        }))
    }

    async fn try_run_node(&self, i: usize, deps: &HashMap<usize, String>) -> Result<Outcome> {
        let s = &self.session;
        let node = &s.graph.nodes[i];
        let mut plan = s.plan_node(i, deps)?;
        if plan.hit.is_some() {
            match self.reuse(i, plan.clone())? {
                Some(outcome) => return Ok(outcome),
                None => plan.hit = None,
            }
        }
        // A local miss asks the remote tier (a rerolled generation wants a new take).
        let base_json = Recipe {
            take: 0,
            ..plan.recipe.clone()
        }
        .canonical_json();
        let base_key = plan.recipe.base_key();
        let warn = |m: &str| s.progress.warn(m);
        if self.store.remote().is_some() && !(s.rerolled(i) && plan.recipe.is_generation()) {
            // The take the node uses, when it is fixed (pinned, or the latest made here);
            // otherwise the remote's latest.
            let fixed = s.pinned_take(i).is_some() || self.store.latest_take(&base_key)?.is_some();
            let want = RemoteLookup {
                node_id: &node.id,
                base_json: &base_json,
                base_key: &base_key,
                take: fixed.then_some(plan.take),
            };
            if let Some(hit) = self.store.fetch_remote(&want, &warn).await
                && let Some(outcome) = self.reuse(i, plan.clone().with_hit(hit))?
            {
                return Ok(outcome);
            }
        }
        if self.remote_only && plan.recipe.is_generation() {
            return Ok(Outcome::Held {
                status: Status::Skipped,
                reasons: vec!["in neither the local nor the remote cache".into()],
            });
        }
        let held = s.unapproved(i, deps);
        if !held.is_empty() {
            return Ok(Outcome::Held {
                status: Status::Waiting,
                reasons: held,
            });
        }
        let mat = Materializer::new(&s.project.root, &s.stats);
        // Generations wait for a slot of their backend and of the global limit; after Ctrl-C a
        // node that was still waiting for one does not start.
        let pool = node.kind().pool(&s.project.config);
        let backend_jobs = self.jobs_of(pool);
        let mut permits = self.slots(backend_jobs).await?;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Outcome::NotStarted);
        }
        let estimate = match backend_jobs {
            Some(_) => s.estimate(i),
            None => Some(0.0),
        };
        if let Some(reason) = self.budget.reserve(estimate) {
            return Ok(Outcome::Held {
                status: Status::Skipped,
                reasons: vec![reason],
            });
        }
        let _reservation = Reservation {
            budget: &self.budget,
            amount: estimate.unwrap_or(0.0),
        };
        let started = Instant::now();
        let bar = s.progress.start(&node.id);
        let status = bar.status_fn();
        // Single flight across machines: the lease on the key, or the result of the machine
        // that holds it.
        let lease = if plan.recipe.is_generation() {
            let want = RemoteLookup {
                node_id: &node.id,
                base_json: &base_json,
                base_key: &base_key,
                take: Some(plan.take),
            };
            match self.store.single_flight(&want, &*status, &warn).await {
                Flight::Fetched(hit) => {
                    drop(bar);
                    if let Some(outcome) = self.reuse(i, plan.clone().with_hit(hit))? {
                        return Ok(outcome);
                    }
                    return Err(anyhow!(
                        "{}: the result another machine made could not be placed",
                        node.id
                    ));
                }
                Flight::Leased(guard) => Some(guard),
                Flight::Alone => None,
            }
        } else {
            None
        };
        let produced = loop {
            let load: LoadFn = match &permits {
                Some((p, _)) => p.load_fn(),
                None => Arc::new(|_| {}),
            };
            let produced = self.produce(i, &plan, deps, status.clone(), load).await;
            // Out of retries on 429s while other generations got through: the service is full,
            // not refusing this one. Nothing was billed; wait for a slot and send it again.
            match (&produced, &permits) {
                (Err(e), Some((p, _)))
                    if e.cost_usd == 0.0
                        && p.refused()
                        && p.others_got_through()
                        && !self.stopping.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    status(
                        "refused with 429 while the service was full: waiting for a slot".into(),
                    );
                    drop(permits.take());
                    permits = self.slots(backend_jobs).await?;
                }
                _ => break produced,
            }
        };
        drop(permits);
        drop(bar);
        if produced.is_ok() && backend_jobs.is_some() {
            let mut l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
            let e = l.entry(pool).or_default();
            e.0 += started.elapsed().as_secs_f64();
            e.1 += 1;
        }
        let p = match produced {
            Ok(p) => {
                self.budget.spend(p.cost_usd);
                p
            }
            Err(NotProduced { error, cost_usd }) => {
                self.budget.spend(cost_usd);
                if let Some(guard) = lease {
                    self.store.release(guard).await;
                }
                return Ok(Outcome::Failed {
                    plan: Some(Box::new(plan)),
                    error,
                    cost_usd,
                });
            }
        };
        let samples = 1 + p.more.len();
        let base_key = plan.recipe.base_key();
        let provenance = provenance_json(&p.provenance);
        let action = |key: String, take: u32, blob: String, size: u64| Action {
            key,
            base_key: base_key.clone(),
            node_kind: node.kind_name().into(),
            node_id: node.id.clone(),
            blob,
            media_type: p.media.mime().into(),
            backend: p.backend.clone(),
            model: p.model.clone(),
            created_at: now_secs(),
            gen_ms: started.elapsed().as_millis() as i64,
            // Each take carries its share of what the request cost.
            cost_usd: p.cost_usd / samples as f64,
            take,
            size,
            provenance: provenance.clone(),
        };
        // The result is durable (blobs in place, rows committed) before anything else is done
        // with it: a crash after this line never loses a paid generation. Further samples of
        // the request become the next free takes.
        let mut made = vec![action(plan.key.clone(), plan.take, p.blob.clone(), p.size)];
        if !p.more.is_empty() {
            let base_json = Recipe {
                take: 0,
                ..plan.recipe.clone()
            }
            .canonical_json();
            let first_free = self
                .store
                .latest_take(&base_key)?
                .map_or(plan.take, |h| h.take.max(plan.take))
                + 1;
            for (take, (blob, size)) in (first_free..).zip(&p.more) {
                made.push(action(
                    Recipe::key_at_take(&base_json, take),
                    take,
                    blob.clone(),
                    *size,
                ));
            }
        }
        let recipe_json = |take: u32| {
            Recipe {
                take,
                ..plan.recipe.clone()
            }
            .canonical_json()
        };
        let recipes: Vec<String> = made.iter().map(|a| recipe_json(a.take)).collect();
        let rows: Vec<(&Action, &str)> = made
            .iter()
            .zip(&recipes)
            .map(|(a, r)| (a, r.as_str()))
            .collect();
        self.store.record_actions(&rows)?;
        self.store.clear(&plan.key)?;
        // Shared with the team (write-behind; the lease goes once they are up).
        let keys: Vec<String> = made.iter().map(|a| a.key.clone()).collect();
        self.store.publish(&keys, lease);
        // The node uses its pinned take, else the latest.
        let pinned = s.pinned_take(i).is_some();
        let chosen = if pinned {
            made.remove(0)
        } else {
            made.pop().expect("at least one take")
        };
        if chosen.take != plan.take {
            plan.key = chosen.key.clone();
            plan.take = chosen.take;
            plan.recipe.take = chosen.take;
        }
        let mut result = Hit::from(&chosen);
        result.cost_usd = p.cost_usd;
        let path = self.store.blob_path(&result.blob);
        if mat.place(&node.output, &path, &result.blob)? == Placed::CorruptBlob {
            return Err(anyhow!(
                "the blob just stored for {} at {} does not match its hash: the disk may be failing; run `ttv verify`, then build again",
                node.id,
                path.display()
            ));
        }
        Ok(Outcome::Done {
            status: Status::Generated,
            result: Box::new(result),
            plan: Box::new(plan),
        })
    }

    /// A slot of the backend's limiter and of the global limit. The backend's first: a frame
    /// queued for a frame slot must not hold a global slot that a ready segment could use.
    async fn slots(
        &self,
        jobs: Option<&Arc<Limiter>>,
    ) -> Result<Option<(Permit, SemaphorePermit<'_>)>> {
        Ok(match jobs {
            Some(jobs) => {
                let backend = jobs.acquire().await?;
                Some((backend, self.global.acquire().await?))
            }
            None => None,
        })
    }

    /// The totals bar's message: money, each backend's limit, and the time left: per backend,
    /// the generations left in waves of its limit, at the latency seen so far (before any, the
    /// typical one the plan estimates with).
    fn status_line(&self, t: &Tracker) -> String {
        let s = &self.session;
        let cfg = &s.project.config;
        let mut line = format!("spent ${:.2}, saved ${:.2}", t.spent, t.saved);
        let latencies = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        let mut eta = 0.0;
        for (kind, pool, backend) in [
            ("frames", Pool::Frames, &cfg.keyframes.backend),
            ("video", Pool::Video, &cfg.video.backend),
        ] {
            let Some(limiter) = self.jobs_of(pool) else {
                continue;
            };
            let stats = limiter.stats();
            if stats.used {
                line += &format!(", {kind} {} at once", stats.limit);
            }
            let left = s
                .needed
                .iter()
                .filter(|&&i| {
                    !t.results.contains_key(&i) && s.graph.nodes[i].kind().pool(cfg) == pool
                })
                .count();
            let latency = match latencies.get(&pool) {
                Some((total, n)) if *n > 0 => total / f64::from(*n),
                _ => crate::plan::typical_latency(backend, pool == Pool::Video),
            };
            eta += left.div_ceil(stats.limit.max(1)) as f64 * latency;
        }
        if eta > 0.0 {
            line += &format!(", about {} left", crate::progress::human_duration(eta));
        }
        line
    }

    /// Makes node `i`'s output and puts it in the blob store, or says why it could not.
    async fn produce(
        &self,
        i: usize,
        plan: &NodePlan,
        deps: &HashMap<usize, String>,
        status: Arc<dyn Fn(String) + Send + Sync>,
        load: LoadFn,
    ) -> Result<Produced, NotProduced> {
        let s = &self.session;
        let node = &s.graph.nodes[i];
        let ctx = GenContext {
            node_id: node.id.clone(),
            key: plan.key.clone(),
            tmp_dir: self.store.tmp_dir().to_path_buf(),
            operations: self.store.clone() as Arc<dyn OperationLog>,
            status,
            uncertain: Arc::default(),
            resubmit: self.forced.contains(&i),
            load,
        };
        node.kind.produce(self, plan, deps, &ctx).await
    }

    /// The limiter of requests in flight a pool waits for (none for local work).
    fn jobs_of(&self, pool: Pool) -> Option<&Arc<Limiter>> {
        match pool {
            Pool::Frames => Some(&self.frame_jobs),
            Pool::Video => Some(&self.video_jobs),
            Pool::Local => None,
        }
    }

    /// A new, empty temporary file ending in `suffix` beside the blob store (so the store takes
    /// it with a rename), removed when dropped unless the store takes it.
    pub(crate) fn temp_file(&self, suffix: &str) -> Result<tempfile::TempPath, String> {
        Ok(tempfile::Builder::new()
            .suffix(suffix)
            .tempfile_in(self.store.tmp_dir())
            .map_err(|e| e.to_string())?
            .into_temp_path())
    }

    pub(crate) async fn blob_input(&self, name: &str, hash: &str) -> Result<ImageInput, String> {
        let path = self.store.blob_path(hash);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Ok(ImageInput {
            name: name.into(),
            mime_type: "image/png".into(),
            bytes: Arc::new(bytes),
        })
    }

    /// Every reference image of the project: read once per build, checked against the hashes
    /// the plan made the keys with.
    pub(crate) async fn all_references(&self) -> Result<&Vec<ImageInput>, String> {
        let s = &self.session;
        self.ref_bytes
            .get_or_try_init(|| async {
                let mut out = Vec::new();
                for f in &s.refs {
                    let bytes = tokio::fs::read(s.project.root.join(&f.rel_path))
                        .await
                        .map_err(|e| format!("reading {}: {e}", f.rel_path.display()))?;
                    if blake3::hash(&bytes).to_hex().as_str() != f.hash {
                        return Err(format!(
                            "{} changed during the build; run `ttv build` again",
                            f.rel_path.display()
                        ));
                    }
                    out.push(ImageInput {
                        name: f.name.clone(),
                        mime_type: mime_of(&f.rel_path).into(),
                        bytes: Arc::new(bytes),
                    });
                }
                Ok::<_, String>(out)
            })
            .await
    }

    /// Records the node keys, the manifest, the stat cache and the build's totals.
    fn finish(&self, report: &Report, started_at: i64) -> Result<()> {
        let s = &self.session;
        let done: Vec<&NodeReport> = report
            .nodes
            .iter()
            .filter(|n| matches!(n.status, Status::Generated | Status::Cached))
            .collect();
        let keys: Vec<(String, String)> = done
            .iter()
            .filter_map(|n| {
                let key = n.key.clone()?;
                (s.last_keys.get(&n.id) != Some(&key)).then(|| (n.id.clone(), key))
            })
            .collect();
        self.store.set_node_keys(&keys)?;
        let entries: Vec<ManifestEntry> = done
            .iter()
            .map(|n| ManifestEntry {
                node: n.id.clone(),
                output: n.output.clone().unwrap_or_default(),
                key: n.key.clone().unwrap_or_default(),
                blob: n.blob.clone().unwrap_or_default(),
                take: n.take.unwrap_or(1),
                backend: n.backend.clone().unwrap_or_default(),
                cost_usd: n.cost_usd,
            })
            .collect();
        let name = s.project.config.name.clone().unwrap_or_default();
        write_manifest(&s.project.root, &name, entries, &s.stats)
            .context("writing build/manifest.json")?;
        s.save_stats()?;
        if report.generated + report.failed > 0 {
            self.store.record_build(&BuildRecord {
                started_at,
                generated: report.generated,
                cached: report.cached,
                failed: report.failed,
                cost_usd: report.cost_usd,
                saved_usd: report.saved_usd,
            })?;
        }
        Ok(())
    }
}

impl Produced {
    pub(crate) fn new(
        blob: String,
        size: u64,
        backend: &str,
        model: &str,
        cost_usd: f64,
        media: Media,
    ) -> Produced {
        Produced {
            blob,
            size,
            backend: backend.into(),
            model: model.into(),
            cost_usd,
            media,
            provenance: Provenance::default(),
            more: Vec::new(),
        }
    }
}

/// The provenance column of an action: only what the service reported or was sent.
fn provenance_json(p: &Provenance) -> Option<String> {
    if *p == Provenance::default() {
        return None;
    }
    Some(
        serde_json::json!({
            "model_version": p.model_version,
            "response_id": p.response_id,
            "params": p.params,
        })
        .to_string(),
    )
}

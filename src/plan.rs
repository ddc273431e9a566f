//! Resolving the graph against the cache: each node's recipe, key, take and cache hit. This one
//! walk is behind `plan`, `explain`, `takes`, `gc` and the build's decisions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde::Serialize;

use crate::backends::{self, FrameGenerator, VideoBackend};
use crate::error::{ProjectError, ProjectErrors, UsageError};
use crate::filehash::StatCache;
use crate::graph::Graph;
use crate::kinds::Pool;
use crate::materialize::Materializer;
use crate::models::{self, Lifecycle};
use crate::prices::PriceTable;
use crate::progress::Progress;
use crate::project::Project;
use crate::recipe::{self, Recipe, TakeKeys};
use crate::stitch;
use crate::store::{Hit, Remote, Store, Verdict};

/// Status of a node in the JSON output (the CLI contract of DESIGN.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Generated,
    Cached,
    Failed,
    Skipped,
    Dirty,
    /// Held back until the frames it is made from are approved (`video.require_approval`).
    Waiting,
}

/// One node's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: String,
    pub kind: &'static str,
    pub status: Status,
    pub key: Option<String>,
    pub blob: Option<String>,
    pub output: Option<String>,
    pub reasons: Vec<String>,
    pub take: Option<u32>,
    pub backend: Option<String>,
    /// What this node cost (generated), cost before (cached), or will cost (dirty, estimated).
    /// A generation that failed after a request whose outcome is unknown counts what it may
    /// have been billed.
    pub cost_usd: f64,
    pub error: Option<String>,
    /// The model has no known price: `cost_usd` leaves it out.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cost_unknown: bool,
    /// A cached node: where its result was found, `local` or `remote` (the shared cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
}

/// The `--json` object of `build` and `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Segments (and what uses them) held back for approval of their frames.
    #[serde(skip_serializing_if = "is_zero")]
    pub waiting: usize,
    pub cost_usd: f64,
    pub saved_usd: f64,
    pub nodes: Vec<NodeReport>,
    /// Plan only: the estimated wall time of the dirty work, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_seconds: Option<f64>,
    /// Build only, when Ctrl-C stopped it: what was not started is `skipped`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// Nodes to generate (plan) or generated (build) whose price is unknown: `cost_usd` is
    /// then a lower bound.
    #[serde(skip_serializing_if = "is_zero")]
    pub cost_unknown: usize,
    /// Build only: each backend that generated, with its limit of requests in flight at the
    /// end and how many requests the service refused with 429 (`frames`, `video`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub concurrency: BTreeMap<String, crate::limiter::Stats>,
    /// Build only: cached nodes found in the remote cache (downloaded, nothing paid).
    #[serde(skip_serializing_if = "is_zero")]
    pub remote: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Report {
    pub(crate) fn from_nodes(nodes: Vec<NodeReport>) -> Report {
        let count = |s: Status| nodes.iter().filter(|n| n.status == s).count();
        let sum = |s: &[Status]| -> f64 {
            let v: f64 = nodes
                .iter()
                .filter(|n| s.contains(&n.status))
                .map(|n| n.cost_usd)
                .sum();
            // `+ 0.0` turns the -0.0 of an empty float sum into 0.
            (v * 1e6).round() / 1e6 + 0.0
        };
        Report {
            generated: count(Status::Generated),
            cached: count(Status::Cached),
            failed: count(Status::Failed),
            skipped: count(Status::Skipped),
            waiting: count(Status::Waiting),
            cost_usd: sum(&[Status::Generated, Status::Dirty, Status::Failed]),
            saved_usd: sum(&[Status::Cached]),
            cost_unknown: nodes
                .iter()
                .filter(|n| n.cost_unknown && matches!(n.status, Status::Generated | Status::Dirty))
                .count(),
            remote: nodes.iter().filter(|n| n.source == Some("remote")).count(),
            nodes,
            estimated_seconds: None,
            interrupted: false,
            concurrency: BTreeMap::new(),
        }
    }
}

/// A reference image, hashed.
#[derive(Debug, Clone)]
pub(crate) struct RefFile {
    pub(crate) name: String,
    pub(crate) rel_path: PathBuf,
    pub(crate) hash: String,
}

/// Everything known before any work starts: the project, the graph, the selected nodes, the
/// backends (checked), the input hashes and the cache.
pub struct Session {
    pub project: Project,
    pub graph: Graph,
    pub needed: Vec<usize>,
    pub store: Option<Arc<Store>>,
    pub(crate) prices: PriceTable,
    pub(crate) frames: Option<Arc<dyn FrameGenerator>>,
    pub(crate) videos: Vec<VideoBackend>,
    pub(crate) refs: Vec<RefFile>,
    /// blake3 of the project's files that recipes hash (a `start_image`), by relative path.
    files: HashMap<String, String>,
    /// Shared with the no-op fast path, which records the rows the build relied on.
    pub(crate) stats: Arc<Mutex<StatCache>>,
    /// Node id -> key at its last build (what explanations compare against).
    pub(crate) last_keys: HashMap<String, String>,
    /// Verdicts on frames, by blob (loaded when `video.require_approval` is on).
    pub(crate) verdicts: HashMap<String, Verdict>,
    /// Nodes asked to be made again as a new take.
    rerolls: HashSet<usize>,
    /// Plans of the nodes [`Session::plan`] found cached, for the build to reuse.
    pub(crate) cached_plans: Mutex<HashMap<usize, NodePlan>>,
    pub(crate) progress: Progress,
}

impl NodePlan {
    /// This plan with a hit found after the plan was made (in the remote tier): its take and
    /// key are the hit's.
    pub(crate) fn with_hit(mut self, hit: Hit) -> NodePlan {
        self.take = hit.take;
        self.key = hit.key.clone();
        self.recipe.take = hit.take;
        self.hit = Some(hit);
        self.in_build = false;
        self
    }
}

/// A node's recipe and what the cache holds for it.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub recipe: Recipe,
    pub key: String,
    pub take: u32,
    /// The usable cached result, if any.
    pub hit: Option<Hit>,
    /// build/ already holds the hit's bytes (by stat against the stat cache): nothing to place,
    /// and the blob was not looked at.
    pub in_build: bool,
}

impl Session {
    /// Loads and checks everything a command needs. Creates nothing: a project with a problem
    /// is reported before `.ttv/` exists (a build creates it with [`Session::ensure_store`]).
    /// In a project that has a cache and no problem, a newly parsed ttv.yaml is kept there for
    /// the next run (`ttv plan` after an edit, then the build).
    pub fn open(
        project: Project,
        targets: &[String],
        rerolls: &[String],
        progress: Progress,
    ) -> Result<Session> {
        for note in &project.notes {
            progress.warn(note);
        }
        let graph = Graph::from_project(&project);
        let needed = graph.select(&project, targets)?;
        let mut reroll_set = HashSet::new();
        for r in rerolls {
            let i = graph.index_of(r).ok_or_else(|| {
                UsageError::new(format!(
                    "--reroll {r}: no such node (give a node id such as frame/{}/end; `ttv plan` lists them)",
                    project.config.shots.first().map_or("arrival", |s| s.id.as_str())
                ))
            })?;
            reroll_set.insert(i);
        }
        let cfg = &project.config;
        let pools: HashSet<Pool> = needed
            .iter()
            .map(|&i| graph.nodes[i].kind().pool(cfg))
            .collect();
        let needs_frames = pools.contains(&Pool::Frames);
        let needs_video = pools.contains(&Pool::Video);
        let needs_refs = needed
            .iter()
            .any(|&i| graph.nodes[i].kind().uses_references(cfg));
        let mut errors = Vec::new();
        let frames = if needs_frames {
            match backends::frame_backend(&project) {
                Ok(f) => Some(f),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        } else {
            None
        };
        let videos = if needs_video {
            backends::video_backends(&project).unwrap_or_else(|e| {
                errors.push(e);
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let store = Store::open_existing(&project.cache_dir())?.map(Arc::new);
        let mut stats = StatCache::load(store.as_deref())?;
        let mut refs = Vec::new();
        if needs_refs {
            for r in &project.references {
                match hash_image(&project, &mut stats, &r.rel_path) {
                    Ok(hash) => refs.push(RefFile {
                        name: r.name.clone(),
                        rel_path: r.rel_path.clone(),
                        hash,
                    }),
                    Err(e) => errors.push(e),
                }
            }
        }
        let mut files = HashMap::new();
        for &i in &needed {
            for path in graph.nodes[i].kind().files(&project.config) {
                match hash_image(&project, &mut stats, Path::new(path)) {
                    Ok(h) => {
                        files.insert(path.to_string(), h);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let verdicts = match &store {
            Some(s) if project.config.video.require_approval => s.verdicts()?,
            _ => HashMap::new(),
        };
        let last_keys = match &store {
            Some(s) => s.node_keys()?,
            None => HashMap::new(),
        };
        let mut session = Session {
            prices: PriceTable::new(&project.config.prices),
            project,
            graph,
            needed,
            store,
            frames,
            videos,
            refs,
            files,
            stats: Arc::new(Mutex::new(stats)),
            last_keys,
            rerolls: reroll_set,
            verdicts,
            cached_plans: Mutex::default(),
            progress,
        };
        errors.extend(session.model_problems());
        errors.extend(session.capability_problems());
        if !errors.is_empty() {
            errors.dedup();
            return Err(ProjectErrors(errors).into());
        }
        if session.store.is_some() {
            session.project.keep_parsed();
        }
        Ok(session)
    }

    /// Attaches the remote tier named by `TTV_REMOTE_CACHE` (`off` for none) or ttv.yaml's
    /// `cache.remote`, read-only when `read_only` or `cache.mode: read-only`. Sends nothing:
    /// the remote is asked only on a local miss.
    pub fn attach_remote(&self, read_only: bool) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let Some(url) = remote_url(&self.project)? else {
            return Ok(());
        };
        let mode = if read_only {
            crate::store::RemoteMode::ReadOnly
        } else {
            self.project.config.cache.mode
        };
        store.attach_remote(Remote::open(&url, mode)?);
        Ok(())
    }

    /// Opens the cache, creating `.ttv/` if this is the project's first build (and keeping the
    /// parsed ttv.yaml there, as [`Session::open`] does in a project that has a cache).
    pub fn ensure_store(&mut self) -> Result<()> {
        if self.store.is_none() {
            self.store = Some(Arc::new(Store::open(&self.project.cache_dir())?));
            self.project.keep_parsed();
        }
        Ok(())
    }

    pub fn progress_info(&self, msg: &str) {
        self.progress.info(msg);
    }

    /// Replaces the progress display (the build's has a totals bar).
    pub fn with_progress(mut self, progress: Progress) -> Session {
        self.progress = progress;
        self
    }

    /// The configured models against the registry: a retired one is an error naming its
    /// replacement; one the registry does not know is used with a warning.
    fn model_problems(&self) -> Vec<ProjectError> {
        let cfg = &self.project.config;
        let mut uses: Vec<(String, &str, &str, models::Kind)> = Vec::new();
        if self.frames.is_some() {
            uses.push((
                "keyframes.model".into(),
                &cfg.keyframes.model,
                &cfg.keyframes.backend,
                models::Kind::Image,
            ));
        }
        for vb in &self.videos {
            let at =
                if vb.setting == "video" || cfg.video.fallback.iter().all(|f| f.model.is_none()) {
                    "video.model".to_string()
                } else {
                    format!("{}.model", vb.setting)
                };
            uses.push((at, &vb.model, vb.generator.name(), models::Kind::Video));
        }
        let mut out = Vec::new();
        for (at, model, backend, kind) in uses {
            let real = backend != "preview";
            match models::find(model) {
                Some(m) if m.kind != kind => out.push(
                    self.project
                        .error_at(
                            &at,
                            format!(
                                "`{model}` is {} {} model, not {} one",
                                m.kind.article(),
                                m.kind.as_str(),
                                kind.as_str()
                            ),
                        )
                        .help(format!("use one of {}", models::current(kind).join(", "))),
                ),
                Some(m) => {
                    if let Lifecycle::Retired { on, replacement } = m.lifecycle {
                        let replace = replacement
                            .map_or(String::new(), |r| format!("use `{r}`, its successor: "));
                        let message =
                            format!("`{model}` ({}) was retired by Google on {on}", m.name);
                        if real {
                            out.push(
                                self.project.error_at(&at, &message).help(format!(
                                    "{replace}set `model:` in ttv.yaml (the model registry lists the current ones: {})",
                                    models::current(kind).join(", ")
                                )),
                            );
                        } else {
                            self.progress.warn(&format!(
                                "{}: {message}; the preview backend does not mind, a real build would fail ({})",
                                self.setting_place(&at),
                                replace.trim_end_matches(": ")
                            ));
                        }
                    }
                }
                None if real => self.progress.warn(&format!(
                    "{}: model `{model}` is not in ttv's model registry: it is checked against \
                     conservative capabilities and its cost is unknown (`ttv doctor` asks Google \
                     whether it serves it; `prices:` can give its price)",
                    self.setting_place(&at)
                )),
                None => {}
            }
        }
        out
    }

    /// `ttv.yaml:LINE` of a setting, for warnings.
    fn setting_place(&self, at: &str) -> String {
        match self.project.line_of(at) {
            Some(l) => format!("{}:{l}", crate::project::CONFIG_FILE),
            None => crate::project::CONFIG_FILE.into(),
        }
    }

    /// Every setting the configured backends cannot serve, for the needed nodes.
    fn capability_problems(&self) -> Vec<ProjectError> {
        let cfg = &self.project.config;
        let mut out = Vec::new();
        if let Some(f) = &self.frames {
            let k = &cfg.keyframes;
            let caps = f.capabilities(&k.model);
            for p in backends::check_frame(
                &caps,
                f.name(),
                &k.model,
                &k.aspect_ratio,
                k.image_size.as_deref(),
            ) {
                out.push(
                    self.project
                        .error_at(&format!("keyframes.{}", p.setting), p.message)
                        .help(p.help),
                );
            }
        }
        // What each needed node asks of the backends (one report per problem).
        let mut seen = HashSet::new();
        for &i in &self.needed {
            let node = &self.graph.nodes[i];
            for p in node.kind().problems(self, &node.id) {
                if seen.insert(p.key) {
                    out.push(p.error);
                }
            }
        }
        out
    }

    /// The reference images a frame of shot `shot` sends: the shot's list, else all of them.
    pub(crate) fn frame_refs(&self, shot: usize) -> Vec<&RefFile> {
        match &self.project.config.shots[shot].references {
            Some(names) => self
                .refs
                .iter()
                .filter(|r| names.contains(&r.name))
                .collect(),
            None => self.refs.iter().collect(),
        }
    }

    /// blake3 of the project's file `rel` that a recipe hashes (hashed when the session
    /// opened, for the needed nodes).
    pub(crate) fn file_hash(&self, rel: &str) -> Option<&String> {
        self.files.get(rel)
    }

    /// Why segment `i` may not be generated yet: the frames it is made from (their blobs in
    /// `blobs`) that are not approved. Empty when it may (or when approval is not required).
    pub(crate) fn unapproved(&self, i: usize, blobs: &HashMap<usize, String>) -> Vec<String> {
        if !self.project.config.video.require_approval || !self.graph.nodes[i].kind().gated() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &d in &self.graph.nodes[i].deps {
            let id = &self.graph.nodes[d].id;
            // What is not judged (a chained start: the previous video's last frame, where
            // that video was the thing to judge) holds nothing back.
            if !self.graph.nodes[d].kind().judged() {
                continue;
            }
            match blobs.get(&d).and_then(|b| self.verdicts.get(b)) {
                Some(Verdict::Approved) => {}
                Some(Verdict::Rejected) => out.push(format!(
                    "{id} was rejected: reroll it (`ttv build --reroll {id}`) or approve it"
                )),
                None if blobs.contains_key(&d) => out.push(format!(
                    "{id} is not approved (`ttv approve {id}`, or the review page)"
                )),
                None => out.push(format!("{id} will be made, then needs approval")),
            }
        }
        out
    }

    /// The error for a pinned take that does not exist and is not the next one (a build would
    /// pay for it under a number that says otherwise).
    fn missing_take(&self, i: usize, pinned: u32, takes: u32) -> ProjectError {
        let node = &self.graph.nodes[i];
        let (shot, field) = match node.kind().pin(&self.project.config) {
            Some(pin) => (pin.shot, pin.field),
            None => (0, "take".to_string()),
        };
        self.project
            .error_at(
                &format!("shots.{shot}.{field}"),
                format!(
                    "`{field}: {pinned}` pins a take of {} that does not exist (it has {takes})",
                    node.id
                ),
            )
            .help(format!(
                "`ttv takes {}` lists them; pin one of those, or {} to make the next one",
                node.id,
                if takes == 0 {
                    "`take: 1` (or remove the pin)".to_string()
                } else {
                    format!("`{field}: {}`", takes + 1)
                }
            ))
    }

    /// The take pinned in ttv.yaml for node `i`, if any.
    pub(crate) fn pinned_take(&self, i: usize) -> Option<u32> {
        self.graph.nodes[i]
            .kind()
            .pin(&self.project.config)
            .and_then(|p| p.take)
    }

    /// Whether node `i` was named by `--reroll` or `--force`.
    pub(crate) fn rerolled(&self, i: usize) -> bool {
        self.rerolls.contains(&i)
    }

    /// Recipe, key and cache hit of node `i` given its dependencies' blobs.
    pub fn plan_node(&self, i: usize, blobs: &HashMap<usize, String>) -> Result<NodePlan> {
        let body = self.graph.nodes[i].kind().recipe(self, blobs);
        let base = Recipe::new(body, 0);
        let base_json = base.canonical_json();
        let keys = TakeKeys::new(&base_json);
        let base_key = keys.at(0);
        let store = self.store.as_deref();
        let latest = match store {
            Some(s) if base.is_generation() => match s.latest_take(&base_key)? {
                None => s.recovered_take(&self.graph.nodes[i].id, |t| keys.at(t))?,
                latest => latest,
            },
            _ => None,
        };
        let latest_take = latest.as_ref().map(|a| a.take);
        if let Some(pinned) = self.pinned_take(i)
            && base.is_generation()
            && pinned > latest_take.unwrap_or(0) + 1
        {
            return Err(self
                .missing_take(i, pinned, latest_take.unwrap_or(0))
                .into());
        }
        let take = if self.rerolls.contains(&i) && base.is_generation() {
            latest_take.map_or(1, |t| t + 1)
        } else {
            self.pinned_take(i).or(latest_take).unwrap_or(1)
        };
        let key = keys.at(take);
        let recipe = Recipe { take, ..base };
        let found = match store {
            // A forced derived node (final, start image) is made again; a rerolled generation
            // already has a new take, so a new key.
            Some(s) if !self.rerolls.contains(&i) || recipe.is_generation() => {
                match latest.filter(|a| a.key == key) {
                    Some(a) => Some(a),
                    None => s.hit(&key)?,
                }
            }
            _ => None,
        };
        // The output in build/ being this blob (one stat) proves the bytes are at hand; only
        // otherwise is the blob itself looked for. (`ttv verify` checks every blob.)
        let node = &self.graph.nodes[i];
        let in_build = found.as_ref().is_some_and(|a| {
            a.size > 0
                && Materializer::new(&self.project.root, &self.stats)
                    .is_current(&node.output, &a.blob)
        });
        let hit = match (found, store) {
            (Some(a), _) if in_build => Some(a),
            (Some(a), Some(s)) if a.size > 0 && s.has_blob(&a.blob, a.size) => Some(a),
            (Some(a), _) => {
                self.progress.warn(&format!(
                    "{}: cached output {} is missing or damaged in .ttv/objects; it will be made again",
                    node.id,
                    &a.blob[..12]
                ));
                None
            }
            (None, _) => None,
        };
        Ok(NodePlan {
            recipe,
            key,
            take,
            hit,
            in_build,
        })
    }

    /// Why node `i` with this plan differs from its last build.
    pub(crate) fn reasons(&self, i: usize, plan: &NodePlan) -> Vec<String> {
        let node = &self.graph.nodes[i];
        if self.rerolls.contains(&i) && plan.recipe.is_generation() {
            return vec![format!("reroll requested (new take {})", plan.take)];
        }
        let Some(last_key) = self.last_keys.get(&node.id) else {
            return vec!["never built".into()];
        };
        if *last_key == plan.key {
            return if plan.hit.is_some() {
                Vec::new()
            } else {
                vec!["its cached output is missing".into()]
            };
        }
        let before = self
            .store
            .as_deref()
            .and_then(|s| s.recipe_json(last_key).ok().flatten())
            .and_then(|json| serde_json::from_str::<Recipe>(&json).ok());
        let Some(before) = before else {
            return vec!["the recipe of its last build is no longer in the cache".into()];
        };
        let upstream = recipe::Upstream(
            node.kind()
                .inputs()
                .into_iter()
                .map(|input| recipe::UpstreamField {
                    field: input.field,
                    words: input.words,
                    nodes: input
                        .nodes
                        .iter()
                        .map(|&d| self.graph.nodes[d].id.clone())
                        .collect(),
                    unless: input.unless,
                })
                .collect(),
        );
        let mut r = recipe::explain(&before, &plan.recipe, &upstream);
        if r.is_empty() {
            r.push("changed".into());
        }
        r
    }

    /// The recipe of node `id` as it is now (when the outputs it is made from are known) and
    /// at its last build, as JSON.
    pub fn recipes_of(
        &self,
        id: &str,
    ) -> Result<(Option<serde_json::Value>, Option<serde_json::Value>)> {
        let Some(i) = self.graph.index_of(id) else {
            return Ok((None, None));
        };
        let mut blobs = HashMap::new();
        let mut known = true;
        for &d in &self.graph.nodes[i].deps {
            let plans = self.cached_plans.lock().unwrap_or_else(|e| e.into_inner());
            match plans.get(&d).and_then(|p| p.hit.as_ref()) {
                Some(hit) => {
                    blobs.insert(d, hit.blob.clone());
                }
                None => known = false,
            }
        }
        let now = if known {
            Some(serde_json::to_value(&self.plan_node(i, &blobs)?.recipe)?)
        } else {
            None
        };
        let before = match (self.last_keys.get(id), &self.store) {
            (Some(key), Some(store)) => store
                .recipe_json(key)?
                .and_then(|j| serde_json::from_str(&j).ok()),
            _ => None,
        };
        Ok((now, before))
    }

    /// The plan of every needed node: cached ones with their keys, dirty ones with reasons
    /// (a node downstream of a dirty one is dirty, and its key is not known yet).
    pub fn plan(&self) -> Result<Report> {
        // One read transaction for the whole walk (a snapshot, and no lock per statement).
        let _snapshot = self
            .store
            .as_deref()
            .map(Store::read_snapshot)
            .transpose()?;
        let mut cached_plans = HashMap::new();
        let mut blobs = HashMap::new();
        let mut dirty: HashSet<usize> = HashSet::new();
        let mut waiting: HashSet<usize> = HashSet::new();
        let mut nodes = Vec::new();
        for &i in &self.needed {
            let node = &self.graph.nodes[i];
            let deps_in = |set: &HashSet<usize>| -> Vec<&str> {
                node.deps
                    .iter()
                    .filter(|d| set.contains(d))
                    .map(|&d| self.graph.nodes[d].id.as_str())
                    .collect()
            };
            let (waits_for, dirty_deps) = (deps_in(&waiting), deps_in(&dirty));
            let mut report = NodeReport {
                id: node.id.clone(),
                kind: node.kind_name(),
                status: Status::Dirty,
                key: None,
                blob: None,
                output: Some(node.output.clone()),
                reasons: Vec::new(),
                take: None,
                backend: None,
                cost_usd: self.estimate(i).unwrap_or(0.0),
                error: None,
                cost_unknown: self.estimate(i).is_none(),
                source: None,
            };
            // Held back for approval: costs nothing now, and what uses it waits too.
            let mut hold = |report: &mut NodeReport, reasons: Vec<String>| {
                waiting.insert(i);
                report.status = Status::Waiting;
                report.cost_usd = 0.0;
                report.cost_unknown = false;
                report.reasons = reasons;
            };
            if !waits_for.is_empty() {
                let reasons = waits_for
                    .iter()
                    .map(|d| format!("{d} is waiting for approval"))
                    .collect();
                hold(&mut report, reasons);
            } else if dirty_deps.is_empty() {
                let plan = self.plan_node(i, &blobs)?;
                report.key = Some(plan.key.clone());
                report.take = Some(plan.take);
                report.reasons = self.reasons(i, &plan);
                if let Some(hit) = &plan.hit {
                    blobs.insert(i, hit.blob.clone());
                    report.status = Status::Cached;
                    report.blob = Some(hit.blob.clone());
                    report.backend = Some(hit.backend.clone());
                    report.cost_usd = hit.cost_usd;
                    report.cost_unknown = false;
                    report.source = Some("local");
                    cached_plans.insert(i, plan);
                } else {
                    let held = self.unapproved(i, &blobs);
                    if held.is_empty() {
                        dirty.insert(i);
                    } else {
                        hold(&mut report, held);
                    }
                }
            } else {
                let held = self.unapproved(i, &blobs);
                if held.is_empty() {
                    dirty.insert(i);
                    report.reasons = dirty_deps
                        .iter()
                        .map(|d| format!("input {d} will be regenerated"))
                        .collect();
                } else {
                    hold(&mut report, held);
                }
            }
            nodes.push(report);
        }
        let mut report = Report::from_nodes(nodes);
        report.estimated_seconds = Some(self.estimate_seconds(&dirty));
        *self.cached_plans.lock().unwrap_or_else(|e| e.into_inner()) = cached_plans;
        Ok(report)
    }

    /// List price of generating node `i` once (`None`: unknown).
    pub(crate) fn estimate(&self, i: usize) -> Option<f64> {
        self.graph.nodes[i].kind().estimate(self)
    }

    /// A rough wall time for the dirty nodes: per backend, waves of `jobs` at a typical latency.
    fn estimate_seconds(&self, dirty: &HashSet<usize>) -> f64 {
        let cfg = &self.project.config;
        let count = |pool: Pool| {
            dirty
                .iter()
                .filter(|&&i| self.graph.nodes[i].kind().pool(cfg) == pool)
                .count()
        };
        let waves = |n: usize, jobs: usize| n.div_ceil(jobs.max(1)) as f64;
        waves(count(Pool::Frames), cfg.keyframes.jobs.typical())
            * typical_latency(&cfg.keyframes.backend, false)
            + waves(count(Pool::Video), cfg.video.jobs.typical())
                * typical_latency(&cfg.video.backend, true)
    }

    /// Fails (with the install command) when the plan needs ffmpeg and it cannot be run.
    pub fn check_tools(&self, report: &Report) -> Result<(), ProjectError> {
        let needs_ffmpeg = report.nodes.iter().any(|n| {
            n.status == Status::Dirty
                && self
                    .graph
                    .index_of(&n.id)
                    .is_some_and(|i| self.graph.nodes[i].kind().needs_ffmpeg(self))
        });
        if needs_ffmpeg {
            stitch::check_ffmpeg()?;
        }
        Ok(())
    }

    pub fn save_stats(&self) -> Result<()> {
        if let Some(store) = &self.store {
            self.stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save(store)?;
        }
        Ok(())
    }
}

/// A rough time one generation takes on `backend` (a frame, or a `video` segment), in seconds:
/// the estimate of `plan`, and the build's ETA until it has seen some.
pub(crate) fn typical_latency(backend: &str, video: bool) -> f64 {
    match (backend, video) {
        ("preview", _) => 0.5,
        (_, false) => 15.0,
        (_, true) => 120.0,
    }
}

/// The remote cache URL: `TTV_REMOTE_CACHE` (`off` or empty: none) over ttv.yaml's
/// `cache.remote`.
pub fn remote_url(project: &Project) -> Result<Option<String>> {
    match std::env::var("TTV_REMOTE_CACHE") {
        Ok(v) if v.trim().is_empty() || v.trim() == "off" => Ok(None),
        Ok(v) => {
            crate::store::remote::check_url(v.trim())
                .map_err(|e| UsageError::new(format!("TTV_REMOTE_CACHE: {e}")))?;
            Ok(Some(v.trim().to_string()))
        }
        Err(_) => Ok(project.config.cache.remote.clone()),
    }
}

/// Whether `bytes` are an image ttv can read: the header always, the pixels when that is cheap.
fn check_image(bytes: &[u8]) -> Result<(), String> {
    let (w, h) = crate::media::dimensions(bytes)?;
    if u64::from(w) * u64::from(h) <= crate::media::MAX_DECODE_PIXELS {
        image::load_from_memory(bytes).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Hashes an image file of the project through the stat cache; the bytes are decoded (once,
/// when they are read) so a corrupt image is a project error naming the file.
fn hash_image(
    project: &Project,
    stats: &mut StatCache,
    rel: &Path,
) -> Result<String, ProjectError> {
    let rel_str = rel.to_string_lossy();
    let result = stats.hash(&project.root, &rel_str, check_image);
    match result {
        Ok(Ok(hash)) => Ok(hash),
        Ok(Err(e)) => Err(
            ProjectError::new(rel, None, format!("not a readable image: {e}"))
                .help("replace it with a PNG, JPEG, WebP or BMP file, or remove it"),
        ),
        Err(e) => Err(ProjectError::new(rel, None, format!("cannot read it: {e}"))
            .help("check that the file exists and is readable")),
    }
}

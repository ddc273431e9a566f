//! The engine: resolves each node's recipe and key against the cache (the one walk behind
//! `plan`, `explain` and `build`), and the scheduler that runs what is missing (DESIGN.md §7).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;

use crate::backends::{
    self, FrameGenerator, FrameRequest, GenContext, GenError, ImageInput, OperationLog,
    VideoBackend, VideoParams, VideoRequest,
};
use crate::error::{ProjectError, ProjectErrors, UsageError};
use crate::filehash::StatCache;
use crate::graph::{FrameRole, Graph, NodeKind};
use crate::materialize::{BUILD_DIR, ManifestEntry, Materializer, Placed, write_manifest};
use crate::prices::PriceTable;
use crate::progress::Progress;
use crate::project::Project;
use crate::recipe::{self, Body, FinalRecipe, FrameRecipe, ImageRecipe, Recipe, SegmentRecipe};
use crate::stitch;
use crate::store::{Action, BlobStore, BuildRecord, Store, now_secs};

/// Status of a node in the JSON output (the CLI contract of DESIGN.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Generated,
    Cached,
    Failed,
    Skipped,
    Dirty,
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
    pub cost_usd: f64,
    pub error: Option<String>,
}

/// The `--json` object of `build` and `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cost_usd: f64,
    pub saved_usd: f64,
    pub nodes: Vec<NodeReport>,
    /// Plan only: the estimated wall time of the dirty work, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_seconds: Option<f64>,
    /// Build only, when Ctrl-C stopped it: what was not started is `skipped`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Report {
    fn from_nodes(nodes: Vec<NodeReport>) -> Report {
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
            cost_usd: sum(&[Status::Generated, Status::Dirty]),
            saved_usd: sum(&[Status::Cached]),
            nodes,
            estimated_seconds: None,
            interrupted: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub targets: Vec<String>,
    pub jobs: Option<usize>,
    pub reroll: Vec<String>,
    pub force: Vec<String>,
    pub no_wait: bool,
}

/// A reference image, hashed.
#[derive(Debug, Clone)]
struct RefFile {
    name: String,
    rel_path: PathBuf,
    hash: String,
}

/// Everything known before any work starts: the project, the graph, the selected nodes, the
/// backends (checked), the input hashes and the cache.
pub struct Session {
    pub project: Project,
    pub graph: Graph,
    pub needed: Vec<usize>,
    pub store: Option<Arc<Store>>,
    prices: PriceTable,
    frames: Option<Arc<dyn FrameGenerator>>,
    videos: Vec<VideoBackend>,
    refs: Vec<RefFile>,
    /// blake3 of each shot's start_image, by shot index.
    start_images: HashMap<usize, String>,
    stats: Mutex<StatCache>,
    /// Node id -> key at its last build (what explanations compare against).
    last_keys: HashMap<String, String>,
    /// Nodes asked to be made again as a new take.
    rerolls: HashSet<usize>,
    /// Plans of the nodes [`Session::plan`] found cached, for the build to reuse.
    cached_plans: Mutex<HashMap<usize, NodePlan>>,
    progress: Progress,
}

/// A node's recipe and what the cache holds for it.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub recipe: Recipe,
    pub key: String,
    pub take: u32,
    /// The usable cached result, if any.
    pub hit: Option<Action>,
}

impl Session {
    /// Loads and checks everything a command needs. `create_cache`: build creates `.ttv/`, the
    /// read-only commands never do.
    pub fn open(
        project: Project,
        targets: &[String],
        rerolls: &[String],
        create_cache: bool,
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
        let needs_frames = needed.iter().any(|&i| generates_frame(&project, &graph, i));
        let needs_video = needed
            .iter()
            .any(|&i| matches!(graph.nodes[i].kind, NodeKind::Segment { .. }));
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
        let store = if create_cache {
            Some(Arc::new(Store::open(&project.cache_dir())?))
        } else {
            Store::open_existing(&project.cache_dir())?.map(Arc::new)
        };
        let mut stats = StatCache::load(store.as_deref())?;
        let mut refs = Vec::new();
        if needs_frames {
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
        let mut start_images = HashMap::new();
        for &i in &needed {
            if let NodeKind::Frame {
                shot,
                role: FrameRole::Start,
                ..
            } = graph.nodes[i].kind
                && let Some(path) = &project.config.shots[shot].start_image
            {
                match hash_image(&project, &mut stats, Path::new(path)) {
                    Ok(h) => {
                        start_images.insert(shot, h);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let last_keys = match &store {
            Some(s) => s.node_keys()?,
            None => HashMap::new(),
        };
        let session = Session {
            prices: PriceTable::new(&project.config.prices),
            project,
            graph,
            needed,
            store,
            frames,
            videos,
            refs,
            start_images,
            stats: Mutex::new(stats),
            last_keys,
            rerolls: reroll_set,
            cached_plans: Mutex::default(),
            progress,
        };
        errors.extend(session.capability_problems());
        if !errors.is_empty() {
            errors.dedup();
            return Err(ProjectErrors(errors).into());
        }
        Ok(session)
    }

    pub fn progress_info(&self, msg: &str) {
        self.progress.info(msg);
    }

    /// Replaces the progress display (the build's has a totals bar).
    pub fn with_progress(mut self, progress: Progress) -> Session {
        self.progress = progress;
        self
    }

    /// Every setting the configured backends cannot serve, for the needed nodes.
    fn capability_problems(&self) -> Vec<ProjectError> {
        let cfg = &self.project.config;
        let mut out = Vec::new();
        if let Some(f) = &self.frames {
            let k = &cfg.keyframes;
            let caps = f.capabilities(&k.model);
            for p in caps.check(f.name(), &k.model, &k.aspect_ratio) {
                out.push(
                    self.project
                        .error_at(&format!("keyframes.{}", p.setting), p.message)
                        .help(p.help),
                );
            }
            let images = self.refs.len() + usize::from(k.chain);
            if images > caps.max_input_images {
                out.push(
                    self.project
                        .error_at(
                            "keyframes.references",
                            format!(
                                "{} reference images{} are more than {} ({}) takes in one request ({})",
                                self.refs.len(),
                                if k.chain { " plus the chained frame" } else { "" },
                                f.name(),
                                k.model,
                                caps.max_input_images
                            ),
                        )
                        .help("keep the references that matter most, or set `chain: false`"),
                );
            }
        }
        for &i in &self.needed {
            let NodeKind::Segment { shot, .. } = self.graph.nodes[i].kind else {
                continue;
            };
            let s = &cfg.shots[shot];
            for vb in &self.videos {
                let params = self.video_params(shot, &vb.model);
                let caps = vb.generator.capabilities(&vb.model);
                for p in caps.check(vb.generator.name(), &params, s.motion.chars().count()) {
                    let per_shot = match p.setting.as_str() {
                        "duration_seconds" => s.duration_seconds.is_some(),
                        "seed" => s.seed.is_some(),
                        "generate_audio" => s.generate_audio.is_some(),
                        "motion" => true,
                        _ => false,
                    };
                    let at = if per_shot {
                        format!("shots.{shot}.{}", p.setting)
                    } else if p.setting == "model" || vb.setting == "video" {
                        format!("video.{}", p.setting)
                    } else {
                        vb.setting.clone()
                    };
                    out.push(self.project.error_at(&at, p.message).help(p.help));
                }
            }
        }
        out
    }

    fn video_params(&self, shot: usize, model: &str) -> VideoParams {
        let v = &self.project.config.video;
        let s = &self.project.config.shots[shot];
        VideoParams {
            model: model.to_string(),
            duration_seconds: s.duration_seconds.unwrap_or(v.duration_seconds),
            resolution: v.resolution.clone(),
            aspect_ratio: v.aspect_ratio.clone(),
            generate_audio: s.generate_audio.unwrap_or(v.generate_audio),
            negative_prompt: s
                .negative_prompt
                .clone()
                .unwrap_or_else(|| v.negative_prompt.clone()),
            seed: s.seed.or(v.seed),
            first_last: v.mode == crate::project::VideoMode::FirstLast,
        }
    }

    /// The recipe of node `i`, given the output blobs of its dependencies.
    fn recipe_body(&self, i: usize, blobs: &HashMap<usize, String>) -> Body {
        let cfg = &self.project.config;
        let k = &cfg.keyframes;
        let frame = |prompt: String, references: Vec<(String, String)>, input: Option<String>| {
            Body::Frame(FrameRecipe {
                backend: k.backend.clone(),
                model: k.model.clone(),
                aspect_ratio: k.aspect_ratio.clone(),
                prompt,
                references,
                input,
            })
        };
        match &self.graph.nodes[i].kind {
            NodeKind::AutoReference { shot } => frame(
                auto_reference_prompt(cfg.shots[*shot].start.as_deref().unwrap_or_default()),
                Vec::new(),
                None,
            ),
            NodeKind::Frame {
                shot,
                role,
                input,
                auto_reference,
            } => {
                let s = &cfg.shots[*shot];
                if *role == FrameRole::Start
                    && let Some(h) = self.start_images.get(shot)
                {
                    return Body::Image(ImageRecipe { source: h.clone() });
                }
                let prompt = match role {
                    FrameRole::Start => s.start.clone().unwrap_or_default(),
                    FrameRole::End => s.end.clone(),
                };
                let mut references: Vec<(String, String)> = self
                    .refs
                    .iter()
                    .map(|r| (r.name.clone(), r.hash.clone()))
                    .collect();
                if let Some(a) = auto_reference {
                    references.push(("auto".into(), blobs[a].clone()));
                }
                frame(prompt, references, input.map(|d| blobs[&d].clone()))
            }
            NodeKind::Segment { shot, first, last } => {
                let p = self.video_params(*shot, &cfg.video.model);
                let frames = match (cfg.video.mode, cfg.video.keyframe_position) {
                    (crate::project::VideoMode::FirstLast, _) => "start+end",
                    (_, crate::project::KeyframePosition::Last) => "end",
                    _ => "start",
                };
                Body::Segment(SegmentRecipe {
                    backend: cfg.video.backend.clone(),
                    model: p.model,
                    duration_seconds: p.duration_seconds,
                    resolution: p.resolution,
                    aspect_ratio: p.aspect_ratio,
                    generate_audio: p.generate_audio,
                    negative_prompt: p.negative_prompt,
                    seed: p.seed,
                    prompt: cfg.shots[*shot].motion.clone(),
                    frames: frames.into(),
                    first: first.map(|d| blobs[&d].clone()),
                    last: last.map(|d| blobs[&d].clone()),
                })
            }
            NodeKind::Final { segments } => Body::Final(FinalRecipe {
                segments: segments.iter().map(|d| blobs[d].clone()).collect(),
                stitch: stitch::STITCH_VERSION.into(),
            }),
        }
    }

    /// The take pinned in ttv.yaml for node `i`, if any.
    fn pinned_take(&self, i: usize) -> Option<u32> {
        let shots = &self.project.config.shots;
        match self.graph.nodes[i].kind {
            NodeKind::Frame { shot, role, .. } => match role {
                FrameRole::Start => shots[shot].start_take,
                FrameRole::End => shots[shot].end_take,
            },
            NodeKind::Segment { shot, .. } => shots[shot].take,
            _ => None,
        }
    }

    /// Recipe, key and cache hit of node `i` given its dependencies' blobs.
    pub fn plan_node(&self, i: usize, blobs: &HashMap<usize, String>) -> Result<NodePlan> {
        let body = self.recipe_body(i, blobs);
        let base = Recipe::new(body, 0);
        let store = self.store.as_deref();
        let latest = match store {
            Some(s) if base.is_generation() => s.latest_take(&base.base_key())?,
            _ => None,
        };
        let latest_take = latest.as_ref().map(|a| a.take);
        let take = if self.rerolls.contains(&i) && base.is_generation() {
            latest_take.map_or(1, |t| t + 1)
        } else {
            self.pinned_take(i).or(latest_take).unwrap_or(1)
        };
        let recipe = Recipe { take, ..base };
        let key = recipe.key();
        let found = match store {
            // A forced derived node (final, start image) is made again; a rerolled generation
            // already has a new take, so a new key.
            Some(s) if !self.rerolls.contains(&i) || recipe.is_generation() => {
                match latest.filter(|a| a.key == key) {
                    Some(a) => Some(a),
                    None => s.action(&key)?,
                }
            }
            _ => None,
        };
        let hit = match (found, store) {
            (Some(a), Some(s)) if a.size > 0 && s.blobs.get(&a.blob, a.size).is_some() => Some(a),
            (Some(a), _) => {
                self.progress.warn(&format!(
                    "{}: cached output {} is missing or damaged in .ttv/objects; it will be made again",
                    self.graph.nodes[i].id,
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
        })
    }

    /// Why node `i` with this plan differs from its last build.
    fn reasons(&self, i: usize, plan: &NodePlan) -> Vec<String> {
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
            .and_then(|s| s.action(last_key).ok().flatten())
            .and_then(|a| serde_json::from_str::<Recipe>(&a.recipe_json).ok());
        let Some(before) = before else {
            return vec!["the recipe of its last build is no longer in the cache".into()];
        };
        let name = |d: &Option<usize>| d.map(|d| self.graph.nodes[d].id.clone());
        let upstream = match &node.kind {
            NodeKind::Frame { input, .. } => recipe::Upstream {
                input: name(input),
                ..Default::default()
            },
            NodeKind::Segment { first, last, .. } => recipe::Upstream {
                first: name(first),
                last: name(last),
                ..Default::default()
            },
            NodeKind::Final { segments } => recipe::Upstream {
                segments: segments
                    .iter()
                    .map(|&d| self.graph.nodes[d].id.clone())
                    .collect(),
                ..Default::default()
            },
            NodeKind::AutoReference { .. } => recipe::Upstream::default(),
        };
        let mut r = recipe::explain(&before, &plan.recipe, &upstream);
        if r.is_empty() {
            r.push("changed".into());
        }
        r
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
        let mut nodes = Vec::new();
        for &i in &self.needed {
            let node = &self.graph.nodes[i];
            let dirty_deps: Vec<&str> = node
                .deps
                .iter()
                .filter(|d| dirty.contains(d))
                .map(|&d| self.graph.nodes[d].id.as_str())
                .collect();
            let mut report = NodeReport {
                id: node.id.clone(),
                kind: node.kind_name(),
                status: Status::Dirty,
                key: None,
                blob: None,
                output: Some(output_path(&node.output)),
                reasons: Vec::new(),
                take: None,
                backend: None,
                cost_usd: self.estimate(i),
                error: None,
            };
            if dirty_deps.is_empty() {
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
                    cached_plans.insert(i, plan);
                } else {
                    dirty.insert(i);
                }
            } else {
                dirty.insert(i);
                report.reasons = dirty_deps
                    .iter()
                    .map(|d| format!("input {d} will be regenerated"))
                    .collect();
            }
            nodes.push(report);
        }
        let mut report = Report::from_nodes(nodes);
        report.estimated_seconds = Some(self.estimate_seconds(&dirty));
        *self.cached_plans.lock().unwrap_or_else(|e| e.into_inner()) = cached_plans;
        Ok(report)
    }

    /// List price of generating node `i` once.
    fn estimate(&self, i: usize) -> f64 {
        let cfg = &self.project.config;
        match self.graph.nodes[i].kind {
            NodeKind::Segment { shot, .. } => {
                let p = self.video_params(shot, &cfg.video.model);
                self.prices
                    .video(&cfg.video.backend, &cfg.video.model, p.duration_seconds)
            }
            _ if generates_frame(&self.project, &self.graph, i) => self
                .prices
                .image(&cfg.keyframes.backend, &cfg.keyframes.model),
            _ => 0.0,
        }
    }

    /// A rough wall time for the dirty nodes: per backend, waves of `jobs` at a typical latency.
    fn estimate_seconds(&self, dirty: &HashSet<usize>) -> f64 {
        let cfg = &self.project.config;
        let typical = |backend: &str, video: bool| match (backend, video) {
            ("preview", _) => 0.5,
            (_, false) => 15.0,
            (_, true) => 120.0,
        };
        let frames = dirty
            .iter()
            .filter(|&&i| generates_frame(&self.project, &self.graph, i))
            .count();
        let segments = dirty
            .iter()
            .filter(|&&i| matches!(self.graph.nodes[i].kind, NodeKind::Segment { .. }))
            .count();
        let waves = |n: usize, jobs: usize| n.div_ceil(jobs.max(1)) as f64;
        waves(frames, cfg.keyframes.jobs) * typical(&cfg.keyframes.backend, false)
            + waves(segments, cfg.video.jobs) * typical(&cfg.video.backend, true)
    }

    /// Fails (with the install command) when the plan needs ffmpeg and it cannot be run.
    pub fn check_tools(&self, report: &Report) -> Result<(), ProjectError> {
        let needs_ffmpeg = report.nodes.iter().any(|n| {
            n.status == Status::Dirty
                && (n.kind == "final"
                    || (n.kind == "segment"
                        && self.videos.iter().any(|v| v.generator.name() == "preview")))
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

fn output_path(rel: &Path) -> String {
    Path::new(BUILD_DIR)
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn auto_reference_prompt(start: &str) -> String {
    format!(
        "A reference image for a film storyboard: show the main characters and the setting clearly, in neutral light. Scene: {start}"
    )
}

/// Whether node `i` is made by the frame backend.
fn generates_frame(project: &Project, graph: &Graph, i: usize) -> bool {
    match graph.nodes[i].kind {
        NodeKind::AutoReference { .. } => true,
        NodeKind::Frame { shot, role, .. } => {
            role == FrameRole::End || project.config.shots[shot].start_image.is_none()
        }
        _ => false,
    }
}

/// Hashes an image file of the project through the stat cache; the bytes are decoded (once,
/// when they are read) so a corrupt image is a project error naming the file.
fn hash_image(
    project: &Project,
    stats: &mut StatCache,
    rel: &Path,
) -> Result<String, ProjectError> {
    let rel_str = rel.to_string_lossy();
    let result = stats.hash(&project.root, &rel_str, |bytes| {
        image::load_from_memory(bytes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
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
    /// Generated or cached: `action` is its result.
    Done {
        status: Status,
        plan: Box<NodePlan>,
        action: Box<Action>,
    },
    Failed {
        plan: Option<Box<NodePlan>>,
        error: String,
    },
    /// Ctrl-C came first.
    NotStarted,
}

/// A new output, in the blob store.
struct Produced {
    blob: String,
    size: u64,
    /// Who made it (with fallbacks, not always the configured backend).
    backend: String,
    model: String,
    cost_usd: f64,
    media_type: &'static str,
}

/// The scheduler's shared state.
struct Runner {
    session: Session,
    store: Arc<Store>,
    global: Semaphore,
    frame_jobs: Semaphore,
    video_jobs: Semaphore,
    /// Reference bytes, read once, on the first frame generation that needs them.
    ref_bytes: OnceCell<Vec<ImageInput>>,
    /// Set on the first Ctrl-C: nothing new starts.
    stopping: std::sync::atomic::AtomicBool,
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
        .unwrap_or(cfg.keyframes.jobs + cfg.video.jobs)
        .max(1);
    let runner = Arc::new(Runner {
        global: Semaphore::new(jobs),
        frame_jobs: Semaphore::new(cfg.keyframes.jobs.max(1)),
        video_jobs: Semaphore::new(cfg.video.jobs.max(1)),
        store,
        session,
        ref_bytes: OnceCell::new(),
        stopping: Default::default(),
    });
    let started_at = now_secs();
    let s = &runner.session;
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
    let mut interrupted = false;
    loop {
        if !interrupted {
            for i in ready.drain(..) {
                t.waiting.remove(&i);
                let deps: HashMap<usize, String> = s.graph.nodes[i]
                    .deps
                    .iter()
                    .map(|d| (*d, t.blobs[d].clone()))
                    .collect();
                let r = runner.clone();
                set.spawn(async move { (i, r.run_node(i, deps).await) });
            }
        }
        if set.is_empty() {
            break;
        }
        let joined = tokio::select! {
            j = set.join_next() => j,
            _ = tokio::signal::ctrl_c() => {
                if interrupted {
                    progress.warn("interrupted again: aborting; in-flight video operations resume on the next build");
                    set.abort_all();
                    std::process::exit(130);
                }
                interrupted = true;
                runner.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                progress.warn(&format!(
                    "interrupted: starting nothing new; waiting for {} running node(s), whose results are paid for (Ctrl-C again to abort)",
                    set.len()
                ));
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (i, outcome) = joined.map_err(|e| anyhow!("a build task panicked: {e}"))?;
        ready.extend(t.finish(s, i, outcome));
    }
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
        });
    }
    progress.finish();
    let mut report = Report::from_nodes(t.results.into_values().collect());
    report.interrupted = interrupted;
    runner.finish(&report, started_at)?;
    Ok(report)
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
                action,
            } => {
                self.blobs.insert(i, action.blob.clone());
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
                    blob: Some(action.blob),
                    output: Some(output_path(&node.output)),
                    reasons,
                    take: Some(plan.take),
                    backend: Some(action.backend),
                    cost_usd: action.cost_usd,
                    error: None,
                }
            }
            Outcome::Failed { plan, error } => failed_report(s, i, plan.as_deref(), error),
            // Reported as skipped with everything else that did not start.
            Outcome::NotStarted => return ready,
        };
        match report.status {
            Status::Generated => self.spent += report.cost_usd,
            Status::Cached => self.saved += report.cost_usd,
            _ => {}
        }
        progress.set_message(format!(
            "spent ${:.2}, saved ${:.2}",
            self.spent, self.saved
        ));
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
                self.skip_dependents(s, i);
            }
        }
        self.results.insert(i, report);
        ready
    }

    /// Marks everything downstream of a failed node as skipped (it will never be ready).
    fn skip_dependents(&mut self, s: &Session, failed: usize) {
        let mut stack = vec![failed];
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
                        status: Status::Skipped,
                        key: None,
                        blob: None,
                        output: None,
                        reasons: vec![format!("{} failed", s.graph.nodes[failed].id)],
                        take: None,
                        backend: None,
                        cost_usd: 0.0,
                        error: None,
                    },
                );
                stack.push(d);
            }
        }
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
    }
}

impl Runner {
    async fn run_node(self: Arc<Self>, i: usize, deps: HashMap<usize, String>) -> Outcome {
        self.try_run_node(i, &deps)
            .await
            .unwrap_or_else(|e| Outcome::Failed {
                plan: None,
                error: format!("{e:#}"),
            })
    }

    /// Places a cache hit in build/. `None` when its blob turns out damaged (a miss, then).
    fn reuse(&self, i: usize, plan: NodePlan) -> Result<Option<Outcome>> {
        let s = &self.session;
        let node = &s.graph.nodes[i];
        let Some(hit) = plan.hit.clone() else {
            return Ok(None);
        };
        let mat = Materializer::new(&s.project.root, &s.stats);
        let path = self.store.blobs.path_of(&hit.blob);
        if mat.place(&node.output, &path, &hit.blob)? == Placed::CorruptBlob {
            s.progress.warn(&format!(
                "{}: cached blob {} is damaged; making it again",
                node.id,
                &hit.blob[..12]
            ));
            return Ok(None);
        }
        Ok(Some(Outcome::Done {
            status: Status::Cached,
            action: Box::new(hit),
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
        let mat = Materializer::new(&s.project.root, &s.stats);
        // Generations wait for a slot of their backend and of the global limit; after Ctrl-C a
        // node that was still waiting for one does not start.
        let backend_jobs = match plan.recipe.body {
            Body::Frame(_) => Some(&self.frame_jobs),
            Body::Segment(_) => Some(&self.video_jobs),
            _ => None,
        };
        let _permits = match backend_jobs {
            Some(jobs) => Some((self.global.acquire().await?, jobs.acquire().await?)),
            None => None,
        };
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Outcome::NotStarted);
        }
        let started = Instant::now();
        let bar = s.progress.start(&node.id);
        let status = bar.status_fn();
        let produced = self.produce(i, &plan, deps, status).await;
        drop(bar);
        let p = match produced {
            Ok(p) => p,
            Err(error) => {
                return Ok(Outcome::Failed {
                    plan: Some(Box::new(plan)),
                    error,
                });
            }
        };
        let action = Action {
            key: plan.key.clone(),
            base_key: plan.recipe.base_key(),
            node_kind: node.kind_name().into(),
            node_id: node.id.clone(),
            recipe_json: plan.recipe.canonical_json(),
            blob: p.blob.clone(),
            media_type: p.media_type.into(),
            backend: p.backend,
            model: p.model,
            created_at: now_secs(),
            gen_ms: started.elapsed().as_millis() as i64,
            cost_usd: p.cost_usd,
            take: plan.take,
            size: p.size,
        };
        // The result is durable (blob in place, row committed) before anything else is done
        // with it: a crash after this line never loses a paid generation.
        self.store.record_action(&action)?;
        self.store.clear(&plan.key)?;
        let path = self.store.blobs.path_of(&p.blob);
        if mat.place(&node.output, &path, &p.blob)? == Placed::CorruptBlob {
            return Err(anyhow!(
                "the blob just stored for {} does not match its hash (disk problem?)",
                node.id
            ));
        }
        Ok(Outcome::Done {
            status: Status::Generated,
            action: Box::new(action),
            plan: Box::new(plan),
        })
    }

    /// Makes node `i`'s output and puts it in the blob store, or says why it could not.
    async fn produce(
        &self,
        i: usize,
        plan: &NodePlan,
        deps: &HashMap<usize, String>,
        status: Arc<dyn Fn(String) + Send + Sync>,
    ) -> Result<Produced, String> {
        let s = &self.session;
        let node = &s.graph.nodes[i];
        let ctx = GenContext {
            node_id: node.id.clone(),
            key: plan.key.clone(),
            tmp_dir: self.store.blobs.tmp_dir().to_path_buf(),
            operations: self.store.clone() as Arc<dyn OperationLog>,
            status,
        };
        let blobs = &self.store.blobs;
        let fail = |e: anyhow::Error| format!("{e:#}");
        match (&plan.recipe.body, &node.kind) {
            (Body::Image(r), NodeKind::Frame { shot, .. }) => {
                let rel = s.project.config.shots[*shot]
                    .start_image
                    .clone()
                    .unwrap_or_default();
                let bytes = std::fs::read(s.project.root.join(&rel))
                    .map_err(|e| format!("reading {rel}: {e}"))?;
                if blake3::hash(&bytes).to_hex().as_str() != r.source {
                    return Err(format!(
                        "{rel} changed during the build; run `ttv build` again"
                    ));
                }
                let png = tokio::task::spawn_blocking(move || to_png(&bytes))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{rel}: {e}"))?;
                let (h, size) = blobs.put_bytes(&png).map_err(fail)?;
                Ok(Produced::new(h, size, "file", "", 0.0, "image/png"))
            }
            (Body::Frame(r), _) => {
                let frames = s.frames.clone().ok_or("no frame backend is configured")?;
                let references = self.reference_inputs(r, deps, node).await?;
                let input_image = match r.input.as_deref() {
                    Some(h) => Some(self.blob_input("input", h).await?),
                    None => None,
                };
                let req = FrameRequest {
                    model: r.model.clone(),
                    aspect_ratio: r.aspect_ratio.clone(),
                    prompt: r.prompt.clone(),
                    input_image,
                    references,
                    key: plan.key.clone(),
                };
                let out = frames.generate(&req, &ctx).await.map_err(describe)?;
                let (h, size) = blobs.put_bytes(&out.png).map_err(fail)?;
                let cost = s.prices.image(frames.name(), &r.model);
                Ok(Produced::new(
                    h,
                    size,
                    frames.name(),
                    &r.model,
                    cost,
                    "image/png",
                ))
            }
            (Body::Segment(r), NodeKind::Segment { shot, .. }) => {
                let first = match r.first.as_deref() {
                    Some(h) => Some(self.blob_input("first", h).await?),
                    None => None,
                };
                let last = match r.last.as_deref() {
                    Some(h) => Some(self.blob_input("last", h).await?),
                    None => None,
                };
                let mut errors = Vec::new();
                for (n, vb) in s.videos.iter().enumerate() {
                    let params = s.video_params(*shot, &vb.model);
                    let seconds = params.duration_seconds;
                    let req = VideoRequest {
                        params,
                        prompt: r.prompt.clone(),
                        first: first.clone(),
                        last: last.clone(),
                        key: plan.key.clone(),
                    };
                    let g = &vb.generator;
                    match g.generate(&req, &ctx).await {
                        Ok(out) => {
                            let (h, size) = blobs.put_file(out.mp4).map_err(fail)?;
                            let cost = s.prices.video(g.name(), &vb.model, seconds);
                            if n > 0 {
                                s.progress.warn(&format!(
                                    "{}: made by fallback {} after: {}",
                                    node.id,
                                    g.label(),
                                    errors.join("; ")
                                ));
                            }
                            return Ok(Produced::new(
                                h,
                                size,
                                &g.label(),
                                &vb.model,
                                cost,
                                "video/mp4",
                            ));
                        }
                        Err(e) => {
                            // Backend messages usually name the backend already.
                            let msg = describe(e.clone());
                            let label = g.label();
                            errors.push(if msg.starts_with(&label) {
                                msg
                            } else {
                                format!("{label}: {msg}")
                            });
                            if !e.is_permanent() {
                                break;
                            }
                        }
                    }
                }
                Err(errors.join("; then "))
            }
            (Body::Final(r), _) => {
                let paths: Vec<PathBuf> = r.segments.iter().map(|h| blobs.path_of(h)).collect();
                let tmp = tempfile::Builder::new()
                    .suffix(".mp4")
                    .tempfile_in(blobs.tmp_dir())
                    .map_err(|e| e.to_string())?
                    .into_temp_path();
                stitch::stitch(&paths, &tmp, blobs.tmp_dir())
                    .await
                    .map_err(fail)?;
                let (h, size) = blobs.put_file(tmp).map_err(fail)?;
                Ok(Produced::new(h, size, "ffmpeg", "", 0.0, "video/mp4"))
            }
            _ => Err(format!("{}: recipe does not fit the node", node.id)),
        }
    }

    async fn blob_input(&self, name: &str, hash: &str) -> Result<ImageInput, String> {
        let path = self.store.blobs.path_of(hash);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Ok(ImageInput {
            name: name.into(),
            mime_type: "image/png".into(),
            bytes: Arc::new(bytes),
        })
    }

    /// The reference images of a frame request: the project's (read once per build, checked
    /// against the hashes in the key) and the auto reference, if it is one.
    async fn reference_inputs(
        &self,
        r: &FrameRecipe,
        deps: &HashMap<usize, String>,
        node: &crate::graph::Node,
    ) -> Result<Vec<ImageInput>, String> {
        let s = &self.session;
        let files = self
            .ref_bytes
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
            .await?;
        let mut out = files.clone();
        if let NodeKind::Frame {
            auto_reference: Some(a),
            ..
        } = node.kind
        {
            let hash = deps.get(&a).ok_or("reference/auto has no output")?;
            out.push(self.blob_input("auto", hash).await?);
        }
        debug_assert_eq!(out.len(), r.references.len());
        Ok(out)
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
        s.save_stats()?;
        let entries: Vec<ManifestEntry> = done
            .iter()
            .map(|n| ManifestEntry {
                node: n.id.clone(),
                output: n.output.clone().unwrap_or_default(),
                key: n.key.clone().unwrap_or_default(),
                blob: n.blob.clone().unwrap_or_default(),
                take: n.take.unwrap_or(1),
                backend: n.backend.clone().unwrap_or_default(),
                model: String::new(),
                cost_usd: n.cost_usd,
            })
            .collect();
        let name = s.project.config.name.clone().unwrap_or_default();
        write_manifest(&s.project.root, &name, &entries).context("writing build/manifest.json")?;
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
    fn new(
        blob: String,
        size: u64,
        backend: &str,
        model: &str,
        cost_usd: f64,
        media_type: &'static str,
    ) -> Produced {
        Produced {
            blob,
            size,
            backend: backend.into(),
            model: model.into(),
            cost_usd,
            media_type,
        }
    }
}

fn describe(e: GenError) -> String {
    e.to_string()
}

/// Re-encodes any supported image as PNG (deterministic for the same input).
fn to_png(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let img = image::load_from_memory(bytes).map_err(|e| format!("not a readable image: {e}"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

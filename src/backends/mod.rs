//! The generation backends: what the scheduler calls to turn a recipe into bytes.
//!
//! `FrameGenerator` makes keyframe images, `VideoGenerator` makes segments. Each declares its
//! capabilities so that a configuration the model cannot serve is refused at plan time, before
//! any money is spent. The backends are grouped by service: `google/` (Gemini and Veo, with
//! their shared HTTP and credentials) and `preview` (offline).

pub mod google;
pub mod preview;
#[cfg(test)]
pub(crate) mod testing;

pub use google::{auth, gemini, http, veo};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use async_trait::async_trait;

use crate::error::ProjectError;
use crate::kinds::SegmentRecipe;
use crate::models;
use crate::project::{Project, VeoApi};

/// An image sent to a backend: already normalized to PNG bytes by the store.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// Reference name (file stem), or a role such as "input" / "first" / "last".
    pub name: String,
    pub mime_type: String,
    pub bytes: Arc<Vec<u8>>,
}

/// Everything a frame backend needs for one image: the recipe's fields and the images its
/// hashes name.
#[derive(Debug, Clone)]
pub struct FrameRequest {
    pub model: String,
    pub aspect_ratio: String,
    /// `imageConfig.imageSize`, when one is asked for.
    pub image_size: Option<String>,
    pub prompt: String,
    /// The image to edit (the previous frame in the chain), if any.
    pub input_image: Option<ImageInput>,
    /// Reference images, sorted by name.
    pub references: Vec<ImageInput>,
    /// The cache key's hex, for deterministic backends (preview) and for logs.
    pub key: String,
}

/// What the service said about a generation, kept with the result (`ttv takes` shows it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provenance {
    /// What the service says it ran (`modelVersion`), if it says.
    pub model_version: Option<String>,
    /// `responseId` of an answer, or the name of a long-running operation.
    pub response_id: Option<String>,
    /// The request's parameters as sent (everything but the prompt and the image bytes).
    pub params: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct FrameOutput {
    /// PNG bytes (backends normalize whatever the service returned).
    pub png: Vec<u8>,
    pub provenance: Provenance,
}

#[derive(Debug, Clone)]
pub struct VideoRequest {
    /// The segment's recipe; a fallback backend gets it with its own model.
    pub recipe: SegmentRecipe,
    /// The first frame (single mode sends exactly one of `first` / `last`).
    pub first: Option<ImageInput>,
    pub last: Option<ImageInput>,
    /// References mode: the `referenceImages`, in the recipe's order.
    pub references: Vec<ImageInput>,
    pub key: String,
}

impl VideoRequest {
    /// Whether both the first and the last frame are sent (`mode: first-last`).
    pub fn first_last(&self) -> bool {
        self.recipe.frames == "start+end"
    }
}

#[derive(Debug)]
pub struct VideoOutput {
    /// MP4 files under the store's tmp folder, one per sample (`sample_count`); the store
    /// hashes them and moves them into place.
    pub mp4s: Vec<tempfile::TempPath>,
    pub provenance: Provenance,
}

/// What the scheduler lends a backend for one generation.
#[derive(Clone)]
pub struct GenContext {
    pub node_id: String,
    pub key: String,
    /// Where to write temporary output (same filesystem as the blob store, for a cheap rename).
    pub tmp_dir: PathBuf,
    /// Durable record of in-flight long-running operations (resume after an interruption).
    pub operations: Arc<dyn OperationLog>,
    /// Short status for the progress display ("polling, 1m20s").
    pub status: Arc<dyn Fn(String) + Send + Sync>,
    /// Requests whose outcome is unknown (sent, then no readable answer) and so may have been
    /// billed: the report counts them.
    pub uncertain: Arc<AtomicU32>,
    /// `--force`: a submission recorded as uncertain may be sent again.
    pub resubmit: bool,
    /// Where the backend says whether the service took each request or refused it for load
    /// (429): the scheduler's limit of requests in flight follows it.
    pub load: crate::limiter::LoadFn,
}

impl GenContext {
    /// A new, empty temporary MP4 in `tmp_dir` (`{prefix}-XXXX.mp4`), removed when dropped
    /// unless the store takes it.
    pub fn temp_mp4(&self, prefix: &str) -> Result<tempfile::TempPath, GenError> {
        tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .suffix(".mp4")
            .tempfile_in(&self.tmp_dir)
            .map(tempfile::NamedTempFile::into_temp_path)
            .map_err(|e| {
                GenError::Permanent(format!(
                    "{prefix}: cannot create a temporary file in {}: {e}",
                    self.tmp_dir.display()
                ))
            })
    }
}

/// A recorded submission of a long-running operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// The service named the operation: poll it.
    Operation(String),
    /// A submission was sent and no answer was read (a crash, a reset, a timeout after the
    /// body went out): the job may exist and be billed. Not sent again without `--force`.
    Uncertain { since: i64, detail: String },
}

/// The `operations` table, as backends see it. Keyed by the node's cache key.
pub trait OperationLog: Send + Sync {
    /// What was submitted earlier for this key by `backend`, if anything.
    fn pending(&self, key: &str, backend: &str) -> Option<Pending>;
    /// Records that a submission is about to be sent; must be durable when it returns.
    fn intend(&self, key: &str, backend: &str) -> anyhow::Result<()>;
    /// Records why an intended submission's outcome is unknown.
    fn uncertain(&self, key: &str, backend: &str, detail: &str) -> anyhow::Result<()>;
    /// Records a submitted operation; must be durable when it returns.
    fn record(&self, key: &str, backend: &str, operation_name: &str) -> anyhow::Result<()>;
    /// Forgets the operation (finished, failed or unknown to the service).
    fn clear(&self, key: &str) -> anyhow::Result<()>;
}

/// Why a generation failed. The scheduler and the fallback logic branch on the variant.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GenError {
    /// The service refused the content (safety filters). Not charged, never retried.
    #[error("blocked by the service's safety filters: {reason}")]
    Blocked { reason: String },
    /// Retrying will not help (400, 403, a malformed answer, unsupported input).
    #[error("{0}")]
    Permanent(String),
    /// Retries ran out on a transient failure (429, 5xx, transport, timeout).
    #[error("{0}")]
    Transient(String),
    /// A paid submission may have been accepted without ttv hearing of it: sending it again
    /// could pay twice, so neither a retry nor a fallback is tried.
    #[error("{0}")]
    Uncertain(String),
}

impl GenError {
    /// Whether a fallback backend should be tried after this error.
    pub fn is_permanent(&self) -> bool {
        matches!(self, GenError::Blocked { .. } | GenError::Permanent(_))
    }
}

/// Capabilities of a video backend for a model: the model's (from the registry) and what the
/// route accepts.
#[derive(Debug, Clone)]
pub struct VideoCaps {
    pub model: models::VideoCaps,
    /// The route takes `seed`.
    pub seed: bool,
    /// The route takes `generateAudio`.
    pub generate_audio: bool,
}

/// A setting the backend cannot serve: `setting` is the ttv.yaml key (`duration_seconds`) whose
/// line the error points at.
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityProblem {
    pub setting: String,
    pub message: String,
    pub help: String,
}

impl VideoCaps {
    /// Every way the segment `r` exceeds these capabilities.
    pub fn check(&self, backend: &str, r: &SegmentRecipe) -> Vec<CapabilityProblem> {
        let m = &self.model;
        let model = &r.model;
        let mut out = Vec::new();
        let mut bad = |setting: &str, message: String, help: String| {
            out.push(CapabilityProblem {
                setting: setting.into(),
                message,
                help,
            })
        };
        let resolution = m.resolution(&r.resolution);
        if !m.durations.contains(&r.duration_seconds) {
            bad(
                "duration_seconds",
                format!(
                    "{backend} ({model}) cannot make {} s segments",
                    r.duration_seconds
                ),
                format!("use one of {}", join(m.durations.iter())),
            );
        } else if let Some(res) =
            resolution.filter(|res| !res.durations.contains(&r.duration_seconds))
        {
            bad(
                "duration_seconds",
                format!(
                    "{backend} ({model}) makes {} video only in {} s segments, not {} s",
                    res.name,
                    join(res.durations.iter()),
                    r.duration_seconds
                ),
                format!(
                    "use `duration_seconds: {}`, or a lower resolution",
                    res.durations.last().copied().unwrap_or(8)
                ),
            );
        }
        if resolution.is_none() {
            bad(
                "resolution",
                format!("{backend} ({model}) cannot make {} video", r.resolution),
                format!("use one of {}", join(m.resolutions.iter().map(|r| r.name))),
            );
        }
        if !m.aspect_ratios.contains(&r.aspect_ratio.as_str()) {
            bad(
                "aspect_ratio",
                format!("{backend} ({model}) cannot make {} video", r.aspect_ratio),
                format!("use one of {}", join(m.aspect_ratios.iter())),
            );
        }
        if r.frames == "start+end" && !m.first_last_frame {
            bad(
                "mode",
                format!("{backend} ({model}) cannot take a first and a last frame"),
                "use `mode: single`, or a model that supports first-last frames (the model \
                 registry lists veo-3.1-generate-001)"
                    .into(),
            );
        }
        if r.frames == "references" {
            match m.references {
                None => bad(
                    "mode",
                    format!("{backend} ({model}) cannot make video from reference images"),
                    "use `mode: single` or `first-last`, or a model that takes reference \
                     images (veo-3.1-generate-001)"
                        .into(),
                ),
                Some(refs) => {
                    if r.references.len() > refs.max {
                        bad(
                            "references",
                            format!(
                                "{} reference images for one video; {backend} ({model}) takes \
                                 at most {}",
                                r.references.len(),
                                refs.max
                            ),
                            format!("list at most {} names", refs.max),
                        );
                    }
                    if !refs.durations.contains(&r.duration_seconds) {
                        bad(
                            "duration_seconds",
                            format!(
                                "{backend} ({model}) makes video from reference images only in \
                                 {} s segments, not {} s",
                                join(refs.durations.iter()),
                                r.duration_seconds
                            ),
                            format!(
                                "use `duration_seconds: {}`",
                                refs.durations.last().copied().unwrap_or(8)
                            ),
                        );
                    }
                }
            }
        }
        if r.sample_count > m.max_samples {
            bad(
                "sample_count",
                format!(
                    "{backend} ({model}) makes at most {} video(s) per request, not {}",
                    m.max_samples, r.sample_count
                ),
                format!("use `sample_count:` from 1 to {}", m.max_samples),
            );
        }
        if r.seed.is_some() && !self.seed {
            bad(
                "seed",
                format!("{backend} ({model}) does not accept a seed on this route"),
                "remove `seed`, or use `api: vertex`".into(),
            );
        }
        if r.generate_audio && !self.generate_audio {
            bad(
                "generate_audio",
                format!("{backend} ({model}) does not accept generate_audio on this route"),
                "set `generate_audio: false`, or use `api: vertex`".into(),
            );
        }
        let chars = r.prompt.chars().count();
        if chars > m.max_prompt_chars {
            bad(
                "motion",
                format!(
                    "the motion prompt has {chars} characters; {backend} ({model}) accepts {}",
                    m.max_prompt_chars
                ),
                "shorten the prompt".into(),
            );
        }
        out
    }
}

/// Every way a frame request of `model` exceeds an image model's capabilities (the count of
/// input images is checked per frame, by the plan).
pub fn check_frame(
    caps: &models::ImageCaps,
    backend: &str,
    model: &str,
    aspect_ratio: &str,
    image_size: Option<&str>,
) -> Vec<CapabilityProblem> {
    let mut out = Vec::new();
    if !caps.aspect_ratios.contains(&aspect_ratio) {
        out.push(CapabilityProblem {
            setting: "aspect_ratio".into(),
            message: format!("{backend} ({model}) cannot make {aspect_ratio} images"),
            help: format!("use one of {}", join(caps.aspect_ratios.iter())),
        });
    }
    if let Some(size) = image_size
        && !caps.image_sizes.contains(&size)
    {
        out.push(CapabilityProblem {
            setting: "image_size".into(),
            message: format!("{backend} ({model}) cannot make {size} images"),
            help: if caps.image_sizes.is_empty() {
                "remove `image_size`: this model makes one size".into()
            } else {
                format!("use one of {}", join(caps.image_sizes.iter()))
            },
        });
    }
    out
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[async_trait]
pub trait FrameGenerator: Send + Sync {
    /// The backend name as written in ttv.yaml (`gemini`, `preview`); part of the cache key.
    fn name(&self) -> &str;
    fn capabilities(&self, model: &str) -> models::ImageCaps;
    async fn generate(&self, req: &FrameRequest, ctx: &GenContext)
    -> Result<FrameOutput, GenError>;
}

#[async_trait]
pub trait VideoGenerator: Send + Sync {
    /// The backend name as written in ttv.yaml (`veo`, `preview`).
    fn name(&self) -> &str;
    /// A longer label for messages and the record of who made a result (`veo (vertex)`).
    fn label(&self) -> String {
        self.name().to_string()
    }
    fn capabilities(&self, model: &str) -> VideoCaps;
    async fn generate(&self, req: &VideoRequest, ctx: &GenContext)
    -> Result<VideoOutput, GenError>;
}

/// The frame backend `keyframes.backend` names, with its credentials checked (no request made).
pub fn frame_backend(project: &Project) -> Result<Arc<dyn FrameGenerator>, ProjectError> {
    let k = &project.config.keyframes;
    match k.backend.as_str() {
        "preview" => Ok(Arc::new(preview::PreviewFrames)),
        "gemini" => Ok(Arc::new(gemini::GeminiFrames::from_project(project)?)),
        other => Err(project
            .error_at(
                "keyframes.backend",
                format!("unknown frame backend `{other}`"),
            )
            .help("use `gemini` or `preview`")),
    }
}

/// A video backend with the model it runs (fallbacks may name another model).
#[derive(Clone)]
pub struct VideoBackend {
    pub generator: Arc<dyn VideoGenerator>,
    pub model: String,
    /// The ttv.yaml path of its settings (`video`, `video.fallback.0`), for errors.
    pub setting: String,
}

/// The video backends: `video.backend` first, then each of `video.fallback` in order.
pub fn video_backends(project: &Project) -> Result<Vec<VideoBackend>, ProjectError> {
    let v = &project.config.video;
    let mut out = vec![VideoBackend {
        generator: video_backend(project, "video", &v.backend, v.api, &v.model)?,
        model: v.model.clone(),
        setting: "video".into(),
    }];
    for (i, f) in v.fallback.iter().enumerate() {
        let at = format!("video.fallback.{i}");
        let model = f.model.clone().unwrap_or_else(|| v.model.clone());
        out.push(VideoBackend {
            generator: video_backend(project, &at, &f.backend, f.api.unwrap_or(v.api), &model)?,
            model,
            setting: at,
        });
    }
    Ok(out)
}

fn video_backend(
    project: &Project,
    at: &str,
    backend: &str,
    api: VeoApi,
    model: &str,
) -> Result<Arc<dyn VideoGenerator>, ProjectError> {
    match backend {
        "preview" => Ok(Arc::new(preview::PreviewVideo)),
        "veo" => Ok(Arc::new(veo::Veo::from_project(project, at, api, model)?)),
        other => Err(project
            .error_at(
                &format!("{at}.backend"),
                format!("unknown video backend `{other}`"),
            )
            .help("use `veo` or `preview`")),
    }
}

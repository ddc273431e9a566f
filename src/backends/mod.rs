//! The generation backends: what the scheduler calls to turn a recipe into bytes.
//!
//! `FrameGenerator` makes keyframe images, `VideoGenerator` makes segments. Each declares its
//! capabilities so that a configuration the model cannot serve is refused at plan time, before
//! any money is spent.

pub mod preview;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::ProjectError;
use crate::project::{Project, VeoApi};

/// An image sent to a backend: already normalized to PNG bytes by the store.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// Reference name (file stem), or a role such as "input" / "first" / "last".
    pub name: String,
    pub mime_type: String,
    pub bytes: Arc<Vec<u8>>,
}

/// Everything a frame backend needs for one image.
#[derive(Debug, Clone)]
pub struct FrameRequest {
    pub model: String,
    pub aspect_ratio: String,
    pub prompt: String,
    /// The image to edit (the previous frame in the chain), if any.
    pub input_image: Option<ImageInput>,
    /// Reference images, sorted by name.
    pub references: Vec<ImageInput>,
    /// The cache key's hex, for deterministic backends (preview) and for logs.
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct FrameOutput {
    /// PNG bytes (backends normalize whatever the service returned).
    pub png: Vec<u8>,
    /// What the service says it ran (`modelVersion`), if it says.
    pub model_version: Option<String>,
}

/// Video settings of one segment after per-shot overrides: the api-independent part that is
/// also in the cache key.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoParams {
    pub model: String,
    pub duration_seconds: u32,
    pub resolution: String,
    pub aspect_ratio: String,
    pub generate_audio: bool,
    pub negative_prompt: String,
    pub seed: Option<u64>,
    /// Whether a last frame is sent (`mode: first-last`).
    pub first_last: bool,
}

#[derive(Debug, Clone)]
pub struct VideoRequest {
    pub params: VideoParams,
    pub prompt: String,
    /// The first frame (single mode sends exactly one of `first` / `last`).
    pub first: Option<ImageInput>,
    pub last: Option<ImageInput>,
    pub key: String,
}

#[derive(Debug)]
pub struct VideoOutput {
    /// An MP4 file under the store's tmp folder; the store hashes it and moves it into place.
    pub mp4: tempfile::TempPath,
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
}

/// The `operations` table, as backends see it. Keyed by the node's cache key.
pub trait OperationLog: Send + Sync {
    /// The operation submitted earlier for this key by `backend`, if one is recorded.
    fn pending(&self, key: &str, backend: &str) -> Option<String>;
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
}

impl GenError {
    /// Whether a fallback backend should be tried after this error.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, GenError::Transient(_))
    }
}

/// Capabilities of a frame backend for a model.
#[derive(Debug, Clone)]
pub struct FrameCaps {
    pub aspect_ratios: Vec<&'static str>,
    /// Input images (edit image + references) one request can carry.
    pub max_input_images: usize,
    /// The whole inline request, in bytes.
    pub max_request_bytes: usize,
}

/// Capabilities of a video backend for a model.
#[derive(Debug, Clone)]
pub struct VideoCaps {
    pub durations: Vec<u32>,
    pub resolutions: Vec<&'static str>,
    pub aspect_ratios: Vec<&'static str>,
    pub first_last_frame: bool,
    pub seed: bool,
    pub generate_audio: bool,
    pub max_input_bytes: usize,
    pub max_prompt_chars: usize,
}

/// A setting the backend cannot serve: `setting` is the dotted ttv.yaml path (for the line).
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityProblem {
    pub setting: String,
    pub message: String,
    pub help: String,
}

impl VideoCaps {
    /// Every way `params` exceeds these capabilities. `prefix` is the ttv.yaml path that holds
    /// the settings (`video` or `shots.3`).
    pub fn check(
        &self,
        backend: &str,
        params: &VideoParams,
        prompt_chars: usize,
    ) -> Vec<CapabilityProblem> {
        let mut out = Vec::new();
        let mut bad = |setting: &str, message: String, help: String| {
            out.push(CapabilityProblem {
                setting: setting.into(),
                message,
                help,
            })
        };
        if !self.durations.contains(&params.duration_seconds) {
            bad(
                "duration_seconds",
                format!(
                    "{backend} ({}) cannot make {} s segments",
                    params.model, params.duration_seconds
                ),
                format!("use one of {}", join(self.durations.iter())),
            );
        }
        if !self.resolutions.contains(&params.resolution.as_str()) {
            bad(
                "resolution",
                format!(
                    "{backend} ({}) cannot make {} video",
                    params.model, params.resolution
                ),
                format!("use one of {}", join(self.resolutions.iter())),
            );
        }
        if !self.aspect_ratios.contains(&params.aspect_ratio.as_str()) {
            bad(
                "aspect_ratio",
                format!(
                    "{backend} ({}) cannot make {} video",
                    params.model, params.aspect_ratio
                ),
                format!("use one of {}", join(self.aspect_ratios.iter())),
            );
        }
        if params.first_last && !self.first_last_frame {
            bad(
                "mode",
                format!(
                    "{backend} ({}) cannot take a first and a last frame",
                    params.model
                ),
                "use `mode: single`, or a model that supports first-last frames".into(),
            );
        }
        if params.seed.is_some() && !self.seed {
            bad(
                "seed",
                format!("{backend} ({}) does not accept a seed", params.model),
                "remove `seed`".into(),
            );
        }
        if params.generate_audio && !self.generate_audio {
            bad(
                "generate_audio",
                format!(
                    "{backend} ({}) does not accept generate_audio",
                    params.model
                ),
                "set `generate_audio: false`".into(),
            );
        }
        if prompt_chars > self.max_prompt_chars {
            bad(
                "motion",
                format!(
                    "the motion prompt has {prompt_chars} characters; {backend} accepts {}",
                    self.max_prompt_chars
                ),
                "shorten the prompt".into(),
            );
        }
        out
    }
}

impl FrameCaps {
    pub fn check(&self, backend: &str, model: &str, aspect_ratio: &str) -> Vec<CapabilityProblem> {
        let mut out = Vec::new();
        if !self.aspect_ratios.contains(&aspect_ratio) {
            out.push(CapabilityProblem {
                setting: "aspect_ratio".into(),
                message: format!("{backend} ({model}) cannot make {aspect_ratio} images"),
                help: format!("use one of {}", join(self.aspect_ratios.iter())),
            });
        }
        out
    }
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[async_trait]
pub trait FrameGenerator: Send + Sync {
    /// The backend name as written in ttv.yaml (`gemini`, `preview`); part of the cache key.
    fn name(&self) -> &str;
    fn capabilities(&self, model: &str) -> FrameCaps;
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
        "gemini" => Err(project
            .error_at("keyframes.backend", "the gemini backend is not built yet")
            .help("use `backend: preview`")),
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
    let _ = (api, model);
    match backend {
        "preview" => Ok(Arc::new(preview::PreviewVideo)),
        "veo" => Err(project
            .error_at(&format!("{at}.backend"), "the veo backend is not built yet")
            .help("use `backend: preview`")),
        other => Err(project
            .error_at(
                &format!("{at}.backend"),
                format!("unknown video backend `{other}`"),
            )
            .help("use `veo` or `preview`")),
    }
}

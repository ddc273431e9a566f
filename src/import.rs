//! `ttv import PATH`: takes over a project of the Python TTV pipeline in one command. Its
//! `pipeline_config.yaml` becomes ttv.yaml's settings, its `enhanced_prompt.json` (either shape
//! the pipeline has written) the shots, its reference images `references/`, its initial image
//! the first start frame. A project with only its `prompt:` becomes a storyboard request
//! (`storyboard.prompt`, for `ttv storyboard --write`). Every key ttv has no place for is listed
//! with the reason; API keys are never copied (the environment variable ttv reads is named).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::error::UsageError;
use crate::models::{self, Lifecycle};
use crate::project::{self, CONFIG_FILE, IMAGE_EXTENSIONS, Shot, Transition};
use crate::storyboard::shots_yaml;

/// The pipeline's settings file.
pub const PIPELINE_CONFIG: &str = "pipeline_config.yaml";
/// The pipeline's storyboard, written by its prompt enhancement.
pub const ENHANCED_PROMPT: &str = "enhanced_prompt.json";
/// Where the initial image is copied in the new project.
const IMAGES_DIR: &str = "images";

/// One pipeline key and the ttv setting it became.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mapped {
    pub key: String,
    pub to: String,
    /// What changed on the way (a retired model replaced, a duration rounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One pipeline key ttv has no place for, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unmapped {
    pub key: String,
    pub reason: String,
}

/// What `ttv import` did.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub source: PathBuf,
    /// The enhanced_prompt.json read, if one was found.
    pub enhanced_prompt: Option<PathBuf>,
    pub written: PathBuf,
    pub shots: usize,
    /// No enhanced_prompt.json: the prompt became `storyboard.prompt`.
    pub storyboard_request: bool,
    pub references: Vec<String>,
    pub mapped: Vec<Mapped>,
    pub unmapped: Vec<Unmapped>,
    pub notes: Vec<String>,
}

/// Imports the pipeline project at `source` (its folder or its pipeline_config.yaml) into
/// `dest`, with preview backends unless `google` (gemini frames, Veo video).
pub fn import(source: &Path, dest: &Path, force: bool, google: bool) -> Result<Imported> {
    let config_path = if source.is_dir() {
        source.join(PIPELINE_CONFIG)
    } else {
        source.to_path_buf()
    };
    let text = fs::read_to_string(&config_path).map_err(|e| {
        UsageError::new(format!(
            "cannot read {}: {e} (ttv import takes a TTV pipeline project: its folder, or its {PIPELINE_CONFIG})",
            config_path.display()
        ))
    })?;
    let pipeline: Value = serde_saphyr::from_str(&text).map_err(|e| {
        UsageError::new(format!(
            "{} is not YAML ttv can read: {e}",
            config_path.display()
        ))
    })?;
    let Value::Object(pipeline) = pipeline else {
        return Err(UsageError::new(format!(
            "{} holds no settings (a YAML mapping)",
            config_path.display()
        ))
        .into());
    };
    let home = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let target = dest.join(CONFIG_FILE);
    if target.exists() && !force {
        return Err(UsageError::new(format!(
            "{} already exists; ttv import does not overwrite it without --force",
            target.display()
        ))
        .into());
    }

    let mut s = Settings::new(google);
    for (key, value) in flatten(&pipeline) {
        s.map(&key, &value);
    }
    s.finish_video();

    fs::create_dir_all(dest.join("references"))
        .with_context(|| format!("creating {}", dest.join("references").display()))?;
    let references = match &s.references_dir {
        Some(dir) => copy_references(&home.join(dir), &dest.join("references"), &mut s.notes)?,
        None => Vec::new(),
    };
    let initial = match &s.initial_image {
        Some(file) => Some(copy_initial(&home.join(file), dest)?),
        None => None,
    };

    let enhanced = find_enhanced(&home, s.output_dir.as_deref());
    let shots = match &enhanced {
        Some(path) => read_shots(path, &mut s)?,
        None => Vec::new(),
    };
    let shots = first_start(shots, initial.as_deref(), &mut s);
    let storyboard_request = enhanced.is_none();
    if storyboard_request && s.prompt.is_none() {
        return Err(UsageError::new(format!(
            "{} has no prompt and there is no {ENHANCED_PROMPT} beside it: nothing to import",
            config_path.display()
        ))
        .into());
    }

    let name = dest
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| project::slug(&n.to_string_lossy())))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "imported".into());
    let yaml = s.yaml(&name, &config_path, &shots);
    project::parse_config(&yaml).context("the imported settings do not make a valid ttv.yaml")?;
    fs::write(&target, yaml).with_context(|| format!("writing {}", target.display()))?;
    if storyboard_request {
        s.notes.push(format!(
            "no {ENHANCED_PROMPT}: the prompt is in `storyboard.prompt`; `ttv storyboard --write` drafts the shots from it"
        ));
    }
    Ok(Imported {
        source: config_path,
        enhanced_prompt: enhanced,
        written: target,
        shots: shots.len(),
        storyboard_request,
        references,
        mapped: s.mapped,
        unmapped: s.unmapped,
        notes: s.notes,
    })
}

/// Every setting as `(dotted key, value)`; the sections of services are walked one level down.
fn flatten(map: &serde_json::Map<String, Value>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (k, v) in map {
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                for (ik, iv) in inner {
                    out.push((format!("{k}.{ik}"), iv.clone()));
                }
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// Local GPU backends and their tuning: ttv generates with Google's services only.
const LOCAL_GPU: &[&str] = &[
    "task",
    "size",
    "wan2_dir",
    "flf2v_model_dir",
    "i2v_model_dir",
    "total_gpus",
    "parallel_segments",
    "gpu_count",
    "chaining_max_retries",
    "chaining_use_fsdp_flags",
    "framepack_dir",
    "frame_num",
    "sample_steps",
    "sample_shift",
    "guide_scale",
];

/// Video services other than Veo, by their config section.
const OTHER_SERVICES: &[&str] = &["runway_ml", "minimax", "fal", "higgsfield", "hunyuan"];

/// The settings read so far, as ttv.yaml will have them.
struct Settings {
    google: bool,
    keyframe_model: String,
    image_size: Option<String>,
    auto_reference: Option<bool>,
    video_model: String,
    single: Option<bool>,
    chaining: bool,
    keyframe_position: Option<String>,
    duration: Option<f64>,
    aspect_ratio: Option<String>,
    seed: Option<u64>,
    storage_uri: Option<String>,
    max_retries: Option<u64>,
    poll_timeout: Option<u64>,
    prompt: Option<String>,
    seconds: Option<u64>,
    references_dir: Option<String>,
    initial_image: Option<String>,
    output_dir: Option<String>,
    mapped: Vec<Mapped>,
    unmapped: Vec<Unmapped>,
    notes: Vec<String>,
}

impl Settings {
    fn new(google: bool) -> Settings {
        Settings {
            google,
            keyframe_model: "gemini-3.1-flash-image".into(),
            image_size: None,
            auto_reference: None,
            video_model: "veo-3.1-generate-001".into(),
            single: None,
            chaining: false,
            keyframe_position: None,
            duration: None,
            aspect_ratio: None,
            seed: None,
            storage_uri: None,
            max_retries: None,
            poll_timeout: None,
            prompt: None,
            seconds: None,
            references_dir: None,
            initial_image: None,
            output_dir: None,
            mapped: Vec::new(),
            unmapped: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn to(&mut self, key: &str, to: &str, note: Option<String>) {
        self.mapped.push(Mapped {
            key: key.into(),
            to: to.into(),
            note,
        });
    }

    fn skip(&mut self, key: &str, reason: impl Into<String>) {
        self.unmapped.push(Unmapped {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Files one setting into its ttv place, or into the list of what was not imported.
    fn map(&mut self, key: &str, value: &Value) {
        let text = value_text(value);
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let section = key.split_once('.').map(|(s, _)| s);
        if is_secret(leaf) {
            let reason = match leaf {
                "gemini_api_key" => {
                    "an API key: never copied; ttv reads GEMINI_API_KEY (or GOOGLE_API_KEY) from the environment"
                }
                _ => "an API key of a service ttv does not use: never copied",
            };
            self.skip(key, reason);
            return;
        }
        if value.is_null() {
            self.skip(key, "not set");
            return;
        }
        match (section, leaf) {
            (None, "prompt") => {
                self.prompt = text;
                self.to(key, "storyboard.prompt", None);
            }
            (None, "duration_seconds") => {
                self.seconds = value.as_f64().map(|s| s.round() as u64);
                self.to(key, "storyboard.seconds", None);
            }
            (None, "image_generation_model") => self.image_model(key, text.unwrap_or_default()),
            (Some("google_veo"), "veo_model") => self.veo_model(key, text.unwrap_or_default()),
            (Some("google_veo"), "project_id") => self.skip(
                key,
                "the Google Cloud project is read from GOOGLE_CLOUD_PROJECT in the environment",
            ),
            (Some("google_veo"), "region") => self.skip(
                key,
                "the location is read from GOOGLE_CLOUD_LOCATION in the environment (default us-central1)",
            ),
            (Some("google_veo"), "credentials_path") => self.skip(
                key,
                "credentials are read from GOOGLE_APPLICATION_CREDENTIALS (or gcloud's Application Default Credentials) in the environment",
            ),
            (Some("google_veo"), "output_bucket") => {
                let bucket = text.unwrap_or_default();
                let bucket = bucket.trim_start_matches("gs://").trim_end_matches('/');
                self.storage_uri = Some(format!("gs://{bucket}/"));
                self.to(key, "video.storage_uri", None);
            }
            (None, "video_aspect_ratio") => {
                self.aspect_ratio = text;
                self.to(key, "video.aspect_ratio, keyframes.aspect_ratio", None);
            }
            (None, "keyframe_position") => self.keyframe_position(key, text.unwrap_or_default()),
            (None, "single_keyframe_mode") => {
                self.single = value.as_bool();
                self.to(key, "video.mode", None);
            }
            (None, "auto_generate_initial") => {
                self.auto_reference = value.as_bool();
                self.to(key, "keyframes.auto_reference", None);
            }
            (None, "image_size") => self.image_size(key, text.unwrap_or_default()),
            (None, "segment_duration_seconds") => {
                self.duration = value.as_f64();
                self.to(key, "video.duration_seconds", None);
            }
            (None, "generation_mode") => self.generation_mode(key, text.unwrap_or_default()),
            (None, "base_seed") => {
                self.seed = value.as_u64();
                self.to(key, "video.seed", None);
            }
            (None, "reference_images_dir") => {
                self.references_dir = text;
                self.to(key, "references/ (the images copied)", None);
            }
            (None, "initial_image") => {
                self.initial_image = text;
                self.to(key, "the first shot's start_image (copied to images/)", None);
            }
            (None, "output_dir") => {
                self.output_dir = text;
                self.skip(
                    key,
                    "ttv writes its outputs to build/ and keeps every generation in .ttv/",
                );
            }
            (None, "default_backend" | "default_video_generation_backend") => {
                match text.as_deref().unwrap_or_default() {
                    "veo3" | "veo" => self.to(
                        key,
                        "video.backend",
                        (!self.google).then(|| {
                            "written as preview (offline, free); `ttv import --google` writes veo"
                                .to_string()
                        }),
                    ),
                    other => self.skip(
                        key,
                        format!("ttv makes video with Veo only, not `{other}`: video.model is Veo 3.1"),
                    ),
                }
            }
            (Some("remote_api_settings"), "max_retries") => {
                self.max_retries = value.as_u64();
                self.to(key, "keyframes.max_retries, video.max_retries", None);
            }
            (Some("remote_api_settings"), "timeout") => {
                self.poll_timeout = value.as_f64().map(|t| t.round() as u64);
                self.to(key, "video.poll_timeout_seconds", None);
            }
            (Some("remote_api_settings"), "fallback_backend") => self.skip(
                key,
                "the fallback is a local GPU backend; ttv's fallbacks are Veo models (video.fallback)",
            ),
            (None, "openai_base_url" | "prompt_enhancement_model") => self.skip(
                key,
                "ttv drafts storyboards with Gemini text models (`ttv storyboard --model`), not OpenAI",
            ),
            (Some(s), _) if OTHER_SERVICES.contains(&s) => {
                self.skip(key, format!("{s} is a video service ttv does not use (Veo only)"));
            }
            (None, k) if LOCAL_GPU.contains(&k) => self.skip(
                key,
                "a setting of a local GPU backend (Wan2.1, FramePack): ttv generates with Google's services",
            ),
            _ => self.skip(key, "not known to ttv's importer"),
        }
    }

    /// `image_generation_model`: a Gemini image model (retired and preview ids replaced by
    /// their successors); another service's is not imported.
    fn image_model(&mut self, key: &str, id: String) {
        match current_model(&id) {
            Some((model, note)) if models::find(&model).is_some_and(|m| m.image.is_some()) => {
                self.keyframe_model = model;
                self.to(key, "keyframes.model", note);
            }
            _ => self.skip(
                key,
                format!(
                    "`{id}` is not a Gemini image model: ttv makes keyframes with Gemini (keyframes.model is {})",
                    self.keyframe_model
                ),
            ),
        }
    }

    fn veo_model(&mut self, key: &str, id: String) {
        match current_model(&id) {
            Some((model, note)) if models::find(&model).is_some_and(|m| m.video.is_some()) => {
                self.video_model = model;
                self.to(key, "video.model", note);
            }
            _ => {
                self.video_model = id.clone();
                self.to(
                    key,
                    "video.model",
                    Some(format!(
                        "`{id}` is not in ttv's model registry: check it with `ttv doctor`"
                    )),
                );
            }
        }
    }

    fn keyframe_position(&mut self, key: &str, position: String) {
        match position.as_str() {
            "first" | "last" => {
                self.keyframe_position = Some(position);
                self.to(key, "video.keyframe_position", None);
            }
            other => {
                self.keyframe_position = Some("first".into());
                self.to(
                    key,
                    "video.keyframe_position",
                    Some(format!(
                        "`{other}` has no frame in ttv (a shot has a start and an end frame): first"
                    )),
                );
            }
        }
    }

    /// `image_size` (`1024x1024`): the size class of its long side. The keyframes take the
    /// video's aspect ratio, which Veo needs its frames to have.
    fn image_size(&mut self, key: &str, size: String) {
        let long = size
            .split(['x', 'X', '*'])
            .filter_map(|n| n.trim().parse::<u32>().ok())
            .max();
        let Some(long) = long else {
            self.skip(key, format!("`{size}` is not WIDTHxHEIGHT"));
            return;
        };
        let class = match long {
            0..=1024 => "1K",
            1025..=2048 => "2K",
            _ => "4K",
        };
        self.image_size = Some(class.into());
        self.to(
            key,
            "keyframes.image_size",
            Some(format!(
                "{size} is the {class} size; the keyframes take the video's aspect ratio"
            )),
        );
    }

    fn generation_mode(&mut self, key: &str, mode: String) {
        match mode.as_str() {
            "chaining" => {
                self.chaining = true;
                self.to(
                    key,
                    "video.chain: true, video.mode: single",
                    Some(
                        "each continue-shot's video starts on the last frame of the previous video, extracted with ffmpeg (a cached, free node: frame/<shot>/last)"
                            .into(),
                    ),
                );
            }
            _ => self.to(key, "video.mode (with single_keyframe_mode)", None),
        }
    }

    /// Settings that depend on each other: the mode, and a duration the model makes.
    fn finish_video(&mut self) {
        if self.chaining {
            self.single = Some(true);
            self.keyframe_position = Some("first".into());
        }
        if let Some(d) = self.duration {
            let caps = models::video_caps(&self.video_model);
            let allowed = caps
                .resolution("720p")
                .map_or(caps.durations, |r| r.durations);
            let d = d.round() as u32;
            // As the pipeline does for Veo: the shortest allowed length that is not shorter.
            let fit = allowed
                .iter()
                .copied()
                .find(|a| *a >= d)
                .unwrap_or_else(|| allowed.iter().copied().max().unwrap_or(d));
            if fit != d
                && let Some(m) = self
                    .mapped
                    .iter_mut()
                    .find(|m| m.key == "segment_duration_seconds")
            {
                m.note = Some(format!(
                    "{d} s is not a length {} makes: {fit} s",
                    self.video_model
                ));
            }
            self.duration = Some(f64::from(fit));
        }
    }

    fn durations(&self) -> Vec<u32> {
        let caps = models::video_caps(&self.video_model);
        caps.resolution("720p")
            .map_or(caps.durations, |r| r.durations)
            .to_vec()
    }

    /// ttv.yaml: the settings, the shots, and what was not imported as comments.
    fn yaml(&self, name: &str, source: &Path, shots: &[Shot]) -> String {
        let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let (frames, video) = if self.google {
            ("gemini", "veo")
        } else {
            ("preview", "preview")
        };
        let ratio = self.aspect_ratio.clone().unwrap_or_else(|| "16:9".into());
        let mut y = format!(
            "# Imported from {} by `ttv import`. Backends are `{frames}`/`{video}`{}.\nversion: 1\nname: {name}\n\n",
            source.display(),
            if self.google {
                ""
            } else {
                " (offline, free): set keyframes.backend: gemini and video.backend: veo to generate for real"
            }
        );
        y += &format!(
            "keyframes:\n  backend: {frames}\n  model: {}\n  aspect_ratio: {}\n",
            self.keyframe_model,
            quote(&ratio)
        );
        if let Some(size) = &self.image_size {
            y += &format!("  image_size: {size}\n");
        }
        y += "  references: references\n";
        if let Some(a) = self.auto_reference {
            y += &format!("  auto_reference: {a}\n");
        }
        if let Some(r) = self.max_retries {
            y += &format!("  max_retries: {r}\n");
        }
        let mode = match self.single {
            Some(false) => "first-last",
            _ => "single",
        };
        y += &format!(
            "\nvideo:\n  backend: {video}\n  model: {}\n  mode: {mode}\n",
            self.video_model
        );
        if self.chaining {
            y += "  chain: true\n";
        }
        if let Some(p) = &self.keyframe_position {
            y += &format!("  keyframe_position: {p}\n");
        }
        if let Some(d) = self.duration {
            y += &format!("  duration_seconds: {d}\n");
        }
        y += &format!("  aspect_ratio: {}\n", quote(&ratio));
        if let Some(s) = self.seed {
            y += &format!("  seed: {s}\n");
        }
        if let Some(u) = &self.storage_uri {
            y += &format!("  storage_uri: {}\n", quote(u));
        }
        if let Some(r) = self.max_retries {
            y += &format!("  max_retries: {r}\n");
        }
        if let Some(t) = self.poll_timeout {
            y += &format!("  poll_timeout_seconds: {t}\n");
        }
        y += "\nfinal:\n  output: final.mp4\n";
        if self.prompt.is_some() || self.seconds.is_some() {
            y += "\nstoryboard:\n";
            if let Some(p) = &self.prompt {
                y += &format!("  prompt: {}\n", quote(p.trim()));
            }
            if let Some(s) = self.seconds {
                y += &format!("  seconds: {s}\n");
            }
        }
        y += "\n";
        y += &if shots.is_empty() {
            "shots: []\n".to_string()
        } else {
            shots_yaml(shots)
        };
        if !self.unmapped.is_empty() {
            y += "\n# Not imported from the pipeline's settings:\n";
            for u in &self.unmapped {
                y += &format!("#   {}: {}\n", u.key, u.reason);
            }
        }
        y
    }
}

/// A key that holds a secret (its value is never read into ttv.yaml or a message).
fn is_secret(leaf: &str) -> bool {
    let leaf = leaf.to_ascii_lowercase();
    ["api_key", "apikey", "token", "secret", "password"]
        .iter()
        .any(|s| leaf.contains(s))
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The model to use for `id`: itself, or its successor when Google retired it (a `-preview` id
/// the registry does not list is read as its release); with a note saying so.
fn current_model(id: &str) -> Option<(String, Option<String>)> {
    let known = models::find(id).or_else(|| models::find(id.strip_suffix("-preview")?))?;
    match known.lifecycle {
        Lifecycle::Retired {
            on,
            replacement: Some(next),
        } => Some((
            next.to_string(),
            Some(format!(
                "`{id}` was retired by Google on {on}: replaced by its successor `{next}`"
            )),
        )),
        Lifecycle::Retired { on, .. } => Some((
            known.id.to_string(),
            Some(format!(
                "`{id}` was retired by Google on {on}, with no successor"
            )),
        )),
        _ if known.id != id => Some((
            known.id.to_string(),
            Some(format!("`{id}` is served as `{}`", known.id)),
        )),
        _ => Some((known.id.to_string(), None)),
    }
}

/// The images of the pipeline's reference folder, copied into `to`; their names.
fn copy_references(from: &Path, to: &Path, notes: &mut Vec<String>) -> Result<Vec<String>> {
    let entries = match fs::read_dir(from) {
        Ok(e) => e,
        Err(e) => {
            notes.push(format!(
                "the reference folder {} cannot be read ({e}): references/ is empty",
                from.display()
            ));
            return Ok(Vec::new());
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        if !image {
            notes.push(format!("{} is not an image: not copied", path.display()));
            continue;
        }
        fs::copy(&path, to.join(&name))
            .with_context(|| format!("copying {} to {}", path.display(), to.display()))?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Copies the initial image to `images/` in `dest`; its path relative to `dest`.
fn copy_initial(file: &Path, dest: &Path) -> Result<String> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("initial_image names no file")?;
    let dir = dest.join(IMAGES_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::copy(file, dir.join(&name)).map_err(|e| {
        UsageError::new(format!(
            "initial_image {} cannot be copied: {e}",
            file.display()
        ))
    })?;
    Ok(format!("{IMAGES_DIR}/{name}"))
}

/// enhanced_prompt.json beside the config, or in its output folder (where the pipeline writes
/// it).
fn find_enhanced(home: &Path, output_dir: Option<&str>) -> Option<PathBuf> {
    [
        Some(home.join(ENHANCED_PROMPT)),
        Some(
            home.join(output_dir.unwrap_or("output"))
                .join(ENHANCED_PROMPT),
        ),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

/// The shots of an enhanced_prompt.json, in either shape: keyframe prompt N is shot N's end,
/// video prompt N its motion; a `cut` with a `start_prompt` (or a first frame named
/// `segment_NN_start.png`) a cut with its own start; `duration_seconds` carried.
fn read_shots(path: &Path, s: &mut Settings) -> Result<Vec<Shot>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| UsageError::new(format!("{} is not JSON: {e}", path.display())))?;
    let by_segment = |field: &str| -> BTreeMap<u64, Value> {
        doc.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, v)| {
                let n = v
                    .get("segment")
                    .and_then(Value::as_u64)
                    .unwrap_or(i as u64 + 1);
                (n, v.clone())
            })
            .collect()
    };
    let keyframes = by_segment("keyframe_prompts");
    let videos = by_segment("video_prompts");
    let mut segments: Vec<u64> = keyframes.keys().chain(videos.keys()).copied().collect();
    segments.sort_unstable();
    segments.dedup();
    if segments.is_empty() {
        return Err(UsageError::new(format!(
            "{} has no keyframe_prompts or video_prompts",
            path.display()
        ))
        .into());
    }
    let text_of = |v: Option<&Value>, k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let durations = s.durations();
    let names: Vec<String> = segments.iter().map(|n| format!("segment-{n:02}")).collect();
    let ids = project::shot_ids(names.iter().map(String::as_str));
    let mut shots = Vec::new();
    for (i, (n, id)) in segments.iter().zip(ids).enumerate() {
        let (k, v) = (keyframes.get(n), videos.get(n));
        let end = text_of(k, "prompt").ok_or_else(|| {
            UsageError::new(format!(
                "{}: segment {n} has no keyframe prompt (the frame it ends on)",
                path.display()
            ))
        })?;
        let motion = text_of(v, "prompt").unwrap_or_else(|| {
            s.notes.push(format!(
                "segment {n} has no video prompt: its keyframe prompt is its motion"
            ));
            end.clone()
        });
        let start = text_of(k, "start_prompt");
        let named_start = text_of(v, "first_frame").is_some_and(|f| f.ends_with("_start.png"));
        let cut = text_of(k, "transition").as_deref() == Some("cut") || named_start;
        let mut shot = Shot::new(id);
        if cut {
            match start {
                Some(p) => {
                    shot.start = Some(p);
                    if i > 0 {
                        shot.transition = Transition::Cut;
                    }
                }
                None if i > 0 => s.notes.push(format!(
                    "segment {n} is a cut without a start_prompt: it continues from segment {}",
                    segments[i - 1]
                )),
                None => {}
            }
        }
        shot.end = end;
        shot.motion = motion;
        if let Some(d) = v
            .and_then(|v| v.get("duration_seconds"))
            .and_then(Value::as_f64)
        {
            let want = d.round() as u32;
            let fit = durations
                .iter()
                .copied()
                .find(|a| *a >= want)
                .unwrap_or_else(|| durations.iter().copied().max().unwrap_or(want));
            if fit != want {
                s.notes.push(format!(
                    "segment {n} asked for {d} s; {} makes {fit} s",
                    s.video_model
                ));
            }
            shot.duration_seconds = Some(fit);
        }
        shots.push(shot);
    }
    Ok(shots)
}

/// The first shot's start: the initial image when there is one, else its start prompt, else
/// the film's prompt (what the pipeline draws its initial frame from), else its end prompt.
fn first_start(mut shots: Vec<Shot>, initial: Option<&str>, s: &mut Settings) -> Vec<Shot> {
    let Some(first) = shots.first_mut() else {
        return shots;
    };
    if let Some(image) = initial {
        if first.start.take().is_some() {
            s.notes.push(format!(
                "the first segment's start_prompt is not used: the initial image is its start frame ({image})"
            ));
        }
        first.start_image = Some(image.to_string());
        return shots;
    }
    if first.start.is_none() {
        let (prompt, from) = match &s.prompt {
            Some(p) => (p.trim().to_string(), "the pipeline's prompt"),
            None => (first.end.clone(), "its end prompt"),
        };
        s.notes.push(format!(
            "the first shot has no start frame in the pipeline's storyboard: its start prompt is {from}"
        ));
        first.start = Some(prompt);
    }
    shots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_and_preview_ids_become_their_successors() {
        let (m, note) = current_model("gemini-2.5-flash-image-preview").unwrap();
        assert_eq!(m, "gemini-3.1-flash-image");
        assert!(note.unwrap().contains("retired by Google on 2026-10-02"));
        let (m, _) = current_model("veo-3.0-generate-preview").unwrap();
        assert_eq!(m, "veo-3.1-generate-001");
        assert_eq!(
            current_model("veo-3.1-generate-001"),
            Some(("veo-3.1-generate-001".into(), None))
        );
        assert_eq!(current_model("openai/gpt-image-1"), None);
    }

    #[test]
    fn secrets_are_recognized_by_name() {
        for k in ["gemini_api_key", "api_key", "access_token", "client_secret"] {
            assert!(is_secret(k), "{k}");
        }
        assert!(!is_secret("veo_model"));
    }

    #[test]
    fn image_sizes_become_size_classes_and_durations_fit_veo() {
        let mut s = Settings::new(false);
        s.map("image_size", &Value::from("1536x1024"));
        assert_eq!(s.image_size.as_deref(), Some("2K"));
        s.map("segment_duration_seconds", &Value::from(5.0));
        s.finish_video();
        assert_eq!(s.duration, Some(6.0));
        let note = s.mapped.last().unwrap().note.clone().unwrap();
        assert!(note.contains("5 s is not a length"), "{note}");
    }
}

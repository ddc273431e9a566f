//! The project folder and its ttv.yaml (schema version 1, DESIGN.md §2): parsing, defaults,
//! and every check that can be made before any work starts.

mod parsed;
pub(crate) use parsed::ttv_identity;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::error::{ProjectError, ProjectErrors};
use crate::secret::Secret;

pub const CONFIG_FILE: &str = "ttv.yaml";
/// The project's cache folder.
pub const CACHE_DIR: &str = ".ttv";
/// Extensions of reference images, lower case. Other files in references/ are skipped with a note.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub keyframes: KeyframeSettings,
    #[serde(default)]
    pub video: VideoSettings,
    /// `final:`; absent means no stitched video.
    #[serde(default, rename = "final")]
    pub final_: Option<FinalSettings>,
    pub shots: Vec<Shot>,
    /// Price overrides by model name.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceOverride>,
    /// The most one build may spend, in USD (`ttv build --max-cost` overrides it).
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// `cache:`, a remote cache shared with a team and CI.
    #[serde(default)]
    pub cache: CacheSettings,
    /// What `ttv storyboard` drafts when it is given no prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storyboard: Option<StoryboardSettings>,
}

/// `cache:` in ttv.yaml.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `file:///shared/path` (`TTV_REMOTE_CACHE` overrides it). Credentials come from the
    /// environment only.
    pub remote: Option<String>,
    /// `read-write` (default) or `read-only` (`--remote-read-only` forces it).
    pub mode: crate::store::RemoteMode,
}

/// `storyboard:`: the request `ttv storyboard` makes when run without a prompt (`ttv import`
/// writes it for a pipeline project that has only its prompt). Every field can be given on the
/// command line instead.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoryboardSettings {
    /// The idea of the film, in one prompt.
    pub prompt: Option<String>,
    /// How many shots to draft.
    pub shots: Option<u32>,
    /// The film's length, in seconds.
    pub seconds: Option<u32>,
    /// The text model (default `gemini-3.5-flash`).
    pub model: Option<String>,
    /// `gemini` | `preview` (default: `keyframes.backend`).
    pub backend: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeyframeSettings {
    /// `gemini` | `preview`
    pub backend: String,
    pub model: String,
    pub aspect_ratio: String,
    /// `imageConfig.imageSize` (`1K`, `2K`, `4K`; the model registry says which a model takes).
    /// Unset: the model's default size, and no imageSize in the request.
    pub image_size: Option<String>,
    /// Folder of reference images, relative to the project.
    pub references: String,
    pub auto_reference: bool,
    pub chain: bool,
    pub jobs: Jobs,
    pub max_retries: u32,
    /// Limit of one HTTP request to the image service, in seconds.
    pub request_timeout_seconds: f64,
    /// Discouraged: used with a warning, never written anywhere.
    pub api_key: Option<Secret>,
}

impl Default for KeyframeSettings {
    fn default() -> Self {
        KeyframeSettings {
            backend: "gemini".into(),
            model: "gemini-3.1-flash-image".into(),
            aspect_ratio: "16:9".into(),
            image_size: None,
            references: "references".into(),
            auto_reference: true,
            chain: true,
            jobs: Jobs::Fixed(4),
            max_retries: 5,
            request_timeout_seconds: 120.0,
            api_key: None,
        }
    }
}

/// `jobs:` of a backend: how many of its requests run at once. A number is a cap (lowered for a
/// while when the service answers 429); `auto` starts low and grows while the service takes
/// every request (see `limiter.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jobs {
    Auto,
    Fixed(usize),
}

impl Jobs {
    /// A rough number of requests in flight, for estimates.
    pub fn typical(self) -> usize {
        match self {
            Jobs::Auto => 4,
            Jobs::Fixed(n) => n,
        }
    }

    /// The most requests in flight.
    pub fn most(self) -> usize {
        match self {
            Jobs::Auto => crate::limiter::AUTO_MAX,
            Jobs::Fixed(n) => n,
        }
    }
}

impl Serialize for Jobs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Jobs::Auto => s.serialize_str("auto"),
            Jobs::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Jobs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Jobs, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Jobs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of requests, or `auto`")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Jobs, E> {
                Ok(Jobs::Fixed(n as usize))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Jobs, E> {
                usize::try_from(n)
                    .map(Jobs::Fixed)
                    .map_err(|_| E::custom("a number of requests (1 or more), or `auto`"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Jobs, E> {
                match v {
                    "auto" => Ok(Jobs::Auto),
                    _ => Err(E::custom(format!(
                        "`{v}`: give a number of requests, or `auto`"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VideoMode {
    /// One keyframe in (`keyframe_position` says which).
    Single,
    /// The shot's start and end frames in (`image` and `lastFrame`).
    FirstLast,
    /// No keyframe: the motion prompt and up to a few reference images (`referenceImages`).
    References,
}

impl VideoMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VideoMode::Single => "single",
            VideoMode::FirstLast => "first-last",
            VideoMode::References => "references",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KeyframePosition {
    First,
    Last,
    /// Accepted by the parser only to be rejected with an explanation (no frame sits there).
    Middle,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VeoApi {
    Vertex,
    Gemini,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VideoSettings {
    /// `veo` | `preview`
    pub backend: String,
    pub api: VeoApi,
    pub model: String,
    pub mode: VideoMode,
    pub keyframe_position: KeyframePosition,
    pub duration_seconds: u32,
    pub resolution: String,
    pub aspect_ratio: String,
    pub generate_audio: bool,
    pub negative_prompt: String,
    pub seed: Option<u64>,
    pub person_generation: Option<String>,
    /// `sampleCount`: videos one request makes (each becomes a take of the segment).
    pub sample_count: u32,
    /// Reference images (file stems in the references folder) of `mode: references` shots
    /// that do not list their own.
    pub references: Vec<String>,
    /// A segment is generated only when every frame it is made from is approved (`ttv approve`,
    /// or the review page).
    pub require_approval: bool,
    /// Vertex only: `gs://...` prefix where Veo writes the videos instead of returning them inline.
    pub storage_uri: Option<String>,
    pub fallback: Vec<FallbackBackend>,
    pub jobs: Jobs,
    pub max_retries: u32,
    /// Overall limit for one long-running video operation, in seconds.
    pub poll_timeout_seconds: u64,
    /// First wait between polls of a video operation, in seconds (grows to 60 s).
    pub poll_interval_seconds: f64,
    /// Limit of one HTTP request to the video service, in seconds.
    pub request_timeout_seconds: f64,
    /// Discouraged: used with a warning, never written anywhere.
    pub api_key: Option<Secret>,
    /// Chaining mode for every continue-shot: its segment starts on the last frame of the
    /// previous shot's video (as `transition: chain` does for one shot).
    pub chain: bool,
}

impl Default for VideoSettings {
    fn default() -> Self {
        VideoSettings {
            chain: false,
            backend: "veo".into(),
            api: VeoApi::Vertex,
            model: "veo-3.1-generate-001".into(),
            mode: VideoMode::Single,
            keyframe_position: KeyframePosition::First,
            duration_seconds: 8,
            resolution: "720p".into(),
            aspect_ratio: "16:9".into(),
            generate_audio: true,
            negative_prompt: String::new(),
            seed: None,
            person_generation: None,
            sample_count: 1,
            references: Vec::new(),
            require_approval: false,
            storage_uri: None,
            fallback: Vec::new(),
            jobs: Jobs::Auto,
            max_retries: 5,
            poll_timeout_seconds: 900,
            poll_interval_seconds: 10.0,
            request_timeout_seconds: 120.0,
            api_key: None,
        }
    }
}

/// A further video backend tried when the ones before it fail permanently. Unset fields are
/// taken from `video:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FallbackBackend {
    pub backend: String,
    #[serde(default)]
    pub api: Option<VeoApi>,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinalSettings {
    /// File name under build/.
    pub output: String,
}

impl Default for FinalSettings {
    fn default() -> Self {
        FinalSettings {
            output: "final.mp4".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Transition {
    /// Starts on the previous shot's end frame.
    #[default]
    Continue,
    /// Starts on a frame of its own (`start` or `start_image`).
    Cut,
    /// Its segment starts on the last frame of the previous shot's video (extracted with
    /// ffmpeg): continuity of motion, as the Python pipeline's chaining mode.
    Chain,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shot {
    pub id: String,
    #[serde(default)]
    pub transition: Transition,
    /// Prompt of the start frame (first shot and cuts).
    #[serde(default)]
    pub start: Option<String>,
    /// A file (relative to the project) used as the start frame instead of generating one.
    #[serde(default)]
    pub start_image: Option<String>,
    /// Prompt of the frame the shot ends on.
    pub end: String,
    /// The video prompt.
    pub motion: String,
    // Per-shot overrides of `video:`.
    #[serde(default)]
    pub duration_seconds: Option<u32>,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub generate_audio: Option<bool>,
    /// Overrides `video.mode` for this shot.
    #[serde(default)]
    pub mode: Option<VideoMode>,
    /// The reference images (file stems) this shot's keyframes send, and its video in
    /// references mode. Unset: every reference image (keyframes), `video.references` (video).
    #[serde(default)]
    pub references: Option<Vec<String>>,
    /// Pins the take of the shot's segment.
    #[serde(default)]
    pub take: Option<u32>,
    /// Pins the take of the shot's start frame.
    #[serde(default)]
    pub start_take: Option<u32>,
    /// Pins the take of the shot's end frame.
    #[serde(default)]
    pub end_take: Option<u32>,
    /// `[in_s, out_s]`: the part of the segment the final stitch keeps (creators keep 5 of 8
    /// seconds). Only `final` is made again when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trim: Option<[f64; 2]>,
}

impl Shot {
    /// A shot with only its id: every prompt empty, every override unset.
    pub fn new(id: String) -> Shot {
        Shot {
            id,
            transition: Transition::Continue,
            start: None,
            start_image: None,
            end: String::new(),
            motion: String::new(),
            duration_seconds: None,
            negative_prompt: None,
            seed: None,
            generate_audio: None,
            mode: None,
            references: None,
            take: None,
            start_take: None,
            end_take: None,
            trim: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    /// USD per generated image.
    #[serde(default)]
    pub per_image: Option<f64>,
    /// USD per second of generated video.
    #[serde(default)]
    pub per_second: Option<f64>,
}

/// One reference image found in the references folder (bytes are not read here: hashing goes
/// through the stat cache).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// File stem: how prompts and requests name it.
    pub name: String,
    /// Path relative to the project root.
    pub rel_path: PathBuf,
}

/// A loaded, validated project.
#[derive(Debug, Clone)]
pub struct Project {
    /// The project folder (absolute).
    pub root: PathBuf,
    pub config: Config,
    /// Reference images sorted by name.
    pub references: Vec<Reference>,
    /// Notes for the user (skipped files, a key found in ttv.yaml, ...), printed as warnings.
    pub notes: Vec<String>,
    /// Where each setting stands in ttv.yaml, for errors found after loading.
    lines: LineIndex,
    /// What ttv.yaml's parsed copy in `.ttv/` is made from, when this run parsed the YAML and
    /// may keep one (see [`Project::keep_parsed`]).
    unsaved_parse: Option<parsed::Stamp>,
}

/// Maps a dotted setting path (`video.duration_seconds`, `shots.2.motion`, `shots.2`) to its
/// 1-based line in ttv.yaml. Built on first use: only errors need it, so a valid project never
/// parses ttv.yaml a second time.
#[derive(Clone, Default)]
pub struct LineIndex {
    source: Arc<str>,
    lines: OnceLock<BTreeMap<String, usize>>,
}

impl LineIndex {
    fn new(source: String) -> Self {
        LineIndex {
            source: source.into(),
            lines: OnceLock::new(),
        }
    }

    pub fn get(&self, path: &str) -> Option<usize> {
        self.lines
            .get_or_init(|| yaml::line_map(&self.source))
            .get(path)
            .copied()
    }
}

// The source may hold an api_key: Debug shows only what has been indexed.
impl fmt::Debug for LineIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineIndex")
            .field("lines", &self.lines.get())
            .finish_non_exhaustive()
    }
}

impl Project {
    /// Loads and validates `root/ttv.yaml` and lists the references folder. Every problem found is
    /// returned at once, each with the file, line and what to do.
    pub fn load(root: &Path) -> Result<Project, ProjectErrors> {
        let root = std::fs::canonicalize(root).map_err(|_| no_config(root))?;
        let source = match std::fs::read_to_string(root.join(CONFIG_FILE)) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_config(&root).into()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(
                    ProjectError::new(CONFIG_FILE, None, "ttv.yaml is not UTF-8 text")
                        .help("save it with the UTF-8 encoding")
                        .into(),
                );
            }
            Err(e) => {
                return Err(ProjectError::new(
                    CONFIG_FILE,
                    None,
                    format!("cannot read ttv.yaml: {e}"),
                )
                .help("check the file's permissions")
                .into());
            }
        };
        let stamp = parsed::Stamp::new(&source);
        let cached = stamp
            .as_ref()
            .and_then(|s| parsed::load(&root.join(CACHE_DIR), s));
        let (config, unsaved_parse) = match cached {
            Some(config) => (config, None),
            None => (parse_config(&source)?, stamp),
        };
        let mut project = Project {
            root,
            config,
            references: Vec::new(),
            notes: Vec::new(),
            lines: LineIndex::new(source),
            unsaved_parse,
        };
        let mut errors = project.check_settings();
        errors.extend(project.check_shots());
        errors.extend(project.scan_references());
        errors.extend(project.check_reference_lists());
        project.note_api_keys();
        if errors.is_empty() {
            return Ok(project);
        }
        // ttv.yaml top to bottom, then the problems in other files.
        errors.sort_by_key(|e| (e.file != Path::new(CONFIG_FILE), e.line));
        Err(ProjectErrors(errors))
    }

    /// Sets `field: value` under shot `shot` in ttv.yaml, changing that one line (or adding it
    /// after the shot's `id:` line) and nothing else: comments and layout stay the user's.
    /// The file is replaced atomically.
    pub fn set_shot_line(&self, shot: usize, field: &str, value: &str) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let id_line = self
            .lines
            .get(&format!("shots.{shot}.id"))
            .context("the shot's `id:` line is not in ttv.yaml")?;
        let id_text = &lines[id_line - 1];
        let key_col = id_text
            .find("id:")
            .context("the shot's `id:` line has no `id:`")?;
        let indent = " ".repeat(key_col);
        let new_line = format!("{indent}{field}: {value}");
        match self.lines.get(&format!("shots.{shot}.{field}")) {
            Some(l) => {
                // Keep a comment at the end of the line.
                let old = &lines[l - 1];
                let comment = old.find(" #").map(|c| &old[c..]).unwrap_or("");
                lines[l - 1] = format!("{new_line}{comment}");
            }
            None => lines.insert(id_line, new_line),
        }
        let mut out = lines.join("\n");
        if text.ends_with('\n') {
            out.push('\n');
        }
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, out).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// ttv.yaml, as the user would name it in messages.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// The line of a dotted setting path in ttv.yaml (see [`LineIndex`]); falls back to the
    /// nearest enclosing path that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(l);
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }

    /// A project error located at a setting of ttv.yaml.
    pub fn error_at(&self, path: &str, message: impl Into<String>) -> ProjectError {
        ProjectError::new(CONFIG_FILE, self.line_of(path), message)
    }

    pub fn build_dir(&self) -> PathBuf {
        self.root.join("build")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join(CACHE_DIR)
    }

    /// Keeps the parsed ttv.yaml in the cache for the next run, if this run parsed it (a build
    /// calls this once `.ttv/` exists). Best effort: a run without the copy only parses again.
    pub fn keep_parsed(&mut self) {
        if let Some(stamp) = self.unsaved_parse.take() {
            let _ = parsed::save(&self.cache_dir(), &stamp, &self.config);
        }
    }
}

/// Why a path written in ttv.yaml cannot be used as an input of the project.
enum PathProblem {
    Empty,
    Absolute,
    /// `..` climbs out of the project folder.
    Escapes,
    Missing,
    /// A symlink on the way resolves outside the project folder.
    LinksOutside(PathBuf),
    Unreadable(io::Error),
}

/// Resolves `rel` inside `root` (canonical), refusing anything that would make the project
/// depend on files outside its folder.
fn resolve_inside(root: &Path, rel: &str) -> Result<PathBuf, PathProblem> {
    if rel.trim().is_empty() {
        return Err(PathProblem::Empty);
    }
    let mut depth = 0usize;
    for c in Path::new(rel).components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Err(PathProblem::Absolute),
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or(PathProblem::Escapes)?;
            }
            Component::Normal(_) => depth += 1,
        }
    }
    match std::fs::canonicalize(root.join(rel)) {
        Ok(p) if p.starts_with(root) => Ok(p),
        Ok(p) => Err(PathProblem::LinksOutside(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PathProblem::Missing),
        Err(e) => Err(PathProblem::Unreadable(e)),
    }
}

/// `rel` without `.` components: how the path is shown and recorded.
fn tidy(rel: &str) -> PathBuf {
    Path::new(rel)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn is_image(name: &Path) -> bool {
    name.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// `.png .jpg .jpeg .webp .bmp`
fn image_extensions() -> String {
    IMAGE_EXTENSIONS
        .iter()
        .map(|e| format!(".{e}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The longest shot id: ids name files (`build/frames/001-ID-start.png`), and file systems
/// allow 255 bytes per name.
pub const MAX_SHOT_ID: usize = 64;

/// Shot ids for `wanted` names (model answers, pipeline segments): each a [`slug`], cut to
/// [`MAX_SHOT_ID`], not a group's name, unique (`-2`, `-3`... added), `shot-N` when nothing
/// is left of the name.
pub fn shot_ids<'a>(wanted: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, name) in wanted.into_iter().enumerate() {
        let mut id: String = slug(name).chars().take(MAX_SHOT_ID - 4).collect();
        id = id.trim_end_matches('-').to_string();
        if id.is_empty() || RESERVED_IDS.contains(&id.as_str()) {
            id = format!("shot-{}", i + 1);
        }
        let base = id.clone();
        let mut n = 2;
        while out.contains(&id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        out.push(id);
    }
    out
}

/// Target names a shot id would be confused with (`ttv build final`).
pub const RESERVED_IDS: &[&str] = &["final", "frames", "segments"];

fn valid_shot_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A valid id close to an invalid one (`Storm 2` -> `storm-2`; may be empty).
pub fn slug(id: &str) -> String {
    let mut out = String::new();
    for c in id.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

const OUTSIDE_HELP: &str = "copy the file into the project folder and give its path relative to \
                            it, so the project builds the same anywhere";

impl Project {
    /// The error for a path setting at `at` that [`resolve_inside`] refused.
    fn path_error(&self, at: &str, rel: &str, problem: PathProblem) -> ProjectError {
        let name = format!("`{at}`");
        match problem {
            PathProblem::Empty => self
                .error_at(at, format!("{name} is empty"))
                .help("give a path relative to the project folder"),
            PathProblem::Absolute => self
                .error_at(at, format!("{name} is an absolute path: `{rel}`"))
                .help(OUTSIDE_HELP),
            PathProblem::Escapes => self
                .error_at(
                    at,
                    format!("{name} points outside the project folder: `{rel}`"),
                )
                .help(OUTSIDE_HELP),
            PathProblem::LinksOutside(target) => self
                .error_at(
                    at,
                    format!(
                        "{name} `{rel}` resolves to {}, outside the project folder",
                        target.display()
                    ),
                )
                .help(OUTSIDE_HELP),
            PathProblem::Missing => self
                .error_at(at, format!("{name} `{rel}` does not exist"))
                .help(format!(
                    "paths are relative to the project folder {}",
                    self.root.display()
                )),
            PathProblem::Unreadable(e) => self
                .error_at(at, format!("cannot read {name} `{rel}`: {e}"))
                .help("check its permissions"),
        }
    }

    /// Everything outside `shots:` and the references folder.
    fn check_settings(&self) -> Vec<ProjectError> {
        let c = &self.config;
        let mut errors = Vec::new();
        if c.version != 1 {
            errors.push(
                self.error_at("version", format!("unknown ttv.yaml version {}", c.version))
                    .help("this ttv reads `version: 1`"),
            );
        }
        for (at, jobs) in [
            ("keyframes.jobs", c.keyframes.jobs),
            ("video.jobs", c.video.jobs),
        ] {
            if jobs == Jobs::Fixed(0) {
                errors.push(
                    self.error_at(at, format!("`{at}` must be at least 1"))
                        .help(
                            "it is how many requests to this backend run at once (or `auto`: \
                             as many as the service takes)",
                        ),
                );
            }
        }
        if c.video.duration_seconds == 0 {
            errors.push(
                self.error_at(
                    "video.duration_seconds",
                    "`video.duration_seconds` must be at least 1",
                )
                .help("set the length of each segment in seconds, e.g. 8"),
            );
        }
        if c.video.poll_timeout_seconds == 0 {
            errors.push(
                self.error_at(
                    "video.poll_timeout_seconds",
                    "`video.poll_timeout_seconds` must be at least 1",
                )
                .help("it is how long one video generation may take, e.g. 900"),
            );
        }
        if c.video.keyframe_position == KeyframePosition::Middle {
            errors.push(
                self.error_at(
                    "video.keyframe_position",
                    "`keyframe_position: middle` has no frame to point at: each segment is made \
                     from its start and end frames, and no frame sits in the middle of a segment",
                )
                .help(
                    "use `first` (send the frame the shot starts on) or `last` (the frame it \
                     ends on)",
                ),
            );
        }
        if let Some(f) = &c.final_ {
            let path = Path::new(&f.output);
            let plain = !f.output.contains(['/', '\\'])
                && matches!(
                    path.components().collect::<Vec<_>>()[..],
                    [Component::Normal(_)]
                );
            let problem = if !plain {
                Some(format!(
                    "`final.output` must be a file name, not a path: `{}`",
                    f.output
                ))
            } else if !path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("mp4"))
            {
                Some(format!("`final.output` must end in .mp4: `{}`", f.output))
            } else {
                None
            };
            if let Some(message) = problem {
                errors.push(
                    self.error_at("final.output", message)
                        .help("e.g. `output: final.mp4`; it is written to build/"),
                );
            }
        }
        if c.budget_usd.is_some_and(|b| !(b.is_finite() && b >= 0.0)) {
            errors.push(
                self.error_at(
                    "budget_usd",
                    "`budget_usd` must be an amount in USD, 0 or more",
                )
                .help("e.g. `budget_usd: 20`"),
            );
        }
        if let Some(url) = &c.cache.remote
            && let Err(message) = crate::store::remote::check_url(url)
        {
            errors.push(
                self.error_at("cache.remote", message)
                    .help("e.g. `remote: s3://my-bucket/ttv`, `gs://my-bucket/ttv` or `file:///srv/ttv-cache`"),
            );
        }
        for (model, p) in &c.prices {
            for (field, value) in [("per_image", p.per_image), ("per_second", p.per_second)] {
                if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                    let at = format!("prices.{model}.{field}");
                    errors.push(
                        self.error_at(&at, format!("`{at}` must be a price in USD, 0 or more"))
                            .help(format!("e.g. `{field}: 0.40`")),
                    );
                }
            }
        }
        errors
    }

    fn check_shots(&self) -> Vec<ProjectError> {
        let shots = &self.config.shots;
        let mut errors = Vec::new();
        if shots.is_empty() {
            let drafted = self
                .config
                .storyboard
                .as_ref()
                .is_some_and(|s| s.prompt.is_some());
            errors.push(self.error_at("shots", "no shots").help(if drafted {
                "run `ttv storyboard --write` to draft the shots from `storyboard.prompt`, or \
                 add shots with `id`, `start`, `end` and `motion`"
            } else {
                "add at least one shot with `id`, `start`, `end` and `motion`"
            }));
        }
        let mut first_use: HashMap<&str, usize> = HashMap::new();
        for (i, shot) in shots.iter().enumerate() {
            let at = |field: &str| format!("shots.{i}.{field}");
            let id = &shot.id;
            if !valid_shot_id(id) {
                let fix = slug(id);
                let help = if fix.is_empty() {
                    "use lower-case letters, digits and `-`: the id names files and node ids"
                        .to_string()
                } else {
                    format!(
                        "use lower-case letters, digits and `-` (it names files and node ids), \
                         e.g. `{fix}`"
                    )
                };
                errors.push(
                    self.error_at(&at("id"), format!("shot id `{id}` is not valid"))
                        .help(help),
                );
            }
            if id.len() > MAX_SHOT_ID {
                errors.push(
                    self.error_at(
                        &at("id"),
                        format!(
                            "shot id `{}...` is {} characters long; the most is {MAX_SHOT_ID}",
                            &id[..24.min(id.len())],
                            id.len()
                        ),
                    )
                    .help("use a short id: it names the shot's files and nodes"),
                );
            } else if RESERVED_IDS.contains(&id.as_str()) {
                errors.push(
                    self.error_at(
                        &at("id"),
                        format!("shot id `{id}` is a target group's name"),
                    )
                    .help(format!(
                        "rename the shot (e.g. `{id}-shot`): `ttv build {id}` means the group"
                    )),
                );
            }
            for (field, prompt) in [
                ("end", Some(&shot.end)),
                ("motion", Some(&shot.motion)),
                ("start", shot.start.as_ref()),
            ] {
                if prompt.is_some_and(|p| p.trim().is_empty()) {
                    errors.push(
                        self.error_at(
                            &at(field),
                            format!("the `{field}` prompt of shot `{id}` is empty"),
                        )
                        .help(match field {
                            "motion" => {
                                "describe the camera and the action: Veo refuses an \
                                         empty prompt"
                            }
                            _ => "describe the frame: an image model needs a prompt",
                        }),
                    );
                }
            }
            if let Some(&first) = first_use.get(id.as_str()) {
                let first_line = self
                    .line_of(&format!("shots.{first}.id"))
                    .map_or(String::new(), |l| format!(" (first on line {l})"));
                errors.push(
                    self.error_at(
                        &at("id"),
                        format!("shot id `{id}` is used twice{first_line}"),
                    )
                    .help("give each shot its own id"),
                );
            } else {
                first_use.insert(id, i);
            }

            if i == 0 && shot.transition == Transition::Chain {
                errors.push(
                    self.error_at(
                        &at("transition"),
                        "the first shot cannot be a chain: there is no video before it",
                    )
                    .help("remove `transition: chain` from the first shot"),
                );
            }
            let own_start = i == 0 || shot.transition == Transition::Cut;
            if own_start {
                match (&shot.start, &shot.start_image) {
                    (None, None) => {
                        let what = if i == 0 {
                            "is the first shot"
                        } else {
                            "is a cut"
                        };
                        errors.push(
                            self.error_at(
                                &format!("shots.{i}"),
                                format!("shot `{id}` {what} but has no start frame"),
                            )
                            .help(
                                "add `start: \"...\"` (a prompt for the frame it starts on) or \
                                 `start_image: path/to/image.png`",
                            ),
                        );
                    }
                    (Some(_), Some(_)) => errors.push(
                        self.error_at(
                            &at("start_image"),
                            format!("shot `{id}` has both `start` and `start_image`"),
                        )
                        .help(
                            "keep one: `start` generates the frame from a prompt, \
                             `start_image` uses your image as it is",
                        ),
                    ),
                    (None, Some(image)) => errors.extend(self.check_start_image(i, image)),
                    (Some(_), None) => {}
                }
            } else {
                let prev = &shots[i - 1].id;
                for (field, set) in [
                    ("start", shot.start.is_some()),
                    ("start_image", shot.start_image.is_some()),
                    ("start_take", shot.start_take.is_some()),
                ] {
                    if set {
                        errors.push(
                            self.error_at(
                                &at(field),
                                format!(
                                    "shot `{id}` starts on the end frame of `{prev}`, so it has \
                                     no `{field}` of its own"
                                ),
                            )
                            .help(format!(
                                "add `transition: cut` to start it on a frame of its own, or \
                                 remove `{field}`"
                            )),
                        );
                    }
                }
            }

            if let Some([from, to]) = shot.trim {
                let length = f64::from(
                    shot.duration_seconds
                        .unwrap_or(self.config.video.duration_seconds),
                );
                let problem = if !(from.is_finite() && to.is_finite()) || from < 0.0 {
                    Some(format!(
                        "`{}` takes two times in seconds, 0 or more",
                        at("trim")
                    ))
                } else if to <= from {
                    Some(format!(
                        "`{}`: the end ({to} s) must come after the start ({from} s)",
                        at("trim")
                    ))
                } else if to > length + 1e-9 {
                    Some(format!(
                        "`{}`: the end ({to} s) is past the segment's {length} s",
                        at("trim")
                    ))
                } else {
                    None
                };
                if let Some(message) = problem {
                    errors.push(self.error_at(&at("trim"), message).help(format!(
                        "e.g. `trim: [1.5, {}]` keeps from 1.5 s to the end of a {length} s segment",
                        length.clamp(2.0, 5.0)
                    )));
                }
            }
            if shot.duration_seconds == Some(0) {
                errors.push(
                    self.error_at(
                        &at("duration_seconds"),
                        format!("`{}` must be at least 1", at("duration_seconds")),
                    )
                    .help("set the length of the segment in seconds, e.g. 8"),
                );
            }
            for (field, value, node) in [
                ("take", shot.take, format!("segment/{id}")),
                ("start_take", shot.start_take, format!("frame/{id}/start")),
                ("end_take", shot.end_take, format!("frame/{id}/end")),
            ] {
                if value == Some(0) {
                    errors.push(
                        self.error_at(&at(field), "takes are numbered from 1")
                            .help(format!("`ttv takes {node}` lists them")),
                    );
                }
            }
        }
        errors
    }

    fn check_start_image(&self, shot: usize, image: &str) -> Option<ProjectError> {
        let at = format!("shots.{shot}.start_image");
        let path = match resolve_inside(&self.root, image) {
            Ok(p) => p,
            Err(problem) => return Some(self.path_error(&at, image, problem)),
        };
        if !path.is_file() {
            Some(
                self.error_at(&at, format!("`{at}` `{image}` is not a file"))
                    .help(format!(
                        "give the path of an image ({})",
                        image_extensions()
                    )),
            )
        } else if !is_image(Path::new(image)) {
            Some(
                self.error_at(&at, format!("`{at}` `{image}` is not an image"))
                    .help(format!("use one of {}", image_extensions())),
            )
        } else {
            None
        }
    }

    /// Lists the references folder into `references` and `notes`. Reads no image bytes: they are
    /// hashed later through the stat cache.
    fn scan_references(&mut self) -> Vec<ProjectError> {
        let at = "keyframes.references";
        let rel = self.config.keyframes.references.clone();
        let dir = match resolve_inside(&self.root, &rel) {
            Ok(d) if d.is_dir() => d,
            Ok(_) => {
                return vec![
                    self.error_at(at, format!("`{at}` `{rel}` is not a folder"))
                        .help("point it at the folder of your reference images"),
                ];
            }
            Err(PathProblem::Missing) => {
                return vec![
                    self.error_at(at, format!("the references folder `{rel}` does not exist"))
                        .help(
                            "create references/ with your character and setting images, or set \
                             keyframes.references",
                        ),
                ];
            }
            Err(problem) => return vec![self.path_error(at, &rel, problem)],
        };
        let rel_dir = tidy(&rel);
        let mut errors = Vec::new();
        let mut found = Vec::new();
        let walk = walkdir::WalkDir::new(&dir)
            .min_depth(1)
            .max_depth(1)
            .sort_by_file_name();
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errors.push(
                        ProjectError::new(&rel_dir, None, format!("cannot list the folder: {e}"))
                            .help("check its permissions"),
                    );
                    continue;
                }
            };
            let rel_path = rel_dir.join(entry.file_name());
            let shown = rel_path.display();
            let Some(file_name) = entry.file_name().to_str() else {
                errors.push(
                    ProjectError::new(&rel_path, None, "the file name is not UTF-8")
                        .help("rename it: its name is how prompts refer to it"),
                );
                continue;
            };
            if file_name.starts_with('.') {
                continue;
            }
            let is_dir = if entry.path_is_symlink() {
                match std::fs::canonicalize(entry.path()) {
                    Ok(target) if target.starts_with(&self.root) => target.is_dir(),
                    Ok(target) => {
                        errors.push(
                            ProjectError::new(
                                &rel_path,
                                None,
                                format!(
                                    "{shown} links to {}, outside the project folder",
                                    target.display()
                                ),
                            )
                            .help(format!(
                                "copy the image into {} instead of linking to it, so the \
                                 project carries its inputs",
                                rel_dir.display()
                            )),
                        );
                        continue;
                    }
                    Err(_) => {
                        errors.push(
                            ProjectError::new(&rel_path, None, format!("{shown} is a broken link"))
                                .help("point it at an image inside the project, or remove it"),
                        );
                        continue;
                    }
                }
            } else {
                entry.file_type().is_dir()
            };
            let file_name = Path::new(file_name);
            // A FIFO, socket or device would block the read or make no sense as an image.
            let regular = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
            if !is_dir && !regular {
                self.notes.push(format!(
                    "{shown} skipped: not a regular file (a pipe, socket or device)"
                ));
                continue;
            }
            if is_dir {
                self.notes.push(format!(
                    "{shown} skipped: a folder (references are not searched in subfolders)"
                ));
            } else if !is_image(file_name) {
                self.notes.push(format!(
                    "{shown} skipped: not an image ({})",
                    image_extensions()
                ));
            } else if let Some(stem) = file_name.file_stem().and_then(|s| s.to_str()) {
                found.push(Reference {
                    name: stem.to_string(),
                    rel_path,
                });
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name).then(a.rel_path.cmp(&b.rel_path)));
        for pair in found.windows(2) {
            if pair[0].name == pair[1].name {
                errors.push(
                    ProjectError::new(
                        &pair[1].rel_path,
                        None,
                        format!(
                            "two references are named `{}`: {} and {}",
                            pair[0].name,
                            pair[0].rel_path.display(),
                            pair[1].rel_path.display()
                        ),
                    )
                    .help(
                        "rename or remove one: a reference is known by its file name without \
                         the extension",
                    ),
                );
            }
        }
        self.references = found;
        errors
    }

    fn note_api_keys(&mut self) {
        let c = &self.config;
        for (at, set) in [
            ("keyframes.api_key", c.keyframes.api_key.is_some()),
            ("video.api_key", c.video.api_key.is_some()),
        ] {
            if set {
                let place = self
                    .line_of(at)
                    .map_or(CONFIG_FILE.to_string(), |l| format!("{CONFIG_FILE}:{l}"));
                self.notes.push(format!(
                    "{place}: `{at}` is used, but a key does not belong in ttv.yaml (it is easily \
                     committed or shared): set GEMINI_API_KEY in the environment and remove it"
                ));
            }
        }
    }
}

impl Config {
    /// Whether shot `i`'s segment starts on the last frame of the previous shot's video.
    pub fn chained(&self, i: usize) -> bool {
        i > 0
            && match self.shots[i].transition {
                Transition::Chain => true,
                Transition::Continue => self.video.chain,
                Transition::Cut => false,
            }
    }

    /// The video mode of shot `shot`: its own `mode`, else `video.mode`.
    pub fn video_mode(&self, shot: usize) -> VideoMode {
        self.shots[shot].mode.unwrap_or(self.video.mode)
    }

    /// The reference names a shot's video sends in references mode.
    pub fn video_references(&self, shot: usize) -> &[String] {
        self.shots[shot]
            .references
            .as_deref()
            .unwrap_or(&self.video.references)
    }
}

impl Project {
    /// `references:` lists (a shot's, `video.references`) name files of the references folder,
    /// seeds fit Veo's uint32, and the video modes have what they need.
    fn check_reference_lists(&self) -> Vec<ProjectError> {
        let c = &self.config;
        let mut errors = Vec::new();
        let known: Vec<&str> = self.references.iter().map(|r| r.name.as_str()).collect();
        let mut check_names = |at: String, names: &[String]| {
            for (j, name) in names.iter().enumerate() {
                if known.contains(&name.as_str()) {
                    continue;
                }
                let close = known
                    .iter()
                    .map(|k| (strsim::jaro_winkler(k, name), *k))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                let help = match close {
                    Some((_, k)) => format!("did you mean `{k}`?"),
                    None if known.is_empty() => format!(
                        "put `{name}.png` (or .jpg, .webp) in {}/",
                        c.keyframes.references
                    ),
                    None => format!("the references are: {}", known.join(", ")),
                };
                errors.push(
                    self.error_at(
                        &format!("{at}.{j}"),
                        format!("`{at}` names `{name}`, which is not in the references folder"),
                    )
                    .help(help),
                );
            }
        };
        check_names("video.references".into(), &c.video.references);
        for (i, shot) in c.shots.iter().enumerate() {
            if let Some(names) = &shot.references {
                check_names(format!("shots.{i}.references"), names);
            }
        }
        let uses_references = (0..c.shots.len()).any(|i| c.video_mode(i) == VideoMode::References);
        if !c.video.references.is_empty() && !uses_references {
            errors.push(
                self.error_at(
                    "video.references",
                    format!(
                        "`video.references` is for `mode: references`, and no shot uses it \
                         (video.mode is {}): Veo does not take reference images together \
                         with a start or last frame",
                        c.video.mode.as_str()
                    ),
                )
                .help(
                    "remove `video.references` (keyframes use `keyframes.references` and each \
                     shot's `references:`), or set `mode: references`",
                ),
            );
        }
        for (i, shot) in c.shots.iter().enumerate() {
            if c.video_mode(i) == VideoMode::References && c.video_references(i).is_empty() {
                errors.push(
                    self.error_at(
                        &format!("shots.{i}"),
                        format!(
                            "shot `{}` is in `mode: references` but names no reference image",
                            shot.id
                        ),
                    )
                    .help(
                        "add `references: [name, ...]` under the shot (file stems in the \
                         references folder), or `video.references`",
                    ),
                );
            }
        }
        let seeds = std::iter::once(("video.seed".to_string(), c.video.seed)).chain(
            c.shots
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("shots.{i}.seed"), s.seed)),
        );
        for (at, seed) in seeds {
            if let Some(seed) = seed.filter(|s| *s > u64::from(u32::MAX)) {
                errors.push(
                    self.error_at(&at, format!("`{at}` is {seed}, more than Veo takes"))
                        .help(format!("use a seed from 0 to {}", u32::MAX)),
                );
            }
        }
        if c.video.sample_count == 0 {
            errors.push(
                self.error_at(
                    "video.sample_count",
                    "`video.sample_count` must be at least 1",
                )
                .help("it is how many videos (takes) one request makes, e.g. 1"),
            );
        }
        errors
    }
}

/// Finds the project folder: `dir` if given, else the nearest folder upwards holding ttv.yaml.
/// ttv.yaml's settings, parsed but not checked: for commands that work on a project before it
/// is complete (`ttv storyboard` on a project that has no shots yet).
pub fn parse_config(source: &str) -> Result<Config, ProjectError> {
    let options = serde_saphyr::options! { emit_comments: false };
    serde_saphyr::from_str_with_options(source, options).map_err(|e| yaml::config_error(source, &e))
}

pub fn find_root(dir: Option<&Path>) -> Result<PathBuf, ProjectError> {
    match dir {
        Some(dir) if dir.join(CONFIG_FILE).is_file() => {
            std::fs::canonicalize(dir).map_err(|_| no_config(dir))
        }
        Some(dir) => Err(no_config(dir)),
        None => {
            let cwd = std::env::current_dir().map_err(|e| {
                ProjectError::new(
                    CONFIG_FILE,
                    None,
                    format!("cannot read the current folder: {e}"),
                )
                .help("pass -C DIR")
            })?;
            find_root_above(&cwd)
        }
    }
}

fn find_root_above(start: &Path) -> Result<PathBuf, ProjectError> {
    start
        .ancestors()
        .find(|dir| dir.join(CONFIG_FILE).is_file())
        .and_then(|dir| std::fs::canonicalize(dir).ok())
        .ok_or_else(|| {
            ProjectError::new(
                CONFIG_FILE,
                None,
                "no ttv.yaml here or in any parent folder",
            )
            .help("run `ttv init` to start a project, or pass -C DIR")
        })
}

fn no_config(dir: &Path) -> ProjectError {
    ProjectError::new(
        CONFIG_FILE,
        None,
        format!("no ttv.yaml in {}", dir.display()),
    )
    .help("run `ttv init`, or pass -C DIR")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOTS: &str = "shots:
  - id: arrival
    start: \"A lighthouse at dusk\"
    end: \"The keeper opens the door\"
    motion: \"Slow dolly in\"
";

    /// A project folder with `yaml` as ttv.yaml and an empty references/.
    fn folder(yaml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), yaml).unwrap();
        std::fs::create_dir(dir.path().join("references")).unwrap();
        dir
    }

    fn errors_of(dir: &tempfile::TempDir) -> Vec<ProjectError> {
        match Project::load(dir.path()) {
            Ok(p) => panic!("loaded a project that should fail: {p:?}"),
            Err(e) => e.0,
        }
    }

    fn only_error(yaml: &str) -> ProjectError {
        let dir = folder(yaml);
        let mut errors = errors_of(&dir);
        assert_eq!(errors.len(), 1, "{}", ProjectErrors(errors.clone()));
        errors.remove(0)
    }

    fn help(e: &ProjectError) -> &str {
        e.help.as_deref().unwrap_or_default()
    }

    #[test]
    fn the_parsed_copy_serves_the_same_text_only_and_never_holds_a_key() {
        let yaml = format!(
            "version: 1\nname: demo\nprices:\n  veo-3.0-generate-001:\n    per_second: 0.1\n{SHOTS}"
        );
        let dir = folder(&yaml);
        std::fs::create_dir_all(dir.path().join(".ttv/tmp")).unwrap();
        let mut first = Project::load(dir.path()).unwrap();
        assert!(first.unsaved_parse.is_some(), "parsed from YAML");
        first.keep_parsed();
        let copy = dir.path().join(".ttv/ttv.yaml.json");
        assert!(copy.exists());

        let again = Project::load(dir.path()).unwrap();
        assert!(again.unsaved_parse.is_none(), "read from the copy");
        assert_eq!(again.config, first.config);

        std::fs::write(dir.path().join(CONFIG_FILE), yaml.replace("demo", "other")).unwrap();
        let edited = Project::load(dir.path()).unwrap();
        assert!(edited.unsaved_parse.is_some(), "an edit is parsed again");
        assert_eq!(edited.config.name.as_deref(), Some("other"));

        std::fs::remove_file(&copy).unwrap();
        let keyed = yaml.replace(
            "name: demo",
            "name: demo\nkeyframes:\n  api_key: AIzaSECRETKEY1",
        );
        std::fs::write(dir.path().join(CONFIG_FILE), keyed).unwrap();
        let mut with_key = Project::load(dir.path()).unwrap();
        with_key.keep_parsed();
        assert!(!copy.exists(), "a config holding a key is not copied");
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let dir = folder(&format!("version: 1\n{SHOTS}"));
        let p = Project::load(dir.path()).unwrap();
        assert!(p.root.is_absolute());
        assert_eq!(p.root, std::fs::canonicalize(dir.path()).unwrap());
        assert_eq!(p.config.keyframes, KeyframeSettings::default());
        assert_eq!(p.config.video, VideoSettings::default());
        assert_eq!(p.config.final_, None);
        assert_eq!(p.config.shots[0].transition, Transition::Continue);
        assert!(p.references.is_empty() && p.notes.is_empty());
        // Nothing went wrong, so ttv.yaml was parsed once, by serde.
        assert!(p.lines.lines.get().is_none());
        assert_eq!(p.line_of("shots.0.motion"), Some(6));
        assert_eq!(p.line_of("shots.0.seed"), Some(3), "falls back to the shot");
        assert_eq!(p.line_of("video.seed"), None);
    }

    #[test]
    fn line_index_names_nested_settings() {
        let yaml = "version: 1
video:
  duration_seconds: 6
  fallback:
    - backend: veo
      model: veo-3.0-fast-generate-001
keyframes:
  references: references
final:
  output: film.mp4
shots:
  - id: a
    start: s
    end: e
    motion: m
  - id: b
    end: e
    motion: m
";
        let dir = folder(yaml);
        let p = Project::load(dir.path()).unwrap();
        assert_eq!(p.config.final_.as_ref().unwrap().output, "film.mp4");
        for (path, line) in [
            ("video.duration_seconds", 3),
            ("video.fallback.0.backend", 5),
            ("video.fallback.0.model", 6),
            ("keyframes.references", 8),
            ("shots.1", 16),
            ("shots.1.motion", 18),
        ] {
            assert_eq!(p.line_of(path), Some(line), "{path}");
        }
        let e = p.error_at("video.fallback.0.backend", "unknown video backend `x`");
        assert_eq!(e.to_string(), "ttv.yaml:5: unknown video backend `x`");
    }

    #[test]
    fn misspelt_key_suggests_the_right_one() {
        let e = only_error(&format!(
            "version: 1\nvideo:\n  resolution: 720p\n  duraton_seconds: 6\n{SHOTS}"
        ));
        assert_eq!(e.file, Path::new("ttv.yaml"));
        assert_eq!(e.line, Some(4));
        assert_eq!(e.message, "unknown key `duraton_seconds` in video");
        assert_eq!(help(&e), "did you mean `duration_seconds`?");

        let e = only_error(&format!("version: 1\n{SHOTS}    moton: x\n"));
        assert_eq!(e.line, Some(7));
        assert_eq!(e.message, "unknown key `moton` in shots.0");
        assert_eq!(help(&e), "did you mean `motion`?");

        let e = only_error(&format!("version: 1\ncolour: red\n{SHOTS}"));
        assert_eq!(e.line, Some(2));
        assert_eq!(e.message, "unknown key `colour` at the top level");
        assert!(
            help(&e).starts_with("expected one of: version, name"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_name_the_setting_and_what_it_takes() {
        let e = only_error(&format!(
            "version: 1\nvideo:\n  duration_seconds: eight\n{SHOTS}"
        ));
        assert_eq!(e.line, Some(3));
        assert_eq!(
            e.message,
            "`video.duration_seconds` must be a whole number (0 or more), not `eight`"
        );
        assert_eq!(help(&e), "for example `duration_seconds: 8`");

        let e = only_error(&format!("version: 1\nvideo:\n  mode: firstlast\n{SHOTS}"));
        assert_eq!(e.line, Some(3));
        assert_eq!(e.message, "`firstlast` is not a valid `video.mode`");
        assert_eq!(help(&e), "did you mean `first-last`?");

        let e = only_error("version: 1\nshots: 3\n");
        assert_eq!(
            (e.line, e.message.as_str()),
            (Some(2), "`shots` must be a list")
        );

        let e = only_error("version: 1\nshots:\n  - id: a\n    start: s\n    motion: m\n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.message, "missing `end` in shots.0");
    }

    #[test]
    fn yaml_syntax_error_names_the_line() {
        let e = only_error("version: 1\nvideo: {mode: single\nshots: []\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.starts_with("YAML syntax error: "), "{e}");

        let e = only_error("version: 1\nversion: 1\nshots: []\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(help(&e), "a setting is written twice: keep one of them");
    }

    #[test]
    fn missing_config_says_how_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let errors = Project::load(dir.path()).unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.starts_with("no ttv.yaml in "),
            "{}",
            errors[0]
        );
        assert_eq!(help(&errors[0]), "run `ttv init`, or pass -C DIR");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_line() {
        let yaml = "version: 2
keyframes:
  jobs: 0
video:
  keyframe_position: middle
  duration_seconds: 0
final:
  output: out/film.mov
shots:
  - id: Arrival Night
    end: e
    motion: m
  - id: storm
    start: s
    end: e
    motion: m
  - id: storm
    transition: cut
    end: e
    motion: m
  - id: dream
    transition: cut
    start: s
    start_image: dream.png
    end: e
    motion: m
    take: 0
";
        let dir = folder(yaml);
        std::fs::write(dir.path().join("dream.png"), b"png").unwrap();
        let errors = errors_of(&dir);
        let got: Vec<(Option<usize>, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        let expected: Vec<(Option<usize>, &str)> = vec![
            (Some(1), "unknown ttv.yaml version 2"),
            (Some(3), "`keyframes.jobs` must be at least 1"),
            (
                Some(5),
                "`keyframe_position: middle` has no frame to point at: each segment is made from \
                 its start and end frames, and no frame sits in the middle of a segment",
            ),
            (Some(6), "`video.duration_seconds` must be at least 1"),
            (
                Some(8),
                "`final.output` must be a file name, not a path: `out/film.mov`",
            ),
            (Some(10), "shot id `Arrival Night` is not valid"),
            (
                Some(10),
                "shot `Arrival Night` is the first shot but has no start frame",
            ),
            (
                Some(14),
                "shot `storm` starts on the end frame of `Arrival Night`, so it has no `start` of \
                 its own",
            ),
            (Some(17), "shot id `storm` is used twice (first on line 13)"),
            (Some(17), "shot `storm` is a cut but has no start frame"),
            (Some(24), "shot `dream` has both `start` and `start_image`"),
            (Some(27), "takes are numbered from 1"),
        ];
        assert_eq!(got, expected, "{}", ProjectErrors(errors.clone()));
        assert!(errors.iter().all(|e| e.file == Path::new("ttv.yaml")));
        assert!(errors.iter().all(|e| e.help.is_some()));
        assert_eq!(help(&errors[5]).rsplit('`').nth(1), Some("arrival-night"));
        assert!(help(&errors[7]).contains("transition: cut"));
        assert!(help(&errors[2]).contains("`first`") && help(&errors[2]).contains("`last`"));
        assert!(
            !dir.path().join(".ttv").exists(),
            "loading must not create the cache"
        );
    }

    #[test]
    fn reference_lists_seeds_and_modes_are_checked_with_their_lines() {
        let yaml = "version: 1
video:
  seed: 4294967296
  references: [hero]
shots:
  - id: a
    start: s
    end: e
    motion: m
    references: [heroo]
  - id: b
    end: e
    motion: m
    mode: references
    references: []
";
        let dir = folder(yaml);
        std::fs::write(dir.path().join("references/hero.png"), b"png").unwrap();
        let errors = errors_of(&dir);
        let got: Vec<(Option<usize>, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(3), "`video.seed` is 4294967296, more than Veo takes"),
                (
                    Some(10),
                    "`shots.0.references` names `heroo`, which is not in the references folder"
                ),
                (
                    Some(11),
                    "shot `b` is in `mode: references` but names no reference image"
                ),
            ],
            "{}",
            ProjectErrors(errors.clone())
        );
        assert_eq!(help(&errors[1]), "did you mean `hero`?");
    }

    #[test]
    fn final_output_must_be_an_mp4_file_name() {
        let e = only_error(&format!("version: 1\nfinal:\n  output: film.mov\n{SHOTS}"));
        assert_eq!(e.line, Some(3));
        assert_eq!(e.message, "`final.output` must end in .mp4: `film.mov`");
        let e = only_error(&format!(
            "version: 1\nfinal:\n  output: ../final.mp4\n{SHOTS}"
        ));
        assert!(e.message.contains("must be a file name"), "{e}");
    }

    fn with_start_image(image: &str) -> String {
        format!(
            "version: 1\nshots:\n  - id: a\n    start_image: {image}\n    end: e\n    motion: m\n"
        )
    }

    #[test]
    fn start_image_must_be_an_image_inside_the_project() {
        let dir = folder(&with_start_image("frames/first.png"));
        std::fs::create_dir(dir.path().join("frames")).unwrap();
        std::fs::write(dir.path().join("frames/first.png"), b"png").unwrap();
        let p = Project::load(dir.path()).unwrap();
        assert_eq!(
            p.config.shots[0].start_image.as_deref(),
            Some("frames/first.png")
        );

        for (image, message) in [
            (
                "../../x.png",
                "`shots.0.start_image` points outside the project folder: `../../x.png`",
            ),
            (
                "/etc/hosts.png",
                "`shots.0.start_image` is an absolute path: `/etc/hosts.png`",
            ),
            (
                "frames/missing.png",
                "`shots.0.start_image` `frames/missing.png` does not exist",
            ),
            (
                "notes.txt",
                "`shots.0.start_image` `notes.txt` is not an image",
            ),
        ] {
            let dir = folder(&with_start_image(image));
            std::fs::write(dir.path().join("notes.txt"), b"text").unwrap();
            let errors = errors_of(&dir);
            assert_eq!(
                errors.len(),
                1,
                "{image}: {}",
                ProjectErrors(errors.clone())
            );
            assert_eq!(errors[0].line, Some(4), "{image}");
            assert_eq!(errors[0].message, message);
        }
    }

    #[test]
    fn start_image_symlinked_outside_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.png"), b"png").unwrap();
        let dir = folder(&with_start_image("linked.png"));
        std::os::unix::fs::symlink(outside.path().join("x.png"), dir.path().join("linked.png"))
            .unwrap();
        let errors = errors_of(&dir);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(4));
        assert!(
            errors[0].message.contains("outside the project folder"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn references_are_listed_by_stem_and_others_skipped_with_a_note() {
        let dir = folder(&format!("version: 1\n{SHOTS}"));
        let refs = dir.path().join("references");
        for name in [
            "setting.JPG",
            "hero.png",
            "hero-2.webp",
            "notes.txt",
            ".DS_Store",
        ] {
            std::fs::write(refs.join(name), b"bytes").unwrap();
        }
        std::fs::create_dir(refs.join("old")).unwrap();
        let p = Project::load(dir.path()).unwrap();
        let got: Vec<(&str, &Path)> = p
            .references
            .iter()
            .map(|r| (r.name.as_str(), r.rel_path.as_path()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("hero", Path::new("references/hero.png")),
                ("hero-2", Path::new("references/hero-2.webp")),
                ("setting", Path::new("references/setting.JPG")),
            ]
        );
        assert_eq!(
            p.notes,
            vec![
                "references/notes.txt skipped: not an image (.png .jpg .jpeg .webp .bmp)",
                "references/old skipped: a folder (references are not searched in subfolders)",
            ]
        );
    }

    #[test]
    fn missing_references_folder_points_at_the_setting() {
        let dir = folder(&format!(
            "version: 1\nkeyframes:\n  references: refs\n{SHOTS}"
        ));
        let errors = errors_of(&dir);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(3));
        assert_eq!(
            errors[0].message,
            "the references folder `refs` does not exist"
        );
        assert_eq!(
            help(&errors[0]),
            "create references/ with your character and setting images, or set \
             keyframes.references"
        );

        let e = only_error(&format!(
            "version: 1\nkeyframes:\n  references: ../refs\n{SHOTS}"
        ));
        assert_eq!(e.line, Some(3));
        assert!(
            e.message.contains("points outside the project folder"),
            "{e}"
        );
    }

    #[test]
    fn reference_symlinked_outside_is_an_error_naming_the_file() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.png"), b"png").unwrap();
        let dir = folder(&format!("version: 1\n{SHOTS}"));
        std::os::unix::fs::symlink(
            outside.path().join("secret.png"),
            dir.path().join("references/villain.png"),
        )
        .unwrap();
        // A link that stays inside the project is fine.
        std::fs::write(dir.path().join("hero.png"), b"png").unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("hero.png"),
            dir.path().join("references/hero.png"),
        )
        .unwrap();
        let errors = errors_of(&dir);
        assert_eq!(errors.len(), 1, "{}", ProjectErrors(errors.clone()));
        assert_eq!(errors[0].file, Path::new("references/villain.png"));
        assert!(
            errors[0].message.contains("outside the project folder"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn two_references_with_one_stem_are_an_error_naming_both() {
        let dir = folder(&format!("version: 1\n{SHOTS}"));
        std::fs::write(dir.path().join("references/hero.png"), b"png").unwrap();
        std::fs::write(dir.path().join("references/hero.jpg"), b"jpg").unwrap();
        let errors = errors_of(&dir);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].message,
            "two references are named `hero`: references/hero.jpg and references/hero.png"
        );
    }

    #[test]
    fn api_key_in_config_is_used_with_a_note_and_never_shown() {
        let key = "AIzaSy-very-secret";
        let dir = folder(&format!(
            "version: 1\nkeyframes:\n  api_key: {key}\n{SHOTS}"
        ));
        let p = Project::load(dir.path()).unwrap();
        assert_eq!(p.config.keyframes.api_key.as_ref().unwrap().expose(), key);
        assert_eq!(p.notes.len(), 1);
        assert!(p.notes[0].starts_with("ttv.yaml:3: `keyframes.api_key` is used"));
        assert!(p.notes[0].contains("GEMINI_API_KEY"));
        let shown = [
            format!("{p:?}"),
            p.notes.join("\n"),
            serde_json::to_string(&p.config).unwrap(),
        ];
        for text in shown {
            assert!(!text.contains(key), "the key leaked: {text}");
        }
    }

    #[test]
    fn find_root_takes_the_given_folder_or_searches_upwards() {
        let dir = folder(&format!("version: 1\n{SHOTS}"));
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(find_root(Some(dir.path())).unwrap(), root);
        let nested = dir.path().join("references/deeper");
        std::fs::create_dir(&nested).unwrap();
        assert_eq!(find_root_above(&nested).unwrap(), root);

        let e = find_root(Some(&nested)).unwrap_err();
        assert!(e.message.starts_with("no ttv.yaml in "), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = find_root_above(empty.path()).unwrap_err();
        assert_eq!(e.message, "no ttv.yaml here or in any parent folder");
        assert_eq!(
            help(&e),
            "run `ttv init` to start a project, or pass -C DIR"
        );
    }
}

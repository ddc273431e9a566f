//! The project folder and its ttv.yaml (schema version 1, DESIGN.md §2): parsing, defaults,
//! and every check that can be made before any work starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ProjectError, ProjectErrors};

pub const CONFIG_FILE: &str = "ttv.yaml";
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
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeyframeSettings {
    /// `gemini` | `preview`
    pub backend: String,
    pub model: String,
    pub aspect_ratio: String,
    /// Folder of reference images, relative to the project.
    pub references: String,
    pub auto_reference: bool,
    pub chain: bool,
    pub jobs: usize,
    pub max_retries: u32,
    /// Limit of one HTTP request to the image service, in seconds.
    pub request_timeout_seconds: f64,
    /// Discouraged: used with a warning, never written anywhere.
    pub api_key: Option<String>,
}

impl Default for KeyframeSettings {
    fn default() -> Self {
        KeyframeSettings {
            backend: "gemini".into(),
            model: "gemini-2.5-flash-image".into(),
            aspect_ratio: "16:9".into(),
            references: "references".into(),
            auto_reference: true,
            chain: true,
            jobs: 4,
            max_retries: 5,
            request_timeout_seconds: 120.0,
            api_key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VideoMode {
    Single,
    FirstLast,
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
    /// Vertex only: `gs://...` prefix where Veo writes the videos instead of returning them inline.
    pub storage_uri: Option<String>,
    pub fallback: Vec<FallbackBackend>,
    pub jobs: usize,
    pub max_retries: u32,
    /// Overall limit for one long-running video operation, in seconds.
    pub poll_timeout_seconds: u64,
    /// First wait between polls of a video operation, in seconds (grows to 60 s).
    pub poll_interval_seconds: f64,
    /// Limit of one HTTP request to the video service, in seconds.
    pub request_timeout_seconds: f64,
    pub api_key: Option<String>,
}

impl Default for VideoSettings {
    fn default() -> Self {
        VideoSettings {
            backend: "veo".into(),
            api: VeoApi::Vertex,
            model: "veo-3.0-generate-001".into(),
            mode: VideoMode::Single,
            keyframe_position: KeyframePosition::First,
            duration_seconds: 8,
            resolution: "720p".into(),
            aspect_ratio: "16:9".into(),
            generate_audio: true,
            negative_prompt: String::new(),
            seed: None,
            person_generation: None,
            storage_uri: None,
            fallback: Vec::new(),
            jobs: 2,
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
    /// Pins the take of the shot's segment.
    #[serde(default)]
    pub take: Option<u32>,
    /// Pins the take of the shot's start frame.
    #[serde(default)]
    pub start_take: Option<u32>,
    /// Pins the take of the shot's end frame.
    #[serde(default)]
    pub end_take: Option<u32>,
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
}

/// Maps a dotted setting path (`video.duration_seconds`, `shots.2.motion`, `shots.2`) to its
/// 1-based line in ttv.yaml.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    lines: BTreeMap<String, usize>,
}

impl LineIndex {
    pub fn get(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }
}

impl Project {
    /// Loads and validates `root/ttv.yaml` and lists the references folder. Every problem found is
    /// returned at once, each with the file, line and what to do.
    pub fn load(root: &Path) -> Result<Project, ProjectErrors> {
        let _ = root;
        todo!("implemented by the project helper")
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
        self.root.join(".ttv")
    }
}

/// Finds the project folder: `dir` if given, else the nearest folder upwards holding ttv.yaml.
pub fn find_root(dir: Option<&Path>) -> Result<PathBuf, ProjectError> {
    let _ = dir;
    todo!("implemented by the project helper")
}

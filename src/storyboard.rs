//! `ttv storyboard "PROMPT"`: a text model drafts the shots of a film from one prompt (ids,
//! start and end keyframe prompts, motion prompts, cut or continue, durations the video model
//! can make), answering in JSON shaped by a response schema. The draft is a cached generation
//! like a frame: its recipe (backend, model, prompt, shots, seconds, durations, the version of
//! ttv's instructions) keys it in the project's store, so the same request again costs nothing
//! and `--reroll` makes another take. The `preview` backend drafts a deterministic placeholder
//! offline, so that a storyboard can be tried, built and watched (as an animatic) for free.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backends::gemini::GeminiText;
use crate::error::UsageError;
use crate::media::Media;
use crate::models::{self, Kind, Lifecycle};
use crate::progress::Progress;
use crate::project::{self, CONFIG_FILE, Config, Shot, Transition, VideoSettings};
use crate::recipe::{Body, Recipe};
use crate::store::{Action, BuildLock, Hit, Store, Wait, now_secs};

/// The text model a storyboard is drafted with unless another is named.
pub const DEFAULT_MODEL: &str = "gemini-3.5-flash";
/// Shots drafted when neither `--shots` nor `--seconds` says how many.
const DEFAULT_SHOTS: u32 = 4;
/// The most shots one draft may have.
const MAX_SHOTS: u32 = 60;
/// The version of [`instructions`]: bumped when their wording changes, since the wording is
/// part of what is asked (and so of the cache key).
const INSTRUCTIONS: u32 = 1;
/// The store's node id of every storyboard generation.
pub const NODE_ID: &str = "storyboard";

/// A storyboard drafted by a text model from one prompt: not a node of the build graph, but a
/// cached generation like one. The request is made from these fields alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoryboardRecipe {
    pub backend: String,
    pub model: String,
    pub prompt: String,
    pub shots: u32,
    /// The film's length asked for, in seconds.
    pub seconds: u32,
    /// The shot durations the video model can make, which the model is asked to choose from.
    pub durations: Vec<u32>,
    /// The version of ttv's instructions to the model (its wording is part of the request).
    pub instructions: u32,
}

/// A storyboard recipe with every field set.
#[cfg(test)]
pub(crate) fn sample() -> Body {
    Body::Storyboard(StoryboardRecipe {
        backend: "gemini".into(),
        model: "gemini-3.5-flash".into(),
        prompt: "a lighthouse keeper's night".into(),
        shots: 4,
        seconds: 24,
        durations: vec![4, 6, 8],
        instructions: 1,
    })
}

/// What `ttv storyboard` was asked for; unset fields come from `storyboard:` in ttv.yaml.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub prompt: Option<String>,
    pub shots: Option<u32>,
    pub seconds: Option<u32>,
    pub model: Option<String>,
    pub backend: Option<String>,
    pub reroll: bool,
    /// A take of the cached drafts to use instead of the latest.
    pub take: Option<u32>,
}

/// A drafted storyboard, and how it was had.
#[derive(Debug, Clone, Serialize)]
pub struct Draft {
    /// `generated` or `cached`.
    pub status: &'static str,
    pub key: String,
    pub take: u32,
    pub backend: String,
    pub model: String,
    /// What this run spent (0 when cached).
    pub cost_usd: f64,
    /// The model has no known price: `cost_usd` is 0 but the call was billed.
    pub cost_unknown: bool,
    pub title: String,
    pub shots: Vec<Shot>,
    /// ttv.yaml, when `--write` wrote the shots there.
    pub written: Option<PathBuf>,
    /// The request it answers (recorded in ttv.yaml by `--write`).
    #[serde(skip)]
    pub recipe: StoryboardRecipe,
}

/// Drafts (or finds in the cache) the storyboard `req` asks for in the project at `root` (a
/// folder that may have no ttv.yaml yet: the cache is made there).
pub fn draft(root: &Path, req: &Request, progress: &Progress) -> Result<Draft> {
    let config = read_config(root)?;
    let recipe = recipe_for(config.as_ref(), req)?;
    let store = Store::open(&root.join(project::CACHE_DIR))?;
    let _lock = BuildLock::acquire(&store.dir, Wait::Yes, || {
        progress.info("a ttv build is running in this project; waiting for it to finish")
    })?;
    let base = Recipe::new(Body::Storyboard(recipe.clone()), 0);
    let base_key = base.key();
    let latest = store.latest_take(&base_key)?;
    if let Some(take) = req.take {
        let key = Recipe::new(Body::Storyboard(recipe.clone()), take).key();
        let hit = store.hit(&key)?.ok_or_else(|| {
            UsageError::new(format!(
                "take {take} of this storyboard does not exist (it has {}): `ttv takes storyboard` lists them",
                latest.as_ref().map_or(0, |h| h.take)
            ))
        })?;
        let answer = cached_answer(&store, &hit, progress)
            .ok_or_else(|| anyhow::anyhow!("take {take} of the storyboard is damaged in .ttv/"))?;
        progress.info(&format!(
            "storyboard: take {take} ({} by {}): nothing was asked of the model",
            recipe.model, hit.backend
        ));
        return usable(shape(
            &answer,
            &recipe,
            config.as_ref(),
            &hit,
            "cached",
            0.0,
        ));
    }
    if !req.reroll
        && let Some(hit) = &latest
        && let Some(answer) = cached_answer(&store, hit, progress)
    {
        progress.info(&format!(
            "storyboard: cached (take {}, {} by {}): nothing was asked of the model",
            hit.take, recipe.model, hit.backend
        ));
        return usable(shape(&answer, &recipe, config.as_ref(), hit, "cached", 0.0));
    }
    let take = latest.map_or(1, |h| h.take + 1);
    let made = generate(&recipe, config.as_ref(), progress)?;
    let full = Recipe::new(Body::Storyboard(recipe.clone()), take);
    let bytes = serde_json::to_vec_pretty(&made.answer)?;
    let (blob, size) = store.put_bytes(&bytes, Media::Json)?;
    let action = Action {
        key: full.key(),
        base_key,
        node_kind: NODE_ID.into(),
        node_id: NODE_ID.into(),
        blob: blob.clone(),
        media_type: Media::Json.mime().into(),
        backend: recipe.backend.clone(),
        model: recipe.model.clone(),
        created_at: now_secs(),
        gen_ms: made.millis,
        cost_usd: made.cost_usd,
        take,
        size,
        provenance: made.provenance,
    };
    store.record_action(&action, &full.canonical_json())?;
    let hit = Hit::from(&action);
    let mut draft = shape(
        &made.answer,
        &recipe,
        config.as_ref(),
        &hit,
        "generated",
        made.cost_usd,
    );
    draft.cost_unknown = made.cost_unknown;
    usable(draft)
}

/// Every take of the storyboard that ttv.yaml's `storyboard:` asks for, and the key of the
/// latest (what `ttv storyboard` uses); without a `storyboard:` prompt, every draft made here.
pub fn takes(root: &Path, store: &Store) -> Result<(Vec<Action>, Option<String>)> {
    let config = read_config(root)?;
    match recipe_for(config.as_ref(), &Request::default()) {
        Ok(recipe) => {
            let base_key = Recipe::new(Body::Storyboard(recipe), 0).key();
            let current = store.latest_take(&base_key)?.map(|h| h.key);
            Ok((store.takes(&base_key)?, current))
        }
        Err(_) => Ok((store.actions_of_node(NODE_ID)?, None)),
    }
}

/// A draft with shots; an answer without any (kept: it was paid for) is an error that says how
/// to ask again.
fn usable(draft: Draft) -> Result<Draft> {
    if draft.shots.is_empty() {
        return Err(anyhow::anyhow!(
            "take {} of the storyboard has no shots (the model's answer did not follow the schema): `ttv storyboard --reroll` asks again",
            draft.take
        ));
    }
    Ok(draft)
}

/// ttv.yaml's settings, if the folder has one (parsed, not checked: it may have no shots yet).
fn read_config(root: &Path) -> Result<Option<Config>> {
    let path = root.join(CONFIG_FILE);
    let source = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(Some(project::parse_config(&source)?))
}

/// The backend and text model `ttv storyboard` uses in a project that has a `storyboard:`
/// section (what `ttv doctor` checks).
pub fn configured(config: &Config) -> Option<(String, String)> {
    let s = config.storyboard.as_ref()?;
    Some((
        s.backend
            .clone()
            .unwrap_or_else(|| config.keyframes.backend.clone()),
        s.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into()),
    ))
}

/// The recipe of the request: the command line first, then `storyboard:`, then defaults.
fn recipe_for(config: Option<&Config>, req: &Request) -> Result<StoryboardRecipe> {
    let settings = config
        .and_then(|c| c.storyboard.clone())
        .unwrap_or_default();
    let prompt = req
        .prompt
        .clone()
        .or(settings.prompt)
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            UsageError::new(
                "no prompt: say what the film is (`ttv storyboard \"A lighthouse keeper's night\"`), or set `storyboard.prompt` in ttv.yaml",
            )
        })?;
    let backend = req
        .backend
        .clone()
        .or(settings.backend)
        .or_else(|| config.map(|c| c.keyframes.backend.clone()))
        .unwrap_or_else(|| "gemini".into());
    if !matches!(backend.as_str(), "gemini" | "preview") {
        return Err(UsageError::new(format!(
            "storyboard backend `{backend}` is not known: use gemini (a Gemini text model) or preview (an offline placeholder)"
        ))
        .into());
    }
    let model = req
        .model
        .clone()
        .or(settings.model)
        .unwrap_or_else(|| DEFAULT_MODEL.into());
    check_model(&model)?;
    let video = config.map(|c| c.video.clone()).unwrap_or_default();
    let durations = durations_for(&video);
    // The film's size is one request: a shot count or a length on the command line replaces
    // both of ttv.yaml's (which `--write` records together).
    let (shots, seconds) = if req.shots.is_some() || req.seconds.is_some() {
        (req.shots, req.seconds)
    } else {
        (settings.shots, settings.seconds)
    };
    let shots = shots
        .or_else(|| seconds.map(|s| s.div_ceil(video.duration_seconds.max(1)).max(1)))
        .unwrap_or(DEFAULT_SHOTS);
    if !(1..=MAX_SHOTS).contains(&shots) {
        return Err(UsageError::new(format!("--shots takes 1 to {MAX_SHOTS}")).into());
    }
    let seconds = seconds.unwrap_or(shots * snap(video.duration_seconds, &durations));
    if seconds == 0 {
        return Err(UsageError::new("--seconds takes a length of 1 second or more").into());
    }
    Ok(StoryboardRecipe {
        backend,
        model,
        prompt,
        shots,
        seconds,
        durations,
        instructions: INSTRUCTIONS,
    })
}

/// A text model the registry knows is refused when it is not a text model or is retired; an
/// unknown one is tried (its price is unknown).
fn check_model(model: &str) -> Result<()> {
    let Some(m) = models::find(model) else {
        return Ok(());
    };
    if m.kind != Kind::Text {
        return Err(UsageError::new(format!(
            "{model} is {} {} model; a storyboard needs a text model: {}",
            m.kind.article(),
            m.kind.as_str(),
            models::current(Kind::Text).join(", ")
        ))
        .into());
    }
    if let Lifecycle::Retired { on, replacement } = m.lifecycle {
        return Err(UsageError::new(format!(
            "{model} was shut down on {on}: use {}",
            replacement.unwrap_or(DEFAULT_MODEL)
        ))
        .into());
    }
    Ok(())
}

/// The shot lengths the project's video model makes at its resolution (the registry's; the
/// defaults' when there is no project).
fn durations_for(video: &VideoSettings) -> Vec<u32> {
    let caps = models::video_caps(&video.model);
    caps.resolution(&video.resolution)
        .map_or(caps.durations, |r| r.durations)
        .to_vec()
}

/// The allowed duration nearest to `seconds` (the longer one on a tie).
fn snap(seconds: u32, allowed: &[u32]) -> u32 {
    allowed
        .iter()
        .copied()
        .min_by_key(|d| (d.abs_diff(seconds), u32::MAX - d))
        .unwrap_or(seconds)
}

/// A blob of a cached draft, read and checked; `None` (with a warning) when it is lost or
/// damaged, so that it is drafted again.
fn cached_answer(store: &Store, hit: &Hit, progress: &Progress) -> Option<Value> {
    let answer = store
        .has_blob(&hit.blob, hit.size)
        .then(|| std::fs::read(store.blob_path(&hit.blob)).ok())
        .flatten()
        .filter(|b| blake3::hash(b).to_hex().as_str() == hit.blob)
        .and_then(|b| serde_json::from_slice(&b).ok());
    if answer.is_none() {
        progress.warn("the cached storyboard is missing or damaged in .ttv/: drafting it again");
    }
    answer
}

/// A fresh draft.
struct Made {
    answer: Value,
    cost_usd: f64,
    cost_unknown: bool,
    millis: i64,
    provenance: Option<String>,
}

fn generate(
    recipe: &StoryboardRecipe,
    config: Option<&Config>,
    progress: &Progress,
) -> Result<Made> {
    let started = Instant::now();
    if recipe.backend == "preview" {
        progress.info("storyboard: drafting a placeholder (preview backend: offline, free)");
        return Ok(Made {
            answer: placeholder(recipe),
            cost_usd: 0.0,
            cost_unknown: false,
            millis: started.elapsed().as_millis() as i64,
            provenance: None,
        });
    }
    let key = config.and_then(|c| c.keyframes.api_key.as_ref().map(|k| k.expose().to_string()));
    let client = GeminiText::from_env(key.as_deref())?;
    progress.info(&format!(
        "storyboard: asking {} for {} shot(s)",
        recipe.model, recipe.shots
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = |s: String| progress.info(&format!("storyboard: {s}"));
    let out = runtime
        .block_on(client.generate_json(&recipe.model, &texts(recipe), &schema(recipe), &status))
        .map_err(|e| anyhow::anyhow!("the storyboard request failed: {e}"))?;
    let price =
        models::find(&recipe.model).and_then(|m| m.text_price(out.input_tokens, out.output_tokens));
    let provenance = json!({
        "model_version": out.provenance.model_version,
        "response_id": out.provenance.response_id,
        "params": {"input_tokens": out.input_tokens, "output_tokens": out.output_tokens},
    });
    Ok(Made {
        answer: out.json,
        cost_usd: price.unwrap_or(0.0),
        cost_unknown: price.is_none(),
        millis: started.elapsed().as_millis() as i64,
        provenance: Some(provenance.to_string()),
    })
}

/// The request's text parts: the user's prompt as written, then ttv's instructions (whose first
/// number is the shot count).
fn texts(r: &StoryboardRecipe) -> Vec<String> {
    vec![r.prompt.clone(), instructions(r)]
}

/// What the model is asked, after the TTV pipeline's own storyboard instructions: every
/// keyframe prompt stands alone, because the image model sees one prompt at a time.
fn instructions(r: &StoryboardRecipe) -> String {
    let durations: Vec<String> = r.durations.iter().map(u32::to_string).collect();
    format!(
        "Write a storyboard of {shots} shots for the film described above, about {seconds} \
         seconds long in all. An image model draws each shot's start and end keyframes from \
         their prompts, and a video model then animates each shot from its start keyframe to \
         its end keyframe, following its motion prompt.\n\
         For each shot give:\n\
         - id: a short name of lower-case letters, digits and hyphens, unique in the film;\n\
         - transition: \"continue\" when the shot starts on the previous shot's end keyframe \
         (continuity), \"cut\" when it starts on a new picture (the first shot always has its \
         own start);\n\
         - start: the start keyframe prompt, for the first shot and for every cut (empty for \
         a continue);\n\
         - end: the end keyframe prompt: the picture the shot ends on;\n\
         - motion: the video prompt: camera movement and action during the shot, in the \
         present tense;\n\
         - duration_seconds: the shot's length, one of {durations} seconds.\n\
         Every start and end prompt must stand alone: the image model sees no other prompt, so \
         describe every character in full each time (age, build, face, hair, clothes), and the \
         setting, the light and the visual style. No text or captions in the pictures. Give \
         the film a short title.",
        shots = r.shots,
        seconds = r.seconds,
        durations = durations.join(", "),
    )
}

/// The response schema, in the Gemini API's schema dialect (upper-case types), as Google's SDK
/// sends it: an object with a title and exactly `shots` shots.
fn schema(r: &StoryboardRecipe) -> Value {
    let fields = [
        "id",
        "transition",
        "start",
        "end",
        "motion",
        "duration_seconds",
    ];
    let min = r.durations.iter().copied().min().unwrap_or(1);
    let max = r.durations.iter().copied().max().unwrap_or(8);
    json!({
        "type": "OBJECT",
        "properties": {
            "title": {"type": "STRING"},
            "shots": {
                "type": "ARRAY",
                "minItems": r.shots,
                "maxItems": r.shots,
                "items": {
                    "type": "OBJECT",
                    "properties": {
                        "id": {"type": "STRING"},
                        "transition": {"type": "STRING", "enum": ["continue", "cut"]},
                        "start": {"type": "STRING"},
                        "end": {"type": "STRING"},
                        "motion": {"type": "STRING"},
                        "duration_seconds": {"type": "INTEGER", "minimum": min, "maximum": max},
                    },
                    "propertyOrdering": fields,
                    "required": fields,
                },
            },
        },
        "propertyOrdering": ["title", "shots"],
        "required": ["title", "shots"],
    })
}

/// The offline placeholder: the answer a model would give, made from the request alone.
fn placeholder(r: &StoryboardRecipe) -> Value {
    let each = snap((r.seconds / r.shots).max(1), &r.durations);
    let shots: Vec<Value> = (1..=r.shots)
        .map(|i| {
            let start = if i == 1 {
                format!("Shot 1 of {}, first frame: {}", r.shots, r.prompt)
            } else {
                String::new()
            };
            json!({
                "id": format!("shot-{i}"),
                "transition": "continue",
                "start": start,
                "end": format!("Shot {i} of {}, last frame: {}", r.shots, r.prompt),
                "motion": format!("Shot {i} of {}, the camera moves slowly: {}", r.shots, r.prompt),
                "duration_seconds": each,
            })
        })
        .collect();
    json!({"title": format!("Placeholder: {}", r.prompt), "shots": shots})
}

/// The model's answer as ttv shots: valid unique ids, a start only where one is used (the
/// first shot and cuts; a cut without one continues), durations the video model makes.
fn shape(
    answer: &Value,
    r: &StoryboardRecipe,
    config: Option<&Config>,
    hit: &Hit,
    status: &'static str,
    cost_usd: f64,
) -> Draft {
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let items: Vec<&Value> = answer
        .get("shots")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let names: Vec<String> = items.iter().map(|s| text(s, "id")).collect();
    let ids = project::shot_ids(names.iter().map(String::as_str));
    let default_duration = config.map_or(VideoSettings::default().duration_seconds, |c| {
        c.video.duration_seconds
    });
    let shots = items
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (s, id))| {
            let start = Some(text(s, "start")).filter(|p| !p.is_empty());
            let cut = i > 0 && text(s, "transition") == "cut" && start.is_some();
            let duration = s
                .get("duration_seconds")
                .and_then(Value::as_u64)
                .map_or(default_duration, |d| d as u32);
            let non_empty = |p: String, what: &str| {
                if p.is_empty() {
                    format!("{what} of {id}")
                } else {
                    p
                }
            };
            Shot {
                transition: if cut {
                    Transition::Cut
                } else {
                    Transition::Continue
                },
                start: if i == 0 || cut {
                    Some(start.unwrap_or_else(|| text(s, "end")))
                        .map(|p| non_empty(p, "the first frame"))
                } else {
                    None
                },
                end: non_empty(text(s, "end"), "the last frame"),
                motion: non_empty(text(s, "motion"), "the motion"),
                duration_seconds: Some(snap(duration, &r.durations)),
                ..project::Shot::new(id)
            }
        })
        .collect();
    Draft {
        status,
        key: hit.key.clone(),
        take: hit.take,
        backend: hit.backend.clone(),
        model: r.model.clone(),
        cost_usd,
        cost_unknown: false,
        title: text(answer, "title"),
        shots,
        written: None,
        recipe: r.clone(),
    }
}

/// The `storyboard:` section that asks for `r` again in a project whose frames use
/// `frames_backend`: `ttv storyboard` without arguments then finds the same draft, and the
/// shots say where they came from. The backend and model are left out where they are what
/// they would be anyway.
fn request_yaml(r: &StoryboardRecipe, frames_backend: &str) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut out = format!(
        "storyboard:   # what the shots were drafted from: `ttv storyboard` asks it again, free\n  prompt: {}\n  shots: {}\n  seconds: {}\n",
        quote(&r.prompt),
        r.shots,
        r.seconds
    );
    if r.model != DEFAULT_MODEL {
        out += &format!("  model: {}\n", r.model);
    }
    if r.backend != frames_backend {
        out += &format!("  backend: {}\n", r.backend);
    }
    out
}

/// The shots as the `shots:` section of ttv.yaml (prompts in double quotes, as JSON writes
/// them: a JSON string is a YAML double-quoted scalar).
pub fn shots_yaml(shots: &[Shot]) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut out = String::from("shots:\n");
    for s in shots {
        out += &format!("  - id: {}\n", s.id);
        if s.transition == Transition::Cut {
            out += "    transition: cut\n";
        }
        if let Some(start) = &s.start {
            out += &format!("    start: {}\n", quote(start));
        }
        if let Some(image) = &s.start_image {
            out += &format!("    start_image: {}\n", quote(image));
        }
        out += &format!("    end: {}\n", quote(&s.end));
        out += &format!("    motion: {}\n", quote(&s.motion));
        if let Some(d) = s.duration_seconds {
            out += &format!("    duration_seconds: {d}\n");
        }
    }
    out
}

/// `--write`: puts the draft's shots in ttv.yaml (a new project from `ttv init`'s template when
/// there is none), replacing the `shots:` section and nothing else. Existing shots are replaced
/// only with `force`.
pub fn write(root: &Path, draft: &mut Draft, force: bool) -> Result<()> {
    let path = root.join(CONFIG_FILE);
    let fresh = !path.exists();
    if fresh {
        crate::housekeeping::init(root)?;
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // A new project's example shot is not the user's.
    let existing = project::parse_config(&text)?.shots.len();
    if existing > 0 && !force && !fresh {
        return Err(UsageError::new(format!(
            "{} already has {existing} shot(s); pass --force to replace them with the draft (what was built from them stays in the cache)",
            path.display()
        ))
        .into());
    }
    let mut text = replace_section(&text, "shots:", &shots_yaml(&draft.shots));
    let frames_backend = project::parse_config(&text)?.keyframes.backend;
    text = replace_section(
        &text,
        "storyboard:",
        &request_yaml(&draft.recipe, &frames_backend),
    );
    let name = project::slug(&draft.title);
    if fresh && !name.is_empty() {
        text = text.replacen("name: my-film", &format!("name: {name}"), 1);
    }
    project::parse_config(&text).context("the storyboard does not make a valid ttv.yaml")?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    draft.written = Some(path);
    Ok(())
}

/// `text` with its top-level section `key` (up to the next top-level key) replaced by
/// `section`; when it has none, `section` goes before `shots:`, or at the end.
fn replace_section(text: &str, key: &str, section: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let top_level = |l: &str| l.starts_with(|c: char| c.is_ascii_alphabetic());
    let Some(start) = lines.iter().position(|l| l.starts_with(key)) else {
        if let Some(shots) = lines.iter().position(|l| l.starts_with("shots:")) {
            let mut out = lines[..shots].join("\n");
            if shots > 0 {
                out.push('\n');
            }
            out.push_str(section);
            out.push('\n');
            out.push_str(&lines[shots..].join("\n"));
            out.push('\n');
            return out;
        }
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        return format!("{text}{sep}{section}");
    };
    let mut end = (start + 1..lines.len())
        .find(|&i| top_level(lines[i]))
        .unwrap_or(lines.len());
    // The blank lines after the section stay where they are.
    while end > start + 1 && lines[end - 1].trim().is_empty() {
        end -= 1;
    }
    let mut out = lines[..start].join("\n");
    if start > 0 {
        out.push('\n');
    }
    out.push_str(section);
    if !section.ends_with('\n') {
        out.push('\n');
    }
    if end < lines.len() {
        out.push_str(&lines[end..].join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(backend: &str, shots: u32, seconds: u32) -> StoryboardRecipe {
        StoryboardRecipe {
            backend: backend.into(),
            model: DEFAULT_MODEL.into(),
            prompt: "A lighthouse keeper's night".into(),
            shots,
            seconds,
            durations: vec![4, 6, 8],
            instructions: INSTRUCTIONS,
        }
    }

    fn hit() -> Hit {
        Hit {
            key: "k".into(),
            take: 1,
            blob: "b".into(),
            size: 1,
            backend: "gemini".into(),
            cost_usd: 0.0,
            from_remote: false,
        }
    }

    #[test]
    fn durations_snap_to_what_the_video_model_makes() {
        assert_eq!(snap(5, &[4, 6, 8]), 6);
        assert_eq!(snap(3, &[4, 6, 8]), 4);
        assert_eq!(snap(30, &[4, 6, 8]), 8);
        assert_eq!(durations_for(&VideoSettings::default()), vec![4, 6, 8]);
        let hd = VideoSettings {
            resolution: "1080p".into(),
            ..VideoSettings::default()
        };
        assert_eq!(durations_for(&hd), vec![8]);
    }

    #[test]
    fn the_request_asks_for_the_shot_count_first_and_standalone_prompts() {
        let r = recipe("gemini", 5, 30);
        let text = instructions(&r);
        let first_number = text
            .split(|c: char| !c.is_ascii_digit())
            .find(|n| !n.is_empty());
        assert_eq!(first_number, Some("5"));
        assert!(text.contains("describe every character in full"));
        assert!(text.contains("4, 6, 8 seconds"));
        let s = schema(&r);
        assert_eq!(s["properties"]["shots"]["minItems"], 5);
        assert_eq!(
            s["properties"]["shots"]["items"]["properties"]["duration_seconds"]["maximum"],
            8
        );
    }

    #[test]
    fn answers_become_valid_shots() {
        let answer = json!({"title": "Night Watch", "shots": [
            {"id": "Arrival!", "transition": "cut", "start": "", "end": "The keeper at the door",
             "motion": "Dolly in", "duration_seconds": 5},
            {"id": "arrival", "transition": "cut", "start": "A meadow", "end": "Asleep",
             "motion": "Pan", "duration_seconds": 8},
            {"id": "final", "transition": "cut", "start": "", "end": "Dawn", "motion": "",
             "duration_seconds": 2},
        ]});
        let d = shape(
            &answer,
            &recipe("gemini", 3, 18),
            None,
            &hit(),
            "generated",
            0.0,
        );
        let ids: Vec<&str> = d.shots.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["arrival", "arrival-2", "shot-3"]);
        // The first shot always has a start (its end prompt when the model gave none).
        assert_eq!(d.shots[0].start.as_deref(), Some("The keeper at the door"));
        assert_eq!(d.shots[0].transition, Transition::Continue);
        assert_eq!(d.shots[1].transition, Transition::Cut);
        assert_eq!(d.shots[1].start.as_deref(), Some("A meadow"));
        // A cut without a start continues.
        assert_eq!(d.shots[2].transition, Transition::Continue);
        assert_eq!(d.shots[2].start, None);
        assert_eq!(d.shots[2].motion, "the motion of shot-3");
        let durations: Vec<_> = d.shots.iter().map(|s| s.duration_seconds).collect();
        assert_eq!(durations, [Some(6), Some(8), Some(4)]);
        assert_eq!(d.title, "Night Watch");
    }

    #[test]
    fn an_answer_without_shots_is_refused_with_the_way_out() {
        let d = shape(
            &json!({"title": "x"}),
            &recipe("gemini", 3, 18),
            None,
            &hit(),
            "cached",
            0.0,
        );
        let e = usable(d).unwrap_err().to_string();
        assert!(e.contains("has no shots") && e.contains("--reroll"), "{e}");
    }

    #[test]
    fn the_placeholder_is_deterministic_and_loads() {
        let r = recipe("preview", 3, 18);
        assert_eq!(placeholder(&r), placeholder(&r));
        let d = shape(&placeholder(&r), &r, None, &hit(), "generated", 0.0);
        assert_eq!(d.shots.len(), 3);
        assert!(d.shots.iter().all(|s| s.duration_seconds == Some(6)));
        let yaml = format!("version: 1\n{}", shots_yaml(&d.shots));
        let config = project::parse_config(&yaml).unwrap();
        assert_eq!(config.shots, d.shots);
    }

    #[test]
    fn a_section_is_replaced_and_the_rest_kept() {
        let text =
            "version: 1\n# my film\nshots:\n  - id: a\n    end: x\n    motion: y\n\nprices: {}\n";
        let out = replace_section(text, "shots:", "shots:\n  - id: b\n");
        assert_eq!(
            out,
            "version: 1\n# my film\nshots:\n  - id: b\n\nprices: {}\n"
        );
        assert_eq!(
            replace_section("version: 1\n", "shots:", "shots: []\n"),
            "version: 1\nshots: []\n"
        );
        // A new section goes before the shots; an existing one is replaced where it is.
        let request = "storyboard:\n  prompt: \"a\"\n";
        let with = replace_section(&out, "storyboard:", request);
        assert_eq!(
            with,
            "version: 1\n# my film\nstoryboard:\n  prompt: \"a\"\n\nshots:\n  - id: b\n\nprices: {}\n"
        );
        let again = replace_section(&with, "storyboard:", "storyboard:\n  prompt: \"b\"\n");
        assert_eq!(again, with.replace("\"a\"", "\"b\""));
    }

    #[test]
    fn the_request_is_recorded_without_what_it_would_be_anyway() {
        let r = recipe("preview", 3, 18);
        let yaml = request_yaml(&r, "preview");
        assert!(
            !yaml.contains("backend") && !yaml.contains("model"),
            "{yaml}"
        );
        let text = format!("version: 1\n{yaml}shots: []\n");
        let config = project::parse_config(&text).unwrap();
        let back = recipe_for(Some(&config), &Request::default()).unwrap();
        assert_eq!(back.prompt, r.prompt);
        assert_eq!((back.shots, back.seconds), (3, 18));
        assert!(request_yaml(&r, "gemini").contains("  backend: preview\n"));
    }
}

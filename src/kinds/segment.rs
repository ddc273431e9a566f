//! A shot's video segment: made by the video backend (Veo, or a fallback) from the shot's
//! motion prompt and the frames it sends (start, end, both, or the references).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Body, Input, Kind, Pin, Pool, Problem, Produce, mismatch};
use crate::backends::{GenContext, ImageInput, VideoRequest};
use crate::build::{NotProduced, Produced, Runner};
use crate::media::Media;
use crate::plan::{NodePlan, Session};
use crate::prices::VideoCost;
use crate::project::{Config, KeyframePosition, VideoMode};

/// A video segment. The request to the video backend is made from these fields alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentRecipe {
    pub backend: String,
    pub model: String,
    pub duration_seconds: u32,
    pub resolution: String,
    pub aspect_ratio: String,
    pub generate_audio: bool,
    pub negative_prompt: String,
    pub seed: Option<u64>,
    pub prompt: String,
    /// Which of the shot's frames are sent: `start`, `end` (single mode, by keyframe_position),
    /// `start+end` (first-last mode) or `references` (references mode: no frame).
    pub frames: String,
    /// Blob hash of the first frame sent, if any.
    pub first: Option<String>,
    /// Blob hash of the last frame sent, if any.
    pub last: Option<String>,
    /// `personGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_generation: Option<String>,
    /// `sampleCount`: the videos one request makes (each a take).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub sample_count: u32,
    /// References mode: `(name, blake3 of the file's bytes)` of the `referenceImages`, in the
    /// order listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<(String, String)>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl SegmentRecipe {
    /// What its price depends on.
    pub fn cost(&self) -> VideoCost {
        VideoCost {
            seconds: self.duration_seconds,
            resolution: self.resolution.clone(),
            audio: self.generate_audio,
            samples: self.sample_count,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub shot: usize,
    /// Sent as the first frame (`image`).
    pub first: Option<usize>,
    /// Sent as the last frame (`lastFrame`, first-last mode).
    pub last: Option<usize>,
}

impl Segment {
    /// Its recipe, given the blobs of the frames it sends. The video request is made from it
    /// alone, so nothing that changes the video can be missing from its key.
    pub fn recipe_with(
        &self,
        s: &Session,
        first: Option<String>,
        last: Option<String>,
    ) -> SegmentRecipe {
        let cfg = &s.project.config;
        let v = &cfg.video;
        let shot = &cfg.shots[self.shot];
        let mode = cfg.video_mode(self.shot);
        let frames = match (mode, v.keyframe_position) {
            (VideoMode::FirstLast, _) => "start+end",
            (VideoMode::References, _) => "references",
            (VideoMode::Single, KeyframePosition::Last) => "end",
            (VideoMode::Single, _) => "start",
        };
        let references = if mode == VideoMode::References {
            cfg.video_references(self.shot)
                .iter()
                .filter_map(|name| {
                    let r = s.refs.iter().find(|r| &r.name == name)?;
                    Some((r.name.clone(), r.hash.clone()))
                })
                .collect()
        } else {
            Vec::new()
        };
        SegmentRecipe {
            backend: v.backend.clone(),
            model: v.model.clone(),
            duration_seconds: shot.duration_seconds.unwrap_or(v.duration_seconds),
            resolution: v.resolution.clone(),
            aspect_ratio: v.aspect_ratio.clone(),
            generate_audio: shot.generate_audio.unwrap_or(v.generate_audio),
            negative_prompt: shot
                .negative_prompt
                .clone()
                .unwrap_or_else(|| v.negative_prompt.clone()),
            seed: shot.seed.or(v.seed),
            prompt: shot.motion.clone(),
            frames: frames.into(),
            first,
            last,
            person_generation: v.person_generation.clone(),
            sample_count: v.sample_count.max(1),
            references,
        }
    }
}

impl Kind for Segment {
    fn name(&self) -> &'static str {
        "segment"
    }

    fn shot(&self) -> Option<usize> {
        Some(self.shot)
    }

    fn inputs(&self) -> Vec<Input> {
        // A change of the frames sent says more than the change of a frame.
        let frame = |field, words, node: Option<usize>| Input {
            unless: Some("frames"),
            ..Input::new(field, words, node.into_iter().collect())
        };
        vec![
            frame("first", "first frame", self.first),
            frame("last", "last frame", self.last),
        ]
    }

    fn media(&self) -> Media {
        Media::Mp4
    }

    fn group(&self) -> Option<&'static str> {
        Some("segments")
    }

    fn default_target(&self) -> bool {
        true
    }

    fn starts_on(&self) -> Option<usize> {
        self.first
    }

    fn recipe(&self, s: &Session, blobs: &HashMap<usize, String>) -> Body {
        Body::Segment(self.recipe_with(
            s,
            self.first.map(|d| blobs[&d].clone()),
            self.last.map(|d| blobs[&d].clone()),
        ))
    }

    fn pool(&self, _cfg: &Config) -> Pool {
        Pool::Video
    }

    fn uses_references(&self, cfg: &Config) -> bool {
        cfg.video_mode(self.shot) == VideoMode::References
    }

    fn estimate(&self, s: &Session) -> Option<f64> {
        let v = &s.project.config.video;
        let r = self.recipe_with(s, None, None);
        s.prices.video(&v.backend, &v.model, &r.cost())
    }

    fn pin(&self, cfg: &Config) -> Option<Pin> {
        Some(Pin {
            shot: self.shot,
            field: "take".into(),
            take: cfg.shots[self.shot].take,
        })
    }

    fn gated(&self) -> bool {
        true
    }

    fn needs_ffmpeg(&self, s: &Session) -> bool {
        s.videos.iter().any(|v| v.generator.name() == "preview")
    }

    /// The shot's settings against each video backend's capabilities.
    fn problems(&self, s: &Session, _id: &str) -> Vec<Problem> {
        let shot = &s.project.config.shots[self.shot];
        let recipe = self.recipe_with(s, None, None);
        let mut out = Vec::new();
        for vb in &s.videos {
            let caps = vb.generator.capabilities(&vb.model);
            let r = SegmentRecipe {
                model: vb.model.clone(),
                ..recipe.clone()
            };
            for p in caps.check(vb.generator.name(), &r) {
                let per_shot = match p.setting.as_str() {
                    "duration_seconds" => shot.duration_seconds.is_some(),
                    "seed" => shot.seed.is_some(),
                    "generate_audio" => shot.generate_audio.is_some(),
                    "mode" => shot.mode.is_some(),
                    "references" => shot.references.is_some(),
                    "motion" => true,
                    _ => false,
                };
                let at = if per_shot {
                    format!("shots.{}.{}", self.shot, p.setting)
                } else if p.setting == "model" || vb.setting == "video" {
                    format!("video.{}", p.setting)
                } else {
                    vb.setting.clone()
                };
                out.push(Problem {
                    key: format!("{at}: {}", p.message),
                    error: s.project.error_at(&at, p.message).help(p.help),
                });
            }
        }
        out
    }
}

impl Produce for Segment {
    /// The request made from its recipe, tried on each video backend in turn (a fallback with
    /// its own model) until one makes it or fails in a way another cannot fix.
    async fn produce(
        &self,
        run: &Runner,
        plan: &NodePlan,
        _deps: &HashMap<usize, String>,
        ctx: &GenContext,
    ) -> Result<Produced, NotProduced> {
        let Body::Segment(r) = &plan.recipe.body else {
            return Err(mismatch(ctx));
        };
        let s = &run.session;
        let first = match r.first.as_deref() {
            Some(h) => Some(run.blob_input("first", h).await?),
            None => None,
        };
        let last = match r.last.as_deref() {
            Some(h) => Some(run.blob_input("last", h).await?),
            None => None,
        };
        let references = project_references(run, &r.references).await?;
        // A backend with a submission on record for this key is where the node resumes: the
        // ones before it failed for good when it was sent, and sending to them again would
        // replace that record (one per key) and lose the paid job (a fallback's operation
        // after a crash or a poll timeout).
        let resume_at = s
            .videos
            .iter()
            .position(|vb| {
                ctx.operations
                    .pending(&ctx.key, &vb.generator.label())
                    .is_some()
            })
            .unwrap_or(0);
        let mut errors = Vec::new();
        for (n, vb) in s.videos.iter().enumerate().skip(resume_at) {
            let req = VideoRequest {
                recipe: SegmentRecipe {
                    model: vb.model.clone(),
                    ..r.clone()
                },
                first: first.clone(),
                last: last.clone(),
                references: references.clone(),
                key: plan.key.clone(),
            };
            let g = &vb.generator;
            match g.generate(&req, ctx).await {
                Ok(out) => {
                    let mut stored = Vec::new();
                    for mp4 in out.mp4s {
                        stored.push(
                            run.store
                                .put_file(mp4, Media::Mp4)
                                .map_err(NotProduced::from_error)?,
                        );
                    }
                    let cost = s
                        .prices
                        .video(g.name(), &vb.model, &req.recipe.cost())
                        .unwrap_or(0.0);
                    if n > 0 {
                        let why = if errors.is_empty() {
                            "(the operation an earlier build submitted)".to_string()
                        } else {
                            format!("after: {}", errors.join("; "))
                        };
                        s.progress.warn(&format!(
                            "{}: made by fallback {} {why}",
                            ctx.node_id,
                            g.label(),
                        ));
                    }
                    let mut stored = stored.into_iter();
                    let (h, size) = stored
                        .next()
                        .ok_or_else(|| format!("{} returned no video", g.label()))?;
                    let mut p = Produced::new(h, size, &g.label(), &vb.model, cost, Media::Mp4);
                    p.provenance = out.provenance;
                    p.more = stored.collect();
                    return Ok(p);
                }
                Err(e) => {
                    // Backend messages usually name the backend already.
                    let msg = e.to_string();
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
        Err(errors.join("; then ").into())
    }
}

/// The project's reference files named in `refs` (a references-mode segment), checked against
/// the hashes in its recipe.
async fn project_references(
    run: &Runner,
    refs: &[(String, String)],
) -> Result<Vec<ImageInput>, String> {
    let all = run.all_references().await?;
    refs.iter()
        .map(|(name, _)| {
            all.iter()
                .find(|i| &i.name == name)
                .cloned()
                .ok_or_else(|| format!("reference {name} is not in the references folder"))
        })
        .collect()
}

/// A segment recipe with every field set.
#[cfg(test)]
pub(super) fn sample() -> Body {
    Body::Segment(SegmentRecipe {
        backend: "veo".into(),
        model: "veo-3.1-generate-001".into(),
        duration_seconds: 8,
        resolution: "720p".into(),
        aspect_ratio: "16:9".into(),
        generate_audio: true,
        negative_prompt: "blur".into(),
        seed: Some(7),
        prompt: "dolly in".into(),
        frames: "start+end".into(),
        first: Some("f".into()),
        last: Some("l".into()),
        person_generation: Some("allow_adult".into()),
        sample_count: 2,
        references: vec![("hero".into(), "aa".into())],
    })
}

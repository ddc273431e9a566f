//! Node kinds (DESIGN.md §12): each kind of node has one module holding its recipe, how the
//! recipe is made from ttv.yaml and the outputs of its inputs, how its output is produced, what
//! it costs and which pool of requests it waits for. This file is the registry: the list of
//! node kinds and of recipe kinds, and the one place that dispatches to them. Every match here
//! names every kind, so a new kind does not compile until it says what it is; nothing outside
//! the kinds' modules matches on a kind.
//!
//! A new kind touches its own module, this list, the graph (where its nodes are made) and the
//! settings it reads.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::backends::GenContext;
use crate::build::{NotProduced, Produced, Runner};
use crate::error::ProjectError;
use crate::media::Media;
use crate::plan::{NodePlan, Session};
use crate::project::Config;

pub mod final_video;
pub mod frame;
pub mod last_frame;
pub mod reference;
pub mod segment;

pub use final_video::{Final, FinalRecipe};
pub use frame::{Frame, FrameRecipe, FrameRole, ImageRecipe};
pub use last_frame::{LastFrame, LastFrameRecipe};
pub use reference::AutoReference;
pub use segment::{Segment, SegmentRecipe};

/// The kind of a node of the build graph, with what its kind needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    AutoReference(AutoReference),
    Frame(Frame),
    Segment(Segment),
    Final(Final),
    LastFrame(LastFrame),
}

/// The body of a recipe: one variant per recipe kind, serialized with its `kind` tag (the
/// canonical JSON, and so the cache key, depends on these names and on the field order of
/// each recipe struct).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Frame(FrameRecipe),
    Image(ImageRecipe),
    Segment(SegmentRecipe),
    Final(FinalRecipe),
    Storyboard(crate::storyboard::StoryboardRecipe),
    LastFrame(LastFrameRecipe),
}

impl Body {
    /// Whether making it costs money and calls a generator (a frame taken from a file, a
    /// stitch or an extracted frame do not).
    pub fn is_generation(&self) -> bool {
        match self {
            Body::Frame(_) | Body::Segment(_) | Body::Storyboard(_) => true,
            Body::Image(_) | Body::Final(_) | Body::LastFrame(_) => false,
        }
    }

    /// One recipe of every kind with every field set (for tests that must cover them all).
    #[cfg(test)]
    pub fn samples() -> Vec<Body> {
        let mut out = frame::samples();
        out.push(segment::sample());
        out.push(final_video::sample());
        out.push(last_frame::sample());
        out.push(crate::storyboard::sample());
        out
    }
}

/// Which limit of requests in flight a node's production waits for (and what `plan` estimates
/// its time with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The frame backend (`keyframes.jobs`): an image request, paid once sent.
    Frames,
    /// The video backends (`video.jobs`): a long-running operation, resumed by the next build.
    Video,
    /// Local work (a file, ffmpeg): free, bounded by the global limit only.
    Local,
}

/// A recipe field that holds what another node made (or a file's hash), and how `explain`
/// names a change of it.
#[derive(Debug, Clone)]
pub struct Input {
    pub field: &'static str,
    /// `input frame`, `first frame`, `segment`...
    pub words: &'static str,
    /// The nodes whose outputs the field holds (in order, for a list).
    pub nodes: Vec<usize>,
    /// Not explained when this other field changed too (it says it better).
    pub unless: Option<&'static str>,
}

impl Input {
    pub fn new(field: &'static str, words: &'static str, nodes: Vec<usize>) -> Input {
        Input {
            field,
            words,
            nodes,
            unless: None,
        }
    }
}

/// A setting a backend cannot serve, found for one node. Problems with the same key are one
/// problem (reported once, for the first node that has it).
#[derive(Debug, Clone)]
pub struct Problem {
    pub key: String,
    pub error: ProjectError,
}

/// The ttv.yaml field that pins a node's take, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Pin {
    pub shot: usize,
    /// `take`, `start_take`, `end_take`.
    pub field: String,
    pub take: Option<u32>,
}

/// What a node kind is: everything about it except how it is produced ([`Produce`]).
pub trait Kind {
    /// The `kind` field of the JSON report (CLI contract).
    fn name(&self) -> &'static str;
    /// The shot it belongs to, if any.
    fn shot(&self) -> Option<usize> {
        None
    }
    /// Its place in a shot, as the review page labels it.
    fn role(&self) -> &'static str {
        self.name()
    }
    /// The recipe fields that hold other nodes' outputs: its dependencies.
    fn inputs(&self) -> Vec<Input>;
    /// What its output is.
    fn media(&self) -> Media;
    /// The group of targets it is in (`frames`, `segments`), if any.
    fn group(&self) -> Option<&'static str> {
        None
    }
    /// Built by a `ttv build` that names no target.
    fn default_target(&self) -> bool {
        false
    }
    /// The frame of a shot before this one that it starts on, if any (the review page shows
    /// the edge).
    fn starts_on(&self) -> Option<usize> {
        None
    }
    /// Its recipe, given ttv.yaml and the blobs its inputs made.
    fn recipe(&self, s: &Session, blobs: &HashMap<usize, String>) -> Body;
    /// The pool its production waits for.
    fn pool(&self, cfg: &Config) -> Pool;
    /// Reads the project's reference images (so they are hashed into its recipe).
    fn uses_references(&self, cfg: &Config) -> bool {
        self.pool(cfg) == Pool::Frames
    }
    /// Files of the project its recipe hashes (besides the references), relative to the root.
    fn files<'c>(&self, _cfg: &'c Config) -> Vec<&'c str> {
        Vec::new()
    }
    /// The list price of making it once (`None`: unknown).
    fn estimate(&self, _s: &Session) -> Option<f64> {
        Some(0.0)
    }
    /// The ttv.yaml field that pins its take, if it has takes to pin.
    fn pin(&self, _cfg: &Config) -> Option<Pin> {
        None
    }
    /// Its verdict (approve, reject) gates the nodes made from it under `require_approval`.
    fn judged(&self) -> bool {
        false
    }
    /// Waits for the verdicts on its judged inputs under `require_approval`.
    fn gated(&self) -> bool {
        false
    }
    /// Its production runs ffmpeg (checked before a build starts).
    fn needs_ffmpeg(&self, _s: &Session) -> bool {
        false
    }
    /// What in ttv.yaml the backends cannot serve for this node (node id `id`).
    fn problems(&self, _s: &Session, _id: &str) -> Vec<Problem> {
        Vec::new()
    }
}

/// How a node kind makes its output and puts it in the blob store.
pub(crate) trait Produce {
    async fn produce(
        &self,
        run: &Runner,
        plan: &NodePlan,
        deps: &HashMap<usize, String>,
        ctx: &GenContext,
    ) -> Result<Produced, NotProduced>;
}

macro_rules! each_kind {
    ($kind:expr, $k:ident => $e:expr) => {
        match $kind {
            NodeKind::AutoReference($k) => $e,
            NodeKind::Frame($k) => $e,
            NodeKind::Segment($k) => $e,
            NodeKind::Final($k) => $e,
            NodeKind::LastFrame($k) => $e,
        }
    };
}

impl NodeKind {
    /// What the kind is.
    pub fn get(&self) -> &dyn Kind {
        each_kind!(self, k => k)
    }

    /// The nodes it consumes, each once.
    pub fn deps(&self) -> Vec<usize> {
        let mut deps: Vec<usize> = Vec::new();
        for d in self.get().inputs().into_iter().flat_map(|i| i.nodes) {
            if !deps.contains(&d) {
                deps.push(d);
            }
        }
        deps
    }

    pub(crate) async fn produce(
        &self,
        run: &Runner,
        plan: &NodePlan,
        deps: &HashMap<usize, String>,
        ctx: &GenContext,
    ) -> Result<Produced, NotProduced> {
        each_kind!(self, k => k.produce(run, plan, deps, ctx).await)
    }
}

/// The production of a derived kind (free, local): `make` has ffmpeg write the output into a
/// temporary file beside the store (named `*{suffix}`), which the store then takes.
pub(crate) async fn made_by_ffmpeg<F, Fut>(
    run: &Runner,
    media: Media,
    suffix: &str,
    make: F,
) -> Result<Produced, NotProduced>
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let tmp = run.temp_file(suffix)?;
    make(tmp.to_path_buf())
        .await
        .map_err(NotProduced::from_error)?;
    let (h, size) = run
        .store
        .put_file(tmp, media)
        .map_err(NotProduced::from_error)?;
    Ok(Produced::new(h, size, "ffmpeg", "", 0.0, media))
}

/// The error of a kind handed a recipe of another kind (a defect, never the user's doing).
pub(crate) fn mismatch(ctx: &GenContext) -> NotProduced {
    format!(
        "{}: recipe does not fit the node (a defect in ttv)",
        ctx.node_id
    )
    .into()
}

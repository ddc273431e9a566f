//! `reference/auto`: a reference image generated from the first shot's start prompt when the
//! project has no references (`keyframes.auto_reference`), sent with every frame after it.

use std::collections::HashMap;

use super::{Body, Input, Kind, Pool, Produce, frame, mismatch};
use crate::backends::GenContext;
use crate::build::{NotProduced, Produced, Runner};
use crate::media::Media;
use crate::plan::{NodePlan, Session};
use crate::project::Config;

#[derive(Debug, Clone, PartialEq)]
pub struct AutoReference {
    /// The shot whose start prompt describes it.
    pub shot: usize,
}

impl Kind for AutoReference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn inputs(&self) -> Vec<Input> {
        Vec::new()
    }

    fn media(&self) -> Media {
        Media::Png
    }

    fn group(&self) -> Option<&'static str> {
        Some("frames")
    }

    fn recipe(&self, s: &Session, _blobs: &HashMap<usize, String>) -> Body {
        let cfg = &s.project.config;
        let start = cfg.shots[self.shot].start.as_deref().unwrap_or_default();
        frame::recipe(
            cfg,
            format!(
                "A reference image for a film storyboard: show the main characters and the \
                 setting clearly, in neutral light. Scene: {start}"
            ),
            Vec::new(),
            None,
        )
    }

    fn pool(&self, _cfg: &Config) -> Pool {
        Pool::Frames
    }

    fn estimate(&self, s: &Session) -> Option<f64> {
        frame::price(s)
    }
}

impl Produce for AutoReference {
    async fn produce(
        &self,
        run: &Runner,
        plan: &NodePlan,
        _deps: &HashMap<usize, String>,
        ctx: &GenContext,
    ) -> Result<Produced, NotProduced> {
        let Body::Frame(r) = &plan.recipe.body else {
            return Err(mismatch(ctx));
        };
        frame::generate(run, r, None, plan, ctx).await
    }
}

//! `final`: the shots' segments stitched into one video by ffmpeg (free, derived), each cut to
//! its shot's `trim:` if it has one.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Body, Input, Kind, Pool, Produce, made_by_ffmpeg, mismatch};
use crate::backends::GenContext;
use crate::build::{NotProduced, Produced, Runner};
use crate::media::Media;
use crate::plan::{NodePlan, Session};
use crate::project::Config;
use crate::stitch;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalRecipe {
    /// Segment blob hashes, in order.
    pub segments: Vec<String>,
    pub stitch: String,
    /// `trim:` of the shots whose segment is cut, by position in `segments`: `[in_s, out_s]`.
    /// Left out of the key while empty, so untrimmed finals keep their keys.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "positions"
    )]
    pub trims: BTreeMap<usize, [f64; 2]>,
}

/// Reads a map keyed by position: JSON object keys are text, and inside the flattened recipe
/// serde does not turn them back into numbers by itself.
fn positions<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<usize, [f64; 2]>, D::Error> {
    let text: BTreeMap<String, [f64; 2]> = Deserialize::deserialize(d)?;
    text.into_iter()
        .map(|(k, v)| {
            k.parse()
                .map(|k| (k, v))
                .map_err(|_| serde::de::Error::custom(format!("`{k}` is not a position")))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Final {
    /// The segment nodes, in shot order.
    pub segments: Vec<usize>,
}

impl Kind for Final {
    fn name(&self) -> &'static str {
        "final"
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::new("segments", "segment", self.segments.clone())]
    }

    fn media(&self) -> Media {
        Media::Mp4
    }

    fn default_target(&self) -> bool {
        true
    }

    fn recipe(&self, s: &Session, blobs: &HashMap<usize, String>) -> Body {
        let shots = &s.project.config.shots;
        Body::Final(FinalRecipe {
            segments: self.segments.iter().map(|d| blobs[d].clone()).collect(),
            stitch: stitch::STITCH_VERSION.into(),
            trims: self
                .segments
                .iter()
                .enumerate()
                .filter_map(|(pos, &d)| {
                    let shot = s.graph.nodes[d].shot()?;
                    shots[shot].trim.map(|t| (pos, t))
                })
                .collect(),
        })
    }

    fn pool(&self, _cfg: &Config) -> Pool {
        Pool::Local
    }

    fn needs_ffmpeg(&self, _s: &Session) -> bool {
        true
    }
}

impl Produce for Final {
    async fn produce(
        &self,
        run: &Runner,
        plan: &NodePlan,
        _deps: &HashMap<usize, String>,
        ctx: &GenContext,
    ) -> Result<Produced, NotProduced> {
        let Body::Final(r) = &plan.recipe.body else {
            return Err(mismatch(ctx));
        };
        let tmp_dir = run.store.tmp_dir();
        let paths: Vec<PathBuf> = r.segments.iter().map(|h| run.store.blob_path(h)).collect();
        made_by_ffmpeg(run, Media::Mp4, ".mp4", |out| async move {
            stitch::stitch_trimmed(&paths, &r.trims, &out, tmp_dir)
                .await
                .map(|_| ())
        })
        .await
    }
}

/// A final recipe with every field set.
#[cfg(test)]
pub(super) fn sample() -> Body {
    Body::Final(FinalRecipe {
        segments: vec!["a".into(), "b".into()],
        stitch: "concat-1".into(),
        trims: [(1, [0.5, 4.0])].into(),
    })
}

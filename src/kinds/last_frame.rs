//! `frame/<shot>/last`: the last frame of a shot's video, extracted by ffmpeg (free, derived):
//! where the next shot's segment starts in chaining mode. Keyed by the video's bytes, so a
//! regenerated segment invalidates it and a re-placed one does not.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Body, Input, Kind, Pool, Produce, made_by_ffmpeg, mismatch};
use crate::backends::GenContext;
use crate::build::{NotProduced, Produced, Runner};
use crate::media::Media;
use crate::plan::{NodePlan, Session};
use crate::project::Config;

/// How [`extract`] takes a video's last frame (in its recipe: a new method, a new key).
pub const METHOD: &str = "ffmpeg-sseof-png-v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastFrameRecipe {
    /// The segment's blob hash.
    pub video: String,
    /// How the frame is extracted (a change of method is a new key).
    pub extract: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LastFrame {
    /// The shot whose video it comes from.
    pub shot: usize,
    pub segment: usize,
}

impl Kind for LastFrame {
    fn name(&self) -> &'static str {
        "last_frame"
    }

    fn shot(&self) -> Option<usize> {
        Some(self.shot)
    }

    fn role(&self) -> &'static str {
        "last"
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::new("video", "video", vec![self.segment])]
    }

    fn media(&self) -> Media {
        Media::Png
    }

    fn recipe(&self, _s: &Session, blobs: &HashMap<usize, String>) -> Body {
        Body::LastFrame(LastFrameRecipe {
            video: blobs[&self.segment].clone(),
            extract: METHOD.into(),
        })
    }

    fn pool(&self, _cfg: &Config) -> Pool {
        Pool::Local
    }

    fn needs_ffmpeg(&self, _s: &Session) -> bool {
        true
    }
}

impl Produce for LastFrame {
    async fn produce(
        &self,
        run: &Runner,
        plan: &NodePlan,
        _deps: &HashMap<usize, String>,
        ctx: &GenContext,
    ) -> Result<Produced, NotProduced> {
        let Body::LastFrame(r) = &plan.recipe.body else {
            return Err(mismatch(ctx));
        };
        let video = run.store.blob_path(&r.video);
        made_by_ffmpeg(run, Media::Png, ".png", |out| async move {
            extract(&video, &out).await
        })
        .await
    }
}

/// The last frame of `video` as a PNG at `out`: ffmpeg seeks near the end and writes each frame
/// it decodes over the same file, so the last one stays.
async fn extract(video: &Path, out: &Path) -> anyhow::Result<()> {
    let mut args: Vec<OsString> = ["-y", "-v", "error", "-sseof", "-1.5", "-i"]
        .map(OsString::from)
        .into();
    args.push(video.as_os_str().to_owned());
    args.extend(["-an", "-update", "1", "-c:v", "png", "-f", "image2"].map(OsString::from));
    args.push(out.as_os_str().to_owned());
    crate::stitch::run_ffmpeg(&args, "extract the last frame").await
}

/// A last-frame recipe with every field set.
#[cfg(test)]
pub(super) fn sample() -> Body {
    Body::LastFrame(LastFrameRecipe {
        video: "v".into(),
        extract: METHOD.into(),
    })
}

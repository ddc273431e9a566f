//! The built-in offline backend: deterministic images drawn from the recipe and short real MP4
//! clips made from the frames with ffmpeg. No network, no cost.

use async_trait::async_trait;

use super::{
    FrameCaps, FrameGenerator, FrameOutput, FrameRequest, GenContext, GenError, VideoCaps,
    VideoGenerator, VideoOutput, VideoRequest,
};

/// `TTV_PREVIEW_LATENCY_MS`: a simulated delay per generation (benchmarks, tests).
pub const LATENCY_ENV: &str = "TTV_PREVIEW_LATENCY_MS";

pub struct PreviewFrames;

pub struct PreviewVideo;

#[async_trait]
impl FrameGenerator for PreviewFrames {
    fn name(&self) -> &str {
        "preview"
    }

    fn capabilities(&self, _model: &str) -> FrameCaps {
        todo!("preview helper")
    }

    async fn generate(
        &self,
        req: &FrameRequest,
        ctx: &GenContext,
    ) -> Result<FrameOutput, GenError> {
        let _ = (req, ctx);
        todo!("preview helper")
    }
}

#[async_trait]
impl VideoGenerator for PreviewVideo {
    fn name(&self) -> &str {
        "preview"
    }

    fn capabilities(&self, _model: &str) -> VideoCaps {
        todo!("preview helper")
    }

    async fn generate(
        &self,
        req: &VideoRequest,
        ctx: &GenContext,
    ) -> Result<VideoOutput, GenError> {
        let _ = (req, ctx);
        todo!("preview helper")
    }
}

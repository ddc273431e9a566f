//! What generations cost: the model registry's list prices ([`crate::models`]), overridable per
//! model under `prices:` in ttv.yaml. `None` is an unknown price, shown as unknown (never as $0).

use std::collections::BTreeMap;

use crate::models;
use crate::project::PriceOverride;

#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    overrides: BTreeMap<String, PriceOverride>,
}

impl PriceTable {
    pub fn new(overrides: &BTreeMap<String, PriceOverride>) -> PriceTable {
        PriceTable {
            overrides: overrides.clone(),
        }
    }

    /// Price of one image of `size` (`None`: the model's default size). The preview backend is
    /// free.
    pub fn image(&self, backend: &str, model: &str, size: Option<&str>) -> Option<f64> {
        if backend == "preview" {
            return Some(0.0);
        }
        self.overrides
            .get(model)
            .and_then(|o| o.per_image)
            .or_else(|| models::find(model)?.image_price(size))
    }

    /// Price of `samples` videos of `seconds` each.
    pub fn video(&self, backend: &str, model: &str, v: &VideoCost) -> Option<f64> {
        if backend == "preview" {
            return Some(0.0);
        }
        let per_second = self
            .overrides
            .get(model)
            .and_then(|o| o.per_second)
            .or_else(|| models::find(model)?.video_price(&v.resolution, v.audio))?;
        Some(per_second * f64::from(v.seconds) * f64::from(v.samples.max(1)))
    }
}

/// What a video's price depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoCost {
    pub seconds: u32,
    pub resolution: String,
    pub audio: bool,
    pub samples: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(seconds: u32, resolution: &str, audio: bool, samples: u32) -> VideoCost {
        VideoCost {
            seconds,
            resolution: resolution.into(),
            audio,
            samples,
        }
    }

    #[test]
    fn list_prices_and_overrides() {
        let mut o = BTreeMap::new();
        let t = PriceTable::new(&o);
        let near = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(near(
            t.image("gemini", "gemini-3-pro-image", Some("4K")),
            0.24
        ));
        let veo = "veo-3.1-generate-001";
        assert!(near(t.video("veo", veo, &video(8, "720p", true, 1)), 3.2));
        assert!(near(t.video("veo", veo, &video(8, "720p", true, 2)), 6.4));
        assert!(near(t.video("veo", veo, &video(8, "1080p", false, 1)), 1.6));
        assert!(near(t.video("veo", veo, &video(8, "4k", true, 1)), 4.8));
        assert!(near(
            t.video(
                "veo",
                "veo-3.1-fast-generate-001",
                &video(8, "720p", true, 1)
            ),
            1.2
        ));
        assert_eq!(
            t.video("preview", veo, &video(8, "720p", true, 1)),
            Some(0.0)
        );
        assert_eq!(t.video("veo", "veo-9", &video(8, "720p", true, 1)), None);
        assert_eq!(t.image("gemini", "gemini-9-image", None), None);
        o.insert(
            veo.to_string(),
            PriceOverride {
                per_image: None,
                per_second: Some(0.08),
            },
        );
        o.insert(
            "gemini-9-image".to_string(),
            PriceOverride {
                per_image: Some(0.01),
                per_second: None,
            },
        );
        let t = PriceTable::new(&o);
        assert!(near(t.video("veo", veo, &video(8, "4k", true, 1)), 0.64));
        assert!(near(t.image("gemini", "gemini-9-image", None), 0.01));
    }
}

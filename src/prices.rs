//! List prices (DESIGN.md §10), for `plan`'s estimate and `build`'s spent and saved. Overridable
//! per model under `prices:` in ttv.yaml.

use std::collections::BTreeMap;

use crate::project::PriceOverride;

/// USD per image, by model prefix.
const IMAGE_PRICES: &[(&str, f64)] = &[
    ("gemini-2.5-flash-image", 0.039),
    ("gemini-3-pro-image", 0.134),
];

/// USD per second of video, by model prefix (the longest matching prefix wins).
const VIDEO_PRICES: &[(&str, f64)] = &[
    ("veo-3.0-fast", 0.15),
    ("veo-3.1-fast", 0.15),
    ("veo-3.0", 0.40),
    ("veo-3.1", 0.40),
    ("veo-2.0", 0.50),
];

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

    /// Price of one image. The preview backend is free.
    pub fn image(&self, backend: &str, model: &str) -> f64 {
        if backend == "preview" {
            return 0.0;
        }
        self.overrides
            .get(model)
            .and_then(|o| o.per_image)
            .unwrap_or_else(|| lookup(IMAGE_PRICES, model))
    }

    /// Price of one video of `seconds`.
    pub fn video(&self, backend: &str, model: &str, seconds: u32) -> f64 {
        if backend == "preview" {
            return 0.0;
        }
        let per_second = self
            .overrides
            .get(model)
            .and_then(|o| o.per_second)
            .unwrap_or_else(|| lookup(VIDEO_PRICES, model));
        per_second * f64::from(seconds)
    }
}

fn lookup(table: &[(&str, f64)], model: &str) -> f64 {
    table
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, p)| *p)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_prices_and_overrides() {
        let mut o = BTreeMap::new();
        let t = PriceTable::new(&o);
        assert_eq!(t.image("gemini", "gemini-2.5-flash-image"), 0.039);
        assert!((t.video("veo", "veo-3.0-generate-001", 8) - 3.2).abs() < 1e-9);
        assert!((t.video("veo", "veo-3.0-fast-generate-001", 8) - 1.2).abs() < 1e-9);
        assert_eq!(t.video("preview", "veo-3.0-generate-001", 8), 0.0);
        o.insert(
            "veo-3.0-generate-001".to_string(),
            PriceOverride {
                per_image: None,
                per_second: Some(0.08),
            },
        );
        let t = PriceTable::new(&o);
        assert!((t.video("veo", "veo-3.0-generate-001", 8) - 0.64).abs() < 1e-9);
    }
}

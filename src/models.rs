//! The model registry: every fact ttv relies on about Google's models (ids, lifecycle, routes,
//! capabilities, list prices), in one table with its sources. Capability checks, `ttv plan`'s
//! estimate, `prices:` overrides and `ttv doctor` all read it; updating it is a change to
//! [`MODELS`] alone.
//!
//! Sources (read 2026-11, see each entry's `sources` for the page behind each figure):
//! - Gemini API models and deprecations: <https://ai.google.dev/gemini-api/docs/models>,
//!   <https://ai.google.dev/gemini-api/docs/deprecations>
//! - Gemini image generation: <https://ai.google.dev/gemini-api/docs/image-generation>
//! - Vertex AI Veo: <https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/veo-video-generation>,
//!   model lifecycle: <https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions>
//! - Prices: <https://ai.google.dev/gemini-api/docs/pricing>,
//!   <https://cloud.google.com/vertex-ai/generative-ai/pricing>
//! - What the official SDK sends: `shared/google-sdk/requests.json` (google-genai 3.6.1)

/// What a model makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Video,
    Text,
}

impl Kind {
    /// `a` or `an`, before [`Kind::as_str`].
    pub fn article(self) -> &'static str {
        match self {
            Kind::Image => "an",
            Kind::Video | Kind::Text => "a",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Video => "video",
            Kind::Text => "text",
        }
    }
}

/// Where a model stands in Google's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Generally available since the date.
    Ga { since: &'static str },
    /// In preview since the date (no model ttv uses is, today: the registry keeps the
    /// state for the next one).
    #[allow(dead_code)]
    Preview { since: &'static str },
    /// Shut down on the date: every request answers 404 NOT_FOUND.
    Retired {
        on: &'static str,
        replacement: Option<&'static str>,
    },
}

/// The services that serve a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    pub gemini_api: bool,
    pub vertex: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageCaps {
    pub aspect_ratios: &'static [&'static str],
    /// `imageConfig.imageSize` values; empty when the model takes none (a fixed size).
    pub image_sizes: &'static [&'static str],
    /// Input images (references plus the image to edit) one request may carry.
    pub max_input_images: usize,
    pub max_prompt_chars: usize,
}

/// A video resolution and the durations it can be made in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution {
    pub name: &'static str,
    pub durations: &'static [u32],
}

/// Reference-to-video (`referenceImages` of type ASSET).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoReferences {
    pub max: usize,
    pub durations: &'static [u32],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoCaps {
    pub durations: &'static [u32],
    pub resolutions: &'static [Resolution],
    pub aspect_ratios: &'static [&'static str],
    /// `lastFrame`: a first and a last frame in one request.
    pub first_last_frame: bool,
    pub references: Option<VideoReferences>,
    /// Makes a sound track (`generateAudio`).
    pub audio: bool,
    /// `sampleCount`: videos one operation returns.
    pub max_samples: u32,
    pub max_prompt_chars: usize,
}

impl VideoCaps {
    pub fn resolution(&self, name: &str) -> Option<&Resolution> {
        self.resolutions.iter().find(|r| r.name == name)
    }
}

/// One list price of a video model, per second of video. `None` matches any value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoPrice {
    pub resolution: Option<&'static str>,
    pub audio: Option<bool>,
    pub per_second: f64,
}

/// List prices in USD. An empty table means no known price (shown as unknown, never as $0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    /// Per image, by `imageSize` (`*` for any size).
    pub per_image: &'static [(&'static str, f64)],
    /// The first matching row wins: list specific rows first.
    pub per_second: &'static [VideoPrice],
    /// Text models: USD per million input (prompt) tokens and per million output tokens
    /// (thinking tokens are billed as output).
    pub per_million_tokens: Option<TokenPrice>,
    /// Where a figure is not Google's own (a third-party report), said here.
    pub note: Option<&'static str>,
}

/// A text model's list price, per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenPrice {
    pub input: f64,
    pub output: f64,
}

const NO_PRICES: Prices = Prices {
    per_image: &[],
    per_second: &[],
    per_million_tokens: None,
    note: None,
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub id: &'static str,
    /// Google's marketing name, for messages.
    pub name: &'static str,
    pub kind: Kind,
    pub routes: Routes,
    pub lifecycle: Lifecycle,
    pub image: Option<ImageCaps>,
    pub video: Option<VideoCaps>,
    pub prices: Prices,
    pub sources: &'static [&'static str],
}

const BOTH: Routes = Routes {
    gemini_api: true,
    vertex: true,
};
const VERTEX: Routes = Routes {
    gemini_api: false,
    vertex: true,
};

const IMAGE_RATIOS: &[&str] = &[
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];
const NANO_BANANA_3X: ImageCaps = ImageCaps {
    aspect_ratios: IMAGE_RATIOS,
    image_sizes: &["1K", "2K", "4K"],
    max_input_images: 14,
    max_prompt_chars: 30_000,
};

const VEO_31: VideoCaps = VideoCaps {
    durations: &[4, 6, 8],
    resolutions: &[
        Resolution {
            name: "720p",
            durations: &[4, 6, 8],
        },
        Resolution {
            name: "1080p",
            durations: &[8],
        },
        Resolution {
            name: "4k",
            durations: &[8],
        },
    ],
    aspect_ratios: &["16:9", "9:16"],
    first_last_frame: true,
    references: Some(VideoReferences {
        max: 3,
        durations: &[8],
    }),
    audio: true,
    max_samples: 4,
    // Veo takes prompts of up to 1024 tokens; 4000 characters stays under that for English.
    max_prompt_chars: 4000,
};

const VEO_30: VideoCaps = VideoCaps {
    first_last_frame: false,
    references: None,
    resolutions: &[
        Resolution {
            name: "720p",
            durations: &[4, 6, 8],
        },
        Resolution {
            name: "1080p",
            durations: &[8],
        },
    ],
    ..VEO_31
};

const VEO_PAGE: &str =
    "https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/veo-video-generation";
const VERTEX_PRICING: &str = "https://cloud.google.com/vertex-ai/generative-ai/pricing";
const GEMINI_PRICING: &str = "https://ai.google.dev/gemini-api/docs/pricing";
const DEPRECATIONS: &str = "https://ai.google.dev/gemini-api/docs/deprecations";
const VERTEX_VERSIONS: &str =
    "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions";
const IMAGE_PAGE: &str = "https://ai.google.dev/gemini-api/docs/image-generation";

/// The registry. Kept in one place so that a model Google retires or adds is one edit here.
pub static MODELS: &[Model] = &[
    // --- Images ("Nano Banana") ---
    Model {
        id: "gemini-3.1-flash-image",
        name: "Nano Banana 2",
        kind: Kind::Image,
        routes: BOTH,
        lifecycle: Lifecycle::Ga {
            since: "2026-05-28",
        },
        image: Some(ImageCaps {
            image_sizes: &["512px", "1K", "2K", "4K"],
            ..NANO_BANANA_3X
        }),
        video: None,
        prices: Prices {
            per_image: &[
                ("512px", 0.045),
                ("1K", 0.067),
                ("2K", 0.101),
                ("4K", 0.151),
            ],
            per_second: &[],
            per_million_tokens: None,
            note: Some("third-party figures (Google's page lists tokens, not images)"),
        },
        sources: &[IMAGE_PAGE, GEMINI_PRICING],
    },
    Model {
        id: "gemini-3-pro-image",
        name: "Nano Banana Pro",
        kind: Kind::Image,
        routes: BOTH,
        lifecycle: Lifecycle::Ga {
            since: "2026-05-28",
        },
        image: Some(NANO_BANANA_3X),
        video: None,
        prices: Prices {
            per_image: &[("1K", 0.134), ("2K", 0.134), ("4K", 0.24)],
            per_second: &[],
            per_million_tokens: None,
            note: None,
        },
        sources: &[IMAGE_PAGE, GEMINI_PRICING],
    },
    Model {
        id: "gemini-3.1-flash-lite-image",
        name: "Nano Banana 2 Lite",
        kind: Kind::Image,
        routes: BOTH,
        lifecycle: Lifecycle::Ga {
            since: "2026-05-28",
        },
        image: Some(ImageCaps {
            image_sizes: &["1K"],
            ..NANO_BANANA_3X
        }),
        video: None,
        // "The cheapest", without a figure ttv could cite.
        prices: NO_PRICES,
        sources: &[IMAGE_PAGE],
    },
    Model {
        id: "gemini-2.5-flash-image",
        name: "Nano Banana",
        kind: Kind::Image,
        routes: BOTH,
        lifecycle: Lifecycle::Retired {
            on: "2026-10-02",
            replacement: Some("gemini-3.1-flash-image"),
        },
        image: None,
        video: None,
        prices: NO_PRICES,
        sources: &[DEPRECATIONS],
    },
    Model {
        id: "gemini-3-pro-image-preview",
        name: "Nano Banana Pro (preview)",
        kind: Kind::Image,
        routes: BOTH,
        lifecycle: Lifecycle::Retired {
            on: "2026-06-25",
            replacement: Some("gemini-3-pro-image"),
        },
        image: None,
        video: None,
        prices: NO_PRICES,
        sources: &[DEPRECATIONS],
    },
    Model {
        id: "gemini-3.1-flash-image-preview",
        name: "Nano Banana 2 (preview)",
        kind: Kind::Image,
        routes: BOTH,
        lifecycle: Lifecycle::Retired {
            on: "2026-06-25",
            replacement: Some("gemini-3.1-flash-image"),
        },
        image: None,
        video: None,
        prices: NO_PRICES,
        sources: &[DEPRECATIONS],
    },
    // --- Video (Veo) ---
    Model {
        id: "veo-3.1-generate-001",
        name: "Veo 3.1",
        kind: Kind::Video,
        routes: VERTEX,
        lifecycle: Lifecycle::Ga {
            since: "2026-05-28",
        },
        image: None,
        video: Some(VEO_31),
        prices: Prices {
            per_image: &[],
            per_second: &[
                VideoPrice {
                    resolution: Some("4k"),
                    audio: None,
                    per_second: 0.60,
                },
                VideoPrice {
                    resolution: None,
                    audio: Some(false),
                    per_second: 0.20,
                },
                VideoPrice {
                    resolution: None,
                    audio: None,
                    per_second: 0.40,
                },
            ],
            per_million_tokens: None,
            note: None,
        },
        sources: &[VEO_PAGE, VERTEX_PRICING],
    },
    Model {
        id: "veo-3.1-fast-generate-001",
        name: "Veo 3.1 Fast",
        kind: Kind::Video,
        routes: VERTEX,
        lifecycle: Lifecycle::Ga {
            since: "2026-05-28",
        },
        image: None,
        video: Some(VEO_31),
        prices: Prices {
            per_image: &[],
            per_second: &[
                VideoPrice {
                    resolution: Some("4k"),
                    audio: None,
                    per_second: 0.35,
                },
                VideoPrice {
                    resolution: None,
                    audio: Some(false),
                    per_second: 0.10,
                },
                VideoPrice {
                    resolution: None,
                    audio: None,
                    per_second: 0.15,
                },
            ],
            per_million_tokens: None,
            note: Some("the 4k rate is a third-party figure"),
        },
        sources: &[VEO_PAGE, VERTEX_PRICING],
    },
    Model {
        id: "veo-3.0-generate-001",
        name: "Veo 3",
        kind: Kind::Video,
        routes: VERTEX,
        lifecycle: Lifecycle::Retired {
            on: "2026-06-30",
            replacement: Some("veo-3.1-generate-001"),
        },
        image: None,
        video: Some(VEO_30),
        prices: NO_PRICES,
        sources: &[VERTEX_VERSIONS],
    },
    Model {
        id: "veo-3.0-fast-generate-001",
        name: "Veo 3 Fast",
        kind: Kind::Video,
        routes: VERTEX,
        lifecycle: Lifecycle::Retired {
            on: "2026-06-30",
            replacement: Some("veo-3.1-fast-generate-001"),
        },
        image: None,
        video: Some(VEO_30),
        prices: NO_PRICES,
        sources: &[VERTEX_VERSIONS],
    },
    Model {
        id: "veo-3.0-generate-preview",
        name: "Veo 3 (preview)",
        kind: Kind::Video,
        routes: BOTH,
        lifecycle: Lifecycle::Retired {
            on: "2026-06-25",
            replacement: Some("veo-3.1-generate-001"),
        },
        image: None,
        video: Some(VEO_30),
        prices: NO_PRICES,
        sources: &[DEPRECATIONS],
    },
    Model {
        id: "veo-3.0-fast-generate-preview",
        name: "Veo 3 Fast (preview)",
        kind: Kind::Video,
        routes: BOTH,
        lifecycle: Lifecycle::Retired {
            on: "2026-06-25",
            replacement: Some("veo-3.1-fast-generate-001"),
        },
        image: None,
        video: Some(VEO_30),
        prices: NO_PRICES,
        sources: &[DEPRECATIONS],
    },
    // --- Text (storyboards) ---
    Model {
        id: "gemini-3.5-flash",
        name: "Gemini 3.5 Flash",
        kind: Kind::Text,
        routes: BOTH,
        lifecycle: Lifecycle::Ga {
            since: "2026-05-28",
        },
        image: None,
        video: None,
        prices: Prices {
            per_million_tokens: Some(TokenPrice {
                input: 1.50,
                output: 9.00,
            }),
            note: Some(
                "third-party figures (launch reports of May 2026; Google's page is the authority)",
            ),
            ..NO_PRICES
        },
        sources: &[
            "https://ai.google.dev/gemini-api/docs/models",
            GEMINI_PRICING,
            "https://apidog.com/blog/gemini-3-5-flash-pricing/",
        ],
    },
    Model {
        id: "gemini-3.1-flash-lite",
        name: "Gemini 3.1 Flash-Lite",
        kind: Kind::Text,
        routes: BOTH,
        lifecycle: Lifecycle::Ga {
            since: "2026-05-28",
        },
        image: None,
        video: None,
        prices: Prices {
            per_million_tokens: Some(TokenPrice {
                input: 0.25,
                output: 1.50,
            }),
            note: Some("third-party figures, quoted for the preview of the model"),
            ..NO_PRICES
        },
        sources: &[
            "https://ai.google.dev/gemini-api/docs/models",
            GEMINI_PRICING,
            "https://github.com/schlebek/ai-wish-generator/releases/tag/v3.2.0",
        ],
    },
];

/// What an image model the registry does not know is assumed to take: what every Gemini image
/// model has taken.
pub const CONSERVATIVE_IMAGE: ImageCaps = ImageCaps {
    aspect_ratios: IMAGE_RATIOS,
    image_sizes: &[],
    max_input_images: 3,
    max_prompt_chars: 4000,
};

/// What a video model the registry does not know is assumed to do: Veo 3's common ground
/// (no last frame, no reference images, one video per call, no 4k).
pub const CONSERVATIVE_VIDEO: VideoCaps = VideoCaps {
    durations: &[4, 6, 8],
    resolutions: &[
        Resolution {
            name: "720p",
            durations: &[4, 6, 8],
        },
        Resolution {
            name: "1080p",
            durations: &[8],
        },
    ],
    aspect_ratios: &["16:9", "9:16"],
    first_last_frame: false,
    references: None,
    audio: true,
    max_samples: 1,
    max_prompt_chars: 4000,
};

/// The registry's entry for `id` (a `models/` prefix is ignored).
pub fn find(id: &str) -> Option<&'static Model> {
    let id = id.strip_prefix("models/").unwrap_or(id);
    MODELS.iter().find(|m| m.id == id)
}

/// The current models of a kind, for messages ("use one of ...").
pub fn current(kind: Kind) -> Vec<&'static str> {
    MODELS
        .iter()
        .filter(|m| m.kind == kind && !matches!(m.lifecycle, Lifecycle::Retired { .. }))
        .map(|m| m.id)
        .collect()
}

/// Capabilities of an image model: the registry's, or conservative ones for an unknown id.
pub fn image_caps(id: &str) -> ImageCaps {
    find(id).and_then(|m| m.image).unwrap_or(CONSERVATIVE_IMAGE)
}

/// Capabilities of a video model: the registry's, or conservative ones for an unknown id.
pub fn video_caps(id: &str) -> VideoCaps {
    find(id).and_then(|m| m.video).unwrap_or(CONSERVATIVE_VIDEO)
}

impl Model {
    /// The list price of one image of `size` (`None` when the model takes no size), if known.
    pub fn image_price(&self, size: Option<&str>) -> Option<f64> {
        let size = size.unwrap_or("1K");
        self.prices
            .per_image
            .iter()
            .find(|(s, _)| *s == size || *s == "*")
            .map(|(_, p)| *p)
    }

    /// The list price of a text generation that read `input` tokens and wrote `output`
    /// (thinking included), if known.
    pub fn text_price(&self, input: u64, output: u64) -> Option<f64> {
        self.prices
            .per_million_tokens
            .map(|p| (input as f64 * p.input + output as f64 * p.output) / 1_000_000.0)
    }

    /// The list price of one second of video, if known.
    pub fn video_price(&self, resolution: &str, audio: bool) -> Option<f64> {
        self.prices
            .per_second
            .iter()
            .find(|p| {
                p.resolution.is_none_or(|r| r == resolution) && p.audio.is_none_or(|a| a == audio)
            })
            .map(|p| p.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_entry_is_complete() {
        for (i, m) in MODELS.iter().enumerate() {
            assert!(
                MODELS[..i].iter().all(|o| o.id != m.id),
                "{} is listed twice",
                m.id
            );
            assert!(!m.sources.is_empty(), "{} cites no source", m.id);
            if let Lifecycle::Retired {
                replacement: Some(r),
                ..
            } = m.lifecycle
            {
                let r = find(r).unwrap_or_else(|| panic!("{}'s replacement {r} is unknown", m.id));
                assert!(!matches!(r.lifecycle, Lifecycle::Retired { .. }));
                assert_eq!(r.kind, m.kind);
            }
            let live = !matches!(m.lifecycle, Lifecycle::Retired { .. });
            match m.kind {
                Kind::Image if live => assert!(m.image.is_some(), "{}", m.id),
                Kind::Video if live => assert!(m.video.is_some(), "{}", m.id),
                _ => {}
            }
            if let Some(v) = m.video {
                for r in v.resolutions {
                    assert!(r.durations.iter().all(|d| v.durations.contains(d)));
                }
            }
        }
    }

    #[test]
    fn prices_by_size_resolution_and_audio() {
        let pro = find("gemini-3-pro-image").unwrap();
        assert_eq!(pro.image_price(Some("4K")), Some(0.24));
        assert_eq!(pro.image_price(None), Some(0.134));
        let veo = find("models/veo-3.1-generate-001").unwrap();
        assert_eq!(veo.video_price("720p", true), Some(0.40));
        assert_eq!(veo.video_price("1080p", false), Some(0.20));
        assert_eq!(veo.video_price("4k", false), Some(0.60));
        let flash = find("gemini-3.5-flash").unwrap();
        assert_eq!(flash.text_price(1_000_000, 0), Some(1.50));
        assert_eq!(flash.text_price(2000, 1000), Some(0.012));
        assert_eq!(
            find("gemini-3.1-flash-lite-image")
                .unwrap()
                .image_price(None),
            None
        );
    }

    #[test]
    fn unknown_models_get_conservative_capabilities() {
        assert!(find("veo-9-generate-001").is_none());
        let v = video_caps("veo-9-generate-001");
        assert!(!v.first_last_frame && v.references.is_none() && v.max_samples == 1);
        assert!(v.resolution("4k").is_none());
        assert_eq!(image_caps("gemini-9-image").max_input_images, 3);
        assert_eq!(image_caps("gemini-3-pro-image").max_input_images, 14);
    }
}

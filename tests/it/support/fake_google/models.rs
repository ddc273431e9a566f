//! Which models the fake serves: Google's line-up of November 2026 (/work/shared/API.md, "Models
//! in November 2026"), what each can do, and `models.get` on both APIs.

use super::*;

/// What a model makes, and so which method serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Images, through generateContent.
    Image,
    /// Videos, through predictLongRunning.
    Video,
    /// Text (storyboards), through generateContent.
    Text,
}

pub(super) struct Model {
    pub(super) id: &'static str,
    pub(super) kind: Kind,
    pub(super) display_name: &'static str,
    /// Retired in November 2026: answered 404 unless [`FakeGoogle::reinstate`]d.
    pub(super) retired: bool,
    /// Images: the `imageConfig.imageSize` values taken (the default is 1K).
    pub(super) image_sizes: &'static [&'static str],
    /// Images: the most inline images one request may carry, where Google enforces one.
    pub(super) max_images: Option<usize>,
    /// Veo: the resolutions made.
    pub(super) resolutions: &'static [&'static str],
    /// Veo: a last frame (`instances[0].lastFrame`) and asset `referenceImages` are taken.
    pub(super) frames_and_references: bool,
    pub(super) input_token_limit: u32,
    pub(super) output_token_limit: u32,
    /// Where the row comes from.
    pub(super) source: &'static str,
}

const fn image(
    id: &'static str,
    display_name: &'static str,
    retired: bool,
    image_sizes: &'static [&'static str],
    max_images: Option<usize>,
    source: &'static str,
) -> Model {
    Model {
        id,
        kind: Kind::Image,
        display_name,
        retired,
        image_sizes,
        max_images,
        resolutions: &[],
        frames_and_references: false,
        input_token_limit: 65_536,
        output_token_limit: 32_768,
        source,
    }
}

const fn veo(
    id: &'static str,
    display_name: &'static str,
    retired: bool,
    v31: bool,
    source: &'static str,
) -> Model {
    Model {
        id,
        kind: Kind::Video,
        display_name,
        retired,
        image_sizes: &[],
        max_images: None,
        resolutions: if v31 {
            &["720p", "1080p", "4k"]
        } else {
            &["720p", "1080p"]
        },
        frames_and_references: v31,
        input_token_limit: 1_024,
        output_token_limit: 8_192,
        source,
    }
}

const fn text(id: &'static str, display_name: &'static str, source: &'static str) -> Model {
    Model {
        id,
        kind: Kind::Text,
        display_name,
        retired: false,
        image_sizes: &[],
        max_images: None,
        resolutions: &[],
        frames_and_references: false,
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        source,
    }
}

const SIZES_3_1_FLASH: &[&str] = &["512px", "1K", "2K", "4K"];
const SIZES_3_PRO: &[&str] = &["1K", "2K", "4K"];
const MAX_IMAGES_3X: Option<usize> = Some(14);

/// Every model id the fake knows; any other id is answered 404 NOT_FOUND.
pub(super) const MODELS: &[Model] = &[
    image(
        "gemini-3.1-flash-image",
        "Nano Banana 2",
        false,
        SIZES_3_1_FLASH,
        MAX_IMAGES_3X,
        "API.md: GA 2026-05-28; 1K/2K/4K and 512px; up to 14 reference images",
    ),
    image(
        "gemini-3-pro-image",
        "Nano Banana Pro",
        false,
        SIZES_3_PRO,
        MAX_IMAGES_3X,
        "API.md: GA 2026-05-28; 1K/2K/4K; up to 14 reference images",
    ),
    image(
        "gemini-3.1-flash-lite-image",
        "Gemini 3.1 Flash-Lite Image",
        false,
        &["1K"],
        MAX_IMAGES_3X,
        "API.md: fixed 1K, cheapest",
    ),
    veo(
        "veo-3.1-generate-001",
        "Veo 3.1",
        false,
        true,
        "API.md: GA on Vertex; 720p/1080p/4k, lastFrame, up to 3 referenceImages",
    ),
    veo(
        "veo-3.1-fast-generate-001",
        "Veo 3.1 Fast",
        false,
        true,
        "API.md: GA on Vertex",
    ),
    text(
        "gemini-3.5-flash",
        "Gemini 3.5 Flash",
        "API.md: storyboards, JSON output with responseSchema",
    ),
    text(
        "gemini-3.1-flash-lite",
        "Gemini 3.1 Flash-Lite",
        "API.md: storyboards, JSON output with responseSchema",
    ),
    image(
        "gemini-2.5-flash-image",
        "Nano Banana",
        true,
        &["1K"],
        None,
        "API.md: shut down 2026-10-02",
    ),
    image(
        "gemini-3-pro-image-preview",
        "Nano Banana Pro (preview)",
        true,
        SIZES_3_PRO,
        MAX_IMAGES_3X,
        "API.md: shut down 2026-06-25",
    ),
    image(
        "gemini-3.1-flash-image-preview",
        "Nano Banana 2 (preview)",
        true,
        SIZES_3_1_FLASH,
        MAX_IMAGES_3X,
        "API.md: shut down 2026-06-25",
    ),
    veo(
        "veo-3.0-generate-001",
        "Veo 3",
        true,
        false,
        "API.md: retired on Vertex 2026-06-30",
    ),
    veo(
        "veo-3.0-fast-generate-001",
        "Veo 3 Fast",
        true,
        false,
        "API.md: retired on Vertex 2026-06-30",
    ),
];

/// The ids retired when a fake starts.
pub(super) fn retired_by_default() -> BTreeSet<String> {
    MODELS
        .iter()
        .filter(|m| m.retired)
        .map(|m| m.id.to_owned())
        .collect()
}

/// The Google method a request calls on a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    GenerateContent,
    PredictLongRunning,
    Get,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::GenerateContent => "generateContent",
            Method::PredictLongRunning => "predictLongRunning",
            Method::Get => "get",
        }
    }
}

/// The model a request names, if the fake serves it for `method` on `api`: Google's 404
/// NOT_FOUND otherwise. `resource` is the model's name as the path spells it
/// (`projects/P/locations/L/publishers/google/models/M` on Vertex), for the message.
pub(super) fn served(
    inner: &Inner,
    api: Api,
    version: &str,
    resource: &str,
    id: &str,
    method: Method,
) -> Result<&'static Model, ApiError> {
    let model = MODELS
        .iter()
        .find(|m| m.id == id && !inner.retired.contains(id));
    let methods = model.map(|m| supported_methods(inner, api, m));
    match (model, methods) {
        (Some(m), Some(methods)) if method == Method::Get || methods.contains(&method.name()) => {
            Ok(m)
        }
        _ => Err(ApiError::not_found(match api {
            Api::Gemini => format!(
                "models/{id} is not found for API version {version}, or is not supported for {}. \
                 Call ListModels to see the list of available models and their supported methods.",
                method.name()
            ),
            Api::Vertex => format!(
                "Publisher Model `{resource}` was not found or your project does not have access \
                 to it. Please ensure you are using a valid model version. For more information, \
                 see: https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
            ),
        })),
    }
}

/// What `supportedGenerationMethods` lists: Veo on the Gemini API only while
/// [`FakeGoogle::gemini_api_veo`] says it is served there.
fn supported_methods(inner: &Inner, api: Api, model: &Model) -> Vec<&'static str> {
    match model.kind {
        Kind::Image | Kind::Text => vec!["generateContent", "countTokens"],
        Kind::Video if api == Api::Vertex || inner.gemini_api_veo => vec!["predictLongRunning"],
        Kind::Video => Vec::new(),
    }
}

/// `models.get`: the Gemini API's Model resource, or Vertex's PublisherModel.
pub(super) fn get(shared: &Shared, api: Api, model: &Model) -> Response {
    let id = model.id;
    let body = match api {
        Api::Gemini => json!({
            "name": format!("models/{id}"),
            "baseModelId": id.trim_end_matches("-001"),
            "version": "001",
            "displayName": model.display_name,
            "description": format!("{} ({}).", model.display_name, model.source),
            "inputTokenLimit": model.input_token_limit,
            "outputTokenLimit": model.output_token_limit,
            "supportedGenerationMethods": supported_methods(&shared.lock(), api, model),
        }),
        Api::Vertex => json!({
            "name": format!("publishers/google/models/{id}"),
            "versionId": "001",
            "openSourceCategory": "PROPRIETARY",
            "launchStage": "GA",
            "publisherModelTemplate": format!(
                "projects/{{user-project}}/locations/{{location}}/publishers/google/models/{id}"
            ),
        }),
    };
    json_response(StatusCode::OK, &body)
}

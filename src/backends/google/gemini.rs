//! The `gemini` frame backend: one generateContent call per keyframe on the Gemini API, with the
//! prompt, the image to edit and the labelled references; the answer normalized to PNG. And
//! [`GeminiText`]: the same call on a text model with a JSON response schema (storyboards).

use std::io::Cursor;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};
use serde_json::{Value, json};

use super::auth;
use super::http::{CallError, Failure, Http, key_header, report_load, send_json};
use crate::backends::{
    FrameGenerator, FrameOutput, FrameRequest, GenContext, GenError, ImageInput, Provenance,
};
use crate::error::ProjectError;
use crate::models::{self, ImageCaps};
use crate::project::Project;
use crate::secret::Secret;

/// `TTV_GEMINI_BASE_URL`: where the Gemini API is (tests point it at a local server).
pub const BASE_URL_ENV: &str = "TTV_GEMINI_BASE_URL";
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// The API version of generateContent and models.get, as the SDK (google-genai 3.6) uses it.
pub const API_VERSION: &str = "v1";

/// The whole inline request (API.md).
pub const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;
/// Per input image: Vertex's documented limit, kept on the Gemini API as well.
pub const MAX_IMAGE_BYTES: usize = 7 * 1024 * 1024;
/// Room for the JSON around the images and the label texts.
const REQUEST_OVERHEAD: usize = 16 * 1024;
/// A finishReason / blockReason that means the content was refused (not charged, never retried).
const SAFETY_REASONS: &[&str] = &[
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_RECITATION",
];
/// Images the Gemini API takes as they are; anything else is sent as PNG.
const ACCEPTED: &[ImageFormat] = &[ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP];

pub struct GeminiFrames {
    http: Http,
    base_url: String,
    key: Secret,
}

impl GeminiFrames {
    /// From `keyframes:` and the environment (`TTV_GEMINI_BASE_URL`, `GEMINI_API_KEY` /
    /// `GOOGLE_API_KEY`, else `keyframes.api_key`). Makes no request.
    pub fn from_project(project: &Project) -> Result<GeminiFrames, ProjectError> {
        let k = &project.config.keyframes;
        let key = auth::api_key(k.api_key.as_ref().map(|s| s.expose()), "keyframes")?;
        let http = Http::new(k.request_timeout_seconds, k.max_retries).map_err(|e| {
            project
                .error_at("keyframes.request_timeout_seconds", e)
                .help("use a number of seconds such as 120")
        })?;
        let base_url = auth::env(BASE_URL_ENV).unwrap_or_else(|| DEFAULT_BASE_URL.into());
        Ok(GeminiFrames::new(base_url, key, http))
    }

    pub fn new(base_url: impl Into<String>, key: Secret, http: Http) -> GeminiFrames {
        GeminiFrames {
            http,
            base_url: base_url.into().trim_end_matches('/').to_string(),
            key,
        }
    }

    fn url(&self, model: &str) -> String {
        generate_content_url(&self.base_url, model)
    }
}

/// One attempt at a generateContent call: the JSON body posted with the key, the answer's JSON.
async fn post(http: &Http, key: &Secret, url: &str, body: &[u8]) -> Result<Value, Failure> {
    send_json(
        http,
        http.client()
            .post(url)
            .header("x-goog-api-key", key_header(key)?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec()),
    )
    .await
}

/// `POST {base}/{version}/models/{model}:generateContent`, as the SDK calls it.
fn generate_content_url(base_url: &str, model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    format!("{base_url}/{API_VERSION}/models/{model}:generateContent")
}

/// A text model on the Gemini API, answering in JSON shaped by a response schema.
pub struct GeminiText {
    http: Http,
    base_url: String,
    key: Secret,
}

/// A text model's answer.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// The answer's text, parsed: one JSON document.
    pub json: Value,
    /// `usageMetadata`: tokens read, and tokens written (thinking included), as billed.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub provenance: Provenance,
}

impl GeminiText {
    /// From the environment (`TTV_GEMINI_BASE_URL`, `GEMINI_API_KEY` / `GOOGLE_API_KEY`, else
    /// `keyframes.api_key` given as `config_key`). Makes no request.
    pub fn from_env(config_key: Option<&str>) -> Result<GeminiText, ProjectError> {
        let key = auth::api_key(config_key, "storyboard")?;
        let http = Http::new(120.0, 5).map_err(|e| ProjectError::new("environment", None, e))?;
        let base_url = auth::env(BASE_URL_ENV).unwrap_or_else(|| DEFAULT_BASE_URL.into());
        Ok(GeminiText::new(base_url, key, http))
    }

    pub fn new(base_url: impl Into<String>, key: Secret, http: Http) -> GeminiText {
        GeminiText {
            http,
            base_url: base_url.into().trim_end_matches('/').to_string(),
            key,
        }
    }

    /// One generateContent call: the text parts in order, `responseMimeType:
    /// application/json` and `schema` as `responseSchema` (the request shape of Google's SDK).
    /// Retried like a frame; an answer that is not JSON fails for good.
    pub async fn generate_json(
        &self,
        model: &str,
        texts: &[String],
        schema: &Value,
        status: &(dyn Fn(String) + Send + Sync),
    ) -> Result<TextOutput, GenError> {
        let parts: Vec<Value> = texts.iter().map(|t| json!({ "text": t })).collect();
        let body = json!({
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": schema,
            },
        });
        let body = serde_json::to_vec(&body)
            .map_err(|e| GenError::Permanent(format!("cannot encode the request: {e}")))?;
        let url = generate_content_url(&self.base_url, model);
        let (url, body) = (&url, &body);
        self.http
            .retry(
                "gemini generateContent",
                &[&self.key],
                status,
                || async move { json_of(&post(&self.http, &self.key, url, body).await?) },
            )
            .await
            .map_err(CallError::into_gen_error)
    }
}

/// The JSON document a text answer holds (its text parts, thoughts left out), with the tokens
/// billed. No text: a block or a failure saying why.
fn json_of(answer: &Value) -> Result<TextOutput, Failure> {
    let text: String = answer
        .pointer("/candidates/0/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    if text.trim().is_empty() {
        return Err(Failure::Final(no_output(answer, "text")));
    }
    let json = serde_json::from_str(&text).map_err(|e| {
        let reason = answer
            .pointer("/candidates/0/finishReason")
            .and_then(Value::as_str)
            .unwrap_or("none");
        Failure::Final(GenError::Permanent(format!(
            "the model's answer is not the JSON asked for ({e}; finishReason {reason})"
        )))
    })?;
    let count = |k: &str| {
        answer
            .pointer(&format!("/usageMetadata/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let field = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(TextOutput {
        json,
        input_tokens: count("promptTokenCount"),
        output_tokens: count("candidatesTokenCount") + count("thoughtsTokenCount"),
        provenance: Provenance {
            model_version: field("modelVersion"),
            response_id: field("responseId"),
            params: None,
        },
    })
}

#[async_trait]
impl FrameGenerator for GeminiFrames {
    fn name(&self) -> &str {
        "gemini"
    }

    /// The model registry's (conservative ones for a model it does not know).
    fn capabilities(&self, model: &str) -> ImageCaps {
        models::image_caps(model)
    }

    async fn generate(
        &self,
        req: &FrameRequest,
        ctx: &GenContext,
    ) -> Result<FrameOutput, GenError> {
        let owned = req.clone();
        let body = tokio::task::spawn_blocking(move || request_body(&owned))
            .await
            .map_err(|e| GenError::Permanent(format!("preparing the images failed: {e}")))??;
        let body = serde_json::to_vec(&body)
            .map_err(|e| GenError::Permanent(format!("cannot encode the request: {e}")))?;
        let url = self.url(&req.model);
        let (url, body) = (&url, &body);
        let (png, mut provenance) = self
            .http
            .retry_counting(
                "gemini generateContent",
                &[&self.key],
                &*ctx.status,
                &ctx.uncertain,
                || async move {
                    let sent = post(&self.http, &self.key, url, body).await;
                    let answer = report_load(&ctx.load, false, sent)?;
                    let (raw, provenance) = image_of(&answer)?;
                    let png = tokio::task::spawn_blocking(move || to_png(&raw))
                        .await
                        .map_err(|e| Failure::Garbled(e.to_string()))?
                        .map_err(Failure::Garbled)?;
                    Ok((png, provenance))
                },
            )
            .await
            .map_err(CallError::into_gen_error)?;
        provenance.params = Some(generation_config(req));
        Ok(FrameOutput { png, provenance })
    }
}

/// An image ready to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prepared {
    pub(crate) bytes: Vec<u8>,
    pub(crate) format: ImageFormat,
}

impl Prepared {
    pub(crate) fn mime(&self) -> &'static str {
        self.format.to_mime_type()
    }

    fn inline_data(&self) -> Value {
        json!({"inlineData": {"mimeType": self.mime(), "data": BASE64.encode(&self.bytes)}})
    }
}

/// The generateContent body: the prompt, then "Edit this image:" and the input image, then each
/// reference behind its label; images shrunk until the request fits.
fn request_body(req: &FrameRequest) -> Result<Value, GenError> {
    let mut images = Vec::new();
    if let Some(input) = &req.input_image {
        images.push(prepare_image(input, ACCEPTED, MAX_IMAGE_BYTES)?);
    }
    for r in &req.references {
        images.push(prepare_image(r, ACCEPTED, MAX_IMAGE_BYTES)?);
    }
    fit_request(&mut images, req.prompt.len(), MAX_REQUEST_BYTES)?;
    let mut images = images.into_iter();
    let mut parts = vec![json!({"text": req.prompt})];
    if req.input_image.is_some()
        && let Some(img) = images.next()
    {
        parts.push(json!({"text": "Edit this image:"}));
        parts.push(img.inline_data());
    }
    for (r, img) in req.references.iter().zip(images) {
        parts.push(json!({"text": format!("Reference image '{}':", r.name)}));
        parts.push(img.inline_data());
    }
    Ok(json!({
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": generation_config(req),
    }))
}

/// `generationConfig`: what the provenance of a frame records as its parameters.
fn generation_config(req: &FrameRequest) -> Value {
    let mut image_config = json!({"aspectRatio": req.aspect_ratio});
    if let Some(size) = &req.image_size {
        image_config["imageSize"] = json!(size);
    }
    json!({
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": image_config,
    })
}

/// Halves the largest image until the base64 of all of them fits in `limit` bytes of request.
fn fit_request(images: &mut [Prepared], prompt_bytes: usize, limit: usize) -> Result<(), GenError> {
    let inline = |images: &[Prepared]| -> usize {
        images.iter().map(|i| i.bytes.len().div_ceil(3) * 4).sum()
    };
    while inline(images) + prompt_bytes + REQUEST_OVERHEAD > limit {
        let Some(largest) = images.iter_mut().max_by_key(|i| i.bytes.len()) else {
            break;
        };
        *largest = shrink(largest)?;
    }
    if inline(images) + prompt_bytes + REQUEST_OVERHEAD > limit {
        return Err(GenError::Permanent(format!(
            "the prompt ({prompt_bytes} bytes) leaves no room for the images in a {limit}-byte \
             request"
        )));
    }
    Ok(())
}

/// `input` as a format in `accepted` (else PNG) of at most `max_bytes`, halving its size as
/// often as needed. Deterministic: the same bytes in give the same bytes out.
pub(crate) fn prepare_image(
    input: &ImageInput,
    accepted: &[ImageFormat],
    max_bytes: usize,
) -> Result<Prepared, GenError> {
    let unreadable = |detail: String| {
        GenError::Permanent(format!(
            "image '{}' ({}) cannot be read: {detail}",
            input.name, input.mime_type
        ))
    };
    let format = image::guess_format(&input.bytes).map_err(|e| unreadable(e.to_string()))?;
    let mut prepared = if accepted.contains(&format) {
        Prepared {
            bytes: input.bytes.to_vec(),
            format,
        }
    } else {
        let img = image::load_from_memory_with_format(&input.bytes, format)
            .map_err(|e| unreadable(e.to_string()))?;
        encode(&img, ImageFormat::Png).map_err(unreadable)?
    };
    while prepared.bytes.len() > max_bytes {
        prepared = shrink(&prepared)?;
    }
    Ok(prepared)
}

/// Half the width and height, fixed filter, re-encoded as JPEG if it was one, else PNG.
fn shrink(p: &Prepared) -> Result<Prepared, GenError> {
    let img = image::load_from_memory_with_format(&p.bytes, p.format)
        .map_err(|e| GenError::Permanent(format!("cannot decode an image to shrink it: {e}")))?;
    let (w, h) = (img.width() / 2, img.height() / 2);
    if w < 16 || h < 16 {
        return Err(GenError::Permanent(format!(
            "an input image is still {} bytes at {}x{}: too large to send",
            p.bytes.len(),
            img.width(),
            img.height()
        )));
    }
    let small = img.resize_exact(w, h, FilterType::Triangle);
    let target = if p.format == ImageFormat::Jpeg {
        ImageFormat::Jpeg
    } else {
        ImageFormat::Png
    };
    encode(&small, target).map_err(GenError::Permanent)
}

/// Encodes with fixed settings (PNG: default compression, adaptive filter; JPEG: quality 90).
fn encode(img: &DynamicImage, format: ImageFormat) -> Result<Prepared, String> {
    let mut bytes = Vec::new();
    let result = match format {
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(img.to_rgb8())
            .write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, 90)),
        _ => img.write_with_encoder(PngEncoder::new_with_quality(
            Cursor::new(&mut bytes),
            CompressionType::Default,
            PngFilter::Adaptive,
        )),
    };
    result.map_err(|e| format!("cannot encode {format:?}: {e}"))?;
    Ok(Prepared {
        bytes,
        format: if format == ImageFormat::Jpeg {
            ImageFormat::Jpeg
        } else {
            ImageFormat::Png
        },
    })
}

/// The service's image as PNG (it answers JPEG as often as PNG); a PNG is kept byte for byte.
fn to_png(raw: &[u8]) -> Result<Vec<u8>, String> {
    let format = image::guess_format(raw).map_err(|e| format!("the returned image: {e}"))?;
    let img = image::load_from_memory_with_format(raw, format)
        .map_err(|e| format!("the returned {format:?} image cannot be decoded: {e}"))?;
    if format == ImageFormat::Png {
        return Ok(raw.to_vec());
    }
    encode(&img, ImageFormat::Png).map(|p| p.bytes)
}

/// The first inline image of the answer, base64-decoded, and `modelVersion`. No image: a
/// safety block or a permanent failure saying why.
fn image_of(answer: &Value) -> Result<(Vec<u8>, Provenance), Failure> {
    let text = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
    let provenance = Provenance {
        model_version: text("modelVersion"),
        response_id: text("responseId"),
        params: None,
    };
    let parts = answer
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer("/content/parts").and_then(Value::as_array))
        .flatten();
    for part in parts {
        let Some(data) = part.get("inlineData").or_else(|| part.get("inline_data")) else {
            continue;
        };
        let mime = data
            .get("mimeType")
            .or_else(|| data.get("mime_type"))
            .and_then(Value::as_str)
            .unwrap_or("image/png");
        if !mime.starts_with("image/") {
            continue;
        }
        let b64 = data.get("data").and_then(Value::as_str).unwrap_or("");
        let bytes = BASE64.decode(b64).map_err(|e| {
            Failure::Garbled(format!("the returned image is not valid base64: {e}"))
        })?;
        return Ok((bytes, provenance));
    }
    Err(Failure::Final(no_output(answer, "image")))
}

/// Why a 200 carried no `what` (image, text), from finishReason / blockReason / finishMessage /
/// the text.
fn no_output(answer: &Value, what: &str) -> GenError {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let candidate = answer.pointer("/candidates/0");
    let finish_reason = text(candidate.and_then(|c| c.get("finishReason")));
    let finish_message = text(candidate.and_then(|c| c.get("finishMessage")));
    let block_reason = text(answer.pointer("/promptFeedback/blockReason"));
    let block_message = text(answer.pointer("/promptFeedback/blockReasonMessage"));
    let model_text: Vec<&str> = candidate
        .and_then(|c| c.pointer("/content/parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();

    let mut why = Vec::new();
    if let Some(r) = &block_reason {
        why.push(format!("blockReason {r}"));
    }
    if let Some(m) = block_message {
        why.push(m);
    }
    if let Some(r) = &finish_reason {
        why.push(format!("finishReason {r}"));
    }
    if let Some(m) = finish_message {
        why.push(m);
    }
    if !model_text.is_empty() {
        why.push(format!("the model said: {}", model_text.join(" ").trim()));
    }
    if why.is_empty() {
        why.push("the answer has no candidates".into());
    }
    let reason = why.join("; ");
    let safety = finish_reason
        .as_deref()
        .is_some_and(|r| SAFETY_REASONS.contains(&r));
    if safety || block_reason.is_some() {
        GenError::Blocked { reason }
    } else {
        GenError::Permanent(format!("gemini returned no {what}: {reason}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use image::{Rgb, RgbImage};
    use serde_json::json;

    use super::*;
    use crate::backends::http::test_server::{Reply, serve};

    /// Noise does not compress: the encoded size follows the pixel count.
    fn noise(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        let img = RgbImage::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [a, b, c, _] = state.to_le_bytes();
            Rgb([a, b, c])
        });
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).unwrap();
        out
    }

    fn input(name: &str, mime: &str, bytes: Vec<u8>) -> ImageInput {
        ImageInput {
            name: name.into(),
            mime_type: mime.into(),
            bytes: Arc::new(bytes),
        }
    }

    fn frame_request() -> FrameRequest {
        FrameRequest {
            model: "gemini-3.1-flash-image".into(),
            aspect_ratio: "16:9".into(),
            image_size: Some("2K".into()),
            prompt: "A storm over the sea".into(),
            input_image: Some(input("input", "image/png", noise(8, 8, ImageFormat::Png))),
            references: vec![
                input("boat", "image/bmp", noise(4, 4, ImageFormat::Bmp)),
                input("hero", "image/jpeg", noise(16, 16, ImageFormat::Jpeg)),
            ],
            key: "k".into(),
        }
    }

    #[test]
    fn request_body_labels_each_image() {
        let body = request_body(&frame_request()).unwrap();
        let parts = body
            .pointer("/contents/0/parts")
            .unwrap()
            .as_array()
            .unwrap();
        let texts: Vec<_> = parts.iter().map(|p| p.get("text").cloned()).collect();
        assert_eq!(texts[0], Some(json!("A storm over the sea")));
        assert_eq!(texts[1], Some(json!("Edit this image:")));
        assert_eq!(texts[3], Some(json!("Reference image 'boat':")));
        assert_eq!(texts[5], Some(json!("Reference image 'hero':")));
        let mimes: Vec<_> = [2, 4, 6]
            .iter()
            .map(|&i| parts[i].pointer("/inlineData/mimeType").unwrap().clone())
            .collect();
        // BMP is not accepted by the API: it goes as PNG.
        assert_eq!(
            mimes,
            [json!("image/png"), json!("image/png"), json!("image/jpeg")]
        );
        let png = BASE64
            .decode(
                parts[4]
                    .pointer("/inlineData/data")
                    .unwrap()
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), ImageFormat::Png);
        assert_eq!(
            body["generationConfig"],
            json!({"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}})
        );
        assert!(!body.to_string().contains("inline_data"));
    }

    #[test]
    fn oversized_images_shrink_deterministically() {
        let big = input("big", "image/png", noise(256, 128, ImageFormat::Png));
        let limit = 40_000;
        let a = prepare_image(&big, ACCEPTED, limit).unwrap();
        let b = prepare_image(&big, ACCEPTED, limit).unwrap();
        assert_eq!(a, b);
        assert!(a.bytes.len() <= limit);
        let img = image::load_from_memory(&a.bytes).unwrap();
        // Halved, aspect kept (256x128 noise is ~98 KB as PNG).
        assert!(img.width() <= 128, "{}", img.width());
        assert_eq!(img.width(), img.height() * 2);
        assert!((256 / img.width()).is_power_of_two());

        let jpeg = input("j", "image/jpeg", noise(256, 256, ImageFormat::Jpeg));
        let small = prepare_image(&jpeg, ACCEPTED, jpeg.bytes.len() / 2).unwrap();
        assert_eq!(small.format, ImageFormat::Jpeg);

        let small_enough = input("s", "image/webp", noise(8, 8, ImageFormat::WebP));
        let kept = prepare_image(&small_enough, ACCEPTED, limit).unwrap();
        assert_eq!(kept.bytes, *small_enough.bytes);
        assert_eq!(kept.mime(), "image/webp");
    }

    #[test]
    fn a_request_over_the_limit_shrinks_its_largest_image() {
        let mut images = vec![
            prepare_image(
                &input("a", "image/png", noise(128, 128, ImageFormat::Png)),
                ACCEPTED,
                usize::MAX,
            )
            .unwrap(),
            prepare_image(
                &input("b", "image/png", noise(32, 32, ImageFormat::Png)),
                ACCEPTED,
                usize::MAX,
            )
            .unwrap(),
        ];
        let small_before = images[1].clone();
        fit_request(&mut images, 100, 60_000 + REQUEST_OVERHEAD).unwrap();
        assert_eq!(images[1], small_before);
        let a = image::load_from_memory(&images[0].bytes).unwrap();
        assert!(a.width() <= 64);
        let inline: usize = images.iter().map(|i| i.bytes.len().div_ceil(3) * 4).sum();
        assert!(inline + 100 <= 60_000);
    }

    #[test]
    fn answers_are_normalized_to_png() {
        let jpeg = noise(24, 16, ImageFormat::Jpeg);
        let png = to_png(&jpeg).unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), ImageFormat::Png);
        assert_eq!(to_png(&jpeg).unwrap(), png);
        let already = noise(4, 4, ImageFormat::Png);
        assert_eq!(to_png(&already).unwrap(), already);
        assert!(to_png(b"not an image").is_err());
    }

    fn classify(answer: Value) -> GenError {
        match image_of(&answer) {
            Err(Failure::Final(e)) => e,
            Err(other) => panic!("expected a final verdict, got {other:?}"),
            Ok(_) => panic!("expected no image"),
        }
    }

    #[test]
    fn answers_without_an_image_are_classified() {
        let safety = classify(json!({"candidates": [{"finishReason": "IMAGE_SAFETY",
            "finishMessage": "Unable to show the generated image.", "content": {"parts": []}}],
            "modelVersion": "gemini-2.5-flash-image"}));
        assert!(
            matches!(&safety, GenError::Blocked { reason } if reason
                == "finishReason IMAGE_SAFETY; Unable to show the generated image."),
            "{safety:?}"
        );

        let prompt_blocked = classify(json!({"promptFeedback": {"blockReason": "OTHER"}}));
        assert!(
            matches!(&prompt_blocked, GenError::Blocked { reason } if reason == "blockReason OTHER")
        );

        let no_image = classify(json!({"candidates": [{"finishReason": "NO_IMAGE",
            "content": {"role": "model", "parts": [{"text": "I can only describe it."}]}}]}));
        assert!(
            matches!(&no_image, GenError::Permanent(m) if m == "gemini returned no image: \
                finishReason NO_IMAGE; the model said: I can only describe it."),
            "{no_image:?}"
        );

        let stop_text = classify(json!({"candidates": [{"finishReason": "STOP",
            "content": {"parts": [{"text": "Here you go"}]}}]}));
        assert!(matches!(stop_text, GenError::Permanent(_)));

        assert!(matches!(
            image_of(&json!({"candidates": [{"content": {"parts": [{"inlineData":
                {"mimeType": "image/png", "data": "!!not base64!!"}}]}}]})),
            Err(Failure::Garbled(_))
        ));
    }

    #[test]
    fn takes_the_first_image_part_and_the_model_version() {
        let png = noise(2, 2, ImageFormat::Png);
        let answer = json!({"candidates": [{"content": {"parts": [{"text": "Sure."},
            {"inlineData": {"mimeType": "image/png", "data": BASE64.encode(&png)}}]},
            "finishReason": "STOP"}], "modelVersion": "gemini-2.5-flash-image-001"});
        let (bytes, provenance) = image_of(&answer).unwrap();
        assert_eq!(bytes, png);
        assert_eq!(
            provenance.model_version.as_deref(),
            Some("gemini-2.5-flash-image-001")
        );
    }

    #[tokio::test]
    async fn generates_over_http_and_retries_an_overloaded_service() {
        let jpeg = noise(32, 18, ImageFormat::Jpeg);
        let data = BASE64.encode(&jpeg);
        let (base, log) = serve(move |_, i| match i {
            0 => Reply::json(
                503,
                json!({"error": {"code": 503, "status": "UNAVAILABLE",
                "message": "The model is overloaded."}}),
            ),
            _ => Reply::json(
                200,
                json!({"candidates": [{"content": {"parts": [{"inlineData":
                {"mimeType": "image/jpeg", "data": data}}]}, "finishReason": "STOP"}],
                "modelVersion": "gemini-2.5-flash-image"}),
            ),
        })
        .await;
        let http = Http::new(2.0, 3)
            .unwrap()
            .with_first_delay(Duration::from_millis(5));
        let backend = GeminiFrames::new(format!("{base}/"), Secret::new("test-key-123"), http);
        let tmp = tempfile::tempdir().unwrap();
        let (ctx, _) = crate::backends::testing::context(tmp.path(), Arc::default());
        let out = backend.generate(&frame_request(), &ctx).await.unwrap();
        let img = image::load_from_memory_with_format(&out.png, ImageFormat::Png).unwrap();
        assert_eq!((img.width(), img.height()), (32, 18));
        assert_eq!(
            out.provenance.model_version.as_deref(),
            Some("gemini-2.5-flash-image")
        );

        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        let seen = &log[1];
        assert_eq!(seen.method, "POST");
        assert_eq!(
            seen.target,
            "/v1/models/gemini-3.1-flash-image:generateContent"
        );
        assert_eq!(
            seen.header("x-goog-api-key").as_deref(),
            Some("test-key-123")
        );
        assert_eq!(log[0].json(), seen.json());
    }
}

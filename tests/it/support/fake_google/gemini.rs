//! Gemini `generateContent`: request checks for the image and text models, and answers with
//! real images (text answers are text.rs's).

use super::*;

use models::{Kind, Model};

pub(super) fn check_generate_content(model: &Model, body: &Value) -> Result<(), ApiError> {
    let contents = array(get(body, "contents"));
    if contents.is_empty() {
        return Err(ApiError::invalid(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    let mut images = 0;
    for (c, content) in contents.iter().enumerate() {
        let parts = array(get(content, "parts"));
        if parts.is_empty() {
            return Err(ApiError::invalid(format!(
                "* GenerateContentRequest.contents[{c}].parts: contents.parts must not be empty."
            )));
        }
        for (p, part) in parts.iter().enumerate() {
            if let Some(blob) = get(part, "inlineData") {
                images += 1;
                let path = format!("contents[{c}].parts[{p}].inline_data.data");
                wire::check_image(
                    &path,
                    get_str(blob, "mimeType"),
                    get_str(blob, "data").unwrap_or_default(),
                )?;
            }
        }
    }
    let config = get(body, "generationConfig")
        .cloned()
        .unwrap_or(Value::Null);
    for modality in array(get(&config, "responseModalities")) {
        if !matches!(modality.as_str(), Some("TEXT" | "IMAGE" | "AUDIO")) {
            return Err(ApiError::field(
                "generation_config.response_modalities",
                format!(
                    "Invalid value at 'generation_config.response_modalities' (type.googleapis.com/google.ai.generativelanguage.v1beta.GenerationConfig.Modality), {modality}"
                ),
            ));
        }
    }
    if let Some(max) = model.max_images
        && images > max
    {
        return Err(ApiError::invalid(format!(
            "The request has {images} inline images; {} takes at most {max}.",
            model.id
        )));
    }
    match model.kind {
        Kind::Image => check_image_config(model, &config),
        Kind::Text => text::check_config(&config),
        Kind::Video => unreachable!("models::served refuses Veo on generateContent"),
    }
}

fn check_image_config(model: &Model, config: &Value) -> Result<(), ApiError> {
    let image_config = get(config, "imageConfig").cloned().unwrap_or(Value::Null);
    if let Some(ratio) = get_str(&image_config, "aspectRatio")
        && !IMAGE_ASPECT_RATIOS.contains(&ratio)
    {
        return Err(ApiError::invalid(format!(
            "Unsupported aspect ratio: {ratio}. Supported: {}.",
            IMAGE_ASPECT_RATIOS.join(", ")
        )));
    }
    match get_str(&image_config, "imageSize") {
        Some(size) if !model.image_sizes.contains(&size) => Err(ApiError::field(
            "generation_config.image_config.image_size",
            format!(
                "Unsupported image size: {size}. {} supports: {}.",
                model.id,
                model.image_sizes.join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

/// The answer: a candidate with an image (image models) or text (text models), and the
/// provenance every answer carries (`responseId`, `modelVersion`, `usageMetadata`).
pub(super) fn generate_content(
    shared: &Shared,
    model: &Model,
    body: &Value,
    prompt: &str,
) -> Response {
    let serial = server::next_serial(shared);
    let fault = shared.take_fault(FaultKind::Frame, Route::GenerateContent, Some(prompt));
    let config = get(body, "generationConfig")
        .cloned()
        .unwrap_or(Value::Null);
    let text_answer = (model.kind == Kind::Text).then(|| text::answer(&config, prompt));
    let prompt_tokens = prompt.len() / 4 + 1;
    let candidate_tokens = match &text_answer {
        Some(text) => text.len() / 4 + 1,
        None => 1290,
    };
    let usage = json!({"promptTokenCount": prompt_tokens, "candidatesTokenCount": candidate_tokens, "totalTokenCount": prompt_tokens + candidate_tokens});
    let mut answer = json!({"usageMetadata": usage, "modelVersion": model.id, "responseId": format!("fake-response-{serial}")});
    let modalities: Vec<&str> = array(get(&config, "responseModalities"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let wants_image = modalities.is_empty() || modalities.contains(&"IMAGE");
    let wants_text = modalities.is_empty() || modalities.contains(&"TEXT");
    let candidate = |parts: Value, reason: &str| json!([{"content": {"role": "model", "parts": parts}, "finishReason": reason, "index": 0}]);
    match fault {
        Some(Fault::PromptBlocked) => {
            answer["promptFeedback"] = json!({"blockReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]});
        }
        Some(Fault::ImageSafety) => {
            answer["candidates"] = candidate(
                json!([{"text": "I can't create that image, as it may go against the safety policy."}]),
                "IMAGE_SAFETY",
            );
            answer["candidates"][0]["finishMessage"] = json!(
                "Unable to show the generated image. The image was filtered out because it violated Google's Generative AI Prohibited Use policy."
            );
        }
        fault if wants_image && text_answer.is_none() => {
            let image_config = get(&config, "imageConfig").cloned().unwrap_or(Value::Null);
            let ratio = get_str(&image_config, "aspectRatio").unwrap_or("1:1");
            let size = get_str(&image_config, "imageSize").unwrap_or("1K");
            let jpeg = fault == Some(Fault::JpegAnswer);
            let (mime, bytes) = frame_image(prompt, ratio, size, serial, jpeg);
            let mut parts = Vec::new();
            if wants_text {
                parts.push(json!({"text": "Here is the image you asked for."}));
            }
            parts.push(json!({"inlineData": {"mimeType": mime, "data": STANDARD.encode(bytes)}}));
            answer["candidates"] = candidate(Value::Array(parts), "STOP");
        }
        _ => {
            let text =
                text_answer.unwrap_or_else(|| "I can only describe the image in words.".into());
            answer["candidates"] = candidate(json!([{ "text": text }]), "STOP");
        }
    }
    json_response(StatusCode::OK, &answer)
}

/// A solid image in the prompt's colour with a 4x4 marker block that makes every answer's bytes
/// unique. Its longest side follows `imageSize` at a sixteenth of Google's, for speed: 32 px
/// (512px), 64 px (1K), 128 px (2K), 256 px (4K).
fn frame_image(
    prompt: &str,
    ratio: &str,
    size: &str,
    serial: u64,
    jpeg: bool,
) -> (&'static str, Vec<u8>) {
    let long: f64 = match size {
        "512px" => 32.0,
        "2K" => 128.0,
        "4K" => 256.0,
        _ => 64.0,
    };
    let (a, b) = ratio
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
        .unwrap_or((1.0, 1.0));
    let (w, h) = if a >= b {
        (long, (long * b / a).round())
    } else {
        ((long * a / b).round(), long)
    };
    let (w, h) = (w as u32, h as u32);
    let colour = FakeGoogle::colour_for(prompt);
    let marker = [
        (serial * 37 % 256) as u8,
        (serial * 91 % 256) as u8,
        (serial * 53 % 256) as u8,
    ];
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb(if x < 4 && y < 4 { marker } else { colour })
    });
    let format = if jpeg {
        image::ImageFormat::Jpeg
    } else {
        image::ImageFormat::Png
    };
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode fake image");
    (
        if jpeg { "image/jpeg" } else { "image/png" },
        out.into_inner(),
    )
}

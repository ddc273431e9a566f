//! Gemini image generation (`generateContent`): request checks and answers with real images.

use super::*;

pub(super) fn check_generate_content(model: &str, body: &Value) -> Result<(), ApiError> {
    if !(model.starts_with("gemini-") && model.contains("image")) {
        return Err(ApiError::not_found(format!(
            "models/{model} is not found for API version v1beta, or is not supported for generateContent."
        )));
    }
    let contents = array(get(body, "contents"));
    if contents.is_empty() {
        return Err(ApiError::invalid(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    for (c, content) in contents.iter().enumerate() {
        let parts = array(get(content, "parts"));
        if parts.is_empty() {
            return Err(ApiError::invalid(format!(
                "* GenerateContentRequest.contents[{c}].parts: contents.parts must not be empty."
            )));
        }
        for (p, part) in parts.iter().enumerate() {
            if let Some(blob) = get(part, "inlineData") {
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
    let image_config = get(&config, "imageConfig").cloned().unwrap_or(Value::Null);
    match get_str(&image_config, "aspectRatio") {
        Some(ratio) if !IMAGE_ASPECT_RATIOS.contains(&ratio) => Err(ApiError::invalid(format!(
            "Unsupported aspect ratio: {ratio}. Supported: {}.",
            IMAGE_ASPECT_RATIOS.join(", ")
        ))),
        _ => Ok(()),
    }
}

pub(super) fn generate_content(
    shared: &Shared,
    model: &str,
    body: &Value,
    prompt: &str,
) -> Response {
    let serial = server::next_serial(shared);
    let fault = shared.take_fault(FaultKind::Frame, Route::GenerateContent, Some(prompt));
    let usage = json!({"promptTokenCount": prompt.len() / 4 + 1, "candidatesTokenCount": 1290, "totalTokenCount": prompt.len() / 4 + 1291});
    let mut answer = json!({"usageMetadata": usage, "modelVersion": model, "responseId": format!("fake-response-{serial}")});
    let config = get(body, "generationConfig")
        .cloned()
        .unwrap_or(Value::Null);
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
        fault if wants_image => {
            let ratio = get_str(
                &get(&config, "imageConfig").cloned().unwrap_or(Value::Null),
                "aspectRatio",
            )
            .unwrap_or("1:1")
            .to_owned();
            let jpeg = fault == Some(Fault::JpegAnswer);
            let (mime, bytes) = frame_image(prompt, &ratio, serial, jpeg);
            let mut parts = Vec::new();
            if wants_text {
                parts.push(json!({"text": "Here is the image you asked for."}));
            }
            parts.push(json!({"inlineData": {"mimeType": mime, "data": STANDARD.encode(bytes)}}));
            answer["candidates"] = candidate(Value::Array(parts), "STOP");
        }
        _ => {
            answer["candidates"] = candidate(
                json!([{"text": "I can only describe the image in words."}]),
                "STOP",
            );
        }
    }
    json_response(StatusCode::OK, &answer)
}

/// A solid image in the prompt's colour, longest side 64 px, with a 4x4 marker block that makes
/// every answer's bytes unique.
fn frame_image(prompt: &str, ratio: &str, serial: u64, jpeg: bool) -> (&'static str, Vec<u8>) {
    let (a, b) = ratio
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
        .unwrap_or((1.0, 1.0));
    let (w, h) = if a >= b {
        (64, (64.0 * b / a).round() as u32)
    } else {
        ((64.0 * a / b).round() as u32, 64)
    };
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

//! Veo long-running operations on both APIs: request checks, submission, polling, videos.

use super::*;

pub(super) fn check_veo(api: Api, model: &str, body: &Value) -> Result<(), ApiError> {
    if !model.starts_with("veo-") {
        return Err(ApiError::not_found(format!(
            "models/{model} is not found, or is not supported for predictLongRunning."
        )));
    }
    let instances = array(get(body, "instances"));
    let [instance] = instances else {
        return Err(ApiError::invalid(format!(
            "Exactly one instance is supported, got {}.",
            instances.len()
        )));
    };
    let has_image = get(instance, "image").is_some();
    if get_str(instance, "prompt").unwrap_or_default().is_empty() && !has_image {
        return Err(ApiError::invalid("A prompt or an image is required."));
    }
    for name in ["image", "lastFrame"] {
        let Some(image) = get(instance, name) else {
            continue;
        };
        if name == "lastFrame" && !model.starts_with("veo-3.1") {
            return Err(ApiError::invalid(format!(
                "`lastFrame` isn't supported by {model}."
            )));
        }
        if get(image, "inlineData").is_some() {
            return Err(ApiError::invalid(
                "`inlineData` isn't supported by this model.",
            ));
        }
        let path = format!("instances[0].{}", wire::snake_case(name));
        match (
            get_str(image, "bytesBase64Encoded"),
            get_str(image, "gcsUri"),
            api,
        ) {
            (Some(data), None, _) => {
                wire::check_image(
                    &format!("{path}.bytes_base64_encoded"),
                    get_str(image, "mimeType"),
                    data,
                )?;
            }
            (None, Some(_), Api::Gemini) => {
                return Err(ApiError::invalid("`gcsUri` isn't supported by this model."));
            }
            (None, Some(uri), Api::Vertex) if uri.starts_with("gs://") => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "{path}: exactly one of bytesBase64Encoded or a gs:// gcsUri is required."
                )));
            }
        }
    }
    let params = get(body, "parameters").cloned().unwrap_or(Value::Null);
    if api == Api::Gemini {
        for name in ["seed", "generateAudio", "storageUri"] {
            if get(&params, name).is_some() {
                return Err(ApiError::invalid(format!(
                    "`{name}` isn't supported by this model."
                )));
            }
        }
    }
    let allowed = |name: &str, value: Option<String>, ok: &[&str]| match value {
        Some(v) if !ok.contains(&v.as_str()) => Err(ApiError::invalid(format!(
            "Unsupported {name}: {v}. Supported values: {}.",
            ok.join(", ")
        ))),
        _ => Ok(()),
    };
    let text = |name| get_str(&params, name).map(str::to_owned);
    let int = |name| get_int(&params, name).map(|n| n.to_string());
    allowed("aspectRatio", text("aspectRatio"), &["16:9", "9:16"])?;
    allowed("durationSeconds", int("durationSeconds"), &["4", "6", "8"])?;
    allowed("resolution", text("resolution"), &["720p", "1080p"])?;
    allowed("sampleCount", int("sampleCount"), &["1", "2", "3", "4"])?;
    allowed(
        "personGeneration",
        text("personGeneration"),
        &["allow_adult", "dont_allow", "allow_all"],
    )?;
    if text("resolution").as_deref() == Some("1080p")
        && get_int(&params, "durationSeconds").is_some_and(|d| d != 8)
    {
        return Err(ApiError::invalid(
            "1080p is only supported for 8 second videos.",
        ));
    }
    if text("storageUri").is_some_and(|u| !u.starts_with("gs://")) {
        return Err(ApiError::invalid("storageUri must be a gs:// URI."));
    }
    Ok(())
}

/// The fixture clip for a duration, with a trailing `free` box naming the sample: still a valid
/// MP4, and different bytes for every generated video.
fn video_bytes(duration: i64, name: &str, sample: usize) -> Vec<u8> {
    let seconds = if matches!(duration, 4 | 6) {
        duration
    } else {
        8
    };
    let path = format!("{FIXTURES}/clip-{seconds}s.mp4");
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let marker = format!("ttv fake google: {name} sample {sample}");
    bytes.extend_from_slice(&(8 + marker.len() as u32).to_be_bytes());
    bytes.extend_from_slice(b"free");
    bytes.extend_from_slice(marker.as_bytes());
    bytes
}

pub(super) fn submit(
    shared: &Shared,
    api: Api,
    model: &str,
    body: &Value,
    prompt: &str,
) -> Response {
    let serial = server::next_serial(shared);
    let name = match api {
        Api::Gemini => format!("models/{model}/operations/fakeop{serial:06}"),
        Api::Vertex => format!(
            "projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{model}/operations/{serial:019}"
        ),
    };
    let outcome = shared.take_fault(FaultKind::OpOutcome, Route::VeoSubmit, Some(prompt));
    let polls = shared.take_fault(FaultKind::OpPolls, Route::VeoSubmit, Some(prompt));
    let params = get(body, "parameters").cloned().unwrap_or(Value::Null);
    let duration = get_int(&params, "durationSeconds").unwrap_or(8);
    let samples = get_int(&params, "sampleCount").unwrap_or(1).max(1) as usize;
    let storage = get_str(&params, "storageUri").map(str::to_owned);
    let mut inner = shared.lock();
    let filtered = json!({
        "raiMediaFilteredCount": 1,
        "raiMediaFilteredReasons": ["Veo could not generate videos because the input image \
            violates Google's Responsible AI practices. Support codes: 58061214"],
    });
    let mut videos = Vec::new();
    for i in 0..samples {
        let bytes = video_bytes(duration, &name, i);
        let id = format!("fakefile{serial:06}s{i}");
        videos.push(match (api, &storage, &outcome) {
            (Api::Gemini, _, Some(Fault::InlineVideo)) => {
                json!({"video": {"encodedVideo": STANDARD.encode(bytes), "encoding": "video/mp4"}})
            }
            (Api::Gemini, _, _) => {
                inner.files.insert(id.clone(), (bytes, prompt.to_owned()));
                let uri = format!("{}/v1beta/files/{id}:download?alt=media", shared.base_url);
                json!({"video": {"uri": uri}})
            }
            (Api::Vertex, Some(uri), _) => {
                let rest = uri.trim_start_matches("gs://");
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let object = format!(
                    "{}{serial}/sample_{i}.mp4",
                    match prefix.trim_end_matches('/') {
                        "" => String::new(),
                        p => format!("{p}/"),
                    }
                );
                inner.objects.insert(
                    (bucket.to_owned(), object.clone()),
                    (bytes, prompt.to_owned()),
                );
                json!({"gcsUri": format!("gs://{bucket}/{object}"), "mimeType": "video/mp4"})
            }
            (Api::Vertex, None, _) => {
                json!({"bytesBase64Encoded": STANDARD.encode(bytes), "mimeType": "video/mp4"})
            }
        });
    }
    let response = match (api, &outcome) {
        (Api::Vertex, Some(Fault::RaiFiltered)) => filtered,
        (Api::Vertex, _) => json!({"raiMediaFilteredCount": 0, "videos": videos}),
        (Api::Gemini, Some(Fault::RaiFiltered)) => json!({"generateVideoResponse": filtered}),
        (Api::Gemini, _) => json!({"generateVideoResponse": {"generatedSamples": videos}}),
    };
    let mut response = response;
    response["@type"] = json!(match api {
        Api::Vertex => "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
        Api::Gemini =>
            "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
    });
    let result = match outcome {
        Some(Fault::OperationError { code, message }) => {
            json!({"error": {"code": code, "message": message}})
        }
        _ => json!({ "response": response }),
    };
    let polls_left = match (outcome, polls) {
        (Some(Fault::NeverFinishes), _) => None,
        (_, Some(Fault::PollsBeforeDone(n))) => Some(n),
        _ => Some(inner.polls_before_done),
    };
    inner.operations.insert(
        name.clone(),
        Operation {
            prompt: prompt.to_owned(),
            polls_left,
            result,
        },
    );
    json_response(StatusCode::OK, &json!({ "name": name }))
}

pub(super) fn poll(
    shared: &Shared,
    name: &str,
    prompt: Option<&str>,
) -> Result<Response, ApiError> {
    let unknown = || ApiError::not_found(format!("Operation {name} not found."));
    if shared
        .take_fault(FaultKind::Poll, Route::VeoPoll, prompt)
        .is_some()
    {
        return Err(unknown());
    }
    let mut inner = shared.lock();
    let op = inner.operations.get_mut(name).ok_or_else(unknown)?;
    let mut answer = json!({"name": name, "done": false});
    match &mut op.polls_left {
        None => {}
        Some(n) if *n > 0 => *n -= 1,
        Some(_) => {
            answer["done"] = json!(true);
            for (k, v) in op.result.as_object().into_iter().flatten() {
                answer[k] = v.clone();
            }
        }
    }
    Ok(json_response(StatusCode::OK, &answer))
}

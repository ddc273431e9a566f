//! Veo long-running operations on both APIs: request checks, submission, polling, videos.

use super::*;

use models::Model;

/// The most asset reference images one request may carry.
const MAX_REFERENCE_IMAGES: usize = 3;

pub(super) fn check_veo(api: Api, model: &Model, body: &Value) -> Result<(), ApiError> {
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
        if name == "lastFrame" && !model.frames_and_references {
            return Err(ApiError::invalid(format!(
                "`lastFrame` isn't supported by {}.",
                model.id
            )));
        }
        check_veo_image(
            api,
            image,
            &format!("instances[0].{}", wire::snake_case(name)),
        )?;
    }
    let params = get(body, "parameters").cloned().unwrap_or(Value::Null);
    check_reference_images(api, model, instance, &params)?;
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
    allowed("resolution", text("resolution"), model.resolutions)?;
    allowed("sampleCount", int("sampleCount"), &["1", "2", "3", "4"])?;
    allowed(
        "personGeneration",
        text("personGeneration"),
        &["allow_adult", "dont_allow", "allow_all"],
    )?;
    if let Some(resolution @ ("1080p" | "4k")) = text("resolution").as_deref()
        && get_int(&params, "durationSeconds").is_some_and(|d| d != 8)
    {
        return Err(ApiError::invalid(format!(
            "{resolution} is only supported for 8 second videos."
        )));
    }
    if text("storageUri").is_some_and(|u| !u.starts_with("gs://")) {
        return Err(ApiError::invalid("storageUri must be a gs:// URI."));
    }
    Ok(())
}

/// A first or last frame, or a reference image: bytes or (Vertex) a gs:// uri, never
/// `inlineData`.
fn check_veo_image(api: Api, image: &Value, path: &str) -> Result<(), ApiError> {
    if get(image, "inlineData").is_some() {
        return Err(ApiError::invalid(
            "`inlineData` isn't supported by this model.",
        ));
    }
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
            Ok(())
        }
        (None, Some(_), Api::Gemini) => {
            Err(ApiError::invalid("`gcsUri` isn't supported by this model."))
        }
        (None, Some(uri), Api::Vertex) if uri.starts_with("gs://") => Ok(()),
        _ => Err(ApiError::invalid(format!(
            "{path}: exactly one of bytesBase64Encoded or a gs:// gcsUri is required."
        ))),
    }
}

/// `referenceImages`: up to three ASSET images, 8 s videos only, never with a first or last
/// frame.
fn check_reference_images(
    api: Api,
    model: &Model,
    instance: &Value,
    params: &Value,
) -> Result<(), ApiError> {
    let Some(references) = get(instance, "referenceImages") else {
        return Ok(());
    };
    let references = array(Some(references));
    if !model.frames_and_references {
        return Err(ApiError::invalid(format!(
            "`referenceImages` isn't supported by {}.",
            model.id
        )));
    }
    if references.is_empty() || references.len() > MAX_REFERENCE_IMAGES {
        return Err(ApiError::invalid(format!(
            "`referenceImages` takes 1 to {MAX_REFERENCE_IMAGES} images, got {}.",
            references.len()
        )));
    }
    for frame in ["image", "lastFrame"] {
        if get(instance, frame).is_some() {
            return Err(ApiError::invalid(format!(
                "`referenceImages` can't be used together with `{frame}`."
            )));
        }
    }
    if get_int(params, "durationSeconds").is_some_and(|d| d != 8) {
        return Err(ApiError::invalid(
            "`referenceImages` is only supported for 8 second videos.",
        ));
    }
    for (i, reference) in references.iter().enumerate() {
        let path = format!("instances[0].reference_images[{i}]");
        match get_str(reference, "referenceType") {
            Some("ASSET") => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "{path}.reference_type: only ASSET reference images are supported, got {}.",
                    other.unwrap_or("none")
                )));
            }
        }
        let Some(image) = get(reference, "image") else {
            return Err(ApiError::invalid(format!("{path}.image is required.")));
        };
        check_veo_image(api, image, &format!("{path}.image"))?;
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

/// Creates the operation (a paid job) and answers its name.
pub(super) fn submit(
    shared: &Shared,
    api: Api,
    model: &Model,
    body: &Value,
    prompt: &str,
) -> Response {
    let model = model.id;
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
    // Checked and counted under the lock that creates the operation: never one too many.
    let now = std::time::Instant::now();
    let in_flight = inner.in_flight(now);
    if inner.max_in_flight.is_some_and(|k| in_flight >= k) {
        inner.refused_for_load += 1;
        return ApiError::new(
            429,
            "RESOURCE_EXHAUSTED",
            "Too many operations in flight for this project and model. Please retry in 1s.",
        )
        .into_response();
    }
    inner.peak_in_flight = inner.peak_in_flight.max(in_flight + 1);
    let done_at = inner.operation_latency.map(|l| now + l);
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
                let base = match inner.downloads_elsewhere {
                    true => &shared.other_base_url,
                    false => &shared.base_url,
                };
                let uri = format!("{base}/v1beta/files/{id}:download?alt=media");
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
            serial,
            prompt: prompt.to_owned(),
            polls_left,
            result,
            done_at,
            finished: false,
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
    let running = op.done_at.is_some_and(|t| std::time::Instant::now() < t);
    match &mut op.polls_left {
        None => {}
        _ if running => {}
        Some(n) if *n > 0 => *n -= 1,
        Some(_) => {
            answer["done"] = json!(true);
            op.finished = true;
            for (k, v) in op.result.as_object().into_iter().flatten() {
                answer[k] = v.clone();
            }
        }
    }
    Ok(json_response(StatusCode::OK, &answer))
}

//! Routing, authentication and scripted faults: everything between the socket and a route's answer.

use super::*;

/// A request after routing: the route and the parts of its path that matter.
enum Call {
    GenerateContent { model: String },
    Submit { api: Api, model: String },
    GeminiPoll { name: String },
    VertexPoll { prefix: String },
    Download { id: String },
    FileBlob { id: String },
    Gcs { bucket: String, object: String },
    Token,
    Unknown,
}

impl Call {
    fn route(&self) -> Route {
        match self {
            Call::GenerateContent { .. } => Route::GenerateContent,
            Call::Submit { .. } => Route::VeoSubmit,
            Call::GeminiPoll { .. } | Call::VertexPoll { .. } => Route::VeoPoll,
            Call::Download { .. } => Route::Download,
            Call::FileBlob { .. } => Route::FileBlob,
            Call::Gcs { .. } => Route::Gcs,
            Call::Token => Route::Token,
            Call::Unknown => Route::Unknown,
        }
    }

    fn api(&self) -> Option<Api> {
        match self {
            Call::GenerateContent { .. }
            | Call::GeminiPoll { .. }
            | Call::Download { .. }
            | Call::FileBlob { .. } => Some(Api::Gemini),
            Call::Submit { api, .. } => Some(*api),
            Call::VertexPoll { .. } => Some(Api::Vertex),
            Call::Gcs { .. } | Call::Token | Call::Unknown => None,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `model:action` -> (model, action).
fn split_action(segment: &str) -> (String, &str) {
    let (model, action) = segment.split_once(':').unwrap_or((segment, ""));
    (percent_decode(model), action)
}

fn route(method: &Method, path: &str) -> (Call, Option<String>) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let post = method == Method::POST;
    let get = method == Method::GET;
    match segments.as_slice() {
        ["v1beta", "models", last] if post => {
            let (model, action) = split_action(last);
            let call = match action {
                "generateContent" => Call::GenerateContent {
                    model: model.clone(),
                },
                "predictLongRunning" => Call::Submit {
                    api: Api::Gemini,
                    model: model.clone(),
                },
                _ => Call::Unknown,
            };
            (call, Some(model))
        }
        ["v1beta", "models", model, "operations", _] if get => (
            Call::GeminiPoll {
                name: path.trim_start_matches("/v1beta/").to_owned(),
            },
            Some(model.to_string()),
        ),
        ["v1beta", "files", last] if get => match split_action(last) {
            (id, "download") => (Call::Download { id }, None),
            _ => (Call::Unknown, None),
        },
        ["fake-blobs", id] if get => (Call::FileBlob { id: id.to_string() }, None),
        [
            "v1",
            "projects",
            p,
            "locations",
            l,
            "publishers",
            "google",
            "models",
            last,
        ] if post => {
            let (model, action) = split_action(last);
            let prefix = format!("projects/{p}/locations/{l}/publishers/google/models/");
            let call = match action {
                "predictLongRunning" => Call::Submit {
                    api: Api::Vertex,
                    model: model.clone(),
                },
                "fetchPredictOperation" => Call::VertexPoll { prefix },
                _ => Call::Unknown,
            };
            (call, Some(model))
        }
        ["storage", "v1", "b", bucket, "o", object @ ..] if get && !object.is_empty() => {
            let object = object
                .iter()
                .map(|s| percent_decode(s))
                .collect::<Vec<_>>()
                .join("/");
            (
                Call::Gcs {
                    bucket: percent_decode(bucket),
                    object,
                },
                None,
            )
        }
        ["token"] if post => (Call::Token, None),
        _ => (Call::Unknown, None),
    }
}

/// The credential on a request, and the headers and query with the secrets replaced.
fn credentials(headers: &HeaderMap, query: &str) -> (Auth, Vec<(String, String)>, String) {
    let key_marker = |k: &str| {
        if k == API_KEY {
            "<API_KEY>"
        } else {
            "<wrong key>"
        }
    };
    let header_key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    let query_key = query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or("").to_owned());
    let auth = match (header_key, &query_key, &bearer) {
        (Some(API_KEY), _, _) => Auth::ApiKeyHeader,
        (Some(_), _, _) => Auth::WrongApiKey,
        (None, Some(k), _) if k == API_KEY => Auth::ApiKeyQuery,
        (None, Some(_), _) => Auth::WrongApiKey,
        (None, None, Some(t)) if t == ACCESS_TOKEN => Auth::Bearer,
        (None, None, Some(_)) => Auth::WrongBearer,
        (None, None, None) => Auth::None,
    };
    let masked_headers = headers
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().unwrap_or("<binary>");
            let shown = match name.as_str() {
                "x-goog-api-key" => key_marker(value).to_owned(),
                "authorization" if value == format!("Bearer {ACCESS_TOKEN}") => {
                    "Bearer <ACCESS_TOKEN>".to_owned()
                }
                "authorization" => "<wrong authorization>".to_owned(),
                _ => value.to_owned(),
            };
            (name.as_str().to_owned(), shown)
        })
        .collect();
    let masked_query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("key", v)) => format!("key={}", key_marker(&percent_decode(v))),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    (auth, masked_headers, masked_query)
}

pub(super) async fn serve(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (call, model) = route(&method, uri.path());
    let query = uri.query().unwrap_or("").to_owned();
    let (auth, masked_headers, masked_query) = credentials(&headers, &query);
    let mut record = Recorded {
        route: call.route(),
        api: call.api(),
        model,
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: masked_query,
        headers: masked_headers,
        auth,
        body: serde_json::from_slice(&body).ok(),
        form: BTreeMap::new(),
        snake_case_fields: Vec::new(),
        status: 0,
    };
    if call.route() == Route::Token {
        record.form = query_pairs(&String::from_utf8_lossy(&body))
            .into_iter()
            .collect();
    }
    let checked = check_request(&call, &record, &body);
    if let Ok(snake) = &checked {
        record.snake_case_fields = snake.clone();
    }
    let index = {
        let mut inner = shared.lock();
        inner.requests.push(record.clone());
        inner.requests.len() - 1
    };
    let response = match checked {
        Ok(_) => answer(&shared, &call, &record, &query).await,
        Err(error) => error.into_response(),
    };
    if let Some(r) = shared.lock().requests.get_mut(index) {
        r.status = response.status().as_u16();
    }
    response
}

/// Authentication and request shape, checked before any scripted fault, as Google's front end
/// does. Returns the fields that were spelled in snake_case.
fn check_request(call: &Call, record: &Recorded, body: &Bytes) -> Result<Vec<String>, ApiError> {
    let api_key_ok = matches!(record.auth, Auth::ApiKeyHeader | Auth::ApiKeyQuery);
    match call {
        Call::GenerateContent { .. }
        | Call::Submit {
            api: Api::Gemini, ..
        }
        | Call::GeminiPoll { .. }
        | Call::Download { .. }
            if !api_key_ok =>
        {
            let message = match record.auth {
                Auth::None => {
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API."
                }
                _ => "API key not valid. Please pass a valid API key.",
            };
            return Err(ApiError::new(403, "PERMISSION_DENIED", message).detail(json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": if record.auth == Auth::None { "API_KEY_SERVICE_BLOCKED" } else { "API_KEY_INVALID" },
                "domain": "googleapis.com",
            })));
        }
        Call::Submit {
            api: Api::Vertex, ..
        }
        | Call::VertexPoll { .. }
        | Call::Gcs { .. }
            if record.auth != Auth::Bearer =>
        {
            return Err(ApiError::new(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            ));
        }
        _ => {}
    }
    if body.len() > MAX_REQUEST_BYTES {
        return Err(ApiError::invalid(format!(
            "Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
        )));
    }
    let shape = match call {
        Call::GenerateContent { .. } => &wire::GENERATE_CONTENT,
        Call::Submit { .. } => &wire::PREDICT_LONG_RUNNING,
        Call::VertexPoll { .. } => &wire::FETCH_PREDICT_OPERATION,
        _ => return Ok(Vec::new()),
    };
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?;
    let mut snake = Vec::new();
    wire::check(&json, shape, "", &mut snake)?;
    match call {
        Call::GenerateContent { model } => gemini::check_generate_content(model, &json)?,
        Call::Submit { api, model } => veo::check_veo(*api, model, &json)?,
        Call::VertexPoll { prefix } => {
            let name = get_str(&json, "operationName").unwrap_or_default();
            if !name.starts_with(prefix.as_str()) {
                return Err(ApiError::invalid(format!(
                    "Invalid operation name \"{name}\": expected {prefix}MODEL/operations/ID."
                )));
            }
        }
        _ => {}
    }
    Ok(snake)
}

/// The answer to a well-formed request, after scripted faults.
async fn answer(shared: &Arc<Shared>, call: &Call, record: &Recorded, query: &str) -> Response {
    let prompt = request_prompt(shared, call, record);
    let truncate = match shared.take_fault(FaultKind::Http, call.route(), prompt.as_deref()) {
        Some(Fault::Hang(duration)) => {
            tokio::time::sleep(duration).await;
            false
        }
        Some(Fault::Truncated) => true,
        Some(fault) => return http_fault(&fault),
        None => false,
    };
    let response = match route_answer(shared, call, record, query, prompt.as_deref()).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if !truncate {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let cut = bytes.slice(..bytes.len() / 2);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, cut.len().into());
    Response::from_parts(parts, axum::body::Body::from(cut))
}

/// The prompt a request is about: its own, or the one of the operation it polls or downloads.
fn request_prompt(shared: &Shared, call: &Call, record: &Recorded) -> Option<String> {
    let inner = shared.lock();
    match call {
        Call::GenerateContent { .. } | Call::Submit { .. } => record.prompt(),
        Call::GeminiPoll { name } => inner.operations.get(name).map(|o| o.prompt.clone()),
        Call::VertexPoll { .. } => {
            let name = get_str(record.body.as_ref()?, "operationName")?;
            inner.operations.get(name).map(|o| o.prompt.clone())
        }
        Call::Download { id } | Call::FileBlob { id } => inner.files.get(id).map(|f| f.1.clone()),
        Call::Gcs { bucket, object } => inner
            .objects
            .get(&(bucket.clone(), object.clone()))
            .map(|o| o.1.clone()),
        Call::Token | Call::Unknown => None,
    }
}

fn http_fault(fault: &Fault) -> Response {
    let error = match fault {
        Fault::Status429RetryInfo { delay } => ApiError::new(429, "RESOURCE_EXHAUSTED", format!("You exceeded your current quota, please check your plan and billing details. Please retry in {delay}."))
            .detail(json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}))
            .detail(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})),
        Fault::Status500 => ApiError::new(500, "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"),
        Fault::Status503 => ApiError::new(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        Fault::Status403 => ApiError::new(403, "PERMISSION_DENIED", "Permission denied: Consumer has been suspended."),
        _ => {
            let html = "<!DOCTYPE html><html><head><title>Error 502 (Server Error)</title></head><body><p><b>502.</b> That's an error.</p></body></html>";
            return (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=UTF-8")], html).into_response();
        }
    };
    error.into_response()
}

async fn route_answer(
    shared: &Arc<Shared>,
    call: &Call,
    record: &Recorded,
    query: &str,
    prompt: Option<&str>,
) -> Result<Response, ApiError> {
    let body = record.body.clone().unwrap_or(Value::Null);
    match call {
        Call::GenerateContent { model } => Ok(gemini::generate_content(
            shared,
            model,
            &body,
            prompt.unwrap_or_default(),
        )),
        Call::Submit { api, model } => Ok(veo::submit(
            shared,
            *api,
            model,
            &body,
            prompt.unwrap_or_default(),
        )),
        Call::GeminiPoll { name } => veo::poll(shared, name, prompt),
        Call::VertexPoll { .. } => veo::poll(
            shared,
            get_str(&body, "operationName").unwrap_or_default(),
            prompt,
        ),
        Call::Download { id } => {
            if query_pairs(query)
                .iter()
                .all(|(k, v)| !(k == "alt" && v == "media"))
            {
                return Err(ApiError::invalid("Only alt=media downloads are supported."));
            }
            if !shared.lock().files.contains_key(id) {
                return Err(ApiError::not_found(format!("File {id} is not found.")));
            }
            let location = format!("{}/fake-blobs/{id}", shared.base_url);
            Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
        }
        Call::FileBlob { id } => {
            let bytes = shared.lock().files.get(id).map(|f| f.0.clone());
            let bytes =
                bytes.ok_or_else(|| ApiError::not_found(format!("File {id} is not found.")))?;
            Ok(([(header::CONTENT_TYPE, "video/mp4")], bytes).into_response())
        }
        Call::Gcs { bucket, object } => {
            let found = shared
                .lock()
                .objects
                .get(&(bucket.clone(), object.clone()))
                .map(|o| o.0.clone());
            let Some(bytes) = found else {
                return Err(ApiError::not_found(format!(
                    "No such object: {bucket}/{object}"
                )));
            };
            if query_pairs(query)
                .iter()
                .any(|(k, v)| k == "alt" && v == "media")
            {
                return Ok(([(header::CONTENT_TYPE, "video/mp4")], bytes).into_response());
            }
            let metadata = json!({"kind": "storage#object", "bucket": bucket, "name": object, "contentType": "video/mp4", "size": bytes.len().to_string()});
            Ok(json_response(StatusCode::OK, &metadata))
        }
        Call::Token => token::token(shared, &record.form).await,
        Call::Unknown => Err(ApiError::not_found(format!(
            "The requested URL {} was not found on this server.",
            record.path
        ))),
    }
}

pub(super) fn next_serial(shared: &Shared) -> u64 {
    let mut inner = shared.lock();
    inner.serial += 1;
    inner.serial
}

//! Routing, authentication and scripted faults: everything between the socket and a route's answer.

use super::*;

/// A request after routing: the route and the parts of its path that matter.
enum Call {
    GenerateContent {
        api: Api,
        model: String,
    },
    Submit {
        api: Api,
        model: String,
    },
    ModelsGet {
        api: Api,
        model: String,
    },
    GeminiPoll {
        name: String,
    },
    VertexPoll {
        prefix: String,
    },
    /// `files/{id}:download`; `keyless` on the other port, which serves it like a signed URL.
    Download {
        id: String,
        keyless: bool,
    },
    FileBlob {
        id: String,
    },
    Gcs {
        bucket: String,
        object: String,
    },
    Token,
    Unknown,
}

impl Call {
    fn route(&self) -> Route {
        match self {
            Call::GenerateContent { .. } => Route::GenerateContent,
            Call::Submit { .. } => Route::VeoSubmit,
            Call::ModelsGet { .. } => Route::ModelsGet,
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
            Call::GenerateContent { api, .. }
            | Call::Submit { api, .. }
            | Call::ModelsGet { api, .. } => Some(*api),
            Call::GeminiPoll { .. } | Call::Download { .. } | Call::FileBlob { .. } => {
                Some(Api::Gemini)
            }
            Call::VertexPoll { .. } => Some(Api::Vertex),
            Call::Gcs { .. } | Call::Token | Call::Unknown => None,
        }
    }

    /// The model a call names and the method it calls on it.
    fn model_method(&self) -> Option<(Api, &str, models::Method)> {
        match self {
            Call::GenerateContent { api, model } => {
                Some((*api, model, models::Method::GenerateContent))
            }
            Call::Submit { api, model } => Some((*api, model, models::Method::PredictLongRunning)),
            Call::ModelsGet { api, model } => Some((*api, model, models::Method::Get)),
            _ => None,
        }
    }
}

/// A routed request: the call, the API version its path starts with, the model it names and
/// that model's resource name as the path spells it (for Google's 404 message).
struct Routed {
    call: Call,
    version: Option<String>,
    model: Option<String>,
    resource: String,
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

fn route(method: &Method, path: &str, other_port: bool) -> Routed {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let post = method == Method::POST;
    let get = method == Method::GET;
    let routed = |call: Call, version: Option<&str>, model: Option<String>| {
        let rest = match version {
            Some(v) => path.trim_start_matches(&format!("/{v}/")),
            None => path,
        };
        Routed {
            call,
            version: version.map(str::to_owned),
            model,
            resource: percent_decode(rest.split(':').next().unwrap_or_default()),
        }
    };
    if other_port {
        // Downloads only, without a key: what a signed URL on another host serves.
        let call = match segments.as_slice() {
            ["v1beta", "files", last] if get => match split_action(last) {
                (id, "download") => Call::Download { id, keyless: true },
                _ => Call::Unknown,
            },
            ["fake-blobs", id] if get => Call::FileBlob { id: id.to_string() },
            _ => Call::Unknown,
        };
        return routed(call, None, None);
    }
    match segments.as_slice() {
        [v @ ("v1" | "v1beta"), "models", last] if post => {
            let (model, action) = split_action(last);
            let call = match action {
                "generateContent" => Call::GenerateContent {
                    api: Api::Gemini,
                    model: model.clone(),
                },
                // Veo was only ever on v1beta of the Gemini API.
                "predictLongRunning" if *v == "v1beta" => Call::Submit {
                    api: Api::Gemini,
                    model: model.clone(),
                },
                _ => Call::Unknown,
            };
            routed(call, Some(v), Some(model))
        }
        [v @ ("v1" | "v1beta"), "models", id] if get && !id.contains(':') => {
            let model = percent_decode(id);
            let call = Call::ModelsGet {
                api: Api::Gemini,
                model: model.clone(),
            };
            routed(call, Some(v), Some(model))
        }
        ["v1beta", "models", model, "operations", _] if get => routed(
            Call::GeminiPoll {
                name: path.trim_start_matches("/v1beta/").to_owned(),
            },
            Some("v1beta"),
            Some(model.to_string()),
        ),
        ["v1beta", "files", last] if get => match split_action(last) {
            (id, "download") => routed(Call::Download { id, keyless: false }, Some("v1beta"), None),
            _ => routed(Call::Unknown, None, None),
        },
        ["fake-blobs", id] if get => routed(Call::FileBlob { id: id.to_string() }, None, None),
        [
            v @ ("v1" | "v1beta1"),
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
            let api = Api::Vertex;
            let call = match action {
                "generateContent" => Call::GenerateContent {
                    api,
                    model: model.clone(),
                },
                "predictLongRunning" => Call::Submit {
                    api,
                    model: model.clone(),
                },
                "fetchPredictOperation" => Call::VertexPoll { prefix },
                _ => Call::Unknown,
            };
            routed(call, Some(v), Some(model))
        }
        [v @ ("v1" | "v1beta1"), "publishers", "google", "models", id]
            if get && !id.contains(':') =>
        {
            let model = percent_decode(id);
            let call = Call::ModelsGet {
                api: Api::Vertex,
                model: model.clone(),
            };
            routed(call, Some(v), Some(model))
        }
        ["storage", "v1", "b", bucket, "o", object @ ..] if get && !object.is_empty() => {
            let object = object
                .iter()
                .map(|s| percent_decode(s))
                .collect::<Vec<_>>()
                .join("/");
            let call = Call::Gcs {
                bucket: percent_decode(bucket),
                object,
            };
            routed(call, None, None)
        }
        ["token"] if post => routed(Call::Token, None, None),
        _ => routed(Call::Unknown, None, None),
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
    ConnectInfo(conn): ConnectInfo<conn::Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let routed = route(&method, uri.path(), conn.port == shared.other_port);
    let call = &routed.call;
    let query = uri.query().unwrap_or("").to_owned();
    let (auth, masked_headers, masked_query) = credentials(&headers, &query);
    let mut record = Recorded {
        route: call.route(),
        api: call.api(),
        model: routed.model.clone(),
        version: routed.version.clone(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: masked_query,
        headers: masked_headers,
        auth,
        body: serde_json::from_slice(&body).ok(),
        form: BTreeMap::new(),
        snake_case_fields: Vec::new(),
        status: 0,
        port: conn.port,
    };
    if call.route() == Route::Token {
        record.form = query_pairs(&String::from_utf8_lossy(&body))
            .into_iter()
            .collect();
    }
    let checked = check_request(&shared, &routed, &record, &body);
    if let Ok(checked) = &checked {
        record.snake_case_fields = checked.snake.clone();
    }
    let index = {
        let mut inner = shared.lock();
        inner.requests.push(record.clone());
        inner.requests.len() - 1
    };
    let response = match checked {
        Ok(checked) => answer(&shared, &conn, call, checked.model, &record, &query).await,
        Err(error) => error.into_response(),
    };
    if !conn.is_cut()
        && let Some(r) = shared.lock().requests.get_mut(index)
    {
        r.status = response.status().as_u16();
    }
    response
}

/// What [`check_request`] found in a well-formed request.
struct Checked {
    /// The fields spelled in snake_case.
    snake: Vec<String>,
    /// The model named, served for the method called.
    model: Option<&'static models::Model>,
}

/// Authentication, the model and the request shape, checked before any scripted fault, as
/// Google's front end does.
fn check_request(
    shared: &Shared,
    routed: &Routed,
    record: &Recorded,
    body: &Bytes,
) -> Result<Checked, ApiError> {
    let call = &routed.call;
    let api_key_ok = matches!(record.auth, Auth::ApiKeyHeader | Auth::ApiKeyQuery);
    let needs_key = matches!(
        call,
        Call::GeminiPoll { .. } | Call::Download { keyless: false, .. }
    ) || matches!(call.model_method(), Some((Api::Gemini, _, _)));
    let needs_bearer = matches!(call, Call::VertexPoll { .. } | Call::Gcs { .. })
        || matches!(call.model_method(), Some((Api::Vertex, _, _)));
    if needs_key && !api_key_ok {
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
    if needs_bearer && record.auth != Auth::Bearer {
        return Err(ApiError::new(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ));
    }
    let model = match call.model_method() {
        Some((api, id, method)) => Some(models::served(
            &shared.lock(),
            api,
            routed.version.as_deref().unwrap_or_default(),
            &routed.resource,
            id,
            method,
        )?),
        None => None,
    };
    if body.len() > MAX_REQUEST_BYTES {
        return Err(ApiError::invalid(format!(
            "Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
        )));
    }
    let shape = match call {
        Call::GenerateContent { .. } => &wire::GENERATE_CONTENT,
        Call::Submit { .. } => &wire::PREDICT_LONG_RUNNING,
        Call::VertexPoll { .. } => &wire::FETCH_PREDICT_OPERATION,
        _ => {
            return Ok(Checked {
                snake: Vec::new(),
                model,
            });
        }
    };
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?;
    let mut snake = Vec::new();
    wire::check(&json, shape, "", &mut snake)?;
    match (call, model) {
        (Call::GenerateContent { .. }, Some(model)) => {
            gemini::check_generate_content(model, &json)?
        }
        (Call::Submit { api, .. }, Some(model)) => veo::check_veo(*api, model, &json)?,
        (Call::VertexPoll { prefix }, _) => {
            let name = get_str(&json, "operationName").unwrap_or_default();
            if !name.starts_with(prefix.as_str()) {
                return Err(ApiError::invalid(format!(
                    "Invalid operation name \"{name}\": expected {prefix}MODEL/operations/ID."
                )));
            }
        }
        _ => {}
    }
    Ok(Checked { snake, model })
}

/// The answer to a well-formed request, after scripted faults: a refusal answers instead of the
/// service; an uncertain outcome mangles the service's answer (see [`Fault`]).
async fn answer(
    shared: &Arc<Shared>,
    conn: &conn::Conn,
    call: &Call,
    model: Option<&'static models::Model>,
    record: &Recorded,
    query: &str,
) -> Response {
    let prompt = request_prompt(shared, call, record);
    let fault = shared.take_fault(FaultKind::Http, call.route(), prompt.as_deref());
    if let Some(refused) = fault.as_ref().and_then(refusal) {
        return refused;
    }
    let response = match route_answer(shared, call, model, record, query, prompt.as_deref()).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    match fault {
        Some(Fault::Hang(duration)) => {
            tokio::time::sleep(duration).await;
            response
        }
        Some(Fault::Truncated) => {
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
        Some(Fault::Garbled200) => {
            let gzip = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\x56\x4a\xce\xcf";
            let json = "application/json; charset=UTF-8";
            (StatusCode::OK, [(header::CONTENT_TYPE, json)], &gzip[..]).into_response()
        }
        Some(Fault::DropAfterBody) => {
            conn.cut();
            response
        }
        _ => response,
    }
}

/// The prompt a request is about: its own, or the one of the operation it polls or downloads.
fn request_prompt(shared: &Shared, call: &Call, record: &Recorded) -> Option<String> {
    let inner = shared.lock();
    match call {
        Call::GenerateContent { .. } | Call::Submit { .. } => record.prompt(),
        Call::ModelsGet { .. } => None,
        Call::GeminiPoll { name } => inner.operations.get(name).map(|o| o.prompt.clone()),
        Call::VertexPoll { .. } => {
            let name = get_str(record.body.as_ref()?, "operationName")?;
            inner.operations.get(name).map(|o| o.prompt.clone())
        }
        Call::Download { id, .. } | Call::FileBlob { id } => {
            inner.files.get(id).map(|f| f.1.clone())
        }
        Call::Gcs { bucket, object } => inner
            .objects
            .get(&(bucket.clone(), object.clone()))
            .map(|o| o.1.clone()),
        Call::Token | Call::Unknown => None,
    }
}

/// The answer of a fault that refuses a request before the service sees it; `None` for the
/// other faults.
fn refusal(fault: &Fault) -> Option<Response> {
    let error = match fault {
        Fault::Status429RetryInfo { delay } => ApiError::new(429, "RESOURCE_EXHAUSTED", format!("You exceeded your current quota, please check your plan and billing details. Please retry in {delay}."))
            .detail(json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}))
            .detail(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})),
        Fault::Status500 => ApiError::new(500, "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"),
        Fault::Status503 => ApiError::new(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        Fault::Status403 => ApiError::new(403, "PERMISSION_DENIED", "Permission denied: Consumer has been suspended."),
        Fault::NotJson => {
            let html = "<!DOCTYPE html><html><head><title>Error 502 (Server Error)</title></head><body><p><b>502.</b> That's an error.</p></body></html>";
            return Some((StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=UTF-8")], html).into_response());
        }
        _ => return None,
    };
    Some(error.into_response())
}

async fn route_answer(
    shared: &Arc<Shared>,
    call: &Call,
    model: Option<&'static models::Model>,
    record: &Recorded,
    query: &str,
    prompt: Option<&str>,
) -> Result<Response, ApiError> {
    let body = record.body.clone().unwrap_or(Value::Null);
    let prompt_text = prompt.unwrap_or_default();
    match (call, model) {
        (Call::GenerateContent { .. }, Some(model)) => {
            Ok(gemini::generate_content(shared, model, &body, prompt_text))
        }
        (Call::Submit { api, .. }, Some(model)) => {
            Ok(veo::submit(shared, *api, model, &body, prompt_text))
        }
        (Call::ModelsGet { api, .. }, Some(model)) => Ok(models::get(shared, *api, model)),
        (Call::GeminiPoll { name }, _) => veo::poll(shared, name, prompt),
        (Call::VertexPoll { .. }, _) => veo::poll(
            shared,
            get_str(&body, "operationName").unwrap_or_default(),
            prompt,
        ),
        (Call::Download { id, keyless }, _) => {
            if query_pairs(query)
                .iter()
                .all(|(k, v)| !(k == "alt" && v == "media"))
            {
                return Err(ApiError::invalid("Only alt=media downloads are supported."));
            }
            let (bytes, elsewhere) = {
                let inner = shared.lock();
                let bytes = inner.files.get(id).map(|f| f.0.clone());
                (bytes, inner.redirect_downloads_elsewhere)
            };
            let bytes =
                bytes.ok_or_else(|| ApiError::not_found(format!("File {id} is not found.")))?;
            if *keyless {
                return Ok(([(header::CONTENT_TYPE, "video/mp4")], bytes).into_response());
            }
            let base = match elsewhere {
                true => &shared.other_base_url,
                false => &shared.base_url,
            };
            let location = format!("{base}/fake-blobs/{id}");
            Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
        }
        (Call::FileBlob { id }, _) => {
            let bytes = shared.lock().files.get(id).map(|f| f.0.clone());
            let bytes =
                bytes.ok_or_else(|| ApiError::not_found(format!("File {id} is not found.")))?;
            Ok(([(header::CONTENT_TYPE, "video/mp4")], bytes).into_response())
        }
        (Call::Gcs { bucket, object }, _) => {
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
        (Call::Token, _) => token::token(shared, &record.form).await,
        (Call::Unknown, _) => Err(ApiError::not_found(format!(
            "The requested URL {} was not found on this server.",
            record.path
        ))),
        (Call::GenerateContent { .. } | Call::Submit { .. } | Call::ModelsGet { .. }, None) => {
            unreachable!("check_request finds the model of every model call")
        }
    }
}

pub(super) fn next_serial(shared: &Shared) -> u64 {
    let mut inner = shared.lock();
    inner.serial += 1;
    inner.serial
}

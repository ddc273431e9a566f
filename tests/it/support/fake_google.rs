//! A fake Google service on 127.0.0.1 for ttv's integration tests.
//!
//! One real HTTP server (axum, on its own thread and tokio runtime, so plain `#[test]` functions
//! can run the `ttv` binary against it) that speaks every route of /work/shared/API.md and checks
//! what it receives the way Google does: the API key or bearer token, proto3 JSON field names,
//! base64 that decodes to a real PNG / JPEG / WebP, allowed Veo parameters, `inlineData` refused
//! on the Gemini-API Veo route. It answers with real PNG and MP4 bytes, records every request,
//! and can be scripted to fail ([`Fault`]).
//!
//! Routes, all under [`FakeGoogle::base_url`]:
//! - Gemini: `POST /v1beta/models/{model}:generateContent`
//! - Veo, Gemini API: `POST /v1beta/models/{model}:predictLongRunning`,
//!   `GET /v1beta/models/{model}/operations/{id}`, `GET /v1beta/files/{id}:download?alt=media`
//!   (a 302 to `/fake-blobs/{id}`, which serves the MP4 without a key, like a signed URL)
//! - Veo, Vertex AI: `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:`
//!   `predictLongRunning` and `:fetchPredictOperation`
//! - Cloud Storage JSON API: `GET /storage/v1/b/{bucket}/o/{object}?alt=media` (for `storageUri`)
//! - OAuth: `POST /token` (service-account JWT bearer grant, signature checked with openssl)
//!
//! Every answer is deterministic except for a small marker that makes each generated file
//! unique (a 4x4 corner block in images, a trailing `free` box in MP4s), so that a reroll is a
//! new blob, as it is with Google.

mod wire;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

pub use wire::ApiError;
use wire::{get, get_int, get_str, json_response};

/// The API key the fake accepts (`x-goog-api-key` header or `?key=`).
pub const API_KEY: &str = "fake-gemini-api-key";
/// The bearer token the fake accepts on Vertex and Cloud Storage, and issues from `/token`.
pub const ACCESS_TOKEN: &str = "ya29.fake-access-token";
/// The project the Vertex routes answer for (also the service account's `project_id`).
pub const PROJECT: &str = "ttv-fake-project";
pub const LOCATION: &str = "us-central1";
/// The scope a service-account JWT must ask for.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Requests bigger than this are refused like Google refuses an inline request over 20 MB.
const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/google");
const IMAGE_ASPECT_RATIOS: &[&str] = &[
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];

/// Which endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    GenerateContent,
    /// `predictLongRunning`, on either API.
    VeoSubmit,
    /// `fetchPredictOperation` (Vertex) or `GET operations/{id}` (Gemini API).
    VeoPoll,
    /// `files/{id}:download` (Gemini API), answered with a redirect.
    Download,
    /// Where the download redirects to.
    FileBlob,
    Gcs,
    Token,
    /// No such route: answered 404.
    Unknown,
}

/// Which of Google's two APIs a Veo or Gemini request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Gemini,
    Vertex,
}

/// The credential a request carried (the recording never holds the secret itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    ApiKeyHeader,
    ApiKeyQuery,
    WrongApiKey,
    Bearer,
    WrongBearer,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub route: Route,
    /// `None` for Cloud Storage, the token endpoint and unknown routes.
    pub api: Option<Api>,
    pub model: Option<String>,
    pub method: String,
    pub path: String,
    /// The raw query string, with the value of `key=` replaced by `<API_KEY>` or `<wrong key>`.
    pub query: String,
    /// Lower-case names; `x-goog-api-key` and `authorization` values replaced by markers.
    pub headers: Vec<(String, String)>,
    pub auth: Auth,
    /// The JSON body, if the body was JSON.
    pub body: Option<Value>,
    /// The fields of a form-encoded body (the token request).
    pub form: BTreeMap<String, String>,
    /// Paths (Google's snake_case spelling) of fields that were sent in snake_case, which Google
    /// accepts but ttv should not send.
    pub snake_case_fields: Vec<String>,
    /// The HTTP status the fake answered; 0 while the request is still being served.
    pub status: u16,
}

/// An image found in a recorded request body.
#[derive(Debug, Clone)]
pub struct SentImage {
    /// Where it was, e.g. `contents[0].parts[2].inlineData` or `instances[0].lastFrame`.
    pub field: String,
    /// The text part just before it (Gemini), e.g. "Reference image 'hero':".
    pub label: Option<String>,
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

impl SentImage {
    pub fn decode(&self) -> image::DynamicImage {
        image::load_from_memory(&self.bytes)
            .unwrap_or_else(|e| panic!("image at {} does not decode: {e}", self.field))
    }
}

impl Recorded {
    /// The prompt: the joined text parts of a generateContent request, the instance prompt of a
    /// Veo submission.
    pub fn prompt(&self) -> Option<String> {
        prompt_of(self.route, self.body.as_ref()?)
    }

    /// Every inline image in the body, in order.
    pub fn images(&self) -> Vec<SentImage> {
        let Some(body) = &self.body else {
            return Vec::new();
        };
        let mut images = Vec::new();
        let mut push = |field: String, label: Option<String>, blob: &Value, data_field: &str| {
            let (Some(data), Some(mime)) = (get_str(blob, data_field), get_str(blob, "mimeType"))
            else {
                return;
            };
            let bytes = STANDARD.decode(data).unwrap_or_default();
            images.push(SentImage {
                field,
                label,
                mime_type: mime.to_owned(),
                bytes,
            });
        };
        for (c, content) in array(get(body, "contents")).iter().enumerate() {
            let mut label = None;
            for (p, part) in array(get(content, "parts")).iter().enumerate() {
                if let Some(text) = get_str(part, "text") {
                    label = Some(text.to_owned());
                } else if let Some(blob) = get(part, "inlineData") {
                    let field = format!("contents[{c}].parts[{p}].inlineData");
                    push(field, label.take(), blob, "data");
                }
            }
        }
        for (i, instance) in array(get(body, "instances")).iter().enumerate() {
            for name in ["image", "lastFrame"] {
                if let Some(blob) = get(instance, name) {
                    push(
                        format!("instances[{i}].{name}"),
                        None,
                        blob,
                        "bytesBase64Encoded",
                    );
                }
            }
        }
        images
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A way to fail, as Google does. HTTP-level faults (the first five rows) apply to any API
/// route; the others only where they make sense (noted on each).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 RESOURCE_EXHAUSTED with a `RetryInfo` detail and "Please retry in {delay}.".
    Status429RetryInfo {
        delay: &'static str,
    },
    Status500,
    Status503,
    /// 403 PERMISSION_DENIED (a suspended key).
    Status403,
    /// Sleep this long (past the client's timeout), then answer normally.
    Hang(Duration),
    /// 200 with an HTML body.
    NotJson,
    /// 200 with the normal JSON body cut in half (the content-length says so: it is valid HTTP).
    Truncated,
    /// generateContent: finishReason IMAGE_SAFETY, a text part and no image.
    ImageSafety,
    /// generateContent: `promptFeedback.blockReason` SAFETY and no candidates.
    PromptBlocked,
    /// generateContent: the image comes back as JPEG.
    JpegAnswer,
    /// Veo submit: the operation ends with no video and `raiMediaFilteredCount` 1.
    RaiFiltered,
    /// Veo submit: the operation ends with `error {code, message}`.
    OperationError {
        code: i32,
        message: &'static str,
    },
    /// Veo submit: the operation is never done.
    NeverFinishes,
    /// Veo submit on the Gemini API: the video comes inline (`encodedVideo` + `encoding`)
    /// instead of as a download uri.
    InlineVideo,
    /// Veo submit: the operation needs this many polls answering `done: false` first.
    PollsBeforeDone(u32),
    /// Veo poll: 404 NOT_FOUND, as for an expired or foreign operation.
    UnknownOperation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Http,
    Frame,
    OpOutcome,
    OpPolls,
    Poll,
}

impl Fault {
    fn kind(&self) -> FaultKind {
        match self {
            Fault::Status429RetryInfo { .. }
            | Fault::Status500
            | Fault::Status503
            | Fault::Status403
            | Fault::Hang(_)
            | Fault::NotJson
            | Fault::Truncated => FaultKind::Http,
            Fault::ImageSafety | Fault::PromptBlocked | Fault::JpegAnswer => FaultKind::Frame,
            Fault::RaiFiltered
            | Fault::OperationError { .. }
            | Fault::NeverFinishes
            | Fault::InlineVideo => FaultKind::OpOutcome,
            Fault::PollsBeforeDone(_) => FaultKind::OpPolls,
            Fault::UnknownOperation => FaultKind::Poll,
        }
    }
}

/// Which requests a scripted fault affects.
#[derive(Debug, Clone, Default)]
pub struct Match {
    route: Option<Route>,
    prompt: Option<String>,
}

impl Match {
    /// Any request the fault applies to. Without a route, HTTP-level faults affect the API
    /// routes (generateContent, Veo submit and poll, download, Cloud Storage) but not `/token`.
    pub fn any() -> Match {
        Match::default()
    }

    /// Requests whose prompt contains `text`. Polls and downloads match on the prompt of their
    /// operation.
    pub fn prompt(text: &str) -> Match {
        Match {
            route: None,
            prompt: Some(text.to_owned()),
        }
    }

    pub fn route(route: Route) -> Match {
        Match {
            route: Some(route),
            prompt: None,
        }
    }

    /// Narrows this match to one route, e.g. `Match::prompt("storm").on(Route::VeoPoll)`.
    pub fn on(self, route: Route) -> Match {
        Match {
            route: Some(route),
            ..self
        }
    }

    fn matches(&self, route: Route, prompt: Option<&str>) -> bool {
        let route_ok = match self.route {
            Some(r) => r == route,
            None => !matches!(route, Route::Token | Route::FileBlob | Route::Unknown),
        };
        let prompt_ok = match (&self.prompt, prompt) {
            (None, _) => true,
            (Some(want), Some(got)) => got.contains(want.as_str()),
            (Some(_), None) => false,
        };
        route_ok && prompt_ok
    }
}

/// How many matching requests a scripted fault affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    N(u32),
    Forever,
}

impl From<u32> for Times {
    fn from(n: u32) -> Times {
        Times::N(n)
    }
}

struct Script {
    fault: Fault,
    on: Match,
    left: Times,
}

struct Operation {
    prompt: String,
    /// `None`: never done.
    polls_left: Option<u32>,
    /// What the operation has once done: `{"response": ...}` or `{"error": ...}`.
    result: Value,
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    scripts: Vec<Script>,
    operations: HashMap<String, Operation>,
    /// Gemini-API file id -> (MP4, the prompt of its operation).
    files: HashMap<String, (Vec<u8>, String)>,
    /// (bucket, object) -> (MP4, the prompt of its operation).
    objects: HashMap<(String, String), (Vec<u8>, String)>,
    polls_before_done: u32,
    serial: u64,
}

struct Shared {
    base_url: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Consumes one use of the first script of `kind` that matches this request.
    fn take_fault(&self, kind: FaultKind, route: Route, prompt: Option<&str>) -> Option<Fault> {
        let mut inner = self.lock();
        let script = inner.scripts.iter_mut().find(|s| {
            s.fault.kind() == kind && s.left != Times::N(0) && s.on.matches(route, prompt)
        })?;
        if let Times::N(n) = &mut script.left {
            *n -= 1;
        }
        Some(script.fault.clone())
    }
}

/// The running fake. Dropping it stops the server, abandoning any request still hanging.
pub struct FakeGoogle {
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeGoogle {
    /// Binds 127.0.0.1 on a free port and serves on a background thread.
    pub fn start() -> FakeGoogle {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            base_url: format!("http://127.0.0.1:{port}"),
            inner: Mutex::new(Inner {
                polls_before_done: 1,
                ..Inner::default()
            }),
        });
        let app = axum::Router::new()
            .fallback(serve)
            .layer(DefaultBodyLimit::max(2 * MAX_REQUEST_BYTES))
            .with_state(shared.clone());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("fake-google-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake google runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    tokio::select! {
                        result = axum::serve(listener, app) => result.expect("fake google server"),
                        _ = stop => {}
                    }
                });
                // Hanging handlers are abandoned rather than awaited.
                runtime.shutdown_background();
            })
            .expect("spawn fake google thread");
        FakeGoogle {
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the value for TTV_GEMINI_BASE_URL, TTV_VERTEX_BASE_URL and
    /// TTV_STORAGE_BASE_URL.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The environment that points ttv at this fake, credentials apart: the three base URLs,
    /// `GEMINI_API_KEY`, `GOOGLE_CLOUD_PROJECT` and `GOOGLE_CLOUD_LOCATION`. Add either
    /// `GOOGLE_OAUTH_ACCESS_TOKEN` = [`ACCESS_TOKEN`] or `GOOGLE_APPLICATION_CREDENTIALS` =
    /// [`FakeGoogle::write_service_account`] for Vertex.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let base = self.base_url().to_owned();
        vec![
            ("TTV_GEMINI_BASE_URL", base.clone()),
            ("TTV_VERTEX_BASE_URL", base.clone()),
            ("TTV_STORAGE_BASE_URL", base),
            ("GEMINI_API_KEY", API_KEY.to_owned()),
            ("GOOGLE_CLOUD_PROJECT", PROJECT.to_owned()),
            ("GOOGLE_CLOUD_LOCATION", LOCATION.to_owned()),
        ]
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    pub fn requests_to(&self, route: Route) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.route == route)
            .collect()
    }

    pub fn count(&self, route: Route) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    /// Forgets the recorded requests (operations, files and scripts stay).
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// The prompts of every generateContent and Veo submission, in arrival order.
    pub fn submitted_prompts(&self) -> Vec<String> {
        let inner = self.shared.lock();
        inner.requests.iter().filter_map(Recorded::prompt).collect()
    }

    /// Makes the next `times` requests that `on` matches fail with `fault`. Scripts are tried in
    /// the order they were added; an HTTP-level fault answers instead of the route, so a
    /// `Status503` scripted once before a `RaiFiltered` makes the first submit fail and the
    /// retried one start an operation that gets filtered.
    pub fn script(&self, fault: Fault, on: Match, times: impl Into<Times>) {
        self.shared.lock().scripts.push(Script {
            fault,
            on,
            left: times.into(),
        });
    }

    /// How many polls of a new operation answer `done: false` before it is done (default 1).
    pub fn polls_before_done(&self, polls: u32) {
        self.shared.lock().polls_before_done = polls;
    }

    /// Writes `service-account.json` (a test-only key) into `dir`, with `token_uri` pointing at
    /// this fake, for GOOGLE_APPLICATION_CREDENTIALS.
    pub fn write_service_account(&self, dir: &Path) -> PathBuf {
        let mut account = service_account_template();
        account["token_uri"] = json!(format!("{}/token", self.base_url()));
        let path = dir.join("service-account.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&account).expect("json"))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The solid colour of the image generated for a prompt (every pixel but the 4x4 top-left
    /// marker block).
    pub fn colour_for(prompt: &str) -> [u8; 3] {
        let hash = blake3::hash(prompt.as_bytes());
        let b = hash.as_bytes();
        [b[0], b[1], b[2]]
    }

    /// The service account's `client_email`.
    pub fn service_account_email() -> String {
        service_account_template()["client_email"]
            .as_str()
            .expect("client_email")
            .to_owned()
    }
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn service_account_template() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/service-account.json"))
        .expect("fixtures/google/service-account.json");
    serde_json::from_str(&text).expect("service account json")
}

fn array(value: Option<&Value>) -> &[Value] {
    value
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn prompt_of(route: Route, body: &Value) -> Option<String> {
    match route {
        Route::GenerateContent => {
            let texts: Vec<&str> = array(get(body, "contents"))
                .iter()
                .flat_map(|c| array(get(c, "parts")))
                .filter_map(|p| get_str(p, "text"))
                .collect();
            Some(texts.join("\n"))
        }
        Route::VeoSubmit => {
            let instance = array(get(body, "instances")).first()?;
            Some(get_str(instance, "prompt").unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

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

async fn serve(
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
        Call::GenerateContent { model } => check_generate_content(model, &json)?,
        Call::Submit { api, model } => check_veo(*api, model, &json)?,
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

fn check_generate_content(model: &str, body: &Value) -> Result<(), ApiError> {
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
    if let Some(ratio) = get_str(&image_config, "aspectRatio") {
        if !IMAGE_ASPECT_RATIOS.contains(&ratio) {
            return Err(ApiError::invalid(format!(
                "Unsupported aspect ratio: {ratio}. Supported: {}.",
                IMAGE_ASPECT_RATIOS.join(", ")
            )));
        }
    }
    Ok(())
}

fn check_veo(api: Api, model: &str, body: &Value) -> Result<(), ApiError> {
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
        Call::GenerateContent { model } => Ok(generate_content(
            shared,
            model,
            &body,
            prompt.unwrap_or_default(),
        )),
        Call::Submit { api, model } => Ok(submit(
            shared,
            *api,
            model,
            &body,
            prompt.unwrap_or_default(),
        )),
        Call::GeminiPoll { name } => poll(shared, name, prompt),
        Call::VertexPoll { .. } => poll(
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
        Call::Token => token(shared, &record.form).await,
        Call::Unknown => Err(ApiError::not_found(format!(
            "The requested URL {} was not found on this server.",
            record.path
        ))),
    }
}

fn next_serial(shared: &Shared) -> u64 {
    let mut inner = shared.lock();
    inner.serial += 1;
    inner.serial
}

fn generate_content(shared: &Shared, model: &str, body: &Value, prompt: &str) -> Response {
    let serial = next_serial(shared);
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

fn submit(shared: &Shared, api: Api, model: &str, body: &Value, prompt: &str) -> Response {
    let serial = next_serial(shared);
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

fn poll(shared: &Shared, name: &str, prompt: Option<&str>) -> Result<Response, ApiError> {
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

/// The OAuth token endpoint, checking a service-account JWT the way Google's does: an RS256
/// signature by the fixture's key, our client_email as issuer, this endpoint as audience, the
/// cloud-platform scope, and a lifetime of at most an hour. Errors use OAuth's own body shape.
async fn token(shared: &Shared, form: &BTreeMap<String, String>) -> Result<Response, ApiError> {
    let oauth_error = |error: &str, description: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": error, "error_description": description}),
        )
    };
    let grant = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    if grant != JWT_BEARER {
        return Ok(oauth_error(
            "unsupported_grant_type",
            format!("Invalid grant_type: {grant}"),
        ));
    }
    let assertion = form
        .get("assertion")
        .map(String::as_str)
        .unwrap_or_default();
    let parts: Vec<&str> = assertion.split('.').collect();
    let decode_json = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?).ok()
    };
    let (Some(header), Some(claims), Some(signature)) = (
        parts.first().and_then(|p| decode_json(p)),
        parts.get(1).and_then(|p| decode_json(p)),
        parts
            .get(2)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .filter(|_| parts.len() == 3),
    ) else {
        return Ok(oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".to_owned()));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let iat = claims["iat"].as_i64().unwrap_or(0);
    let scopes = claims["scope"].as_str().unwrap_or_default();
    let problem = if header["alg"] != "RS256" {
        Some(format!(
            "Invalid JWT: algorithm {} is not RS256.",
            header["alg"]
        ))
    } else if claims["iss"].as_str() != Some(FakeGoogle::service_account_email().as_str()) {
        Some("Invalid JWT: unknown issuer.".to_owned())
    } else if claims["aud"].as_str() != Some(format!("{}/token", shared.base_url).as_str()) {
        Some(format!(
            "Invalid JWT: audience {} is not this token endpoint.",
            claims["aud"]
        ))
    } else if !scopes.split(' ').any(|s| s == CLOUD_PLATFORM_SCOPE) {
        Some(format!(
            "Invalid JWT: scope \"{scopes}\" lacks {CLOUD_PLATFORM_SCOPE}."
        ))
    } else if exp <= now || iat > now + 60 || exp - iat > 3600 {
        Some("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".to_owned())
    } else if !signature_ok(&format!("{}.{}", parts[0], parts[1]), &signature).await {
        Some("Invalid JWT Signature.".to_owned())
    } else {
        None
    };
    if let Some(description) = problem {
        return Ok(oauth_error("invalid_grant", description));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
    ))
}

/// RS256 verification with the openssl command line against the fixture's public key.
async fn signature_ok(signed: &str, signature: &[u8]) -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let (data, sig) = (dir.path().join("data"), dir.path().join("sig"));
    if std::fs::write(&data, signed).is_err() || std::fs::write(&sig, signature).is_err() {
        return false;
    }
    let status = tokio::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            &format!("{FIXTURES}/service-account.pub.pem"),
            "-signature",
        ])
        .arg(&sig)
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    status.is_ok_and(|s| s.success())
}

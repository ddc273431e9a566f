//! A fake Google service on 127.0.0.1 for ttv's integration tests.
//!
//! One real HTTP server (axum, on its own thread and tokio runtime, so plain `#[test]` functions
//! can run the `ttv` binary against it) that speaks every route of /work/shared/API.md and checks
//! what it receives the way Google does: the API key or bearer token, proto3 JSON field names,
//! base64 that decodes to a real PNG / JPEG / WebP, the models served in November 2026 and what
//! each can do (models.rs), allowed Veo parameters, `inlineData` refused on the Gemini-API Veo
//! route. It answers with real PNG and MP4 bytes and schema-shaped JSON, records every request,
//! and can be scripted to fail ([`Fault`]). [`check_against_sdk`] compares a recorded request
//! with what Google's own SDK sends for the same call.
//!
//! Routes, all under [`FakeGoogle::base_url`] (`{v}`: the API versions the SDK uses, recorded in
//! [`Recorded::version`]):
//! - Gemini API, `{v}` = `v1` or `v1beta`: `POST /{v}/models/{model}:generateContent`,
//!   `GET /{v}/models/{model}` (models.get)
//! - Veo, Gemini API (`v1beta` only): `POST /v1beta/models/{model}:predictLongRunning`,
//!   `GET /v1beta/models/{model}/operations/{id}`, `GET /v1beta/files/{id}:download?alt=media`
//!   (a 302 to `/fake-blobs/{id}`, which serves the MP4 without a key, like a signed URL)
//! - Vertex AI, `{v}` = `v1` or `v1beta1`: `POST /{v}/projects/{p}/locations/{l}/publishers/`
//!   `google/models/{model}:` `generateContent`, `predictLongRunning` and
//!   `fetchPredictOperation`; `GET /{v}/publishers/google/models/{model}` (models.get)
//! - Cloud Storage JSON API: `GET /storage/v1/b/{bucket}/o/{object}?alt=media` (for `storageUri`)
//! - OAuth: `POST /token` (service-account JWT bearer grant, signature checked with openssl)
//!
//! A second port ([`FakeGoogle::other_base_url`]) serves only downloads, without a key, like a
//! signed URL on another host: see [`FakeGoogle::downloads_elsewhere`].
//!
//! Every answer is deterministic except for a small marker that makes each generated file
//! unique (a 4x4 corner block in images, a trailing `free` box in MP4s), so that a reroll is a
//! new blob, as it is with Google.

mod conn;
mod gemini;
mod models;
pub mod sdk_shapes;
mod server;
mod text;
mod token;
mod veo;
mod wire;

pub use sdk_shapes::{check_against_sdk, check_against_sdk_allowing};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use wire::ApiError;
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
    /// `models.get` on either API: free.
    ModelsGet,
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
    /// The API version the path starts with (`v1`, `v1beta`, `v1beta1`); `None` off the
    /// Gemini and Vertex routes.
    pub version: Option<String>,
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
    /// The HTTP status the fake answered; 0 while the request is still being served, or when
    /// the connection was dropped without an answer ([`Fault::DropAfterBody`]).
    pub status: u16,
    /// The local port the request came in on: [`FakeGoogle::port`] or
    /// [`FakeGoogle::other_port`].
    pub port: u16,
}

/// An image found in a recorded request body.
#[derive(Debug, Clone)]
pub struct SentImage {
    /// Where it was, e.g. `contents[0].parts[2].inlineData`, `instances[0].lastFrame` or
    /// `instances[0].referenceImages[1].image`.
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
            for (r, reference) in array(get(instance, "referenceImages")).iter().enumerate() {
                if let Some(blob) = get(reference, "image") {
                    let field = format!("instances[{i}].referenceImages[{r}].image");
                    push(field, None, blob, "bytesBase64Encoded");
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

/// A way to fail, as Google does. HTTP-level faults (the first nine rows) apply to any API
/// route; the others only where they make sense (noted on each).
///
/// The HTTP-level faults come in two sorts. Refusals (429, 500, 503, 403, [`Fault::NotJson`])
/// answer instead of the service: nothing is made. Uncertain outcomes ([`Fault::Hang`],
/// [`Fault::Truncated`], [`Fault::Garbled200`], [`Fault::DropAfterBody`]) are served first and
/// then mangled on the way back: a Veo submit still creates its operation (a paid job the client
/// cannot see), so sending it again makes a second one.
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
    /// Reads and records the whole body and serves it (a Veo operation is created), then waits
    /// this long (past the client's timeout) before answering: a hang after the body.
    Hang(Duration),
    /// 200 with an HTML body (a proxy's error page: the request did not reach the service).
    NotJson,
    /// 200 with the normal JSON body cut in half (the content-length says so: it is valid HTTP).
    Truncated,
    /// Served, then a 200 whose body is not JSON (gzip bytes without `Content-Encoding`).
    Garbled200,
    /// Reads and records the whole body and serves it, then closes the connection without an
    /// answer: the client sees the connection end before any response.
    DropAfterBody,
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
            | Fault::Truncated
            | Fault::Garbled200
            | Fault::DropAfterBody => FaultKind::Http,
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
    /// routes (generateContent, Veo submit and poll, models.get, download, Cloud Storage) but not
    /// `/token`.
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
    /// Creation order.
    serial: u64,
    prompt: String,
    /// `None`: never done.
    polls_left: Option<u32>,
    /// What the operation has once done: `{"response": ...}` or `{"error": ...}`.
    result: Value,
    /// With [`FakeGoogle::operation_latency`]: when the job is done (polls answer `done: false`
    /// until then).
    done_at: Option<Instant>,
    /// A poll answered `done: true`.
    finished: bool,
}

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
    /// Model ids answered 404 NOT_FOUND.
    retired: BTreeSet<String>,
    gemini_api_veo: bool,
    downloads_elsewhere: bool,
    redirect_downloads_elsewhere: bool,
    /// Veo submissions beyond this many running operations are refused with 429.
    max_in_flight: Option<usize>,
    /// How long a Veo operation runs (else it is done after its polls).
    operation_latency: Option<Duration>,
    refused_for_load: usize,
    peak_in_flight: usize,
}

impl Inner {
    /// Operations running at `now`: not done by time, and not yet reported done by a poll.
    fn in_flight(&self, now: Instant) -> usize {
        self.operations
            .values()
            .filter(|o| !o.finished && o.done_at.is_none_or(|t| now < t))
            .count()
    }

    fn new() -> Inner {
        Inner {
            requests: Vec::new(),
            scripts: Vec::new(),
            operations: HashMap::new(),
            files: HashMap::new(),
            objects: HashMap::new(),
            polls_before_done: 1,
            serial: 0,
            retired: models::retired_by_default(),
            gemini_api_veo: true,
            downloads_elsewhere: false,
            redirect_downloads_elsewhere: false,
            max_in_flight: None,
            operation_latency: None,
            refused_for_load: 0,
            peak_in_flight: 0,
        }
    }
}

struct Shared {
    base_url: String,
    port: u16,
    /// The second port's base URL, which serves downloads only.
    other_base_url: String,
    other_port: u16,
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
    /// Binds 127.0.0.1 on two free ports (the main one and the downloads-only other one) and
    /// serves both on a background thread.
    pub fn start() -> FakeGoogle {
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let port = listener.local_addr().expect("local addr").port();
            (listener, port)
        };
        let (main, port) = bind();
        let (other, other_port) = bind();
        let shared = Arc::new(Shared {
            base_url: format!("http://127.0.0.1:{port}"),
            port,
            other_base_url: format!("http://127.0.0.1:{other_port}"),
            other_port,
            inner: Mutex::new(Inner::new()),
        });
        let app = axum::Router::new()
            .fallback(server::serve)
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
                    let listen = |std| {
                        conn::Listener(tokio::net::TcpListener::from_std(std).expect("listener"))
                    };
                    let serve = |listener| {
                        let service = app
                            .clone()
                            .into_make_service_with_connect_info::<conn::Conn>();
                        axum::serve(listener, service)
                    };
                    tokio::select! {
                        result = serve(listen(main)) => result.expect("fake google server"),
                        result = serve(listen(other)) => result.expect("fake google other port"),
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

    /// The main port, which serves every route.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// `http://127.0.0.1:OTHER_PORT`: a second listener of this fake that serves only
    /// `GET /v1beta/files/{id}:download?alt=media` and `/fake-blobs/{id}`, without a key, like a
    /// signed URL on another host. Anything else there is a 404.
    pub fn other_base_url(&self) -> &str {
        &self.shared.other_base_url
    }

    pub fn other_port(&self) -> u16 {
        self.shared.other_port
    }

    /// The requests that came in on [`FakeGoogle::other_port`], in arrival order: a test can
    /// assert none carried the API key (`auth`, `headers` and `query` say).
    pub fn other_port_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.port == self.shared.other_port)
            .collect()
    }

    /// When on, the Gemini-API Veo operations created from now on give download uris on the
    /// other port (`{other_base_url}/v1beta/files/{id}:download?alt=media`), served without a
    /// key. Off by default.
    pub fn downloads_elsewhere(&self, on: bool) {
        self.shared.lock().downloads_elsewhere = on;
    }

    /// When on, the main port's `files/{id}:download` answers its 302 with the other port's
    /// `/fake-blobs/{id}` instead of its own: a client that follows it must not carry the key
    /// across. Off by default.
    pub fn redirect_downloads_elsewhere(&self, on: bool) {
        self.shared.lock().redirect_downloads_elsewhere = on;
    }

    /// Retires a model: from now on every route naming it, models.get included, answers 404
    /// NOT_FOUND. A fake starts with Google's November 2026 retirements: `gemini-2.5-flash-image`,
    /// `gemini-3-pro-image-preview`, `gemini-3.1-flash-image-preview`, `veo-3.0-generate-001`
    /// and `veo-3.0-fast-generate-001`.
    pub fn retire(&self, model: &str) {
        self.shared.lock().retired.insert(model.to_owned());
    }

    /// Serves a retired model again, with what it could do before it was retired (the 3.0 Veo
    /// models make no 4k, take no last frame or reference images). Ids the fake does not know
    /// stay unknown (404).
    pub fn reinstate(&self, model: &str) {
        self.shared.lock().retired.remove(model);
    }

    /// Whether the Gemini API serves Veo: when off, a Veo submit there answers 404 NOT_FOUND
    /// and models.get lists no `predictLongRunning` for Veo models (polls and downloads of
    /// existing operations still work). On by default, as ttv's tests fall back to it; the SDK
    /// 3.x refuses Veo on the Gemini API, which suggests Google withdrew it.
    pub fn gemini_api_veo(&self, served: bool) {
        self.shared.lock().gemini_api_veo = served;
    }

    /// How many requests hit a paid route (generateContent and Veo submits), whatever they
    /// were answered. models.get, polls and downloads are free.
    pub fn paid_requests(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| matches!(r.route, Route::GenerateContent | Route::VeoSubmit))
            .count()
    }

    /// The names of every Veo operation created, in creation order: one per paid job Google
    /// would have started, including those whose answer the client never saw.
    pub fn operations(&self) -> Vec<String> {
        let inner = self.shared.lock();
        let mut operations: Vec<(u64, &String)> = inner
            .operations
            .iter()
            .map(|(n, o)| (o.serial, n))
            .collect();
        operations.sort();
        operations.into_iter().map(|(_, n)| n.clone()).collect()
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

    /// At most `k` Veo operations run at once per project, as Veo 3.1 serves about 10: a
    /// submission beyond them is refused with 429 RESOURCE_EXHAUSTED (and creates nothing).
    pub fn max_in_flight(&self, k: usize) {
        self.shared.lock().max_in_flight = Some(k);
    }

    /// Every Veo operation submitted from now on runs for `latency` (on top of its polls).
    pub fn operation_latency(&self, latency: Duration) {
        self.shared.lock().operation_latency = Some(latency);
    }

    /// Veo submissions refused because [`FakeGoogle::max_in_flight`] operations were running.
    pub fn refused_for_load(&self) -> usize {
        self.shared.lock().refused_for_load
    }

    /// The most Veo operations that ran at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.lock().peak_in_flight
    }

    /// How many polls of a new operation answer `done: false` before it is done (default 1).
    pub fn polls_before_done(&self, polls: u32) {
        self.shared.lock().polls_before_done = polls;
    }

    /// Makes every operation scripted with [`Fault::NeverFinishes`] done at its next poll, as a
    /// job that was slow rather than stuck: for a later build that resumes it.
    pub fn finish_stuck_operations(&self) {
        for op in self.shared.lock().operations.values_mut() {
            op.polls_left.get_or_insert(0);
        }
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

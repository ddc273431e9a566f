//! The `veo` video backend: a predictLongRunning submit and polling, on Vertex AI (project,
//! location, OAuth) or the Gemini API (API key). The operation name is recorded right after the
//! submit, so a build interrupted while polling resumes the same paid operation.

use crate::limiter::Load;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::ImageFormat;
use serde_json::{Map, Value, json};

use super::auth::{self, Bearer, VertexTarget};
use super::gemini::{self, prepare_image};
use super::http::{
    CallError, Downloaded, Failure, Http, Resend, download, key_header, report_load, send_json,
};
use crate::backends::{
    GenContext, GenError, ImageInput, Pending, Provenance, VideoCaps, VideoGenerator, VideoOutput,
    VideoRequest,
};
use crate::error::ProjectError;
use crate::models;
use crate::project::{Project, VeoApi};
use crate::secret::Secret;

/// `TTV_VERTEX_BASE_URL`: where Vertex AI is (default from the location).
pub const VERTEX_BASE_URL_ENV: &str = "TTV_VERTEX_BASE_URL";
/// `TTV_STORAGE_BASE_URL`: where Cloud Storage's JSON API is (videos written to `storage_uri`).
pub const STORAGE_BASE_URL_ENV: &str = "TTV_STORAGE_BASE_URL";
pub const DEFAULT_STORAGE_BASE_URL: &str = "https://storage.googleapis.com";

const MAX_INPUT_BYTES: usize = 10 * 1024 * 1024;
/// Redirects followed for one download.
const MAX_REDIRECTS: usize = 10;
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
const POLL_GROWTH: f64 = 1.5;
const ACCEPTED: &[ImageFormat] = &[ImageFormat::Png, ImageFormat::Jpeg];
/// Operation error codes (google.rpc.Code) worth another build: DEADLINE_EXCEEDED,
/// RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE. The rest are permanent.
const TRANSIENT_CODES: &[i64] = &[4, 8, 13, 14];

/// Which API serves Veo, with its address and credentials.
pub enum Route {
    Vertex {
        base_url: String,
        storage_base_url: String,
        target: VertexTarget,
        bearer: Bearer,
    },
    Gemini {
        base_url: String,
        key: Secret,
    },
}

/// The `video:` settings the backend itself uses (the rest travel in each request).
#[derive(Debug, Clone)]
pub struct VeoOptions {
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
    /// Vertex only: `gs://` prefix Veo writes the videos to.
    pub storage_uri: Option<String>,
}

pub struct Veo {
    route: Route,
    http: Http,
    options: VeoOptions,
}

impl Veo {
    /// From `video:` and the environment; `at` is where the backend is named in ttv.yaml
    /// (`video` or `video.fallback.N`), `model` the model it runs. Checks credentials without
    /// a request.
    pub fn from_project(
        project: &Project,
        at: &str,
        api: VeoApi,
        model: &str,
    ) -> Result<Veo, ProjectError> {
        let v = &project.config.video;
        if !model.starts_with("veo-") {
            return Err(project
                .error_at(
                    &format!("{at}.model"),
                    format!("`{model}` is not a Veo model"),
                )
                .help(format!(
                    "use a Veo model: {}",
                    models::current(models::Kind::Video).join(", ")
                )));
        }
        let http = Http::new(v.request_timeout_seconds, v.max_retries).map_err(|e| {
            project
                .error_at("video.request_timeout_seconds", e)
                .help("use a number of seconds such as 120")
        })?;
        let poll_interval = Duration::try_from_secs_f64(v.poll_interval_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                project
                    .error_at(
                        "video.poll_interval_seconds",
                        format!(
                            "poll_interval_seconds must be a positive number, not {}",
                            v.poll_interval_seconds
                        ),
                    )
                    .help("use a number of seconds such as 10")
            })?;
        let route = match api {
            VeoApi::Vertex => {
                let target = VertexTarget::from_env()?;
                let bearer = Bearer::from_env()?;
                Route::Vertex {
                    base_url: auth::env(VERTEX_BASE_URL_ENV)
                        .unwrap_or_else(|| target.default_base_url()),
                    storage_base_url: auth::env(STORAGE_BASE_URL_ENV)
                        .unwrap_or_else(|| DEFAULT_STORAGE_BASE_URL.into()),
                    target,
                    bearer,
                }
            }
            VeoApi::Gemini => {
                if v.storage_uri.is_some() {
                    return Err(project
                        .error_at(
                            "video.storage_uri",
                            "the Gemini API cannot write videos to Cloud Storage",
                        )
                        .help(format!(
                            "remove `storage_uri`, or use `api: vertex` under `{at}`"
                        )));
                }
                Route::Gemini {
                    base_url: auth::env(gemini::BASE_URL_ENV)
                        .unwrap_or_else(|| gemini::DEFAULT_BASE_URL.into()),
                    key: auth::api_key(v.api_key.as_ref().map(|s| s.expose()), at)?,
                }
            }
        };
        Ok(Veo::new(
            route,
            http,
            VeoOptions {
                poll_interval,
                poll_timeout: Duration::from_secs(v.poll_timeout_seconds),
                storage_uri: v.storage_uri.clone(),
            },
        ))
    }

    pub fn new(route: Route, http: Http, options: VeoOptions) -> Veo {
        let route = match route {
            Route::Vertex {
                base_url,
                storage_base_url,
                target,
                bearer,
            } => Route::Vertex {
                base_url: base_url.trim_end_matches('/').to_string(),
                storage_base_url: storage_base_url.trim_end_matches('/').to_string(),
                target,
                bearer,
            },
            Route::Gemini { base_url, key } => Route::Gemini {
                base_url: base_url.trim_end_matches('/').to_string(),
                key,
            },
        };
        Veo {
            route,
            http,
            options,
        }
    }

    fn is_vertex(&self) -> bool {
        matches!(self.route, Route::Vertex { .. })
    }

    fn secrets(&self) -> Vec<&Secret> {
        match &self.route {
            Route::Gemini { key, .. } => vec![key],
            Route::Vertex { .. } => Vec::new(),
        }
    }

    /// `builder` with the route's credentials.
    async fn authorized(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        match &self.route {
            Route::Vertex { bearer, .. } => {
                let token = bearer.token().await.map_err(Failure::Final)?;
                Ok(builder.bearer_auth(token.expose()))
            }
            Route::Gemini { key, .. } => Ok(builder.header("x-goog-api-key", key_header(key)?)),
        }
    }

    fn submit_url(&self, model: &str) -> String {
        match &self.route {
            Route::Vertex {
                base_url, target, ..
            } => format!(
                "{base_url}/{VERTEX_VERSION}/{}:predictLongRunning",
                vertex_model_path(target, model)
            ),
            Route::Gemini { base_url, .. } => {
                format!("{base_url}/v1beta/models/{model}:predictLongRunning")
            }
        }
    }

    /// The predictLongRunning body, made from the segment's recipe alone (as the SDK sends
    /// it: camelCase, images as `bytesBase64Encoded` on both routes, and on the Gemini API none
    /// of seed / generateAudio / storageUri).
    fn request_body(&self, req: &VideoRequest, images: &Images) -> Value {
        let r = &req.recipe;
        let mut instance = Map::new();
        instance.insert("prompt".into(), json!(r.prompt));
        if let Some(img) = &images.first {
            instance.insert("image".into(), img.json());
        }
        if let Some(img) = &images.last {
            instance.insert("lastFrame".into(), img.json());
        }
        if !images.references.is_empty() {
            let refs: Vec<Value> = images
                .references
                .iter()
                .map(|img| json!({"image": img.json(), "referenceType": "ASSET"}))
                .collect();
            instance.insert("referenceImages".into(), json!(refs));
        }
        json!({"instances": [instance], "parameters": self.parameters(req)})
    }

    /// The `parameters` of a submission: what the provenance of its videos records.
    fn parameters(&self, req: &VideoRequest) -> Value {
        let r = &req.recipe;
        let mut params = Map::new();
        params.insert("aspectRatio".into(), json!(r.aspect_ratio));
        params.insert("durationSeconds".into(), json!(r.duration_seconds));
        params.insert("resolution".into(), json!(r.resolution));
        params.insert("sampleCount".into(), json!(r.sample_count.max(1)));
        if !r.negative_prompt.is_empty() {
            params.insert("negativePrompt".into(), json!(r.negative_prompt));
        }
        if let Some(pg) = &r.person_generation {
            params.insert("personGeneration".into(), json!(pg));
        }
        if self.is_vertex() {
            params.insert("generateAudio".into(), json!(r.generate_audio));
            if let Some(seed) = r.seed {
                params.insert("seed".into(), json!(seed));
            }
            if let Some(uri) = &self.options.storage_uri {
                params.insert("storageUri".into(), json!(uri));
            }
        }
        Value::Object(params)
    }

    /// Submits the job, recording the intent before the request goes out and the operation
    /// the moment its name arrives. A submission whose answer is lost is not sent again: it
    /// may have started a paid job.
    async fn submit(&self, req: &VideoRequest, ctx: &GenContext) -> Result<String, GenError> {
        let (first, last) = request_images(req);
        let references = req.references.clone();
        let images = tokio::task::spawn_blocking(move || {
            let prep = |i: Option<ImageInput>| {
                i.map(|i| prepare_image(&i, ACCEPTED, MAX_INPUT_BYTES).map(Prepared))
                    .transpose()
            };
            Ok::<_, GenError>(Images {
                first: prep(first)?,
                last: prep(last)?,
                references: references
                    .into_iter()
                    .map(|i| prep(Some(i)).map(|p| p.expect("an image in, an image out")))
                    .collect::<Result<_, _>>()?,
            })
        })
        .await
        .map_err(|e| GenError::Permanent(format!("preparing the images failed: {e}")))??;
        let body = serde_json::to_vec(&self.request_body(req, &images))
            .map_err(|e| GenError::Permanent(format!("cannot encode the request: {e}")))?;
        let url = self.submit_url(&req.recipe.model);
        let label = self.label();
        ctx.operations.intend(&ctx.key, &label).map_err(|e| {
            GenError::Permanent(format!(
                "cannot record the submission before sending it ({e:#}); nothing was sent"
            ))
        })?;
        let what = format!("{label} predictLongRunning");
        // What the service may have started without ttv knowing: recorded, never resent.
        let unknown = |detail: String| {
            if let Err(err) = ctx.operations.uncertain(&ctx.key, &label, &detail) {
                crate::progress::say(&format!(
                    "warning: cannot record the uncertain submission: {err:#}"
                ));
            }
            uncertain_error(&ctx.node_id, &detail)
        };
        let answer = match self
            .post_json(Resend::OnlyIfCertain, &what, &url, body, ctx, true)
            .await
        {
            Ok(a) => a,
            Err(e) if e.uncertain() => return Err(unknown(e.to_string())),
            Err(e) => {
                forget(ctx, "the submission");
                return Err(e.into_gen_error());
            }
        };
        let Some(name) = answer
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
        else {
            return Err(unknown(format!(
                "{label} accepted the job but named no operation: {}",
                excerpt(&answer)
            )));
        };
        if let Err(e) = ctx.operations.record(&ctx.key, &label, &name) {
            crate::progress::say(&format!(
                "warning: cannot record operation {name} ({e:#}): an interrupted build will \
                 report its submission as uncertain"
            ));
        }
        Ok(name)
    }

    /// POSTs a JSON body with the route's credentials, retrying what is worth retrying;
    /// `submit`: each attempt's fate is reported to the scheduler's limiter (a started
    /// operation holds one of the service's slots until it is done).
    async fn post_json(
        &self,
        resend: Resend,
        what: &str,
        url: &str,
        body: Vec<u8>,
        ctx: &GenContext,
        submit: bool,
    ) -> Result<Value, CallError> {
        let body = &body;
        self.http
            .retry_with(resend, what, &self.secrets(), &*ctx.status, || async move {
                let builder = self
                    .authorized(self.http.client().post(url))
                    .await?
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                let sent = send_json(&self.http, builder).await;
                if submit {
                    report_load(&ctx.load, true, sent)
                } else {
                    sent
                }
            })
            .await
    }

    /// One look at the operation.
    async fn fetch_operation(
        &self,
        name: &str,
        model: &str,
        ctx: &GenContext,
    ) -> Result<Value, CallError> {
        let what = format!("{} polling {name}", self.label());
        let secrets = self.secrets();
        match &self.route {
            Route::Vertex {
                base_url, target, ..
            } => {
                // The name carries the project, location and model it was submitted to.
                let prefix = match name.find("/operations/") {
                    Some(i) if name.starts_with("projects/") => name[..i].to_string(),
                    _ => vertex_model_path(target, model),
                };
                let url = format!("{base_url}/{VERTEX_VERSION}/{prefix}:fetchPredictOperation");
                let body = json!({"operationName": name}).to_string().into_bytes();
                self.post_json(Resend::Always, &what, &url, body, ctx, false)
                    .await
            }
            Route::Gemini { base_url, .. } => {
                let url = format!("{base_url}/v1beta/{name}");
                let url = &url;
                self.http
                    .retry(&what, &secrets, &*ctx.status, || async move {
                        let builder = self.authorized(self.http.client().get(url)).await?;
                        send_json(&self.http, builder).await
                    })
                    .await
            }
        }
    }

    /// Polls until the operation is done, with a growing interval and an overall limit.
    async fn wait_done(
        &self,
        name: &str,
        model: &str,
        poll_at_once: bool,
        ctx: &GenContext,
    ) -> Result<Value, PollError> {
        let start = Instant::now();
        let mut interval = self.options.poll_interval;
        let mut wait = if poll_at_once {
            Duration::ZERO
        } else {
            interval
        };
        loop {
            let remaining = self.options.poll_timeout.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(PollError::Failed(GenError::Transient(format!(
                    "{}: operation {name} is still running after {} s \
                     (video.poll_timeout_seconds); the next build resumes it",
                    self.label(),
                    self.options.poll_timeout.as_secs()
                ))));
            }
            tokio::time::sleep(wait.min(remaining)).await;
            match self.fetch_operation(name, model, ctx).await {
                Ok(op) if op.get("done").and_then(Value::as_bool) == Some(true) => return Ok(op),
                Ok(_) => {}
                Err(e) if e.http_status() == Some(404) => return Err(PollError::NotFound(e)),
                Err(e) => {
                    // A malformed name will never poll: forget it. Anything else (403, a
                    // network outage) may pass, and the next build resumes the same operation.
                    if e.http_status() == Some(400) {
                        forget(ctx, name);
                    }
                    return Err(PollError::Failed(e.into_gen_error()));
                }
            }
            (ctx.status)(format!("polling {}s", start.elapsed().as_secs()));
            wait = interval;
            interval = interval.mul_f64(POLL_GROWTH).min(MAX_POLL_INTERVAL);
        }
    }

    /// The videos of a finished operation (one per sample) as MP4 files in `ctx.tmp_dir`.
    async fn finish(
        &self,
        name: &str,
        op: Value,
        params: Value,
        ctx: &GenContext,
    ) -> Result<VideoOutput, GenError> {
        let videos = match outcome(&op) {
            Ok(v) => v,
            Err(e) => {
                forget(ctx, name);
                return Err(prefixed(&self.label(), name, e));
            }
        };
        let mut mp4s = Vec::new();
        for video in videos {
            let path = ctx.temp_mp4("veo")?;
            let fetched = match video {
                VideoSource::Inline(b64) => {
                    let target = path.to_path_buf();
                    tokio::task::spawn_blocking(move || decode_to_file(&b64, &target))
                        .await
                        .map_err(|e| GenError::Permanent(e.to_string()))
                        .and_then(|r| r)
                        .map_err(|error| FetchError { error, gone: true })
                }
                VideoSource::Gcs(uri) => self.fetch_gcs(&uri, &path, ctx).await,
                VideoSource::Uri(uri) => self.fetch_file(&uri, &path, ctx).await,
            };
            if let Err(e) = fetched {
                // The video is gone (a malformed uri, an expired file): polling again cannot
                // bring it back. Credentials and outages can be fixed, and the paid video
                // fetched then.
                if e.gone {
                    forget(ctx, name);
                }
                return Err(prefixed(&self.label(), name, e.error));
            }
            if !is_mp4(&path) {
                forget(ctx, name);
                return Err(GenError::Permanent(format!(
                    "{}: operation {name} returned something that is not an MP4 (no `ftyp` box)",
                    self.label()
                )));
            }
            mp4s.push(path);
        }
        Ok(VideoOutput {
            mp4s,
            provenance: Provenance {
                model_version: op
                    .pointer("/response/modelVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                response_id: Some(name.to_string()),
                params: Some(params),
            },
        })
    }

    /// `gs://bucket/object` through the Cloud Storage JSON API, with the Vertex bearer.
    async fn fetch_gcs(&self, uri: &str, path: &Path, ctx: &GenContext) -> Result<(), FetchError> {
        let Route::Vertex {
            storage_base_url, ..
        } = &self.route
        else {
            return Err(FetchError::gone(format!(
                "the Gemini API answered with a Cloud Storage video ({uri})"
            )));
        };
        let (bucket, object) = uri
            .strip_prefix("gs://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(b, o)| !b.is_empty() && !o.is_empty())
            .ok_or_else(|| FetchError::gone(format!("malformed Cloud Storage URI {uri}")))?;
        let mut url =
            reqwest::Url::parse(&format!("{storage_base_url}/storage/v1/b/")).map_err(|e| {
                FetchError {
                    error: GenError::Permanent(format!("bad {STORAGE_BASE_URL_ENV}: {e}")),
                    gone: false,
                }
            })?;
        url.path_segments_mut()
            .map_err(|_| FetchError {
                error: GenError::Permanent(format!("bad {STORAGE_BASE_URL_ENV}")),
                gone: false,
            })?
            .pop_if_empty()
            .push(bucket)
            .push("o")
            .push(object);
        url.set_query(Some("alt=media"));
        self.download_to(&format!("downloading {uri}"), url.as_str(), path, ctx)
            .await
    }

    /// A Gemini API file uri (`.../files/ID:download?alt=media`). One on Google's default
    /// host is fetched from the configured base URL (`TTV_GEMINI_BASE_URL`) instead.
    async fn fetch_file(&self, uri: &str, path: &Path, ctx: &GenContext) -> Result<(), FetchError> {
        let url = match &self.route {
            Route::Gemini { base_url, .. } if base_url != gemini::DEFAULT_BASE_URL => uri
                .strip_prefix(gemini::DEFAULT_BASE_URL)
                .map_or_else(|| uri.to_string(), |rest| format!("{base_url}{rest}")),
            _ => uri.to_string(),
        };
        self.download_to(&format!("downloading {uri}"), &url, path, ctx)
            .await
    }

    /// The origin (`scheme://host:port`) that credentials may be sent to.
    fn credential_origin(&self) -> Option<reqwest::Url> {
        let base = match &self.route {
            Route::Vertex {
                storage_base_url, ..
            } => storage_base_url,
            Route::Gemini { base_url, .. } => base_url,
        };
        reqwest::Url::parse(base).ok()
    }

    /// Downloads `url` into `path`, following redirects by hand: the key or token goes only to
    /// the service's own origin, never to a signed URL on another host.
    async fn download_to(
        &self,
        what: &str,
        url: &str,
        path: &Path,
        ctx: &GenContext,
    ) -> Result<(), FetchError> {
        let origin = self.credential_origin();
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = reqwest::Url::parse(&url)
                .ok()
                .is_some_and(|u| origin.as_ref().is_some_and(|o| o.origin() == u.origin()));
            let target = &url;
            let result = self
                .http
                .retry(what, &self.secrets(), &*ctx.status, || async move {
                    let builder = self.http.client().get(target);
                    let builder = if same_origin {
                        self.authorized(builder).await?
                    } else {
                        builder
                    };
                    download(&self.http, builder, path).await
                })
                .await
                .map_err(|e| FetchError {
                    gone: matches!(e.http_status(), Some(400 | 404 | 410)),
                    error: e.into_gen_error(),
                })?;
            match result {
                Downloaded::Written(_) => return Ok(()),
                Downloaded::Redirect(next) => url = next,
            }
        }
        Err(FetchError {
            error: GenError::Permanent(format!("{what}: more than {MAX_REDIRECTS} redirects")),
            gone: false,
        })
    }
}

#[async_trait]
impl VideoGenerator for Veo {
    fn name(&self) -> &str {
        "veo"
    }

    fn label(&self) -> String {
        match self.route {
            Route::Vertex { .. } => "veo (vertex)".into(),
            Route::Gemini { .. } => "veo (gemini-api)".into(),
        }
    }

    /// The model's capabilities from the registry; the Gemini API's route refuses seed and
    /// generateAudio (as the SDK does).
    fn capabilities(&self, model: &str) -> VideoCaps {
        VideoCaps {
            model: models::video_caps(model),
            seed: self.is_vertex(),
            generate_audio: self.is_vertex(),
        }
    }

    async fn generate(
        &self,
        req: &VideoRequest,
        ctx: &GenContext,
    ) -> Result<VideoOutput, GenError> {
        check(req)?;
        let label = self.label();
        let model = &req.recipe.model;
        let params = self.parameters(req);
        let (mut name, mut resumed) = match ctx.operations.pending(&ctx.key, &label) {
            Some(Pending::Operation(name)) => (name, true),
            Some(Pending::Uncertain { since, detail }) if !ctx.resubmit => {
                return Err(GenError::Uncertain(format!(
                    "an earlier submission of {} (at {}) may have started a paid job: {detail}. \
                     Check the Veo jobs and the bill of the Google Cloud project; to submit it \
                     again, run `ttv build --force {}`",
                    ctx.node_id,
                    crate::housekeeping::format_time(since),
                    ctx.node_id
                )));
            }
            _ => (self.submit(req, ctx).await?, false),
        };
        loop {
            let done = self.wait_done(&name, model, resumed, ctx).await;
            // The service's slot is free again (the download that follows does not hold it).
            (ctx.load)(Load::Done);
            match done {
                Ok(op) => return self.finish(&name, op, params, ctx).await,
                Err(PollError::NotFound(_)) if resumed => {
                    crate::progress::say(&format!(
                        "warning: operation {name} unknown to the service, submitting again"
                    ));
                    forget(ctx, &name);
                    name = self.submit(req, ctx).await?;
                    resumed = false;
                }
                Err(PollError::NotFound(e)) => {
                    forget(ctx, &name);
                    return Err(e.into_gen_error());
                }
                Err(PollError::Failed(e)) => return Err(e),
            }
        }
    }
}

/// A video that could not be fetched, and whether it is gone for good.
struct FetchError {
    error: GenError,
    gone: bool,
}

impl FetchError {
    fn gone(message: String) -> FetchError {
        FetchError {
            error: GenError::Permanent(message),
            gone: true,
        }
    }
}

enum PollError {
    NotFound(CallError),
    Failed(GenError),
}

/// An input image ready to send.
struct Prepared(gemini::Prepared);

impl Prepared {
    fn json(&self) -> Value {
        json!({"bytesBase64Encoded": BASE64.encode(&self.0.bytes), "mimeType": self.0.mime()})
    }
}

/// `projects/P/locations/L/publishers/google/models/M`.
fn vertex_model_path(target: &VertexTarget, model: &str) -> String {
    format!(
        "projects/{}/locations/{}/publishers/google/models/{model}",
        target.project, target.location
    )
}

/// The Vertex API version, as the SDK uses it (`/v1/` serves the same methods).
const VERTEX_VERSION: &str = "v1beta1";

/// The error of a submission whose outcome is unknown.
fn uncertain_error(node: &str, detail: &str) -> GenError {
    GenError::Uncertain(format!(
        "the submission's outcome is unknown ({detail}); it was not sent again, since Google may \
         have started (and will bill) the job. Check the Veo jobs and the bill of the Google \
         Cloud project; to submit it again, run `ttv build --force {node}`"
    ))
}

/// What the plan's capability check cannot see: first-last needs both frames.
fn check(req: &VideoRequest) -> Result<(), GenError> {
    if req.first_last() && (req.first.is_none() || req.last.is_none()) {
        return Err(GenError::Permanent(
            "mode first-last needs both a first and a last frame".into(),
        ));
    }
    Ok(())
}

/// `image` and `lastFrame`: single mode sends its one frame as the first image.
fn request_images(req: &VideoRequest) -> (Option<ImageInput>, Option<ImageInput>) {
    if req.first_last() {
        (req.first.clone(), req.last.clone())
    } else {
        (req.first.clone().or_else(|| req.last.clone()), None)
    }
}

/// The images of a submission, ready to send.
struct Images {
    first: Option<Prepared>,
    last: Option<Prepared>,
    references: Vec<Prepared>,
}

enum VideoSource {
    Inline(String),
    Gcs(String),
    Uri(String),
}

/// What a done operation holds: its videos (one per sample), or why there are none.
fn outcome(op: &Value) -> Result<Vec<VideoSource>, GenError> {
    if let Some(err) = op.get("error") {
        return Err(operation_error(err));
    }
    let response = op.get("response").unwrap_or(&Value::Null);
    // Vertex: response.videos[]; Gemini API: response.generateVideoResponse.generatedSamples[].
    let gemini = response.get("generateVideoResponse");
    let listed = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
    let mut candidates = listed(response.get("videos"));
    candidates.extend(
        listed(gemini.and_then(|g| g.get("generatedSamples")))
            .into_iter()
            .filter_map(|s| s.get("video").cloned()),
    );
    let mut videos = Vec::new();
    for video in &candidates {
        let text = |k: &str| {
            video
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(b64) = text("bytesBase64Encoded").or_else(|| text("encodedVideo")) {
            videos.push(VideoSource::Inline(b64.to_string()));
        } else if let Some(uri) = text("gcsUri") {
            videos.push(VideoSource::Gcs(uri.to_string()));
        } else if let Some(uri) = text("uri") {
            videos.push(VideoSource::Uri(uri.to_string()));
        }
    }
    if !videos.is_empty() {
        return Ok(videos);
    }
    let holder = gemini.unwrap_or(response);
    let count = holder
        .get("raiMediaFilteredCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let reasons: Vec<&str> = holder
        .get("raiMediaFilteredReasons")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if count > 0 || !reasons.is_empty() {
        let reason = if reasons.is_empty() {
            format!("{count} video(s) filtered (raiMediaFilteredCount)")
        } else {
            reasons.join("; ")
        };
        return Err(GenError::Blocked { reason });
    }
    Err(GenError::Permanent(format!(
        "the operation finished without a video: {}",
        excerpt(op)
    )))
}

/// The `error` of a done operation. Vertex reports prompts refused by its usage guidelines
/// this way, so those are safety blocks.
fn operation_error(err: &Value) -> GenError {
    let code = err.get("code").and_then(Value::as_i64);
    let message = err.get("message").and_then(Value::as_str).unwrap_or("");
    let text = match code {
        Some(c) => format!("failed with code {c}: {message}"),
        None => format!("failed: {message}"),
    };
    let lower = message.to_ascii_lowercase();
    if lower.contains("usage guidelines") || lower.contains("responsible ai") {
        GenError::Blocked {
            reason: message.to_string(),
        }
    } else if code.is_some_and(|c| TRANSIENT_CODES.contains(&c)) {
        GenError::Transient(text)
    } else {
        GenError::Permanent(text)
    }
}

fn prefixed(label: &str, name: &str, e: GenError) -> GenError {
    match e {
        GenError::Blocked { reason } => GenError::Blocked { reason },
        GenError::Permanent(m) => GenError::Permanent(format!("{label}: operation {name} {m}")),
        GenError::Transient(m) => GenError::Transient(format!("{label}: operation {name} {m}")),
        GenError::Uncertain(m) => GenError::Uncertain(format!("{label}: operation {name} {m}")),
    }
}

fn forget(ctx: &GenContext, name: &str) {
    if let Err(e) = ctx.operations.clear(&ctx.key) {
        crate::progress::say(&format!("warning: cannot forget operation {name}: {e:#}"));
    }
}

/// Base64 to file a slice at a time, so the decoded video is never whole in memory twice.
fn decode_to_file(b64: &str, path: &Path) -> Result<(), GenError> {
    let fail = |e: String| GenError::Permanent(format!("the inline video {e}"));
    let file = std::fs::File::create(path).map_err(|e| fail(format!("cannot be written: {e}")))?;
    let mut out = std::io::BufWriter::new(file);
    // A multiple of 4 base64 characters decodes on its own.
    for chunk in b64.as_bytes().chunks(64 * 1024) {
        let bytes = BASE64
            .decode(chunk)
            .map_err(|e| fail(format!("is not valid base64: {e}")))?;
        out.write_all(&bytes)
            .map_err(|e| fail(format!("cannot be written: {e}")))?;
    }
    out.flush()
        .map_err(|e| fail(format!("cannot be written: {e}")))
}

/// An MP4 (ISO base media) file starts with a box whose type, at offset 4, is `ftyp`.
fn is_mp4(path: &Path) -> bool {
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[4..8] == b"ftyp"
}

fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::backends::OperationLog;
    use crate::backends::http::test_server::{Log, Reply, serve};
    use crate::backends::testing::{self, MemoryOperations};

    /// The start of a real MP4: a `ftyp` box.
    const MP4: &[u8] = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom\0\0\0\x08free";

    type Ops = MemoryOperations;

    fn png() -> ImageInput {
        let mut bytes = Vec::new();
        image::RgbImage::new(4, 4)
            .write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        ImageInput {
            name: "first".into(),
            mime_type: "image/png".into(),
            bytes: Arc::new(bytes),
        }
    }

    fn video_request(first_last: bool) -> VideoRequest {
        let mut recipe = testing::segment("veo-3.1-generate-001", "The boat rides the wave");
        recipe.generate_audio = first_last;
        if first_last {
            recipe.negative_prompt = "blur".into();
            recipe.seed = Some(7);
            recipe.frames = "start+end".into();
            recipe.last = Some("last".into());
        }
        VideoRequest {
            recipe,
            first: Some(png()),
            last: first_last.then(png),
            references: Vec::new(),
            key: "k".into(),
        }
    }

    fn options(poll_timeout: Duration) -> VeoOptions {
        VeoOptions {
            poll_interval: Duration::from_millis(10),
            poll_timeout,
            storage_uri: None,
        }
    }

    fn http() -> Http {
        Http::new(2.0, 2)
            .unwrap()
            .with_first_delay(Duration::from_millis(5))
    }

    fn gemini_veo(base: &str, poll_timeout: Duration) -> Veo {
        let route = Route::Gemini {
            base_url: base.into(),
            key: Secret::new("veo-key-123"),
        };
        Veo::new(route, http(), options(poll_timeout))
    }

    fn vertex_veo(base: &str, options: VeoOptions) -> Veo {
        let route = Route::Vertex {
            base_url: base.into(),
            storage_base_url: format!("{base}/"),
            target: VertexTarget {
                project: "proj".into(),
                location: "us-central1".into(),
            },
            bearer: Bearer::fixed(Secret::new("ya29.token")),
        };
        Veo::new(route, http(), options)
    }

    fn context(ops: Arc<Ops>, tmp: &Path) -> GenContext {
        testing::context(tmp, ops).0
    }

    /// A Gemini-API Veo route whose submit starts operation `models/m/operations/{op}` and
    /// whose every poll answers `poll` (the operation's name added).
    async fn one_operation(op: &str, mut poll: Value) -> (String, Log) {
        let name = format!("models/m/operations/{op}");
        poll["name"] = json!(name);
        serve(move |req, _| match req.method.as_str() {
            "POST" => Reply::json(200, json!({ "name": name })),
            _ => Reply::json(200, poll.clone()),
        })
        .await
    }

    /// One generation on the Gemini-API route that must fail: its error, and the operations it
    /// left recorded.
    async fn gemini_failure(base: &str, poll_timeout: Duration, ops: &Arc<Ops>) -> GenError {
        let tmp = tempfile::tempdir().unwrap();
        gemini_veo(base, poll_timeout)
            .generate(&video_request(false), &context(ops.clone(), tmp.path()))
            .await
            .unwrap_err()
    }

    fn prepared(req: &VideoRequest) -> Images {
        let (f, l) = request_images(req);
        let prep = |i: ImageInput| Prepared(prepare_image(&i, ACCEPTED, MAX_INPUT_BYTES).unwrap());
        Images {
            first: f.map(prep),
            last: l.map(prep),
            references: req.references.iter().cloned().map(prep).collect(),
        }
    }

    #[test]
    fn vertex_body_carries_every_parameter() {
        let veo = vertex_veo(
            "http://unused",
            VeoOptions {
                storage_uri: Some("gs://bucket/out/".into()),
                ..options(Duration::from_secs(1))
            },
        );
        let mut req = video_request(true);
        req.recipe.person_generation = Some("allow_adult".into());
        let body = veo.request_body(&req, &prepared(&req));
        let image = json!({"bytesBase64Encoded": BASE64.encode(&*png().bytes),
            "mimeType": "image/png"});
        assert_eq!(
            body,
            json!({"instances": [{"prompt": "The boat rides the wave", "image": image,
                "lastFrame": image}],
                "parameters": {"aspectRatio": "16:9", "durationSeconds": 8, "resolution":
                "720p", "sampleCount": 1, "negativePrompt": "blur", "personGeneration":
                "allow_adult", "generateAudio": true, "seed": 7, "storageUri":
                "gs://bucket/out/"}})
        );
    }

    #[test]
    fn gemini_api_body_has_no_inline_data_nor_vertex_only_fields() {
        let veo = gemini_veo("http://unused", Duration::from_secs(1));
        let req = video_request(true);
        let body = veo.request_body(&req, &prepared(&req));
        let text = body.to_string();
        assert!(!text.contains("inlineData"), "{text}");
        assert_eq!(
            body.pointer("/instances/0/image/mimeType"),
            Some(&json!("image/png"))
        );
        let params = body["parameters"].as_object().unwrap();
        for field in ["seed", "generateAudio", "storageUri"] {
            assert!(!params.contains_key(field), "{field} sent: {text}");
        }
        let single = video_request(false);
        let body = veo.request_body(&single, &prepared(&single));
        assert!(body.pointer("/instances/0/lastFrame").is_none());
        assert!(body.pointer("/parameters/negativePrompt").is_none());
    }

    #[test]
    fn capabilities_follow_route_and_model() {
        let vertex = vertex_veo("http://unused", options(Duration::from_secs(1)));
        let gemini = gemini_veo("http://unused", Duration::from_secs(1));
        assert_eq!(vertex.label(), "veo (vertex)");
        assert_eq!(gemini.label(), "veo (gemini-api)");
        let caps = gemini.capabilities("veo-3.0-generate-001");
        assert!(!caps.seed && !caps.generate_audio && !caps.model.first_last_frame);
        let caps = vertex.capabilities("veo-3.1-generate-001");
        assert!(caps.seed && caps.generate_audio && caps.model.first_last_frame);
        let mut r = video_request(false).recipe;
        r.resolution = "4k".into();
        r.duration_seconds = 6;
        r.sample_count = 5;
        let problems: Vec<String> = caps
            .check("veo", &r)
            .into_iter()
            .map(|p| p.setting)
            .collect();
        assert_eq!(problems, ["duration_seconds", "sample_count"]);
        let mut req = video_request(true);
        req.last = None;
        assert!(matches!(check(&req), Err(GenError::Permanent(_))));
    }

    #[test]
    fn done_operations_are_classified() {
        let vertex_inline = json!({"done": true, "response": {"raiMediaFilteredCount": 0,
            "videos": [{"bytesBase64Encoded": "AAAA", "mimeType": "video/mp4"}]}});
        assert!(
            matches!(outcome(&vertex_inline), Ok(v) if matches!(&v[..], [VideoSource::Inline(b)] if b == "AAAA"))
        );
        let gcs = json!({"done": true, "response": {"videos": [{"gcsUri": "gs://b/o.mp4"}]}});
        assert!(
            matches!(outcome(&gcs), Ok(v) if matches!(&v[..], [VideoSource::Gcs(u)] if u == "gs://b/o.mp4"))
        );
        let gemini_uri = json!({"done": true, "response": {"generateVideoResponse":
            {"generatedSamples": [{"video": {"uri": "https://x/v1beta/files/a:download?alt=media"}}]}}});
        assert!(matches!(outcome(&gemini_uri), Ok(v) if matches!(&v[..], [VideoSource::Uri(_)])));
        let gemini_inline = json!({"done": true, "response": {"generateVideoResponse":
            {"generatedSamples": [{"video": {"encodedVideo": "BBBB", "encoding": "video/mp4"}}]}}});
        assert!(
            matches!(outcome(&gemini_inline), Ok(v) if matches!(&v[..], [VideoSource::Inline(b)] if b == "BBBB"))
        );

        let rai = json!({"done": true, "response": {"generateVideoResponse":
            {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons":
            ["Video generation failed due to a person filter."]}}});
        assert!(matches!(outcome(&rai), Err(GenError::Blocked { reason })
            if reason == "Video generation failed due to a person filter."));
        let rai_count = json!({"done": true, "response": {"raiMediaFilteredCount": 2}});
        assert!(matches!(outcome(&rai_count), Err(GenError::Blocked { .. })));

        let quota = json!({"done": true, "error": {"code": 8, "message": "Quota exceeded"}});
        assert!(matches!(outcome(&quota), Err(GenError::Transient(m))
            if m == "failed with code 8: Quota exceeded"));
        let invalid = json!({"done": true, "error": {"code": 3, "message": "bad image"}});
        assert!(matches!(outcome(&invalid), Err(GenError::Permanent(_))));
        let guidelines = json!({"done": true, "error": {"code": 3, "message": "The prompt \
            could not be submitted. It contains words that violate Vertex AI's usage guidelines."}});
        assert!(matches!(
            outcome(&guidelines),
            Err(GenError::Blocked { .. })
        ));
        let empty = json!({"done": true, "response": {}});
        assert!(matches!(outcome(&empty), Err(GenError::Permanent(_))));
    }

    #[test]
    fn inline_videos_decode_slice_by_slice() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v.mp4");
        let big: Vec<u8> = MP4.iter().copied().cycle().take(300_001).collect();
        decode_to_file(&BASE64.encode(&big), &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), big);
        assert!(is_mp4(&path));
        std::fs::write(&path, b"<html>not a video</html>").unwrap();
        assert!(!is_mp4(&path));
    }

    #[tokio::test]
    async fn an_operation_unknown_to_the_service_is_submitted_again() {
        let ops = Arc::new(Ops::default());
        let old = "models/veo-3.1-generate-001/operations/old";
        ops.record("k", "veo (gemini-api)", old).unwrap();
        let seen_ops = ops.clone();
        let recorded_before_poll = Arc::new(Mutex::new(None));
        let flag = recorded_before_poll.clone();
        let base_cell: Arc<Mutex<String>> = Arc::default();
        let base_for_server = base_cell.clone();
        let (base, log) = serve(move |req, _| {
            let base = base_for_server.lock().unwrap().clone();
            let new = "models/veo-3.1-generate-001/operations/new";
            match (req.method.as_str(), req.target.as_str()) {
                ("GET", t) if t.ends_with("/operations/old") => Reply::json(
                    404,
                    json!({"error":
                    {"code": 404, "status": "NOT_FOUND", "message": "Operation not found"}}),
                ),
                ("POST", "/v1beta/models/veo-3.1-generate-001:predictLongRunning") => {
                    Reply::json(200, json!({"name": new}))
                }
                ("GET", t) if t.ends_with("/operations/new") => {
                    let mut flag = flag.lock().unwrap();
                    if flag.is_none() {
                        *flag = Some(seen_ops.name("k").as_deref() == Some(new));
                        return Reply::json(200, json!({"name": new, "done": false}));
                    }
                    Reply::json(
                        200,
                        json!({"name": new, "done": true, "response":
                        {"generateVideoResponse": {"generatedSamples": [{"video": {"uri":
                        format!("{base}/v1beta/files/abc:download?alt=media")}}]}}}),
                    )
                }
                ("GET", "/v1beta/files/abc:download?alt=media") => {
                    Reply::bytes(302, Vec::new()).header("location", "/blob/abc")
                }
                ("GET", "/blob/abc") => Reply::bytes(200, MP4.to_vec()),
                other => Reply::bytes(500, format!("unexpected {other:?}").into_bytes()),
            }
        })
        .await;
        *base_cell.lock().unwrap() = base.clone();
        let tmp = tempfile::tempdir().unwrap();
        let veo = gemini_veo(&base, Duration::from_secs(5));
        let out = veo
            .generate(&video_request(false), &context(ops.clone(), tmp.path()))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out.mp4s[0]).unwrap(), MP4);
        assert!(out.mp4s[0].starts_with(tmp.path()));
        assert_eq!(*recorded_before_poll.lock().unwrap(), Some(true));
        // The engine clears the record once the video is stored, not the backend.
        assert_eq!(
            ops.name("k").as_deref(),
            Some("models/veo-3.1-generate-001/operations/new")
        );
        let log = log.lock().unwrap();
        let targets: Vec<_> = log.iter().map(|s| s.target.as_str()).collect();
        assert_eq!(targets.len(), 6, "{targets:?}");
        for seen in log.iter().take(5) {
            assert_eq!(
                seen.header("x-goog-api-key").as_deref(),
                Some("veo-key-123")
            );
        }
        let submit = log[1].json();
        assert!(
            submit
                .pointer("/instances/0/image/bytesBase64Encoded")
                .is_some()
        );
    }

    #[tokio::test]
    async fn vertex_polls_by_operation_name_and_downloads_from_storage() {
        let name = "projects/proj/locations/us-central1/publishers/google/models/\
                    veo-3.1-generate-001/operations/123";
        let (base, log) = serve(move |req, _| match req.target.as_str() {
            "/v1beta1/projects/proj/locations/us-central1/publishers/google/models/\
             veo-3.1-generate-001:predictLongRunning" => Reply::json(200, json!({"name": name})),
            "/v1beta1/projects/proj/locations/us-central1/publishers/google/models/\
             veo-3.1-generate-001:fetchPredictOperation" => Reply::json(
                200,
                json!({
                "name": name, "done": true, "response": {"videos": [{"gcsUri":
                "gs://bucket/out/sample 0.mp4", "mimeType": "video/mp4"}]}}),
            ),
            "/storage/v1/b/bucket/o/out%2Fsample%200.mp4?alt=media" => {
                Reply::bytes(200, MP4.to_vec())
            }
            other => Reply::bytes(500, format!("unexpected {other}").into_bytes()),
        })
        .await;
        let ops = Arc::new(Ops::default());
        let tmp = tempfile::tempdir().unwrap();
        let veo = vertex_veo(
            &base,
            VeoOptions {
                storage_uri: Some("gs://bucket/out/".into()),
                ..options(Duration::from_secs(5))
            },
        );
        let out = veo
            .generate(&video_request(true), &context(ops.clone(), tmp.path()))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out.mp4s[0]).unwrap(), MP4);
        assert_eq!(ops.name("k").as_deref(), Some(name));
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 3);
        assert!(
            log.iter()
                .all(|s| s.header("authorization").as_deref() == Some("Bearer ya29.token"))
        );
        assert_eq!(log[1].json(), json!({"operationName": name}));
        assert_eq!(
            log[0].json()["parameters"]["storageUri"],
            "gs://bucket/out/"
        );
    }

    #[tokio::test]
    async fn a_blocked_video_forgets_its_operation() {
        let (base, _log) = one_operation(
            "x",
            json!({"done": true, "response": {"generateVideoResponse": {
                "raiMediaFilteredCount": 1, "raiMediaFilteredReasons": ["celebrity likeness"]}}}),
        )
        .await;
        let ops = Arc::new(Ops::default());
        let err = gemini_failure(&base, Duration::from_secs(5), &ops).await;
        assert!(matches!(&err, GenError::Blocked { reason } if reason == "celebrity likeness"));
        assert_eq!(ops.name("k"), None);
    }

    #[tokio::test]
    async fn a_poll_timeout_keeps_the_operation_for_the_next_build() {
        let (base, log) = one_operation("slow", json!({"done": false})).await;
        let ops = Arc::new(Ops::default());
        match gemini_failure(&base, Duration::from_millis(150), &ops).await {
            GenError::Transient(m) => {
                assert!(m.contains("models/m/operations/slow"), "{m}");
                assert!(m.contains("the next build resumes it"), "{m}");
            }
            other => panic!("expected a transient error, got {other:?}"),
        }
        assert_eq!(ops.name("k").as_deref(), Some("models/m/operations/slow"));
        assert!(log.lock().unwrap().len() >= 3);

        // The next build polls the recorded operation at once and submits nothing.
        let before = log.lock().unwrap().len();
        gemini_failure(&base, Duration::from_millis(1), &ops).await;
        let log = log.lock().unwrap();
        assert!(log[before..].iter().all(|s| s.method == "GET"));
    }

    #[tokio::test]
    async fn something_that_is_not_an_mp4_is_refused() {
        let (base, _log) = one_operation(
            "x",
            json!({"done": true, "response": {"generateVideoResponse": {"generatedSamples":
                [{"video": {"encodedVideo": BASE64.encode(b"<html>oops</html>")}}]}}}),
        )
        .await;
        let ops = Arc::new(Ops::default());
        let err = gemini_failure(&base, Duration::from_secs(5), &ops).await;
        assert!(
            matches!(&err, GenError::Permanent(m) if m.contains("not an MP4")),
            "{err:?}"
        );
        assert_eq!(ops.name("k"), None);
    }

    #[tokio::test]
    async fn a_failed_download_keeps_the_operation_unless_the_file_is_gone() {
        for (status, kept) in [(503, true), (404, false)] {
            let base_cell: Arc<Mutex<String>> = Arc::default();
            let base_for_server = base_cell.clone();
            let (base, _log) = serve(move |req, _| {
                let base = base_for_server.lock().unwrap().clone();
                match (req.method.as_str(), req.target.as_str()) {
                    ("POST", _) => Reply::json(200, json!({"name": "models/m/operations/d"})),
                    ("GET", "/v1beta/models/m/operations/d") => Reply::json(
                        200,
                        json!({
                        "name": "models/m/operations/d", "done": true, "response":
                        {"generateVideoResponse": {"generatedSamples": [{"video": {"uri":
                        format!("{base}/v1beta/files/d:download?alt=media")}}]}}}),
                    ),
                    _ => Reply::json(
                        status,
                        json!({"error": {"code": status,
                        "message": "no file", "status": "X"}}),
                    ),
                }
            })
            .await;
            *base_cell.lock().unwrap() = base.clone();
            let ops = Arc::new(Ops::default());
            let err = gemini_failure(&base, Duration::from_secs(5), &ops).await;
            assert!(err.to_string().contains("downloading"), "{err}");
            assert_eq!(ops.name("k").is_some(), kept, "HTTP {status}");
        }
    }

    #[tokio::test]
    async fn a_submission_without_an_answer_is_not_sent_again() {
        // The first answer comes after the client's timeout; a retry would start a second job.
        let (base, log) = serve(|_, _| {
            Reply::json(200, json!({"name": "models/m/operations/late"}))
                .after(Duration::from_millis(800))
        })
        .await;
        let route = Route::Gemini {
            base_url: base,
            key: Secret::new("veo-key-123"),
        };
        let http = Http::new(0.2, 3)
            .unwrap()
            .with_first_delay(Duration::from_millis(5));
        let veo = Veo::new(route, http, options(Duration::from_secs(1)));
        let ops = Arc::new(Ops::default());
        let tmp = tempfile::tempdir().unwrap();
        let err = veo
            .generate(&video_request(false), &context(ops.clone(), tmp.path()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, GenError::Uncertain(m) if m.contains("--force segment/test")),
            "{err}"
        );
        assert!(
            !err.is_permanent(),
            "no fallback may run after an uncertain submit"
        );
        assert_eq!(log.lock().unwrap().len(), 1, "the submission was sent once");
        assert!(matches!(ops.get("k"), Some(Pending::Uncertain { .. })));

        // The next build refuses to send it again, without a request...
        let err = veo
            .generate(&video_request(false), &context(ops.clone(), tmp.path()))
            .await
            .unwrap_err();
        assert!(matches!(err, GenError::Uncertain(_)));
        assert_eq!(log.lock().unwrap().len(), 1);
        // ...unless forced (which sends it again; this server is still slow, so it stays
        // uncertain).
        let (mut ctx, _) = testing::context(tmp.path(), ops.clone());
        ctx.resubmit = true;
        let _ = veo.generate(&video_request(false), &ctx).await;
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_download_redirected_to_another_host_gets_no_key() {
        let (elsewhere, elsewhere_log) = serve(|_, _| Reply::bytes(200, MP4.to_vec())).await;
        let target = format!("{elsewhere}/signed/video.mp4");
        let (base, log) = serve(move |req, _| {
            if req.target.contains(":download") {
                Reply::bytes(302, Vec::new()).header("location", &target)
            } else {
                Reply::json(200, json!({}))
            }
        })
        .await;
        let veo = gemini_veo(&base, Duration::from_secs(1));
        let tmp = tempfile::tempdir().unwrap();
        let ctx = context(Arc::default(), tmp.path());
        let path = tmp.path().join("v.mp4");
        let uri = format!("{base}/v1beta/files/abc:download?alt=media");
        veo.fetch_file(&uri, &path, &ctx).await.ok().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), MP4);
        let first = log.lock().unwrap()[0].clone();
        assert_eq!(
            first.header("x-goog-api-key").as_deref(),
            Some("veo-key-123")
        );
        let signed = elsewhere_log.lock().unwrap()[0].clone();
        assert_eq!(
            signed.header("x-goog-api-key"),
            None,
            "the key left Google's host"
        );
        assert!(!signed.target.contains("key="));

        // A uri on Google's own host is fetched from the configured base URL instead.
        let google = format!(
            "{}/v1beta/files/abc:download?alt=media",
            gemini::DEFAULT_BASE_URL
        );
        veo.fetch_file(&google, &path, &ctx).await.ok().unwrap();
        assert_eq!(log.lock().unwrap().len(), 2);
    }
}

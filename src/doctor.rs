//! `ttv doctor`: a free, read-only check of everything a build will need, before any money is
//! spent: credentials, project and location, each configured model against the registry and
//! against the service itself (`models.get`, which costs nothing), and ffmpeg.

use serde::Serialize;
use serde_json::Value;

use crate::backends::auth::{self, Bearer, VertexTarget};
use crate::backends::http::{Http, key_header, send_json};
use crate::backends::{gemini, veo};
use crate::models::{self, Kind, Lifecycle};
use crate::project::{Project, VeoApi};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The `--json` object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, name: impl Into<String>, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.ok &= ok;
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail,
        });
    }
}

/// Runs every check; makes no paid request.
pub async fn run(project: &Project) -> Report {
    let cfg = &project.config;
    let mut report = Report {
        ok: true,
        checks: Vec::new(),
    };
    let http = Http::new(30.0, 1).ok();
    let gemini_base =
        auth::env(gemini::BASE_URL_ENV).unwrap_or_else(|| gemini::DEFAULT_BASE_URL.into());
    let key = || {
        auth::api_key(
            cfg.keyframes
                .api_key
                .as_ref()
                .or(cfg.video.api_key.as_ref())
                .map(|s| s.expose()),
            "keyframes",
        )
        .map_err(|e| format!("{} ({})", e.message, e.help.unwrap_or_default()))
    };
    if cfg.keyframes.backend == "gemini" {
        let model = &cfg.keyframes.model;
        report.push(format!("model {model}"), registry(model, Kind::Image));
        match (key(), &http) {
            (Err(e), _) => report.push("Gemini API key", Err(e)),
            (Ok(key), Some(http)) => {
                report.push("Gemini API key", Ok("set".into()));
                let found = gemini_models_get(http, &gemini_base, &key, model).await;
                report.push(
                    format!("{model} on the Gemini API"),
                    found.and_then(|methods| serves(&methods, "generateContent")),
                );
            }
            (Ok(_), None) => {}
        }
    } else {
        report.push(
            "keyframes",
            Ok(format!("backend {} (offline, free)", cfg.keyframes.backend)),
        );
    }
    // The storyboard's text model, when ttv.yaml asks for drafts.
    if let Some((backend, model)) = crate::storyboard::configured(cfg)
        && backend == "gemini"
    {
        report.push(format!("model {model}"), registry(&model, Kind::Text));
        match (key(), &http) {
            // Said once, by the keyframes' check, when they use Gemini too.
            (Err(e), _) if cfg.keyframes.backend != "gemini" => {
                report.push("Gemini API key", Err(e))
            }
            (Err(_), _) => {}
            (Ok(key), Some(http)) => {
                let found = gemini_models_get(http, &gemini_base, &key, &model).await;
                report.push(
                    format!("{model} on the Gemini API (storyboard)"),
                    found.and_then(|methods| serves(&methods, "generateContent")),
                );
            }
            (Ok(_), None) => {}
        }
    }
    let mut videos = vec![(
        cfg.video.backend.clone(),
        cfg.video.api,
        cfg.video.model.clone(),
    )];
    videos.extend(cfg.video.fallback.iter().map(|f| {
        (
            f.backend.clone(),
            f.api.unwrap_or(cfg.video.api),
            f.model.clone().unwrap_or_else(|| cfg.video.model.clone()),
        )
    }));
    let mut vertex_ready: Option<Result<(VertexTarget, Bearer, String), ()>> = None;
    for (backend, api, model) in videos {
        if backend != "veo" {
            report.push("video", Ok(format!("backend {backend} (offline, free)")));
            continue;
        }
        report.push(format!("model {model}"), registry(&model, Kind::Video));
        let Some(http) = &http else { continue };
        match api {
            VeoApi::Vertex => {
                if vertex_ready.is_none() {
                    vertex_ready = Some(vertex_credentials(&mut report).await);
                }
                let Some(Ok((target, bearer, base))) = &vertex_ready else {
                    continue;
                };
                let found = vertex_model_get(http, base, bearer, &model).await;
                report.push(
                    format!("{model} on Vertex AI ({})", target.location),
                    found.map(|stage| format!("served ({stage})")),
                );
            }
            VeoApi::Gemini => match key() {
                Err(e) => report.push("Gemini API key", Err(e)),
                Ok(key) => {
                    let found = gemini_models_get(http, &gemini_base, &key, &model).await;
                    report.push(
                        format!("{model} on the Gemini API"),
                        found
                            .and_then(|methods| serves(&methods, "predictLongRunning"))
                            .map_err(|e| {
                                format!(
                                    "{e}; Google's SDK 3.x makes Veo on Vertex only: set \
                                     `api: vertex`"
                                )
                            }),
                    );
                }
            },
        }
    }
    if let Some(check) = remote_cache(project).await {
        report.push("remote cache", check);
    }
    let preview_video = cfg.video.backend == "preview";
    if preview_video || cfg.final_.is_some() {
        report.push(
            "ffmpeg",
            crate::stitch::check_ffmpeg()
                .map(|()| "found".to_string())
                .map_err(|e| format!("{} ({})", e.message, e.help.unwrap_or_default())),
        );
    }
    report
}

/// The remote cache, when one is configured: reachable with the environment's credentials
/// (one listing, free), and how much it holds. A remote that does not answer never fails a
/// build, but it shares nothing: worth a failed line here.
async fn remote_cache(project: &Project) -> Option<Result<String, String>> {
    let url = match crate::plan::remote_url(project) {
        Ok(Some(url)) => url,
        Ok(None) => return None,
        Err(e) => return Some(Err(format!("{e:#}"))),
    };
    let mode = project.config.cache.mode;
    let remote = match crate::store::Remote::open(&url, mode) {
        Ok(r) => r,
        Err(e) => return Some(Err(format!("{e:#}"))),
    };
    Some(match remote.inventory().await {
        Ok(inv) => Ok(format!(
            "{url} ({}): reachable, {} result(s), {} blob(s)",
            match mode {
                crate::store::RemoteMode::ReadWrite => "read-write",
                crate::store::RemoteMode::ReadOnly => "read-only",
            },
            inv.actions.len(),
            inv.blobs.len()
        )),
        Err(e) => Err(format!(
            "{e:#} (check the credentials and endpoint in the environment; builds go on with the local cache only)"
        )),
    })
}

/// What the registry says of a model.
fn registry(model: &str, kind: Kind) -> Result<String, String> {
    match models::find(model) {
        None => Ok(
            "not in ttv's model registry: checked against conservative capabilities, \
                    cost unknown (the service is asked below)"
                .into(),
        ),
        Some(m) if m.kind != kind => Err(format!(
            "{} is {} {} model, not {} {} one",
            m.name,
            m.kind.article(),
            m.kind.as_str(),
            kind.article(),
            kind.as_str()
        )),
        Some(m) => match m.lifecycle {
            Lifecycle::Retired { on, replacement } => Err(format!(
                "{} was retired by Google on {on}{}",
                m.name,
                replacement.map_or(String::new(), |r| format!("; use {r}"))
            )),
            Lifecycle::Ga { since } => Ok(format!("{}, generally available since {since}", m.name)),
            Lifecycle::Preview { since } => Ok(format!("{}, preview since {since}", m.name)),
        },
    }
}

/// Vertex's project, location and a fetched token; each a line.
async fn vertex_credentials(report: &mut Report) -> Result<(VertexTarget, Bearer, String), ()> {
    let target = match VertexTarget::from_env() {
        Ok(t) => t,
        Err(e) => {
            report.push(
                "Google Cloud project",
                Err(format!("{} ({})", e.message, e.help.unwrap_or_default())),
            );
            return Err(());
        }
    };
    report.push(
        "Google Cloud project",
        Ok(format!("{} in {}", target.project, target.location)),
    );
    let bearer = match Bearer::from_env() {
        Ok(b) => b,
        Err(e) => {
            report.push(
                "Vertex AI credentials",
                Err(format!("{} ({})", e.message, e.help.unwrap_or_default())),
            );
            return Err(());
        }
    };
    match bearer.token().await {
        Ok(_) => report.push("Vertex AI credentials", Ok("a token was fetched".into())),
        Err(e) => {
            report.push("Vertex AI credentials", Err(e.to_string()));
            return Err(());
        }
    }
    let base = auth::env(veo::VERTEX_BASE_URL_ENV).unwrap_or_else(|| target.default_base_url());
    Ok((target, bearer, base.trim_end_matches('/').to_string()))
}

/// `models.get` on the Gemini API: the model's `supportedGenerationMethods`.
async fn gemini_models_get(
    http: &Http,
    base: &str,
    key: &crate::secret::Secret,
    model: &str,
) -> Result<Vec<String>, String> {
    let url = format!(
        "{}/{}/models/{model}",
        base.trim_end_matches('/'),
        gemini::API_VERSION
    );
    let header =
        key_header(key).map_err(|_| "the API key cannot be sent in a header".to_string())?;
    let answer = send_json(
        http,
        http.client().get(&url).header("x-goog-api-key", header),
    )
    .await
    .map_err(|f| key.scrub(&describe(f)))?;
    Ok(answer
        .get("supportedGenerationMethods")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect())
}

/// `models.get` of a publisher model on Vertex AI: its launch stage.
async fn vertex_model_get(
    http: &Http,
    base: &str,
    bearer: &Bearer,
    model: &str,
) -> Result<String, String> {
    let token = bearer.token().await.map_err(|e| e.to_string())?;
    let url = format!("{base}/v1beta1/publishers/google/models/{model}");
    let answer = send_json(http, http.client().get(&url).bearer_auth(token.expose()))
        .await
        .map_err(|f| token.scrub(&describe(f)))?;
    Ok(answer
        .get("launchStage")
        .and_then(Value::as_str)
        .unwrap_or("no launch stage given")
        .to_string())
}

fn serves(methods: &[String], method: &str) -> Result<String, String> {
    if methods.iter().any(|m| m == method) {
        Ok(format!("served ({method})"))
    } else {
        Err(format!(
            "known to the service, but it lists no {method} (it lists: {})",
            methods.join(", ")
        ))
    }
}

fn describe(f: crate::backends::http::Failure) -> String {
    match f {
        crate::backends::http::Failure::Api { error, .. } if error.http_status == 404 => {
            format!("not found: {}", error.message)
        }
        crate::backends::http::Failure::Api { error, .. } => error.to_string(),
        crate::backends::http::Failure::Transport(t)
        | crate::backends::http::Failure::Unanswered(t)
        | crate::backends::http::Failure::Garbled(t) => t,
        crate::backends::http::Failure::Final(e) => e.to_string(),
    }
}

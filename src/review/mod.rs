//! `ttv review` (issue 8): the storyboard in the browser, served by ttv on 127.0.0.1, and the
//! decisions a person makes there (approve, reject, pin, reroll, build). Each action calls the
//! same functions as its CLI command; a build takes the project's build lock like `ttv build`.
//!
//! Safety: the server binds 127.0.0.1 only; every state-changing request carries the random
//! token of the printed URL (another local process or web page cannot approve, pin or spend);
//! a blob is served only by its hash, checked to be 64 hex digits, from the cache.

mod page;
mod sheet;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::build::BuildOptions;
use crate::decide;
use crate::progress::{Progress, Verbosity};
use crate::project::Project;
use crate::store::{Store, Verdict};

pub use sheet::write_static;

/// What the page shows of a build it started.
#[derive(Debug, Clone, Default, Serialize)]
struct BuildStatus {
    running: bool,
    targets: Vec<String>,
    /// How the last build ended.
    message: Option<String>,
}

struct App {
    root: PathBuf,
    token: String,
    build: Mutex<BuildStatus>,
}

type Shared = Arc<App>;

/// Serves the review page of the project at `root` on 127.0.0.1:`port` (0: a free port) until
/// Ctrl-C; prints its URL (with the token) on stdout, and opens it with xdg-open if `open`.
pub fn serve(root: &Path, port: u16, open: bool, progress: &Progress) -> Result<()> {
    // A broken project is reported now, not on the page.
    Project::load(root)?;
    let app = Arc::new(App {
        root: root.to_path_buf(),
        token: new_token()?,
        build: Mutex::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}/?token={}", app.token);
        crate::progress::emit(&url)?;
        progress.info(&format!(
            "reviewing {} at {url} (Ctrl-C to stop)",
            root.display()
        ));
        if open {
            // No browser (or no xdg-open) is fine: the URL is printed.
            let _ = std::process::Command::new("xdg-open")
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
        axum::serve(listener, router(app))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving the review page")
    })
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/state", get(api_state))
        .route("/blob/{hash}", get(blob))
        .route("/api/approve", post(approve))
        .route("/api/reject", post(reject))
        .route("/api/pin", post(pin))
        .route("/api/build", post(start_build))
        .with_state(app)
}

/// 32 random bytes from the operating system, as hex.
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares in time independent of where the strings differ.
fn same_token(given: &str, token: &str) -> bool {
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

type TokenQuery = Query<std::collections::HashMap<String, String>>;

fn authorized(app: &App, query: &TokenQuery, headers: &HeaderMap) -> bool {
    let given = headers
        .get("x-ttv-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query.get("token").map(String::as_str));
    given.is_some_and(|g| same_token(g, &app.token))
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn forbidden() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "this request needs the token of the URL `ttv review` printed",
    )
}

async fn index() -> Html<String> {
    Html(page::PAGE.replace("/*CSS*/", page::CSS))
}

/// Runs blocking work (SQLite, ttv.yaml, the plan) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a review task panicked")?
}

async fn api_state(State(app): State<Shared>, query: TokenQuery, headers: HeaderMap) -> Response {
    if !authorized(&app, &query, &headers) {
        return forbidden();
    }
    let root = app.root.clone();
    match blocking(move || state::state(&root)).await {
        Ok(s) => {
            let mut value = serde_json::to_value(s).unwrap_or_default();
            value["build"] = json!(app.build.lock().unwrap_or_else(|e| e.into_inner()).clone());
            axum::Json(value).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// A blob of the cache by its hash; nothing else of the file system is reachable.
async fn blob(State(app): State<Shared>, UrlPath(hash): UrlPath<String>) -> Response {
    let well_formed = hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return StatusCode::NOT_FOUND.into_response();
    }
    let root = app.root.clone();
    let bytes = blocking(move || {
        let Some(store) = Store::open_existing(&root.join(crate::project::CACHE_DIR))? else {
            return Ok(None);
        };
        Ok(std::fs::read(store.blob_path(&hash)).ok())
    })
    .await;
    match bytes {
        Ok(Some(bytes)) => {
            let content_type = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
                "image/png"
            } else if bytes.get(4..8) == Some(b"ftyp") {
                "video/mp4"
            } else {
                "application/octet-stream"
            };
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    // Content-addressed: the bytes of a hash never change.
                    (
                        header::CACHE_CONTROL,
                        "private, max-age=31536000, immutable",
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct Nodes {
    nodes: Vec<String>,
}

#[derive(Deserialize)]
struct Pin {
    node: String,
    take: u32,
}

#[derive(Deserialize)]
struct BuildRequest {
    targets: Vec<String>,
    #[serde(default)]
    reroll: Vec<String>,
}

/// Checks the token before looking at the body, then parses it.
fn parse<T: for<'a> Deserialize<'a>>(
    app: &App,
    query: &TokenQuery,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, Box<Response>> {
    if !authorized(app, query, headers) {
        return Err(Box::new(forbidden()));
    }
    serde_json::from_slice(body).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e)))
}

/// The outcome of an action: its JSON, or the error as the CLI would say it (400).
fn answer<T: Serialize>(result: Result<T>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

async fn judge(
    app: Shared,
    query: TokenQuery,
    headers: HeaderMap,
    body: Bytes,
    verdict: Verdict,
) -> Response {
    let req: Nodes = match parse(&app, &query, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let root = app.root.clone();
    answer(
        blocking(move || {
            let done = decide::judge(Project::load(&root)?, &req.nodes, verdict, &quiet())?;
            Ok(json!({ "frames": done }))
        })
        .await,
    )
}

async fn approve(
    State(app): State<Shared>,
    query: TokenQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    judge(app, query, headers, body, Verdict::Approved).await
}

async fn reject(
    State(app): State<Shared>,
    query: TokenQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    judge(app, query, headers, body, Verdict::Rejected).await
}

async fn pin(
    State(app): State<Shared>,
    query: TokenQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: Pin = match parse(&app, &query, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let root = app.root.clone();
    answer(
        blocking(move || {
            decide::pin(&Project::load(&root)?, &req.node, req.take, &quiet())?;
            Ok(json!({ "node": req.node, "take": req.take }))
        })
        .await,
    )
}

fn quiet() -> Progress {
    Progress::new(Verbosity::Quiet)
}

/// Starts a build in the background, as `ttv build TARGETS --no-wait` would run it.
async fn start_build(
    State(app): State<Shared>,
    query: TokenQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: BuildRequest = match parse(&app, &query, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    {
        let mut status = app.build.lock().unwrap_or_else(|e| e.into_inner());
        if status.running {
            return error(
                StatusCode::CONFLICT,
                "a build started from this page is running",
            );
        }
        *status = BuildStatus {
            running: true,
            targets: req.targets.clone(),
            message: None,
        };
    }
    let worker = app.clone();
    std::thread::spawn(move || {
        let opts = BuildOptions {
            targets: req.targets,
            reroll: req.reroll,
            // Another ttv build holding the project is an answer, not a wait.
            no_wait: true,
            ..BuildOptions::default()
        };
        let root = worker.root.clone();
        let result = crate::cli::build_project(&root, || Ok(Project::load(&root)?), &opts, quiet());
        let message = match result {
            Ok(r) => format!(
                "last build: {} generated, {} cached, {} failed, {} waiting; spent ${:.2}",
                r.generated, r.cached, r.failed, r.waiting, r.cost_usd
            ),
            Err(e) => format!("last build failed: {e:#}"),
        };
        let mut status = worker.build.lock().unwrap_or_else(|e| e.into_inner());
        status.running = false;
        status.message = Some(message);
    });
    (StatusCode::ACCEPTED, axum::Json(json!({ "started": true }))).into_response()
}

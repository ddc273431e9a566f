//! The HTTP side shared by the Google backends: one client, retries with jittered exponential
//! backoff that give way to the delay the server asks for, Google's error shape, and secrets
//! that never reach a message.

use crate::limiter::{Load, LoadFn};
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::backends::GenError;
use crate::secret::Secret;

/// Backoff of the official SDKs: 1 s, doubling, at most 60 s, with jitter.
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A server asking for more than this is not waited for: the error is reported instead.
const MAX_SERVER_DELAY: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Google's error answer: `{"error": {"code", "message", "status", "details"}}`, or the same
/// wrapped in a one-element list.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub http_status: u16,
    /// Google's status name (`RESOURCE_EXHAUSTED`), when the body had one.
    pub status: Option<String>,
    pub message: String,
    /// From a `google.rpc.RetryInfo` detail or a "Please retry in N s." message.
    pub retry_delay: Option<Duration>,
}

impl ApiError {
    pub fn parse(http_status: u16, body: &[u8]) -> ApiError {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let error = parsed.as_ref().and_then(|v| {
            let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
            v.get("error")
        });
        match error {
            Some(e) => {
                let message = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let status = e.get("status").and_then(Value::as_str).map(str::to_string);
                let retry_delay = e
                    .get("details")
                    .and_then(Value::as_array)
                    .and_then(|d| d.iter().find_map(retry_info_delay))
                    .or_else(|| retry_in_message(&message));
                ApiError {
                    http_status,
                    status,
                    message,
                    retry_delay,
                }
            }
            None => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(300).collect();
                ApiError {
                    http_status,
                    status: None,
                    retry_delay: retry_in_message(&text),
                    message: text,
                }
            }
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.http_status)?;
        if let Some(s) = &self.status {
            write!(f, " {s}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// `{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "19s"}`; proto JSON
/// also allows the `{"seconds", "nanos"}` object form.
fn retry_info_delay(detail: &Value) -> Option<Duration> {
    let ty = detail.get("@type")?.as_str()?;
    if !ty.ends_with("google.rpc.RetryInfo") {
        return None;
    }
    match detail.get("retryDelay")? {
        Value::String(s) => parse_seconds(s.strip_suffix('s')?),
        Value::Object(o) => {
            let secs = o.get("seconds").and_then(number_of).unwrap_or(0.0);
            let nanos = o.get("nanos").and_then(number_of).unwrap_or(0.0);
            Duration::try_from_secs_f64(secs + nanos / 1e9).ok()
        }
        _ => None,
    }
}

fn number_of(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str()?.parse().ok())
}

/// "... Please retry in 19.07s." / "Please retry in 3 s." / "retry in 500ms".
fn retry_in_message(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let at = lower.find("retry in ")? + "retry in ".len();
    let rest = &lower[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let value: f64 = rest[..end].parse().ok()?;
    let unit = rest[end..].trim_start();
    let secs = if unit.starts_with("ms") {
        value / 1000.0
    } else if unit.starts_with('s') {
        value
    } else if unit.starts_with("min") || unit.starts_with("m ") || unit == "m" {
        value * 60.0
    } else {
        return None;
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Delta-seconds form of Retry-After (Google documents none; an HTTP date is ignored).
fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_seconds(v.trim())
}

fn parse_seconds(s: &str) -> Option<Duration> {
    Duration::try_from_secs_f64(s.parse::<f64>().ok()?).ok()
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// A non-2xx answer.
    Api {
        error: ApiError,
        retry_after: Option<Duration>,
    },
    /// The request never reached the service (connect failed): nothing was done there.
    Transport(String),
    /// The request was (or may have been) sent and no answer was read: a timeout, a reset, a
    /// body cut short. The service may have done the work, and billed it.
    Unanswered(String),
    /// A 200 whose body is not what it must be (not JSON, undecodable payload): the work was
    /// done and billed, and its result is lost.
    Garbled(String),
    /// The caller's verdict on a well-formed answer (a safety block, a missing field): not
    /// retried, passed through as is.
    Final(GenError),
}

impl Failure {
    pub fn from_reqwest(context: &str, e: &reqwest::Error) -> Failure {
        let mut text = format!("{context}: {e}");
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        if e.is_connect() {
            Failure::Transport(text)
        } else {
            Failure::Unanswered(text)
        }
    }

    fn retryable(&self) -> bool {
        match self {
            Failure::Api { error, .. } => {
                matches!(error.http_status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            Failure::Transport(_) | Failure::Unanswered(_) | Failure::Garbled(_) => true,
            Failure::Final(_) => false,
        }
    }

    /// Whether the service may have done (and billed) the work without ttv getting it: no
    /// answer read, an unreadable 200, or a 5xx that is not Google's own error answer (a proxy
    /// or load balancer speaking, after the request may have reached the model).
    pub fn uncertain(&self) -> bool {
        match self {
            Failure::Unanswered(_) | Failure::Garbled(_) => true,
            Failure::Api { error, .. } => error.http_status >= 500 && error.status.is_none(),
            Failure::Transport(_) | Failure::Final(_) => false,
        }
    }

    fn server_delay(&self) -> Option<Duration> {
        match self {
            Failure::Api { error, retry_after } => error.retry_delay.or(*retry_after),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Api { error, .. } => error.to_string(),
            Failure::Transport(t) | Failure::Unanswered(t) | Failure::Garbled(t) => t.clone(),
            Failure::Final(e) => e.to_string(),
        }
    }
}

/// Tells the scheduler's limiter what the service made of one attempt (see `limiter.rs`): an
/// answer is a request taken (and, unless it `runs_on` as an operation, done), a 429 one
/// refused for load.
pub fn report_load<T>(
    load: &LoadFn,
    runs_on: bool,
    result: Result<T, Failure>,
) -> Result<T, Failure> {
    match &result {
        Ok(_) => {
            load(Load::Accepted);
            if !runs_on {
                load(Load::Done);
            }
        }
        Err(Failure::Api { error, .. }) if error.http_status == 429 => load(Load::Throttled),
        Err(_) => {}
    }
    result
}

/// A call that failed for good: the last failure and how many attempts were made.
#[derive(Debug)]
pub struct CallError {
    pub failure: Failure,
    message: String,
}

impl CallError {
    /// The HTTP status of a non-2xx answer.
    pub fn http_status(&self) -> Option<u16> {
        match &self.failure {
            Failure::Api { error, .. } => Some(error.http_status),
            _ => None,
        }
    }

    /// Whether the last attempt's outcome is unknown (see [`Failure::uncertain`]).
    pub fn uncertain(&self) -> bool {
        self.failure.uncertain()
    }

    pub fn into_gen_error(self) -> GenError {
        match self.failure {
            Failure::Final(e) => e,
            f if f.retryable() => GenError::Transient(self.message),
            _ => GenError::Permanent(self.message),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The `x-goog-api-key` header value, marked sensitive so the HTTP stack never prints it.
pub fn key_header(key: &Secret) -> Result<reqwest::header::HeaderValue, Failure> {
    let mut value = reqwest::header::HeaderValue::from_str(key.expose()).map_err(|_| {
        Failure::Final(GenError::Permanent(
            "the API key contains characters that cannot be sent in a header".into(),
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// One TLS crypto provider for the process: ring, the one gcp_auth (the OAuth client) is built
/// with; reqwest (ttv's client, and object_store's for the remote cache) is built without a
/// provider of its own (`rustls-no-provider`). Called before any client is made. Installing
/// fails only when one is installed already, which is as good.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The process's one HTTP client (connection pool, TLS setup); timeouts are set per request.
pub fn shared_client() -> Result<reqwest::Client, String> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    install_crypto_provider();
    // No redirect is followed for ttv: an API key or token must reach only the host it is
    // for, so a redirect is the caller's to follow (see [`download`]).
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("ttv/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// A backend's handle on the client, with its timeout and retry budget.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
    timeout: Duration,
    max_retries: u32,
    first_delay: Duration,
}

impl Http {
    /// `timeout_seconds` bounds each request (and each pause in a download stream).
    pub fn new(timeout_seconds: f64, max_retries: u32) -> Result<Http, String> {
        let timeout = Duration::try_from_secs_f64(timeout_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!("request_timeout_seconds must be a positive number, not {timeout_seconds}")
            })?;
        Ok(Http {
            client: shared_client()?,
            timeout,
            max_retries,
            first_delay: FIRST_DELAY,
        })
    }

    /// Shortens the first backoff delay (tests against a local server).
    #[cfg(test)]
    pub fn with_first_delay(mut self, delay: Duration) -> Http {
        self.first_delay = delay;
        self
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Runs `attempt` until it succeeds, fails for good, or `max_retries` retries are spent.
    /// `what` names the call in messages; `secrets` are masked out of them; `status` hears
    /// about each wait. For calls that cost nothing or may be paid twice (an image: the report
    /// counts every attempt whose outcome is unknown in `uncertain`).
    pub async fn retry<T, F, Fut>(
        &self,
        what: &str,
        secrets: &[&Secret],
        status: &(dyn Fn(String) + Send + Sync),
        attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.retry_with(Resend::Always, what, secrets, status, attempt)
            .await
    }

    /// Counts the attempts of `attempt` whose outcome is unknown into `uncertain`.
    pub async fn retry_counting<T, F, Fut>(
        &self,
        what: &str,
        secrets: &[&Secret],
        status: &(dyn Fn(String) + Send + Sync),
        uncertain: &AtomicU32,
        mut attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.retry_with(Resend::Always, what, secrets, status, || {
            let fut = attempt();
            async move {
                let result = fut.await;
                if result.as_ref().is_err_and(Failure::uncertain) {
                    uncertain.fetch_add(1, Ordering::Relaxed);
                }
                result
            }
        })
        .await
    }

    /// [`Http::retry`] with a choice of what may be sent again: a request that starts paid work
    /// which must never run twice (a Veo submission) uses [`Resend::OnlyIfCertain`], and its
    /// error then says whether the outcome is unknown ([`CallError::uncertain`]).
    pub async fn retry_with<T, F, Fut>(
        &self,
        resend: Resend,
        what: &str,
        secrets: &[&Secret],
        status: &(dyn Fn(String) + Send + Sync),
        attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_factor(2.0)
            .with_max_delay(MAX_DELAY)
            .with_jitter()
            .with_max_times(self.max_retries as usize);
        let attempts = AtomicU32::new(0);
        let mut attempt = attempt;
        let result = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            attempt()
        })
        .retry(backoff)
        .when(|f| f.retryable() && !(resend == Resend::OnlyIfCertain && f.uncertain()))
        // The server's own delay wins over the schedule, but only while retries remain.
        .adjust(|f, planned| {
            let planned = planned?;
            match f.server_delay() {
                Some(d) if d > MAX_SERVER_DELAY => None,
                Some(d) => Some(d),
                None => Some(planned),
            }
        })
        .notify(|f, wait| {
            let text = scrub(secrets, &f.describe());
            status(format!("retrying in {:.1}s: {text}", wait.as_secs_f64()));
        })
        .await;
        result.map_err(|failure| {
            let n = attempts.load(Ordering::Relaxed);
            let tries = if n > 1 {
                format!(" (after {n} attempts)")
            } else {
                String::new()
            };
            let message = scrub(
                secrets,
                &format!("{what} failed{tries}: {}", failure.describe()),
            );
            CallError { failure, message }
        })
    }
}

/// Whether an attempt with an unknown outcome may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    Always,
    OnlyIfCertain,
}

fn scrub(secrets: &[&Secret], text: &str) -> String {
    secrets.iter().fold(text.to_string(), |t, s| s.scrub(&t))
}

/// Reads an answer as JSON: a non-2xx becomes `Failure::Api`, a body that is cut short or not
/// JSON a retryable failure.
pub async fn read_json(resp: reqwest::Response) -> Result<Value, Failure> {
    if !resp.status().is_success() {
        return Err(api_failure(resp).await);
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| Failure::from_reqwest("reading the answer", &e))?;
    serde_json::from_slice(&body).map_err(|e| {
        Failure::Garbled(format!(
            "the answer ({} bytes) is not valid JSON: {e}",
            body.len()
        ))
    })
}

/// The failure a non-2xx answer stands for.
async fn api_failure(resp: reqwest::Response) -> Failure {
    let status = resp.status().as_u16();
    let retry_after = retry_after_header(resp.headers());
    match resp.bytes().await {
        Ok(body) => Failure::Api {
            error: ApiError::parse(status, &body),
            retry_after,
        },
        Err(e) => Failure::from_reqwest(&format!("reading an HTTP {status} answer"), &e),
    }
}

/// Sends `req` with the per-request timeout and reads the JSON answer.
pub async fn send_json(http: &Http, req: reqwest::RequestBuilder) -> Result<Value, Failure> {
    let resp = req
        .timeout(http.timeout)
        .send()
        .await
        .map_err(|e| Failure::from_reqwest("sending the request", &e))?;
    read_json(resp).await
}

/// What a download ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Downloaded {
    /// The body, this many bytes, is in the file.
    Written(u64),
    /// A redirect to this absolute URL: the caller decides which credentials go there.
    Redirect(String),
}

/// Streams the answer to `req` into `path` (truncated first). The timeout applies to the
/// headers and to every pause in the stream, not to the whole download. Redirects are not
/// followed here (the client follows none): credentials must not follow them to another host.
pub async fn download(
    http: &Http,
    req: reqwest::RequestBuilder,
    path: &std::path::Path,
) -> Result<Downloaded, Failure> {
    let resp = tokio::time::timeout(http.timeout, req.send())
        .await
        .map_err(|_| Failure::Unanswered(format!("no answer within {:?}", http.timeout)))?
        .map_err(|e| Failure::from_reqwest("sending the request", &e))?;
    if resp.status().is_redirection() {
        let target = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| resp.url().join(l).ok())
            .ok_or_else(|| {
                Failure::Final(GenError::Permanent(format!(
                    "HTTP {} without a usable Location header",
                    resp.status()
                )))
            })?;
        return Ok(Downloaded::Redirect(target.to_string()));
    }
    if !resp.status().is_success() {
        return Err(api_failure(resp).await);
    }
    let mut file = tokio::fs::File::create(path).await.map_err(|e| {
        Failure::Final(GenError::Permanent(format!(
            "cannot write {}: {e}",
            path.display()
        )))
    })?;
    let mut stream = resp.bytes_stream();
    let mut written = 0u64;
    loop {
        let chunk = tokio::time::timeout(http.timeout, stream.next())
            .await
            .map_err(|_| {
                Failure::Unanswered(format!(
                    "the download stalled for {:?} after {written} bytes",
                    http.timeout
                ))
            })?;
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| Failure::from_reqwest("reading the download", &e))?;
        file.write_all(&chunk).await.map_err(|e| {
            Failure::Final(GenError::Permanent(format!(
                "cannot write {}: {e}",
                path.display()
            )))
        })?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(|e| {
        Failure::Final(GenError::Permanent(format!(
            "cannot write {}: {e}",
            path.display()
        )))
    })?;
    Ok(Downloaded::Written(written))
}

/// A real HTTP server on 127.0.0.1 that answers from a closure and records every request.
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};

    #[derive(Debug, Clone)]
    pub struct Seen {
        pub method: String,
        /// Path and query, as sent.
        pub target: String,
        pub headers: HeaderMap,
        pub body: Vec<u8>,
    }

    impl Seen {
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("request body is JSON")
        }

        pub fn header(&self, name: &str) -> Option<String> {
            self.headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        }
    }

    pub struct Reply {
        pub status: u16,
        pub headers: Vec<(&'static str, String)>,
        pub body: Vec<u8>,
        pub delay: Duration,
    }

    impl Reply {
        pub fn json(status: u16, body: serde_json::Value) -> Reply {
            Reply::bytes(status, body.to_string().into_bytes())
        }

        pub fn bytes(status: u16, body: Vec<u8>) -> Reply {
            Reply {
                status,
                headers: Vec::new(),
                body,
                delay: Duration::ZERO,
            }
        }

        pub fn header(mut self, name: &'static str, value: &str) -> Reply {
            self.headers.push((name, value.to_string()));
            self
        }

        pub fn after(mut self, delay: Duration) -> Reply {
            self.delay = delay;
            self
        }
    }

    pub type Log = Arc<Mutex<Vec<Seen>>>;

    /// Serves `answer(request, index of the request)`; returns the base URL and the log.
    pub async fn serve<F>(answer: F) -> (String, Log)
    where
        F: Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    {
        let log: Log = Arc::default();
        let answer = Arc::new(answer);
        let seen = log.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (answer, seen) = (answer.clone(), seen.clone());
                async move {
                    let req = Seen {
                        method: method.to_string(),
                        target: uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        headers,
                        body: body.to_vec(),
                    };
                    let reply = {
                        let mut log = seen.lock().unwrap();
                        log.push(req.clone());
                        answer(&req, log.len() - 1)
                    };
                    tokio::time::sleep(reply.delay).await;
                    let mut resp: Response =
                        (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
                    for (k, v) in reply.headers {
                        resp.headers_mut().insert(k, v.parse().unwrap());
                    }
                    resp
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, log)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::test_server::{Reply, serve};
    use super::*;

    fn quiet(_: String) {}

    fn http(timeout: f64, retries: u32) -> Http {
        Http::new(timeout, retries)
            .unwrap()
            .with_first_delay(Duration::from_millis(5))
    }

    async fn get_json(http: &Http, url: &str) -> Result<Value, CallError> {
        http.retry("test call", &[], &quiet, || async {
            send_json(http, http.client().get(url)).await
        })
        .await
    }

    #[test]
    fn parses_google_errors_in_both_shapes() {
        let body = json!({"error": {"code": 429, "message": "Quota exceeded.", "status":
            "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.Help"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "19s"}]}});
        let e = ApiError::parse(429, body.to_string().as_bytes());
        assert_eq!(e.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(e.message, "Quota exceeded.");
        assert_eq!(e.retry_delay, Some(Duration::from_secs(19)));
        assert_eq!(
            e.to_string(),
            "HTTP 429 RESOURCE_EXHAUSTED: Quota exceeded."
        );

        let listed = json!([{"error": {"code": 400, "message": "Bad image.", "status":
            "INVALID_ARGUMENT"}}]);
        let e = ApiError::parse(400, listed.to_string().as_bytes());
        assert_eq!(e.status.as_deref(), Some("INVALID_ARGUMENT"));
        assert_eq!(e.message, "Bad image.");
        assert_eq!(e.retry_delay, None);

        let html = ApiError::parse(502, b"<html>Bad Gateway</html>");
        assert_eq!(html.to_string(), "HTTP 502: <html>Bad Gateway</html>");
    }

    #[test]
    fn reads_the_delay_the_server_asks_for() {
        let retry_info = |d: Value| {
            retry_info_delay(&json!({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": d}))
        };
        assert_eq!(retry_info(json!("0.5s")), Some(Duration::from_millis(500)));
        assert_eq!(
            retry_info(json!({"seconds": "2", "nanos": 500000000})),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            retry_in_message("Resource exhausted. Please retry in 19.5s."),
            Some(Duration::from_millis(19500))
        );
        assert_eq!(
            retry_in_message("Please retry in 3 s."),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_in_message("retry in 250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_in_message("Please try again later."), None);

        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after_header(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_header(&headers), None);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("AIzaSECRETKEY");
        assert_eq!(
            s.scrub("API key AIzaSECRETKEY not valid"),
            "API key <redacted> not valid"
        );
        let value = key_header(&s).unwrap();
        assert!(!format!("{value:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn retries_transient_answers_honouring_retry_info() {
        let (base, log) = serve(|_, i| match i {
            0 => Reply::json(
                503,
                json!({"error": {"code": 503, "status": "UNAVAILABLE",
                "message": "overloaded"}}),
            ),
            1 => Reply::json(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "message": "slow down", "details": [{"@type":
                "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.3s"}]}}),
            ),
            2 => Reply::bytes(200, b"{\"truncat".to_vec()),
            _ => Reply::json(200, json!({"ok": true})),
        })
        .await;
        let http = http(2.0, 5);
        let start = Instant::now();
        let v = get_json(&http, &format!("{base}/x")).await.unwrap();
        assert_eq!(v, json!({"ok": true}));
        assert_eq!(log.lock().unwrap().len(), 4);
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "RetryInfo ignored"
        );
    }

    #[tokio::test]
    async fn honours_retry_after_header() {
        let (base, _log) = serve(|_, i| match i {
            0 => Reply::bytes(503, Vec::new()).header("retry-after", "0.4"),
            _ => Reply::json(200, json!({})),
        })
        .await;
        let start = Instant::now();
        get_json(&http(2.0, 2), &format!("{base}/x")).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn never_retries_a_bad_request() {
        let (base, log) = serve(|_, _| {
            Reply::json(
                400,
                json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "`inlineData` isn't supported by this model."}}),
            )
        })
        .await;
        let err = get_json(&http(2.0, 5), &format!("{base}/x"))
            .await
            .unwrap_err();
        assert_eq!(log.lock().unwrap().len(), 1);
        match err.into_gen_error() {
            GenError::Permanent(m) => assert_eq!(
                m,
                "test call failed: HTTP 400 INVALID_ARGUMENT: `inlineData` isn't supported by \
                 this model."
            ),
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn timeouts_are_retried_then_reported_as_transient() {
        let (base, log) =
            serve(|_, _| Reply::json(200, json!({})).after(Duration::from_millis(800))).await;
        let err = get_json(&http(0.2, 2), &format!("{base}/x"))
            .await
            .unwrap_err();
        assert_eq!(log.lock().unwrap().len(), 3);
        match err.into_gen_error() {
            GenError::Transient(m) => {
                assert!(m.starts_with("test call failed (after 3 attempts)"), "{m}");
                assert!(m.contains("timed out"), "{m}");
            }
            other => panic!("expected a transient error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_long_server_delay_is_not_waited_for() {
        let (base, log) = serve(|_, _| {
            Reply::json(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "message": "Quota exceeded. Please retry in 3600s."}}),
            )
        })
        .await;
        let err = get_json(&http(2.0, 5), &format!("{base}/x"))
            .await
            .unwrap_err();
        assert_eq!(log.lock().unwrap().len(), 1);
        assert!(matches!(err.into_gen_error(), GenError::Transient(_)));
    }
}

//! The fake Google service, checked on its own with reqwest and gcp_auth, so that the ttv tests
//! built on it can trust its wire format and its scripted faults.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gcp_auth::TokenProvider as _;
use serde_json::{Value, json};

use crate::support::fake_google::{
    ACCESS_TOKEN, API_KEY, Api, Auth, CLOUD_PLATFORM_SCOPE, FakeGoogle, Fault, LOCATION, Match,
    PROJECT, Route, Times, check_against_sdk, check_against_sdk_allowing, sdk_shapes,
};

const IMAGE_MODEL: &str = "gemini-3.1-flash-image";
const VEO_MODEL: &str = "veo-3.1-generate-001";

fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn b64_png() -> String {
    STANDARD.encode(png(16, 9, [200, 10, 10]))
}

/// Sends a request and returns the status and the body text.
async fn send(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.expect("request reaches the fake");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts Google's error body and returns its message.
fn google_error(status: u16, text: &str, code: u16, name: &str) -> String {
    let body = parse(text);
    assert_eq!(status, code, "{text}");
    assert_eq!(body["error"]["code"], code, "{text}");
    assert_eq!(body["error"]["status"], name, "{text}");
    body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

fn generate_body(prompt: &str) -> Value {
    json!({
        "contents": [{"role": "user", "parts": [
            {"text": prompt},
            {"text": "Reference image 'hero':"},
            {"inlineData": {"mimeType": "image/png", "data": b64_png()}},
        ]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "16:9"}},
    })
}

/// The credential a request carries.
#[derive(Debug, Clone, Copy)]
enum Cred {
    Key,
    Bearer,
    Nothing,
}

/// A Vertex path (`/{version}/projects/...`) in the fake's project and location.
fn vertex_path(version: &str, model: &str, action: &str) -> String {
    format!(
        "/{version}/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{model}:{action}"
    )
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(fake: &FakeGoogle) -> Client {
        Client {
            http: crate::support::http().build().unwrap(),
            base: fake.base_url().to_owned(),
        }
    }

    /// `{base}{path}` (`path` starts with the API version): a POST of `body` if there is one, a
    /// GET otherwise.
    async fn call(&self, cred: Cred, path: &str, body: Option<&Value>) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let request = match body {
            Some(body) => self.http.post(url).json(body),
            None => self.http.get(url),
        };
        let request = match cred {
            Cred::Key => request.header("x-goog-api-key", API_KEY),
            Cred::Bearer => request.bearer_auth(ACCESS_TOKEN),
            Cred::Nothing => request,
        };
        send(request).await
    }

    /// POSTs `body` to `/v1beta/{path}` with the API key, as the Gemini API wants it.
    async fn post_with_key(&self, path: &str, body: &Value) -> (u16, String) {
        self.call(Cred::Key, &format!("/v1beta/{path}"), Some(body))
            .await
    }

    async fn generate(&self, body: &Value) -> (u16, String) {
        self.post_with_key(&format!("models/{IMAGE_MODEL}:generateContent"), body)
            .await
    }

    async fn vertex(&self, action: &str, body: &Value) -> (u16, String) {
        self.vertex_model(VEO_MODEL, action, body).await
    }

    /// POSTs `body` to a Vertex model's `action` (`v1`) with the bearer token.
    async fn vertex_model(&self, model: &str, action: &str, body: &Value) -> (u16, String) {
        self.call(Cred::Bearer, &vertex_path("v1", model, action), Some(body))
            .await
    }

    async fn vertex_poll(&self, name: &str) -> Value {
        let (status, text) = self
            .vertex("fetchPredictOperation", &json!({"operationName": name}))
            .await;
        assert_eq!(status, 200, "{text}");
        parse(&text)
    }

    async fn gemini_veo(&self, body: &Value) -> (u16, String) {
        self.post_with_key(&format!("models/{VEO_MODEL}:predictLongRunning"), body)
            .await
    }

    async fn gemini_poll(&self, name: &str) -> (u16, String) {
        self.call(Cred::Key, &format!("/v1beta/{name}"), None).await
    }
}

fn veo_body(prompt: &str, duration: u32) -> Value {
    json!({
        "instances": [{"prompt": prompt, "image": {"bytesBase64Encoded": b64_png(), "mimeType": "image/png"}}],
        "parameters": {"aspectRatio": "16:9", "durationSeconds": duration, "resolution": "720p", "sampleCount": 1},
    })
}

fn mp4_duration(bytes: &[u8]) -> f64 {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(file.path())
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("duration")
}

#[tokio::test]
async fn generate_content_answers_a_real_png_and_records_the_request() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let (status, text) = client
        .generate(&generate_body("A lighthouse at dusk"))
        .await;
    assert_eq!(status, 200, "{text}");
    let body = parse(&text);
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(body["modelVersion"], IMAGE_MODEL);
    assert!(body["responseId"].is_string() && body["usageMetadata"]["totalTokenCount"].is_number());
    let blob = &candidate["content"]["parts"][0]["inlineData"];
    assert_eq!(blob["mimeType"], "image/png");
    let img = image::load_from_memory(&STANDARD.decode(blob["data"].as_str().unwrap()).unwrap())
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (64, 36));
    let prompt = "A lighthouse at dusk\nReference image 'hero':";
    assert_eq!(img.get_pixel(32, 18).0, FakeGoogle::colour_for(prompt));

    let recorded = &fake.requests_to(Route::GenerateContent)[0];
    assert_eq!(
        (recorded.auth, recorded.api, recorded.status),
        (Auth::ApiKeyHeader, Some(Api::Gemini), 200)
    );
    assert_eq!(recorded.header("X-Goog-Api-Key"), Some("<API_KEY>"));
    assert_eq!(recorded.model.as_deref(), Some(IMAGE_MODEL));
    assert_eq!(
        (recorded.method.as_str(), recorded.path.as_str()),
        (
            "POST",
            "/v1beta/models/gemini-3.1-flash-image:generateContent"
        )
    );
    assert!(recorded.snake_case_fields.is_empty());
    let images = recorded.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].field, "contents[0].parts[2].inlineData");
    assert_eq!(images[0].label.as_deref(), Some("Reference image 'hero':"));
    assert_eq!(
        (images[0].mime_type.as_str(), images[0].decode().width()),
        ("image/png", 16)
    );
    assert_eq!(fake.submitted_prompts(), vec![prompt.to_owned()]);

    // A second identical request is a different file, as a reroll is with Google.
    let (_, again) = client
        .generate(&generate_body("A lighthouse at dusk"))
        .await;
    assert_ne!(parse(&again)["candidates"][0], body["candidates"][0]);
    assert_eq!(fake.count(Route::GenerateContent), 2);
    fake.clear_requests();
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn api_key_is_required_in_the_header_or_the_query() {
    let fake = FakeGoogle::start();
    let http = crate::support::http().build().unwrap();
    let url = format!(
        "{}/v1beta/models/{IMAGE_MODEL}:generateContent",
        fake.base_url()
    );
    let body = generate_body("x");
    let (status, text) = send(http.post(&url).json(&body)).await;
    google_error(status, &text, 403, "PERMISSION_DENIED");
    let (status, text) = send(http.post(&url).header("x-goog-api-key", "nope").json(&body)).await;
    assert!(google_error(status, &text, 403, "PERMISSION_DENIED").contains("API key not valid"));
    let (status, text) = send(http.post(format!("{url}?key={API_KEY}")).json(&body)).await;
    assert_eq!(status, 200, "{text}");
    let auths: Vec<Auth> = fake.requests().iter().map(|r| r.auth).collect();
    assert_eq!(auths, [Auth::None, Auth::WrongApiKey, Auth::ApiKeyQuery]);
    assert_eq!(fake.requests()[2].query, "key=<API_KEY>");
    assert!(
        fake.requests()
            .iter()
            .all(|r| !format!("{r:?}").contains(API_KEY))
    );
}

#[tokio::test]
async fn malformed_requests_are_refused_like_google_does() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let mut unknown = generate_body("x");
    unknown["generationConfig"]["imageConfig"]["aspect_ration"] = json!("16:9");
    let (status, text) = client.generate(&unknown).await;
    let message = google_error(status, &text, 400, "INVALID_ARGUMENT");
    assert!(
        message.contains("Unknown name \"aspect_ration\" at 'generation_config.image_config'"),
        "{message}"
    );
    assert_eq!(
        parse(&text)["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );

    let mut wrong_case = generate_body("x");
    wrong_case["contents"][0]["parts"][2] =
        json!({"InlineData": {"mimeType": "image/png", "data": b64_png()}});
    let (status, text) = client.generate(&wrong_case).await;
    assert!(
        google_error(status, &text, 400, "INVALID_ARGUMENT")
            .contains("Unknown name \"InlineData\"")
    );

    let snake = json!({"contents": [{"parts": [{"text": "x"}, {"inline_data": {"mime_type": "image/png", "data": b64_png()}}]}],
                       "generation_config": {"response_modalities": ["IMAGE"]}});
    let (status, text) = client.generate(&snake).await;
    assert_eq!(status, 200, "{text}");
    let recorded = fake.requests().pop().unwrap();
    assert_eq!(
        recorded.snake_case_fields,
        [
            "contents[0].parts[1].inline_data",
            "contents[0].parts[1].inline_data.mime_type",
            "generation_config",
            "generation_config.response_modalities"
        ]
    );
    assert_eq!(recorded.images().len(), 1);

    for data in [STANDARD.encode(b"not an image at all"), "%%%".to_owned()] {
        let mut bad = generate_body("x");
        bad["contents"][0]["parts"][2]["inlineData"]["data"] = json!(data);
        let (status, text) = client.generate(&bad).await;
        google_error(status, &text, 400, "INVALID_ARGUMENT");
    }
    let mut mislabelled = generate_body("x");
    mislabelled["contents"][0]["parts"][2]["inlineData"]["mimeType"] = json!("image/jpeg");
    let (status, text) = client.generate(&mislabelled).await;
    google_error(status, &text, 400, "INVALID_ARGUMENT");
    let mut ratio = generate_body("x");
    ratio["generationConfig"]["imageConfig"]["aspectRatio"] = json!("7:3");
    let (status, text) = client.generate(&ratio).await;
    google_error(status, &text, 400, "INVALID_ARGUMENT");
    let url = format!(
        "{}/v1beta/models/{IMAGE_MODEL}:generateContent",
        fake.base_url()
    );
    let (status, text) = send(
        client
            .http
            .post(url)
            .header("x-goog-api-key", API_KEY)
            .body("{not json"),
    )
    .await;
    assert!(
        google_error(status, &text, 400, "INVALID_ARGUMENT")
            .starts_with("Invalid JSON payload received.")
    );
    let (status, text) = send(client.http.get(format!("{}/v2/nothing", fake.base_url()))).await;
    google_error(status, &text, 404, "NOT_FOUND");
    assert_eq!(fake.count(Route::Unknown), 1);
}

#[tokio::test]
async fn scripted_frame_faults() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    fake.script(Fault::ImageSafety, Match::prompt("storm"), 1);
    fake.script(
        Fault::PromptBlocked,
        Match::prompt("blocked"),
        Times::Forever,
    );
    fake.script(Fault::JpegAnswer, Match::prompt("jpeg"), 1);

    let body = parse(&client.generate(&generate_body("a storm")).await.1);
    assert_eq!(body["candidates"][0]["finishReason"], "IMAGE_SAFETY");
    assert!(body["candidates"][0]["finishMessage"].is_string());
    assert!(body["candidates"][0]["content"]["parts"][0]["text"].is_string());
    assert!(!body.to_string().contains("inlineData"));
    let body = parse(&client.generate(&generate_body("a storm")).await.1);
    assert_eq!(
        body["candidates"][0]["finishReason"], "STOP",
        "ImageSafety was scripted once"
    );

    for _ in 0..2 {
        let body = parse(&client.generate(&generate_body("blocked")).await.1);
        assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");
        assert!(body.get("candidates").is_none());
    }
    let body = parse(&client.generate(&generate_body("jpeg please")).await.1);
    let blob = &body["candidates"][0]["content"]["parts"][0]["inlineData"];
    assert_eq!(blob["mimeType"], "image/jpeg");
    let bytes = STANDARD.decode(blob["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Jpeg
    );
}

#[tokio::test]
async fn scripted_http_faults() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    fake.script(Fault::Status429RetryInfo { delay: "0.2s" }, Match::any(), 1);
    fake.script(Fault::Status500, Match::any(), 1);
    fake.script(Fault::Status503, Match::any(), 1);
    fake.script(Fault::Status403, Match::any(), 1);
    fake.script(Fault::NotJson, Match::any(), 1);
    fake.script(Fault::Truncated, Match::any(), 1);
    let body = generate_body("x");

    let (status, text) = client.generate(&body).await;
    assert!(
        google_error(status, &text, 429, "RESOURCE_EXHAUSTED").ends_with("Please retry in 0.2s.")
    );
    let details = parse(&text)["error"]["details"].clone();
    let retry = details
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo");
    assert_eq!(retry.unwrap()["retryDelay"], "0.2s");
    let (status, text) = client.generate(&body).await;
    google_error(status, &text, 500, "INTERNAL");
    let (status, text) = client.generate(&body).await;
    google_error(status, &text, 503, "UNAVAILABLE");
    let (status, text) = client.generate(&body).await;
    google_error(status, &text, 403, "PERMISSION_DENIED");
    let (status, text) = client.generate(&body).await;
    assert_eq!(status, 200);
    assert!(text.starts_with("<!DOCTYPE html>") && serde_json::from_str::<Value>(&text).is_err());
    let (status, text) = client.generate(&body).await;
    assert_eq!(status, 200);
    assert!(
        text.starts_with('{') && serde_json::from_str::<Value>(&text).is_err(),
        "{text}"
    );
    let (status, text) = client.generate(&body).await;
    assert_eq!(status, 200, "every script is used up: {text}");
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 500, 503, 403, 200, 200, 200]);

    fake.script(
        Fault::Hang(Duration::from_secs(2)),
        Match::route(Route::GenerateContent),
        1,
    );
    let impatient = crate::support::http()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let url = format!(
        "{}/v1beta/models/{IMAGE_MODEL}:generateContent",
        fake.base_url()
    );
    let error = impatient
        .post(url)
        .header("x-goog-api-key", API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
}

#[tokio::test]
async fn vertex_veo_runs_an_operation_to_a_real_mp4() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let (status, text) = client
        .vertex("predictLongRunning", &veo_body("Slow dolly in", 6))
        .await;
    assert_eq!(status, 200, "{text}");
    let name = parse(&text)["name"].as_str().unwrap().to_owned();
    let prefix = format!(
        "projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{VEO_MODEL}/operations/"
    );
    assert!(name.starts_with(&prefix), "{name}");
    let first = client.vertex_poll(&name).await;
    assert_eq!(
        (first["name"].as_str(), first["done"].as_bool()),
        (Some(name.as_str()), Some(false))
    );
    let done = client.vertex_poll(&name).await;
    assert_eq!(done["done"], true);
    let response = &done["response"];
    assert_eq!(
        response["@type"],
        "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
    );
    assert_eq!(response["raiMediaFilteredCount"], 0);
    assert_eq!(response["videos"][0]["mimeType"], "video/mp4");
    let mp4 = STANDARD
        .decode(
            response["videos"][0]["bytesBase64Encoded"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(mp4_duration(&mp4), 6.0);

    let submit = &fake.requests_to(Route::VeoSubmit)[0];
    assert_eq!((submit.auth, submit.api), (Auth::Bearer, Some(Api::Vertex)));
    assert_eq!(
        submit.header("authorization"),
        Some("Bearer <ACCESS_TOKEN>")
    );
    assert_eq!(submit.images()[0].field, "instances[0].image");
    assert_eq!(submit.prompt().as_deref(), Some("Slow dolly in"));
    assert_eq!(fake.count(Route::VeoPoll), 2);

    let url = format!(
        "{}/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{VEO_MODEL}:predictLongRunning",
        fake.base_url()
    );
    let (status, text) = send(client.http.post(&url).json(&veo_body("x", 8))).await;
    google_error(status, &text, 401, "UNAUTHENTICATED");
    let (status, text) = send(
        client
            .http
            .post(&url)
            .bearer_auth("stale")
            .json(&veo_body("x", 8)),
    )
    .await;
    google_error(status, &text, 401, "UNAUTHENTICATED");
    let (status, text) = client
        .vertex(
            "fetchPredictOperation",
            &json!({"operationName": format!("{prefix}42")}),
        )
        .await;
    google_error(status, &text, 404, "NOT_FOUND");

    let mut bad = Vec::new();
    for (field, value) in [
        ("durationSeconds", json!(5)),
        ("aspectRatio", json!("1:1")),
        ("resolution", json!("4k")),
        ("sampleCount", json!(5)),
        ("resolution", json!("1080p")),
    ] {
        let mut body = veo_body("x", 6);
        body["parameters"][field] = value;
        let (status, text) = client.vertex("predictLongRunning", &body).await;
        bad.push(google_error(status, &text, 400, "INVALID_ARGUMENT"));
    }
    assert!(bad[4].contains("1080p"), "{bad:?}");
    let mut last_frame = veo_body("x", 8);
    last_frame["instances"][0]["lastFrame"] =
        json!({"bytesBase64Encoded": b64_png(), "mimeType": "image/png"});
    let (status, text) = client.vertex("predictLongRunning", &last_frame).await;
    assert_eq!(status, 200, "Veo 3.1 takes a last frame: {text}");
    fake.reinstate("veo-3.0-generate-001");
    let (status, text) = client
        .vertex_model("veo-3.0-generate-001", "predictLongRunning", &last_frame)
        .await;
    assert!(google_error(status, &text, 400, "INVALID_ARGUMENT").contains("lastFrame"));
}

#[tokio::test]
async fn vertex_storage_uri_gives_gcs_objects() {
    let fake = FakeGoogle::start();
    fake.polls_before_done(0);
    let client = Client::new(&fake);
    let mut body = veo_body("gcs", 4);
    body["parameters"]["storageUri"] = json!("gs://ttv-bucket/out/");
    body["parameters"]["sampleCount"] = json!(2);
    let name = parse(&client.vertex("predictLongRunning", &body).await.1)["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = client.vertex_poll(&name).await;
    let videos = done["response"]["videos"].as_array().unwrap().clone();
    assert_eq!(videos.len(), 2);
    let uri = videos[0]["gcsUri"].as_str().unwrap();
    let object = uri.strip_prefix("gs://ttv-bucket/").expect(uri);
    let url = format!(
        "{}/storage/v1/b/ttv-bucket/o/{}?alt=media",
        fake.base_url(),
        object.replace('/', "%2F")
    );
    let (status, _) = send(client.http.get(&url)).await;
    assert_eq!(status, 401);
    let response = client
        .http
        .get(&url)
        .bearer_auth(ACCESS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(mp4_duration(&response.bytes().await.unwrap()), 4.0);
    let meta_url = url.trim_end_matches("?alt=media");
    let (status, text) = send(client.http.get(meta_url).bearer_auth(ACCESS_TOKEN)).await;
    assert_eq!((status, parse(&text)["name"].as_str()), (200, Some(object)));
    assert_eq!(fake.count(Route::Gcs), 3);
}

#[tokio::test]
async fn gemini_api_veo_downloads_through_a_redirect() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let mut inline = veo_body("x", 8);
    inline["instances"][0]["image"] =
        json!({"inlineData": {"mimeType": "image/png", "data": b64_png()}});
    let (status, text) = client.gemini_veo(&inline).await;
    assert_eq!(
        google_error(status, &text, 400, "INVALID_ARGUMENT"),
        "`inlineData` isn't supported by this model."
    );
    for (field, value) in [
        ("seed", json!(7)),
        ("generateAudio", json!(true)),
        ("storageUri", json!("gs://b/")),
    ] {
        let mut body = veo_body("x", 8);
        body["parameters"][field] = value;
        let (status, text) = client.gemini_veo(&body).await;
        assert!(google_error(status, &text, 400, "INVALID_ARGUMENT").contains(field));
    }

    let (status, text) = client.gemini_veo(&veo_body("Camera cranes up", 8)).await;
    assert_eq!(status, 200, "{text}");
    let name = parse(&text)["name"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with(&format!("models/{VEO_MODEL}/operations/")),
        "{name}"
    );
    assert_eq!(parse(&client.gemini_poll(&name).await.1)["done"], false);
    let done = parse(&client.gemini_poll(&name).await.1);
    let response = &done["response"];
    assert_eq!(
        response["@type"],
        "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
    );
    let uri = response["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
        .as_str()
        .unwrap();
    assert!(
        uri.starts_with(&format!("{}/v1beta/files/", fake.base_url()))
            && uri.ends_with(":download?alt=media")
    );

    let (status, text) = send(client.http.get(uri)).await;
    google_error(status, &text, 403, "PERMISSION_DENIED");
    let response = client
        .http
        .get(uri)
        .header("x-goog-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    assert_eq!(mp4_duration(&response.bytes().await.unwrap()), 8.0);
    assert_eq!(
        (fake.count(Route::Download), fake.count(Route::FileBlob)),
        (2, 1)
    );
    assert_eq!(fake.requests_to(Route::Download)[1].status, 302);

    fake.script(Fault::InlineVideo, Match::prompt("inline"), 1);
    fake.polls_before_done(0);
    let name = parse(&client.gemini_veo(&veo_body("inline video", 4)).await.1)["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = parse(&client.gemini_poll(&name).await.1);
    let video = &done["response"]["generateVideoResponse"]["generatedSamples"][0]["video"];
    assert_eq!(video["encoding"], "video/mp4");
    assert_eq!(
        mp4_duration(
            &STANDARD
                .decode(video["encodedVideo"].as_str().unwrap())
                .unwrap()
        ),
        4.0
    );
}

#[tokio::test]
async fn scripted_operation_faults() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    fake.script(Fault::RaiFiltered, Match::prompt("rai"), 1);
    fake.script(
        Fault::OperationError {
            code: 13,
            message: "Internal error.",
        },
        Match::prompt("err"),
        1,
    );
    fake.script(Fault::NeverFinishes, Match::prompt("never"), 1);
    fake.script(Fault::PollsBeforeDone(3), Match::prompt("slow"), 1);
    fake.script(
        Fault::UnknownOperation,
        Match::prompt("lost").on(Route::VeoPoll),
        1,
    );
    fake.script(
        Fault::Status503,
        Match::prompt("busy").on(Route::VeoPoll),
        1,
    );
    let submit = |prompt: &'static str| {
        let client = &client;
        async move {
            let (status, text) = client
                .vertex("predictLongRunning", &veo_body(prompt, 8))
                .await;
            assert_eq!(status, 200, "{text}");
            parse(&text)["name"].as_str().unwrap().to_owned()
        }
    };
    let until_done = |name: String| {
        let client = &client;
        async move {
            for poll in 1..=10 {
                let answer = client.vertex_poll(&name).await;
                if answer["done"] == true {
                    return (poll, answer);
                }
            }
            panic!("{name} never finished");
        }
    };

    let (_, rai) = until_done(submit("rai").await).await;
    assert_eq!(rai["response"]["raiMediaFilteredCount"], 1);
    assert!(rai["response"]["raiMediaFilteredReasons"][0].is_string());
    assert!(rai["response"].get("videos").is_none());
    let (_, error) = until_done(submit("err").await).await;
    assert_eq!(
        error["error"],
        json!({"code": 13, "message": "Internal error."})
    );
    assert!(error.get("response").is_none());
    let never = submit("never").await;
    for _ in 0..4 {
        assert_eq!(client.vertex_poll(&never).await["done"], false);
    }
    let (polls, _) = until_done(submit("slow").await).await;
    assert_eq!(polls, 4);
    let lost = submit("lost").await;
    let (status, text) = client
        .vertex("fetchPredictOperation", &json!({"operationName": lost}))
        .await;
    google_error(status, &text, 404, "NOT_FOUND");
    let busy = submit("busy").await;
    let (status, text) = client
        .vertex("fetchPredictOperation", &json!({"operationName": busy}))
        .await;
    google_error(status, &text, 503, "UNAVAILABLE");
    assert_eq!(fake.count(Route::VeoSubmit), 6);
    assert_eq!(
        fake.submitted_prompts(),
        ["rai", "err", "never", "slow", "lost", "busy"]
    );
}

#[tokio::test]
async fn service_account_token_exchange_with_gcp_auth() {
    let fake = FakeGoogle::start();
    let dir = tempfile::tempdir().unwrap();
    let path = fake.write_service_account(dir.path());
    let account: Value = parse(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(account["token_uri"], format!("{}/token", fake.base_url()));
    assert_eq!(account["project_id"], PROJECT);

    let provider = gcp_auth::CustomServiceAccount::from_file(&path).expect("service account");
    let token = provider
        .token(&[CLOUD_PLATFORM_SCOPE])
        .await
        .unwrap_or_else(|e| panic!("token from the fake: {e:?}\n{:#?}", fake.requests()));
    assert_eq!(token.as_str(), ACCESS_TOKEN);
    let recorded = &fake.requests_to(Route::Token)[0];
    assert_eq!(
        recorded.form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert_eq!(recorded.status, 200);

    let http = crate::support::http().build().unwrap();
    let url = format!("{}/token", fake.base_url());
    let assertion = &recorded.form["assertion"];
    let (head, _) = assertion.rsplit_once('.').unwrap();
    let forged = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={head}.AAAA"
    );
    let form = "application/x-www-form-urlencoded";
    let (status, text) = send(http.post(&url).header("content-type", form).body(forged)).await;
    assert_eq!(
        (status, parse(&text)["error_description"].as_str()),
        (400, Some("Invalid JWT Signature."))
    );
    let (status, text) = send(
        http.post(&url)
            .header("content-type", form)
            .body("grant_type=password"),
    )
    .await;
    assert_eq!(
        (status, parse(&text)["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );

    fake.script(Fault::Status503, Match::route(Route::Token), 1);
    let fresh = gcp_auth::CustomServiceAccount::from_file(&path).unwrap();
    let (status, _) = send(
        http.post(&url)
            .header("content-type", form)
            .body("grant_type=x"),
    )
    .await;
    assert_eq!(status, 503, "the scripted fault hits the token route");
    assert_eq!(
        fresh.token(&[CLOUD_PLATFORM_SCOPE]).await.unwrap().as_str(),
        ACCESS_TOKEN
    );
    assert_eq!(FakeGoogle::service_account_email(), account["client_email"]);
}

#[test]
fn env_points_ttv_at_the_fake_and_drop_stops_it() {
    let fake = FakeGoogle::start();
    let env = fake.env();
    let base = fake.base_url().to_owned();
    for var in [
        "TTV_GEMINI_BASE_URL",
        "TTV_VERTEX_BASE_URL",
        "TTV_STORAGE_BASE_URL",
    ] {
        assert!(env.contains(&(var, base.clone())), "{var}");
    }
    assert!(env.contains(&("GEMINI_API_KEY", API_KEY.to_owned())));
    fake.script(
        Fault::Hang(Duration::from_secs(60)),
        Match::any(),
        Times::Forever,
    );
    let address = base.trim_start_matches("http://").to_owned();
    let mut hanging = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(
        &mut hanging,
        format!(
            "GET /v1beta/files/x:download HTTP/1.1\r\nhost: x\r\nx-goog-api-key: {API_KEY}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    drop(fake);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drop does not wait for hanging requests"
    );
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "the port is closed after drop"
    );
}

/// The body of an image request with `images` inline images and an `imageSize`.
fn sized_body(size: &str, images: usize) -> Value {
    let mut parts = vec![json!({"text": "A lighthouse at dusk"})];
    for _ in 0..images {
        parts.push(json!({"inlineData": {"mimeType": "image/png", "data": b64_png()}}));
    }
    json!({
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["IMAGE"],
                             "imageConfig": {"aspectRatio": "16:9", "imageSize": size}},
    })
}

/// The width of the image of a generateContent answer.
fn answered_width(text: &str) -> u32 {
    let body = parse(text);
    let data = body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
        .as_str()
        .unwrap_or_else(|| panic!("no image: {text}"));
    image::load_from_memory(&STANDARD.decode(data).unwrap())
        .unwrap()
        .width()
}

/// The text part of a generateContent answer, parsed as JSON.
fn answered_json(answer: &Value) -> Value {
    parse(
        answer["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text part: {answer:#}")),
    )
}

#[tokio::test]
async fn api_versions_are_served_as_the_sdk_sends_them() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let body = generate_body("x");
    for version in ["v1", "v1beta"] {
        let path = format!("/{version}/models/{IMAGE_MODEL}:generateContent");
        let (status, text) = client.call(Cred::Key, &path, Some(&body)).await;
        assert_eq!(status, 200, "{version}: {text}");
    }
    for version in ["v1", "v1beta1"] {
        let path = vertex_path(version, IMAGE_MODEL, "generateContent");
        let (status, text) = client.call(Cred::Bearer, &path, Some(&body)).await;
        assert_eq!(status, 200, "Vertex generateContent on {version}: {text}");
        let path = vertex_path(version, VEO_MODEL, "predictLongRunning");
        let (status, text) = client
            .call(Cred::Bearer, &path, Some(&veo_body("x", 8)))
            .await;
        assert_eq!(status, 200, "{version}: {text}");
        let poll = json!({"operationName": parse(&text)["name"]});
        let path = vertex_path(version, VEO_MODEL, "fetchPredictOperation");
        let (status, text) = client.call(Cred::Bearer, &path, Some(&poll)).await;
        assert_eq!(status, 200, "{version}: {text}");
    }
    let versions: Vec<String> = fake
        .requests()
        .into_iter()
        .map(|r| r.version.unwrap_or_default())
        .collect();
    assert_eq!(versions[..2], ["v1", "v1beta"]);
    assert_eq!(
        versions[2..],
        ["v1", "v1", "v1", "v1beta1", "v1beta1", "v1beta1"]
    );
    assert!(fake.requests().iter().all(|r| r.port == fake.port()));

    // Veo was only ever v1beta on the Gemini API; v1beta1 is Vertex's, v1beta the Gemini API's.
    let veo = veo_body("x", 8);
    for (cred, path) in [
        (
            Cred::Key,
            format!("/v1/models/{VEO_MODEL}:predictLongRunning"),
        ),
        (
            Cred::Key,
            format!("/v1beta1/models/{IMAGE_MODEL}:generateContent"),
        ),
        (
            Cred::Bearer,
            vertex_path("v1beta", VEO_MODEL, "predictLongRunning"),
        ),
    ] {
        let (status, text) = client.call(cred, &path, Some(&veo)).await;
        google_error(status, &text, 404, "NOT_FOUND");
    }
    assert_eq!(fake.count(Route::Unknown), 3);
}

#[tokio::test]
async fn retired_and_unknown_models_answer_404_on_every_route() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let (image, veo) = (generate_body("x"), veo_body("x", 8));
    for model in [
        "gemini-2.5-flash-image",
        "gemini-3-pro-image-preview",
        "gemini-3.1-flash-image-preview",
        "gemini-9-imaginary",
    ] {
        let path = format!("models/{model}:generateContent");
        let (status, text) = client.post_with_key(&path, &image).await;
        let message = google_error(status, &text, 404, "NOT_FOUND");
        let expected = format!(
            "models/{model} is not found for API version v1beta, or is not supported for \
             generateContent."
        );
        assert!(message.starts_with(&expected), "{message}");
        let (status, text) = client
            .call(Cred::Key, &format!("/v1/models/{model}"), None)
            .await;
        let message = google_error(status, &text, 404, "NOT_FOUND");
        assert!(
            message.contains("API version v1, or is not supported for get"),
            "{message}"
        );
    }
    for model in ["veo-3.0-generate-001", "veo-3.0-fast-generate-001", "veo-9"] {
        let (status, text) = client.vertex_model(model, "predictLongRunning", &veo).await;
        let message = google_error(status, &text, 404, "NOT_FOUND");
        let resource =
            format!("projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{model}");
        assert!(
            message.starts_with(&format!("Publisher Model `{resource}` was not found")),
            "{message}"
        );
        let path = format!("models/{model}:predictLongRunning");
        let (status, text) = client.post_with_key(&path, &veo).await;
        google_error(status, &text, 404, "NOT_FOUND");
        let path = format!("/v1beta1/publishers/google/models/{model}");
        let (status, text) = client.call(Cred::Bearer, &path, None).await;
        google_error(status, &text, 404, "NOT_FOUND");
    }
    // A model answers only for its own method.
    let (status, text) = client
        .vertex_model(IMAGE_MODEL, "predictLongRunning", &veo)
        .await;
    google_error(status, &text, 404, "NOT_FOUND");
    let path = format!("models/{VEO_MODEL}:generateContent");
    let (status, text) = client.post_with_key(&path, &image).await;
    let message = google_error(status, &text, 404, "NOT_FOUND");
    assert!(
        message.contains("not supported for generateContent"),
        "{message}"
    );
    assert_eq!(
        fake.count(Route::Unknown),
        0,
        "the model's 404s, not the route's"
    );

    fake.retire(IMAGE_MODEL);
    let (status, text) = client.generate(&image).await;
    google_error(status, &text, 404, "NOT_FOUND");
    fake.reinstate("gemini-2.5-flash-image");
    let path = "models/gemini-2.5-flash-image:generateContent";
    let (status, text) = client.post_with_key(path, &image).await;
    assert_eq!(status, 200, "{text}");
    fake.reinstate("veo-3.0-generate-001");
    let mut uhd = veo_body("x", 8);
    uhd["parameters"]["resolution"] = json!("4k");
    let (status, text) = client
        .vertex_model("veo-3.0-generate-001", "predictLongRunning", &uhd)
        .await;
    let message = google_error(status, &text, 400, "INVALID_ARGUMENT");
    assert!(message.contains("4k"), "Veo 3.0 made no 4k: {message}");
    let (status, text) = client.vertex("predictLongRunning", &uhd).await;
    assert_eq!(status, 200, "Veo 3.1 makes 4k at 8 s: {text}");
}

#[tokio::test]
async fn models_get_is_free_and_answers_the_model_resource() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let get = |cred: Cred, path: String| {
        let client = &client;
        async move { client.call(cred, &path, None).await }
    };
    let (status, text) = get(Cred::Key, format!("/v1/models/{IMAGE_MODEL}")).await;
    assert_eq!(status, 200, "{text}");
    let model = parse(&text);
    assert_eq!(model["name"], format!("models/{IMAGE_MODEL}"));
    for field in ["baseModelId", "version", "displayName", "description"] {
        assert!(model[field].is_string(), "{field}: {model:#}");
    }
    for field in ["inputTokenLimit", "outputTokenLimit"] {
        assert!(model[field].is_u64(), "{field}: {model:#}");
    }
    let methods = |text: &str| parse(text)["supportedGenerationMethods"].clone();
    assert_eq!(methods(&text), json!(["generateContent", "countTokens"]));
    let (_, text) = get(Cred::Key, "/v1beta/models/gemini-3.5-flash".into()).await;
    assert_eq!(methods(&text), json!(["generateContent", "countTokens"]));
    let (_, text) = get(Cred::Key, format!("/v1beta/models/{VEO_MODEL}")).await;
    assert_eq!(methods(&text), json!(["predictLongRunning"]));
    let (status, text) = get(Cred::Nothing, format!("/v1beta/models/{IMAGE_MODEL}")).await;
    google_error(status, &text, 403, "PERMISSION_DENIED");

    let vertex = format!("/v1beta1/publishers/google/models/{VEO_MODEL}");
    let (status, text) = get(Cred::Bearer, vertex.clone()).await;
    assert_eq!(status, 200, "{text}");
    let model = parse(&text);
    assert_eq!(
        model["name"],
        format!("publishers/google/models/{VEO_MODEL}")
    );
    assert_eq!(
        [
            &model["versionId"],
            &model["openSourceCategory"],
            &model["launchStage"]
        ],
        ["001", "PROPRIETARY", "GA"]
    );
    let template = model["publisherModelTemplate"].as_str().unwrap();
    assert!(
        template.ends_with(&format!("/models/{VEO_MODEL}")),
        "{template}"
    );
    let v1 = format!("/v1/publishers/google/models/{IMAGE_MODEL}");
    assert_eq!(get(Cred::Bearer, v1).await.0, 200);
    let (status, text) = get(Cred::Nothing, vertex).await;
    google_error(status, &text, 401, "UNAUTHENTICATED");
    assert_eq!(fake.count(Route::ModelsGet), 7);
    assert_eq!(fake.paid_requests(), 0, "models.get is free");
    let first = &fake.requests_to(Route::ModelsGet)[0];
    assert_eq!(
        (first.api, first.model.as_deref(), first.version.as_deref()),
        (Some(Api::Gemini), Some(IMAGE_MODEL), Some("v1"))
    );

    // Google may withdraw Veo from the Gemini API: models.get says so before anything is paid.
    fake.gemini_api_veo(false);
    let (_, text) = get(Cred::Key, format!("/v1beta/models/{VEO_MODEL}")).await;
    assert_eq!(methods(&text), json!([]));
    let (status, text) = client.gemini_veo(&veo_body("x", 8)).await;
    let message = google_error(status, &text, 404, "NOT_FOUND");
    assert!(
        message.contains("not supported for predictLongRunning"),
        "{message}"
    );
    let (status, _) = client.vertex("predictLongRunning", &veo_body("x", 8)).await;
    assert_eq!(status, 200, "Vertex still serves Veo");
    client.generate(&generate_body("x")).await;
    assert_eq!(
        fake.paid_requests(),
        3,
        "the refused submit was a request to a paid route too"
    );
}

#[tokio::test]
async fn image_sizes_and_the_reference_limit_follow_the_model() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let generate = |model: &'static str, body: Value| {
        let client = &client;
        async move {
            let path = format!("models/{model}:generateContent");
            client.post_with_key(&path, &body).await
        }
    };
    let mut widths = Vec::new();
    for size in ["512px", "1K", "2K", "4K"] {
        let (status, text) = generate(IMAGE_MODEL, sized_body(size, 1)).await;
        assert_eq!(status, 200, "{size}: {text}");
        let answer = parse(&text);
        assert!(answer["responseId"].is_string(), "{answer:#}");
        assert_eq!(answer["modelVersion"], IMAGE_MODEL);
        widths.push(answered_width(&text));
    }
    assert_eq!(widths, [32, 64, 128, 256], "the width follows imageSize");
    let (_, text) = generate("gemini-3-pro-image", sized_body("2K", 1)).await;
    assert_eq!(answered_width(&text), 128);

    for (model, size) in [
        ("gemini-3-pro-image", "512px"),
        ("gemini-3.1-flash-lite-image", "2K"),
        (IMAGE_MODEL, "8K"),
        (IMAGE_MODEL, "1k"),
    ] {
        let (status, text) = generate(model, sized_body(size, 1)).await;
        let message = google_error(status, &text, 400, "INVALID_ARGUMENT");
        assert!(
            message.contains(size) && message.contains(model),
            "{message}"
        );
    }
    let (status, text) = generate("gemini-3.1-flash-lite-image", sized_body("1K", 1)).await;
    assert_eq!(status, 200, "{text}");

    let (status, text) = generate("gemini-3-pro-image", sized_body("1K", 14)).await;
    assert_eq!(status, 200, "14 images are allowed: {text}");
    assert_eq!(fake.requests().pop().unwrap().images().len(), 14);
    let (status, text) = generate("gemini-3-pro-image", sized_body("1K", 15)).await;
    let message = google_error(status, &text, 400, "INVALID_ARGUMENT");
    assert!(message.contains("15 inline images"), "{message}");
}

/// The SDK capture's request for `call`.
fn sdk_entry(call: &str) -> Value {
    sdk_shapes::sdk_requests()
        .iter()
        .find(|r| r["call"] == call)
        .unwrap_or_else(|| panic!("no `{call}` in the SDK capture"))
        .clone()
}

/// The storyboard request of the SDK capture, with another prompt.
fn storyboard_request(prompt: &str) -> Value {
    let mut body = sdk_entry("text-json-schema-gemini-api")["body"].clone();
    body["contents"][0]["parts"][0]["text"] = json!(prompt);
    body
}

#[tokio::test]
async fn text_models_answer_json_shaped_by_the_schema() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let text_model = "gemini-3.5-flash";
    let generate = |body: Value| {
        let client = &client;
        async move {
            let path = format!("models/{text_model}:generateContent");
            client.post_with_key(&path, &body).await
        }
    };
    let prompt = "A lighthouse keeper's night, 4 shots";
    let (status, text) = generate(storyboard_request(prompt)).await;
    assert_eq!(status, 200, "{text}");
    let answer = parse(&text);
    assert_eq!(answer["modelVersion"], text_model);
    assert!(answer["responseId"].is_string());
    let usage = &answer["usageMetadata"];
    let tokens = |name: &str| {
        usage[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {usage}"))
    };
    assert_eq!(
        tokens("totalTokenCount"),
        tokens("promptTokenCount") + tokens("candidatesTokenCount")
    );
    assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
    let storyboard = answered_json(&answer);
    let shots = storyboard["shots"].as_array().expect("shots");
    assert_eq!(shots.len(), 4, "the prompt asked for 4: {storyboard:#}");
    assert_eq!(shots[1]["id"], "shot-2", "an id is a slug: {storyboard:#}");
    assert_eq!(shots[1]["motion"], format!("motion 2: {prompt}"));
    assert!(shots.iter().all(|s| s["end"].is_string()));

    let mut body = storyboard_request("Three shots");
    body["generationConfig"]["responseSchema"] = json!({"type": "OBJECT", "properties": {
        "title": {"type": "STRING", "maxLength": 5},
        "mood": {"type": "STRING", "enum": ["calm", "storm"]},
        "seconds": {"type": "INTEGER", "minimum": 4, "maximum": 8},
        "speed": {"type": "NUMBER"},
        "loop": {"type": "BOOLEAN"},
        "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": 1},
    }});
    let instance = answered_json(&parse(&generate(body).await.1));
    let expected = json!({"title": "title", "mood": "calm", "seconds": 4, "speed": 1.5,
                          "loop": true, "tags": ["tags 1: Three shots"]});
    assert_eq!(instance, expected);

    let plain = json!({"contents": [{"role": "user", "parts": [{"text": "Name a lighthouse"}]}]});
    let answer = parse(&generate(plain.clone()).await.1);
    let text = &answer["candidates"][0]["content"]["parts"][0]["text"];
    assert_eq!(text, "A short answer about: Name a lighthouse");

    let mut images = plain;
    images["generationConfig"] = json!({"responseModalities": ["IMAGE"]});
    let mut lower_case = storyboard_request("x");
    lower_case["generationConfig"]["responseSchema"]["type"] = json!("object");
    let mut no_items = storyboard_request("x");
    no_items["generationConfig"]["responseSchema"]["properties"]["shots"] =
        json!({"type": "ARRAY"});
    let mut no_mime = storyboard_request("x");
    no_mime["generationConfig"]["responseMimeType"] = json!("text/plain");
    for (body, needle) in [
        (images, "response modalities: image"),
        (lower_case, "\"object\""),
        (no_items, "properties[shots].value.items"),
        (no_mime, "response_mime_type"),
    ] {
        let (status, text) = generate(body).await;
        let message = google_error(status, &text, 400, "INVALID_ARGUMENT");
        assert!(message.contains(needle), "`{needle}` in {message}");
    }
}

/// A Veo submission with `n` asset reference images and no first frame.
fn with_references(n: usize) -> Value {
    let reference = json!({"image": {"bytesBase64Encoded": b64_png(), "mimeType": "image/png"},
                           "referenceType": "ASSET"});
    let mut body = veo_body("The keeper walks on the pier", 8);
    body["instances"][0] = json!({"prompt": "The keeper walks on the pier",
                                  "referenceImages": vec![reference; n]});
    body
}

#[tokio::test]
async fn veo_takes_reference_images_4k_and_several_samples() {
    let fake = FakeGoogle::start();
    fake.polls_before_done(0);
    let client = Client::new(&fake);
    let (status, text) = client
        .vertex("predictLongRunning", &with_references(3))
        .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = client.gemini_veo(&with_references(2)).await;
    assert_eq!(status, 200, "the Gemini API takes them too: {text}");
    let images = fake.requests_to(Route::VeoSubmit)[0].images();
    let fields: Vec<&str> = images.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        (0..3)
            .map(|i| format!("instances[0].referenceImages[{i}].image"))
            .collect::<Vec<_>>()
    );

    let frame = json!({"bytesBase64Encoded": b64_png(), "mimeType": "image/png"});
    let mut with_image = with_references(1);
    with_image["instances"][0]["image"] = frame.clone();
    let mut with_last = with_references(1);
    with_last["instances"][0]["lastFrame"] = frame;
    let mut short = with_references(1);
    short["parameters"]["durationSeconds"] = json!(6);
    let mut style = with_references(1);
    style["instances"][0]["referenceImages"][0]["referenceType"] = json!("STYLE");
    let mut not_png = with_references(1);
    not_png["instances"][0]["referenceImages"][0]["image"]["bytesBase64Encoded"] =
        json!(STANDARD.encode(b"no image"));
    let mut uhd_short = veo_body("x", 6);
    uhd_short["parameters"]["resolution"] = json!("4k");
    for (body, needle) in [
        (with_references(4), "1 to 3"),
        (with_references(0), "1 to 3"),
        (with_image, "together with `image`"),
        (with_last, "together with `lastFrame`"),
        (short, "8 second"),
        (style, "ASSET"),
        (not_png, "reference_images[0].image"),
        (uhd_short, "4k is only supported for 8 second videos"),
    ] {
        let (status, text) = client.vertex("predictLongRunning", &body).await;
        let message = google_error(status, &text, 400, "INVALID_ARGUMENT");
        assert!(message.contains(needle), "`{needle}` in {message}");
    }
    fake.reinstate("veo-3.0-generate-001");
    let (status, text) = client
        .vertex_model(
            "veo-3.0-generate-001",
            "predictLongRunning",
            &with_references(1),
        )
        .await;
    let message = google_error(status, &text, 400, "INVALID_ARGUMENT");
    assert!(message.contains("referenceImages"), "{message}");

    let mut samples = veo_body("three takes", 8);
    samples["parameters"]["sampleCount"] = json!(3);
    samples["parameters"]["resolution"] = json!("4k");
    let (status, text) = client.vertex("predictLongRunning", &samples).await;
    assert_eq!(status, 200, "{text}");
    let name = parse(&text)["name"].as_str().unwrap().to_owned();
    let done = client.vertex_poll(&name).await;
    let videos: Vec<&str> = done["response"]["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["bytesBase64Encoded"].as_str().unwrap())
        .collect();
    assert_eq!(videos.len(), 3, "sampleCount 3 is three videos: {done:#}");
    assert!(
        videos[0] != videos[1] && videos[1] != videos[2],
        "each its own file"
    );
    assert!(fake.operations().contains(&name), "{:?}", fake.operations());
}

#[tokio::test]
async fn uncertain_outcomes_still_create_the_operation() {
    let fake = FakeGoogle::start();
    fake.polls_before_done(0);
    let client = Client::new(&fake);
    let on_submit = || Match::route(Route::VeoSubmit);
    fake.script(Fault::DropAfterBody, on_submit(), 1);
    fake.script(Fault::Garbled200, on_submit(), 1);
    fake.script(Fault::Hang(Duration::from_secs(3)), on_submit(), 1);
    let submit = |http: &reqwest::Client, prompt: &str| {
        let url = format!(
            "{}{}",
            fake.base_url(),
            vertex_path("v1", VEO_MODEL, "predictLongRunning")
        );
        http.post(url)
            .bearer_auth(ACCESS_TOKEN)
            .json(&veo_body(prompt, 8))
            .send()
    };

    let error = submit(&client.http, "dropped").await.unwrap_err();
    assert!(
        !error.is_timeout() && error.status().is_none(),
        "no answer at all: {error:?}"
    );
    let recorded = &fake.requests()[0];
    assert_eq!(
        (recorded.route, recorded.status),
        (Route::VeoSubmit, 0),
        "recorded, never answered"
    );
    assert_eq!(
        recorded.prompt().as_deref(),
        Some("dropped"),
        "the body was read"
    );
    let dropped = fake.operations();
    assert_eq!(dropped.len(), 1, "Google may have started the job");
    let done = client.vertex_poll(&dropped[0]).await;
    assert!(
        done["response"]["videos"][0]["bytesBase64Encoded"].is_string(),
        "{done:#}"
    );

    let (status, text) = client
        .vertex("predictLongRunning", &veo_body("garbled", 8))
        .await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert_eq!(fake.operations().len(), 2);

    let impatient = crate::support::http()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = submit(&impatient, "hung").await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert_eq!(
        fake.operations().len(),
        3,
        "the hung submit made its operation before hanging"
    );

    let (status, _) = client
        .vertex("predictLongRunning", &veo_body("dropped", 8))
        .await;
    assert_eq!(status, 200, "the scripts are used up");
    let counts = (
        fake.count(Route::VeoSubmit),
        fake.paid_requests(),
        fake.operations().len(),
    );
    assert_eq!(counts, (4, 4, 4), "a resubmit is a second job");
    assert_eq!(
        fake.submitted_prompts(),
        ["dropped", "garbled", "hung", "dropped"]
    );

    fake.script(
        Fault::DropAfterBody,
        Match::route(Route::GenerateContent),
        1,
    );
    let url = format!(
        "{}/v1beta/models/{IMAGE_MODEL}:generateContent",
        fake.base_url()
    );
    let request = client.http.post(url).header("x-goog-api-key", API_KEY);
    let error = request.json(&generate_body("x")).send().await.unwrap_err();
    assert!(!error.is_timeout(), "{error:?}");
    let (status, _) = client.generate(&generate_body("x")).await;
    assert_eq!(status, 200, "a new connection after the drop");
}

#[tokio::test]
async fn downloads_elsewhere_are_served_without_a_key_on_another_port() {
    let fake = FakeGoogle::start();
    fake.polls_before_done(0);
    fake.downloads_elsewhere(true);
    let client = Client::new(&fake);
    assert_ne!(fake.other_port(), fake.port());
    let video_uri = |prompt: &'static str| {
        let client = &client;
        async move {
            let (_, text) = client.gemini_veo(&veo_body(prompt, 4)).await;
            let (_, text) = client
                .gemini_poll(parse(&text)["name"].as_str().unwrap())
                .await;
            let samples = &parse(&text)["response"]["generateVideoResponse"]["generatedSamples"];
            samples[0]["video"]["uri"].as_str().unwrap().to_owned()
        }
    };
    let uri = video_uri("elsewhere").await;
    let files = format!("{}/v1beta/files/", fake.other_base_url());
    assert!(
        uri.starts_with(&files) && uri.ends_with(":download?alt=media"),
        "{uri}"
    );
    let response = client.http.get(&uri).send().await.unwrap();
    assert_eq!(response.status(), 200, "no key needed there");
    assert_eq!(mp4_duration(&response.bytes().await.unwrap()), 4.0);
    let elsewhere = format!(
        "{}/v1beta/models/{IMAGE_MODEL}:generateContent",
        fake.other_base_url()
    );
    let (status, text) = send(
        client
            .http
            .post(elsewhere)
            .header("x-goog-api-key", API_KEY)
            .json(&generate_body("x")),
    )
    .await;
    google_error(status, &text, 404, "NOT_FOUND");
    let other: Vec<(Route, Auth, u16)> = fake
        .other_port_requests()
        .iter()
        .map(|r| (r.route, r.auth, r.port))
        .collect();
    let port = fake.other_port();
    assert_eq!(
        other,
        [
            (Route::Download, Auth::None, port),
            (Route::Unknown, Auth::ApiKeyHeader, port)
        ],
        "only downloads are served there"
    );

    // The main port's download redirects to the other port: a client following it must not
    // carry the key across (reqwest drops `authorization` there, not `x-goog-api-key`).
    fake.downloads_elsewhere(false);
    fake.redirect_downloads_elsewhere(true);
    let uri = video_uri("redirected").await;
    assert!(uri.starts_with(fake.base_url()), "{uri}");
    let manual = crate::support::http()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = manual
        .get(&uri)
        .header("x-goog-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let blobs = format!("{}/fake-blobs/", fake.other_base_url());
    assert!(location.starts_with(&blobs), "{location}");
    let blob = manual.get(&location).send().await.unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(mp4_duration(&blob.bytes().await.unwrap()), 4.0);
    let followed = client.http.get(&uri).header("x-goog-api-key", API_KEY);
    assert_eq!(followed.send().await.unwrap().status(), 200);
    let last = fake.other_port_requests().pop().unwrap();
    assert_eq!(
        (last.route, last.auth),
        (Route::FileBlob, Auth::ApiKeyHeader),
        "reqwest carried the key across"
    );
}

/// The SDK's request for one capture entry, with real PNGs in place of its cut-short base64 and
/// the credential its headers name.
fn sdk_request(client: &Client, entry: &Value) -> reqwest::RequestBuilder {
    fn fill(value: &mut Value) {
        match value {
            Value::String(s) if s.contains("...(base64,") => *s = b64_png(),
            Value::Array(items) => items.iter_mut().for_each(fill),
            Value::Object(fields) => fields.values_mut().for_each(fill),
            _ => {}
        }
    }
    let method = entry["method"].as_str().unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let url = format!("{}{}", client.base, entry["path"].as_str().unwrap());
    let mut request = client.http.request(method, url);
    let headers = entry["headers"].as_object().unwrap();
    if headers.contains_key("x-goog-api-key") {
        request = request.header("x-goog-api-key", API_KEY);
    }
    if headers.contains_key("Authorization") {
        request = request.bearer_auth(ACCESS_TOKEN);
    }
    let mut body = entry["body"].clone();
    if !body.is_null() {
        fill(&mut body);
        request = request.json(&body);
    }
    request
}

#[tokio::test]
async fn the_sdks_own_requests_are_served_and_match_their_capture() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let entries = sdk_shapes::sdk_requests();
    assert!(entries.len() >= 7, "{entries:#?}");
    for entry in entries {
        let call = entry["call"].as_str().unwrap();
        let (status, text) = send(sdk_request(&client, entry)).await;
        assert_eq!(status, 200, "{call}: {text}");
        let recorded = fake.requests().pop().unwrap();
        check_against_sdk(call, &recorded).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test]
async fn check_against_sdk_lists_every_difference() {
    let fake = FakeGoogle::start();
    let client = Client::new(&fake);
    let send_sdk_call = |call: &'static str, body: Value| {
        let client = &client;
        let mut entry = sdk_entry(call);
        entry["body"] = body;
        async move { send(sdk_request(client, &entry)).await.0 }
    };

    // ttv's way of sending the same call: another version, model and order of parts (the
    // prompt first), camelCase, fewer options. It passes.
    let ours = json!({"contents": [{"role": "user", "parts": [
        {"text": "The keeper opens the door"},
        {"text": "Reference image 'hero':"},
        {"inlineData": {"mimeType": "image/png", "data": b64_png()}},
    ]}], "generationConfig": {"imageConfig": {"aspectRatio": "16:9"}}});
    let path = "models/gemini-3-pro-image:generateContent";
    assert_eq!(client.post_with_key(path, &ours).await.0, 200);
    let recorded = fake.requests().pop().unwrap();
    check_against_sdk("image-gemini-api-2k", &recorded).unwrap_or_else(|e| panic!("{e}"));
    let error = check_against_sdk("image-vertex-4k", &recorded).unwrap_err();
    for needle in [
        "credential: the SDK sends a bearer token, ttv does not",
        "path: ttv's /v1beta/models/gemini-3-pro-image:generateContent is \
         /{version}/models/{model}:generateContent",
    ] {
        assert!(error.contains(needle), "`{needle}` in:\n{error}");
    }

    let call = "veo31-vertex-reference-images";
    let mut body = sdk_entry(call)["body"].clone();
    body["parameters"]["durationSeconds"] = json!("8");
    body["parameters"]["enhancePrompt"] = json!(true);
    let image = &mut body["instances"][0]["referenceImages"][1]["image"];
    image.as_object_mut().unwrap().remove("bytesBase64Encoded");
    assert_eq!(send_sdk_call(call, body).await, 400);
    let recorded = fake.requests().pop().unwrap();
    let error = check_against_sdk(call, &recorded).unwrap_err();
    for needle in [
        "parameters.durationSeconds: ttv sends a string (\"8\"), the SDK a number (8)",
        "parameters.enhancePrompt: sent by ttv, not by the SDK",
        "instances[0].referenceImages[1].image: lacks `bytesBase64Encoded` or `gcsUri`",
    ] {
        assert!(error.contains(needle), "`{needle}` in:\n{error}");
    }
    assert_eq!(error.matches("\n  - ").count(), 3, "{error}");
    let allowed = ["parameters.enhancePrompt"];
    let error = check_against_sdk_allowing(call, &recorded, &allowed).unwrap_err();
    assert!(!error.contains("enhancePrompt"), "{error}");

    let call = "veo31-vertex-first-last";
    let mut body = sdk_entry(call)["body"].clone();
    body["parameters"]["durationSeconds"] = json!("8");
    assert_eq!(
        send_sdk_call(call, body).await,
        200,
        "Google's parser takes it"
    );
    let recorded = fake.requests().pop().unwrap();
    let error = check_against_sdk(call, &recorded).unwrap_err();
    assert!(
        error.contains("durationSeconds"),
        "but the SDK sends a number: {error}"
    );

    let path = format!("/v1beta/models/{VEO_MODEL}");
    assert_eq!(client.call(Cred::Key, &path, None).await.0, 200);
    let recorded = fake.requests().pop().unwrap();
    check_against_sdk("models-get-gemini-api", &recorded).unwrap_or_else(|e| panic!("{e}"));
    for (call, needle) in [
        ("models-get-vertex", "path: "),
        (
            "text-json-schema-gemini-api",
            "method: ttv sends GET, the SDK POST",
        ),
        ("no-such-call", "models-get-vertex"),
    ] {
        let error = check_against_sdk(call, &recorded).unwrap_err();
        assert!(error.contains(needle), "`{needle}` in:\n{error}");
    }
}

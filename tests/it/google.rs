//! The Google backends end to end (issue 3): the real `ttv` binary on a copy of
//! fixtures/google-project, its Gemini frames and Veo segments sent over real HTTP to the fake
//! Google service (support/fake_google.rs), real SQLite and files. The fixture's three shots:
//! arrival (start and end frames), storm (continues from arrival's end frame) and dream (a cut
//! with its own start frame), so a build makes three frames and three segments.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::fake_google::{
    ACCESS_TOKEN, API_KEY, Api, Auth, FakeGoogle, Fault, Match, Recorded, Route, Times,
};
use crate::support::project::{
    Output, Project, Running, count, generated_ids, ids_with_status, node, set, str_field,
};

pub(crate) const ARRIVAL_START: &str = "Wide shot: a lighthouse at dusk, the keeper on the rocks";
pub(crate) const ARRIVAL_END: &str = "The keeper opens the lighthouse door, lantern raised";
pub(crate) const DREAM_START: &str = "A sunlit meadow, the keeper asleep in the grass";
pub(crate) const ARRIVAL_MOTION: &str = "Slow dolly in as the keeper climbs the steps";
pub(crate) const STORM_MOTION: &str = "Camera cranes up the tower as rain starts";
pub(crate) const DREAM_MOTION: &str = "Drifting handheld shot over the flowers";

pub(crate) const FRAMES: &[&str] = &[
    "frame/arrival/start",
    "frame/arrival/end",
    "frame/dream/start",
];
pub(crate) const SEGMENTS: &[&str] = &["segment/arrival", "segment/storm", "segment/dream"];

/// gemini-3.1-flash-image, per 1K image (the model registry's list price).
const IMAGE_PRICE: f64 = 0.067;
/// veo-3.1-generate-001 for the fixture's 4 s segments, at the silent rate ($0.20 per second:
/// the fixture turns audio off).
const SEGMENT_PRICE: f64 = 0.20 * 4.0;

/// A copy of the fixture and a fake Google it is pointed at.
pub(crate) struct Google {
    pub(crate) fake: FakeGoogle,
    pub(crate) p: Project,
    env: Vec<(&'static str, String)>,
}

impl Google {
    /// Frames on the Gemini API (key), video on Vertex with a fixed bearer token.
    pub(crate) fn new() -> Google {
        let fake = FakeGoogle::start();
        let mut env = fake.env();
        env.push(("GOOGLE_OAUTH_ACCESS_TOKEN", ACCESS_TOKEN.to_owned()));
        Google {
            fake,
            p: Project::from_fixture("google-project"),
            env,
        }
    }

    pub(crate) fn without_env(&mut self, name: &str) {
        self.env.retain(|(k, _)| *k != name);
    }

    pub(crate) fn set_env(&mut self, name: &'static str, value: String) {
        self.without_env(name);
        self.env.push((name, value));
    }

    pub(crate) fn ttv(&self, args: &[&str]) -> Output {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.p.ttv_env(args, &env)
    }

    /// `ttv --json build ARGS...`, whatever its exit code.
    pub(crate) fn build(&self, args: &[&str]) -> Output {
        let mut full = vec!["--json", "build"];
        full.extend_from_slice(args);
        self.ttv(&full)
    }

    /// Starts `ttv ARGS...` against the fake without waiting (to kill it, or wait for it).
    pub(crate) fn spawn(&self, args: &[&str]) -> Running {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.p.spawn(args, &env)
    }

    /// A build that must succeed; its report.
    pub(crate) fn build_ok(&self) -> Value {
        self.build(&[]).success().json()
    }

    /// Sets `key: value` in the top-level `section:` of ttv.yaml (the key must be there).
    pub(crate) fn set(&self, section: &str, key: &str, value: &str) {
        self.p.edit_yaml(|text| {
            let start = text
                .find(&format!("\n{section}:\n"))
                .unwrap_or_else(|| panic!("no `{section}:` in ttv.yaml:\n{text}"));
            let needle = format!("\n  {key}:");
            let at = start
                + text[start..]
                    .find(&needle)
                    .unwrap_or_else(|| panic!("no `{key}` under `{section}:`:\n{text}"))
                + 1;
            let end = at + text[at..].find('\n').unwrap_or(text.len() - at);
            format!("{}  {key}: {value}{}", &text[..at], &text[end..])
        });
    }

    /// The bytes of a blob of the cache.
    fn object(&self, blob: &str) -> Vec<u8> {
        self.p
            .read_bytes(format!(".ttv/objects/{}/{}", &blob[..2], &blob[2..]))
    }

    /// The requests to `route` whose prompt contains `text`.
    pub(crate) fn sent(&self, route: Route, text: &str) -> Vec<Recorded> {
        self.fake
            .requests_to(route)
            .into_iter()
            .filter(|r| r.prompt().is_some_and(|p| p.contains(text)))
            .collect()
    }

    /// The operation names of the Vertex polls so far, in order.
    pub(crate) fn polled_operations(&self) -> Vec<String> {
        self.fake
            .requests_to(Route::VeoPoll)
            .iter()
            .map(|r| {
                let body = r.body.as_ref().expect("a Vertex poll has a JSON body");
                str_field(body, "operationName").to_owned()
            })
            .collect()
    }
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    set(list)
}

fn all_nodes() -> BTreeSet<String> {
    FRAMES
        .iter()
        .chain(SEGMENTS)
        .map(|s| s.to_string())
        .collect()
}

#[track_caller]
fn assert_money(actual: &Value, expected: f64, what: &str) {
    let got = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {actual}"));
    assert!(
        (got - expected).abs() < 1e-6,
        "{what}: ${got}, expected ${expected}"
    );
}

/// The error of a failed node, which must be there.
#[track_caller]
fn error_of(report: &Value, id: &str) -> String {
    let n = node(report, id);
    assert_eq!(str_field(&n, "status"), "failed", "{n:#}");
    assert_money(&n["cost_usd"], 0.0, &format!("cost of failed {id}"));
    str_field(&n, "error").to_owned()
}

#[track_caller]
fn assert_contains(text: &str, needle: &str, what: &str) {
    assert!(
        text.contains(needle),
        "{what}: expected `{needle}` in:\n{text}"
    );
}

fn statuses_of(report: &Value) -> BTreeMap<String, String> {
    crate::support::project::statuses(report)
}

/// The fixture's reference images, decoded.
fn reference_pixels(p: &Project, name: &str, file: &str) -> (String, image::RgbaImage) {
    let bytes = p.read_bytes(format!("references/{file}"));
    let img = image::load_from_memory(&bytes)
        .unwrap_or_else(|e| panic!("references/{file}: {e}"))
        .to_rgba8();
    (format!("Reference image '{name}':"), img)
}

/// Each frame request carries its prompt, the image to edit (chained frames: the start frame's
/// PNG exactly as the cache holds it) and every reference behind a label with its name.
fn check_frame_requests(g: &Google, report: &Value) {
    let refs = [
        reference_pixels(&g.p, "hero", "hero.png"),
        reference_pixels(&g.p, "lighthouse", "lighthouse.jpg"),
    ];
    let start_png = g.object(str_field(&node(report, "frame/arrival/start"), "blob"));
    for (prompt, chained) in [
        (ARRIVAL_START, false),
        (ARRIVAL_END, true),
        (DREAM_START, false),
    ] {
        let sent = g.sent(Route::GenerateContent, prompt);
        assert_eq!(sent.len(), 1, "one request for `{prompt}`: {sent:#?}");
        let r = &sent[0];
        let body = r.body.as_ref().expect("JSON body");
        assert_eq!(
            body["contents"][0]["parts"][0]["text"], *prompt,
            "the prompt comes first: {body:#}"
        );
        let images = r.images();
        let mut rest = images.as_slice();
        if chained {
            let edit = &rest[0];
            assert_eq!(edit.label.as_deref(), Some("Edit this image:"), "{edit:?}");
            assert_eq!(edit.mime_type, "image/png");
            assert!(
                edit.bytes == start_png,
                "the image to edit for `{prompt}` is not frame/arrival/start's PNG from .ttv/objects"
            );
            rest = &rest[1..];
        }
        assert_eq!(
            rest.len(),
            refs.len(),
            "`{prompt}` carries every reference and nothing else: {images:?}"
        );
        for (sent, (label, pixels)) in rest.iter().zip(&refs) {
            assert_eq!(sent.label.as_deref(), Some(label.as_str()), "{sent:?}");
            assert_eq!(
                &sent.decode().to_rgba8(),
                pixels,
                "{label} carries the reference's pixels"
            );
        }
    }
}

/// Each Veo submission carries its motion prompt and, as its image, the PNG of the frame the
/// segment starts on.
fn check_segment_requests(g: &Google, report: &Value) {
    for (motion, frame) in [
        (ARRIVAL_MOTION, "frame/arrival/start"),
        (STORM_MOTION, "frame/arrival/end"),
        (DREAM_MOTION, "frame/dream/start"),
    ] {
        let sent = g.sent(Route::VeoSubmit, motion);
        assert_eq!(sent.len(), 1, "one submission for `{motion}`: {sent:#?}");
        let r = &sent[0];
        assert_eq!(r.prompt().as_deref(), Some(motion));
        let images = r.images();
        assert_eq!(images.len(), 1, "one image for `{motion}`: {images:?}");
        assert_eq!(images[0].field, "instances[0].image");
        assert_eq!(images[0].mime_type, "image/png");
        assert!(
            images[0].bytes == g.object(str_field(&node(report, frame), "blob")),
            "`{motion}` must start on {frame}'s PNG"
        );
        let params = &r.body.as_ref().expect("JSON body")["parameters"];
        assert_eq!(params["durationSeconds"], 4, "{params:#}");
        assert_eq!(params["resolution"], "720p", "{params:#}");
        assert_eq!(params["aspectRatio"], "16:9", "{params:#}");
    }
}

/// Plan, build, no-op build, motion edit: requests match the dirty nodes exactly, carry what
/// they must, and cost the list price.
fn build_story(api: Api) {
    let g = Google::new();
    let (label, auth) = match api {
        Api::Vertex => ("veo (vertex)", Auth::Bearer),
        Api::Gemini => {
            g.p.replace_in_yaml("api: vertex", "api: gemini");
            ("veo (gemini-api)", Auth::ApiKeyHeader)
        }
    };

    let plan = g.ttv(&["--json", "plan"]).success().json();
    assert!(g.fake.requests().is_empty(), "plan sends nothing");
    let dirty = ids_with_status(&plan, "dirty");
    assert_eq!(dirty, all_nodes(), "{plan:#}");
    let dirty_frames = dirty.iter().filter(|id| id.starts_with("frame/")).count();
    let dirty_segments = dirty.iter().filter(|id| id.starts_with("segment/")).count();

    let report = g.build_ok();
    assert_eq!(generated_ids(&report), dirty, "{report:#}");
    assert_eq!(g.fake.count(Route::GenerateContent), dirty_frames);
    assert_eq!(g.fake.count(Route::VeoSubmit), dirty_segments);
    for r in g.fake.requests() {
        let ok = if r.route == Route::Download { 302 } else { 200 };
        assert_eq!(r.status, ok, "{r:#?}");
        if matches!(r.route, Route::VeoSubmit | Route::VeoPoll) {
            assert_eq!((r.api, r.auth), (Some(api), auth), "{r:#?}");
        }
        if r.route == Route::GenerateContent {
            assert_eq!(r.auth, Auth::ApiKeyHeader, "{r:#?}");
        }
        assert!(r.snake_case_fields.is_empty(), "camelCase only: {r:#?}");
    }
    check_frame_requests(&g, &report);
    check_segment_requests(&g, &report);
    for id in FRAMES {
        let n = node(&report, id);
        assert_eq!(str_field(&n, "backend"), "gemini", "{n:#}");
        assert_money(&n["cost_usd"], IMAGE_PRICE, id);
        let png = g.p.read_bytes(str_field(&n, "output"));
        assert!(png.starts_with(b"\x89PNG"), "{id} is stored as PNG");
    }
    for id in SEGMENTS {
        let n = node(&report, id);
        assert_eq!(str_field(&n, "backend"), label, "{n:#}");
        assert_money(&n["cost_usd"], SEGMENT_PRICE, id);
        assert!(g.p.exists(str_field(&n, "output")), "{id}: {n:#}");
    }
    let spent = 3.0 * IMAGE_PRICE + 3.0 * SEGMENT_PRICE;
    assert_money(&report["cost_usd"], spent, "cost of the first build");
    assert_money(&report["saved_usd"], 0.0, "saved by the first build");

    g.fake.clear_requests();
    let again = g.build_ok();
    assert!(
        g.fake.requests().is_empty(),
        "a second build sends nothing: {:#?}",
        g.fake.requests()
    );
    assert_eq!(ids_with_status(&again, "cached"), all_nodes(), "{again:#}");
    assert_money(&again["cost_usd"], 0.0, "cost of the no-op build");
    assert_money(&again["saved_usd"], spent, "saved by the no-op build");

    let new_motion = "Camera spirals up the tower as hail starts";
    g.p.replace_in_yaml(STORM_MOTION, new_motion);
    let edited = g.build_ok();
    assert_eq!(
        generated_ids(&edited),
        ids(&["segment/storm"]),
        "{edited:#}"
    );
    assert_eq!(g.fake.count(Route::GenerateContent), 0);
    let submits = g.fake.requests_to(Route::VeoSubmit);
    assert_eq!(submits.len(), 1, "{submits:#?}");
    assert_eq!(submits[0].prompt().as_deref(), Some(new_motion));
    assert_money(
        &edited["cost_usd"],
        SEGMENT_PRICE,
        "cost of the motion edit",
    );
    assert_money(
        &edited["saved_usd"],
        spent - SEGMENT_PRICE,
        "saved by the motion edit",
    );
}

#[test]
fn vertex_build_sends_one_request_per_dirty_node_with_prompt_images_and_references() {
    build_story(Api::Vertex);
}

#[test]
fn gemini_api_build_sends_one_request_per_dirty_node_with_prompt_images_and_references() {
    build_story(Api::Gemini);
}

#[test]
fn transient_faults_are_retried_until_the_build_succeeds() {
    let g = Google::new();
    let on = |text: &str, route| Match::prompt(text).on(route);
    g.fake.script(
        Fault::Status429RetryInfo { delay: "3s" },
        on(ARRIVAL_START, Route::GenerateContent),
        1,
    );
    g.fake.script(
        Fault::Hang(Duration::from_secs(5)),
        on(ARRIVAL_END, Route::GenerateContent),
        1,
    );
    g.fake
        .script(Fault::Status500, on(DREAM_START, Route::GenerateContent), 1);
    g.fake
        .script(Fault::Status503, on(ARRIVAL_MOTION, Route::VeoSubmit), 1);
    g.fake
        .script(Fault::NotJson, on(STORM_MOTION, Route::VeoPoll), 1);
    g.fake
        .script(Fault::Truncated, on(DREAM_MOTION, Route::VeoPoll), 1);

    let started = Instant::now();
    let report = g.build_ok();
    let took = started.elapsed();

    assert_eq!(generated_ids(&report), all_nodes(), "{report:#}");
    assert_eq!(count(&report, "failed"), 0);
    let statuses =
        |route, text| -> Vec<u16> { g.sent(route, text).iter().map(|r| r.status).collect() };
    assert_eq!(statuses(Route::GenerateContent, ARRIVAL_START), [429, 200]);
    assert_eq!(statuses(Route::GenerateContent, DREAM_START), [500, 200]);
    assert_eq!(statuses(Route::VeoSubmit, ARRIVAL_MOTION), [503, 200]);
    assert_eq!(
        g.sent(Route::GenerateContent, ARRIVAL_END).len(),
        2,
        "the request that hung past the 2 s timeout was sent again"
    );
    assert_eq!(g.fake.count(Route::GenerateContent), 3 + 3);
    assert_eq!(g.fake.count(Route::VeoSubmit), 3 + 1);
    // Each operation answers `done: false` once, then done: 2 polls. The HTML page stands in
    // for storm's first answer (one more poll); dream's cut-short answer was its `done: false`.
    assert_eq!(
        g.fake.count(Route::VeoPoll),
        3 * 2 + 1,
        "{:#?}",
        g.polled_operations()
    );
    // The 429 asked for 3 s, the hang cost the 2 s timeout, and the chain waits on both.
    assert!(
        took >= Duration::from_secs(5),
        "RetryInfo's 3 s and the 2 s timeout were waited for: {took:?}"
    );
    // Answers that prove nothing was made (429, 5xx, a poll) cost nothing; the request that
    // hung after it was sent may have made (and billed) an image: it is counted.
    assert_money(
        &report["cost_usd"],
        4.0 * IMAGE_PRICE + 3.0 * SEGMENT_PRICE,
        "only the unanswered attempt is counted",
    );
    let arrival_end = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "frame/arrival/end")
        .unwrap();
    assert_money(
        &arrival_end["cost_usd"],
        2.0 * IMAGE_PRICE,
        "frame/arrival/end",
    );
}

#[test]
fn permanent_faults_are_reported_with_googles_message_and_independent_nodes_finish() {
    let g = Google::new();
    g.set("video", "max_retries", "1");
    g.fake.script(
        Fault::Status403,
        Match::prompt(ARRIVAL_END).on(Route::GenerateContent),
        Times::Forever,
    );
    g.fake.script(
        Fault::Status503,
        Match::prompt(ARRIVAL_MOTION).on(Route::VeoSubmit),
        Times::Forever,
    );
    g.fake.script(
        Fault::OperationError {
            code: 3,
            message: "Video generation failed: the input image could not be processed.",
        },
        Match::prompt(DREAM_MOTION),
        1,
    );

    let out = g.build(&[]);
    out.code(1);
    let report = out.json();
    assert_eq!(
        generated_ids(&report),
        ids(&["frame/arrival/start", "frame/dream/start"]),
        "independent nodes still finish: {report:#}"
    );
    assert_eq!(
        ids_with_status(&report, "skipped"),
        ids(&["segment/storm"]),
        "{report:#}"
    );
    assert_eq!(count(&report, "failed"), 3, "{report:#}");

    let denied = error_of(&report, "frame/arrival/end");
    assert_contains(
        &denied,
        "HTTP 403 PERMISSION_DENIED: Permission denied: Consumer has been suspended.",
        "frame/arrival/end",
    );
    assert_eq!(
        g.sent(Route::GenerateContent, ARRIVAL_END).len(),
        1,
        "a 403 is never retried"
    );

    let overloaded = error_of(&report, "segment/arrival");
    assert_contains(
        &overloaded,
        "failed (after 2 attempts): HTTP 503 UNAVAILABLE: The model is overloaded. Please try \
         again later.",
        "segment/arrival",
    );
    assert_eq!(
        g.sent(Route::VeoSubmit, ARRIVAL_MOTION).len(),
        2,
        "one retry (video.max_retries: 1), then reported"
    );

    let op_error = error_of(&report, "segment/dream");
    assert_contains(
        &op_error,
        "failed with code 3: Video generation failed: the input image could not be processed.",
        "segment/dream",
    );
    assert_eq!(g.sent(Route::VeoSubmit, DREAM_MOTION).len(), 1);

    for needle in [
        "frame/arrival/end",
        "segment/arrival",
        "segment/dream",
        "Consumer has been suspended",
    ] {
        out.stderr_contains(needle);
    }
    assert_money(&report["cost_usd"], 2.0 * IMAGE_PRICE, "only what was made");

    // Nothing failed is cached: the next build asks again, and only for what failed.
    g.fake.clear_requests();
    let out = g.build(&[]);
    out.code(1);
    assert_eq!(g.fake.count(Route::GenerateContent), 1);
    assert_eq!(
        generated_ids(&out.json()),
        ids(&["segment/dream"]),
        "{}",
        out.stdout
    );
}

#[test]
fn safety_blocks_cost_nothing_and_quote_the_reason_and_a_jpeg_is_stored_as_png() {
    let g = Google::new();
    g.fake
        .script(Fault::JpegAnswer, Match::prompt(ARRIVAL_START), 1);
    g.fake.script(
        Fault::PromptBlocked,
        Match::prompt(ARRIVAL_END),
        Times::Forever,
    );
    g.fake.script(
        Fault::ImageSafety,
        Match::prompt(DREAM_START),
        Times::Forever,
    );
    g.fake.script(
        Fault::RaiFiltered,
        Match::prompt(ARRIVAL_MOTION),
        Times::Forever,
    );

    let out = g.build(&[]);
    out.code(1);
    let report = out.json();
    assert_eq!(
        generated_ids(&report),
        ids(&["frame/arrival/start"]),
        "{report:#}"
    );

    let start = node(&report, "frame/arrival/start");
    let stored = g.p.read_bytes(str_field(&start, "output"));
    assert!(
        stored.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the JPEG answer is stored as PNG"
    );
    assert_eq!(
        image::guess_format(&g.object(str_field(&start, "blob"))).expect("a known format"),
        image::ImageFormat::Png
    );
    let colour = FakeGoogle::colour_for(
        &g.sent(Route::GenerateContent, ARRIVAL_START)[0]
            .prompt()
            .expect("prompt"),
    );
    let pixel = image::load_from_memory(&stored)
        .expect("decodes")
        .to_rgb8()
        .get_pixel(32, 20)
        .0;
    assert!(
        pixel.iter().zip(colour).all(|(a, b)| a.abs_diff(b) <= 8),
        "the stored PNG holds the answered image: {pixel:?} vs {colour:?}"
    );

    let prompt_blocked = error_of(&report, "frame/arrival/end");
    assert_contains(&prompt_blocked, "blockReason SAFETY", "frame/arrival/end");
    let image_blocked = error_of(&report, "frame/dream/start");
    assert_contains(
        &image_blocked,
        "finishReason IMAGE_SAFETY",
        "frame/dream/start",
    );
    assert_contains(
        &image_blocked,
        "The image was filtered out because it violated Google's Generative AI Prohibited Use \
         policy.",
        "frame/dream/start",
    );
    let filtered = error_of(&report, "segment/arrival");
    assert_contains(
        &filtered,
        "the input image violates Google's Responsible AI practices. Support codes: 58061214",
        "segment/arrival",
    );
    for text in [&prompt_blocked, &image_blocked, &filtered] {
        assert_contains(text, "blocked", "a block says so");
        out.stderr_contains(text);
    }
    for text in [ARRIVAL_END, DREAM_START] {
        assert_eq!(
            g.sent(Route::GenerateContent, text).len(),
            1,
            "a block is never retried"
        );
    }
    assert_eq!(g.sent(Route::VeoSubmit, ARRIVAL_MOTION).len(), 1);
    assert_eq!(
        ids_with_status(&report, "skipped"),
        ids(&["segment/storm", "segment/dream"]),
        "{report:#}"
    );
    assert_money(
        &report["cost_usd"],
        IMAGE_PRICE,
        "blocked generations are not charged",
    );
}

/// A build whose arrival segment's operation never finishes (1 s poll limit): it fails, and
/// the operation stays recorded. Returns the operation's name.
fn build_with_stuck_operation(g: &Google, targets: &[&str]) -> String {
    g.set("video", "poll_timeout_seconds", "1");
    g.fake
        .script(Fault::NeverFinishes, Match::prompt(ARRIVAL_MOTION), 1);
    let out = g.build(targets);
    out.code(1);
    let report = out.json();
    let error = error_of(&report, "segment/arrival");
    assert_contains(&error, "still running after 1 s", "segment/arrival");
    let polled = g.polled_operations();
    let mut times: BTreeMap<&String, usize> = BTreeMap::new();
    for name in &polled {
        *times.entry(name).or_default() += 1;
    }
    let (stuck, n) = times
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .expect("the operation was polled");
    assert!(n > 2, "polled until the limit: {polled:#?}");
    stuck.clone()
}

#[test]
fn an_operation_that_never_finishes_times_out_and_the_next_build_resumes_it() {
    let g = Google::new();
    let stuck = build_with_stuck_operation(&g, &[]);

    g.fake.finish_stuck_operations();
    g.fake.clear_requests();
    let report = g.build_ok();
    assert_eq!(
        generated_ids(&report),
        ids(&["segment/arrival"]),
        "{report:#}"
    );
    assert_eq!(g.fake.count(Route::VeoSubmit), 0, "resumed, not submitted");
    assert_eq!(g.fake.count(Route::GenerateContent), 0);
    let polled = g.polled_operations();
    assert!(
        !polled.is_empty() && polled.iter().all(|n| *n == stuck),
        "only {stuck} is polled: {polled:#?}"
    );
    assert!(g.p.exists("build/segments/001-arrival.mp4"));
}

#[test]
fn an_operation_unknown_on_resume_is_submitted_again_with_a_warning() {
    let g = Google::new();
    build_with_stuck_operation(&g, &["segment/arrival"]);

    g.fake
        .script(Fault::UnknownOperation, Match::route(Route::VeoPoll), 1);
    g.fake.clear_requests();
    let out = g.build(&["segment/arrival"]);
    out.success()
        .stderr_contains("unknown to the service, submitting again");
    let report = out.json();
    assert_eq!(
        generated_ids(&report),
        ids(&["segment/arrival"]),
        "{report:#}"
    );
    assert_eq!(g.fake.requests_to(Route::VeoPoll)[0].status, 404);
    assert_eq!(g.sent(Route::VeoSubmit, ARRIVAL_MOTION).len(), 1);
    assert!(g.p.exists("build/segments/001-arrival.mp4"));
}

#[test]
fn a_build_killed_while_polling_resumes_the_same_operation() {
    let g = Google::new();
    g.fake.polls_before_done(8);
    let mut running = g.spawn(&["--json", "build", "segment/arrival"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.fake.count(Route::VeoPoll) < 1 {
        assert!(
            running.is_running(),
            "ttv ended before polling: {:#?}",
            g.fake.requests()
        );
        assert!(Instant::now() < deadline, "no poll within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    running.kill();
    let killed = g.p.wait(running);
    assert_eq!(killed.code, None, "killed by a signal");
    assert_eq!(g.fake.count(Route::VeoSubmit), 1);
    let operation = g.polled_operations()[0].clone();

    g.fake.clear_requests();
    let out = g.build(&["segment/arrival"]);
    let report = out.success().json();
    assert_eq!(g.fake.count(Route::VeoSubmit), 0, "no new submission");
    let polled = g.polled_operations();
    assert!(
        polled.len() >= 2 && polled.iter().all(|n| *n == operation),
        "{operation} is polled to completion: {polled:#?}"
    );
    let segment = node(&report, "segment/arrival");
    assert_eq!(str_field(&segment, "status"), "generated", "{segment:#}");
    assert_eq!(
        str_field(&segment, "output"),
        "build/segments/001-arrival.mp4"
    );
    assert!(g.p.exists("build/segments/001-arrival.mp4"));
}

/// Neither secret anywhere under .ttv/ or build/, nor in what ttv printed.
#[track_caller]
fn assert_no_secrets(g: &Google, out: &Output, when: &str) {
    for secret in [API_KEY, ACCESS_TOKEN] {
        for top in [".ttv", "build"] {
            if !g.p.exists(top) {
                continue;
            }
            for (file, bytes) in g.p.files_under(top) {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{when}: {file} holds a secret"
                );
            }
        }
        assert!(
            !out.stdout.contains(secret),
            "{when}: stdout holds a secret"
        );
        assert!(
            !out.stderr.contains(secret),
            "{when}: stderr holds a secret"
        );
    }
}

#[test]
fn secrets_never_reach_the_cache_the_build_folder_or_the_output() {
    let g = Google::new();
    let ok = g.build(&["-v"]);
    ok.success();
    assert_no_secrets(&g, &ok, "after a successful build");

    g.p.replace_in_yaml(DREAM_MOTION, "Drifting over the poppies");
    g.fake.script(
        Fault::OperationError {
            code: 13,
            message: "Internal error while generating the video.",
        },
        Match::prompt("poppies"),
        1,
    );
    let failed = g.build(&["-v"]);
    failed.code(1);
    assert_no_secrets(&g, &failed, "after a failed build");

    g.p.replace_in_yaml(ARRIVAL_END, "The keeper shuts the lighthouse door");
    g.p.replace_in_yaml(STORM_MOTION, "Camera falls down the tower");
    g.fake
        .script(Fault::Status403, Match::any(), Times::Forever);
    let denied = g.build(&["-v"]);
    denied.code(1);
    assert!(
        g.fake
            .requests()
            .iter()
            .any(|r| r.status == 403 && r.route == Route::GenerateContent),
        "the key was refused"
    );
    assert!(
        g.fake
            .requests()
            .iter()
            .any(|r| r.status == 403 && r.route == Route::VeoSubmit),
        "the token was refused"
    );
    assert_no_secrets(&g, &denied, "after a 403");
}

#[test]
fn vertex_oauth_with_a_service_account_key() {
    let mut g = Google::new();
    let home = tempfile::tempdir().expect("temp home");
    let key = g.fake.write_service_account(home.path());
    g.without_env("GOOGLE_OAUTH_ACCESS_TOKEN");
    g.set_env(
        "GOOGLE_APPLICATION_CREDENTIALS",
        key.to_string_lossy().into_owned(),
    );
    g.set_env("HOME", home.path().to_string_lossy().into_owned());

    let report = g.build_ok();
    assert_eq!(generated_ids(&report), all_nodes(), "{report:#}");
    let tokens = g.fake.requests_to(Route::Token);
    assert!(!tokens.is_empty(), "a token was asked for");
    assert!(tokens.iter().all(|t| t.status == 200), "{tokens:#?}");
    let veo: Vec<Recorded> = g
        .fake
        .requests()
        .into_iter()
        .filter(|r| matches!(r.route, Route::VeoSubmit | Route::VeoPoll))
        .collect();
    assert!(!veo.is_empty());
    for r in &veo {
        assert_eq!(r.api, Some(Api::Vertex), "{r:#?}");
        assert_eq!(
            r.auth,
            Auth::Bearer,
            "carries the token the fake issued: {r:#?}"
        );
    }
}

#[test]
fn plan_rejects_what_veo_cannot_do_before_any_request() {
    type Change = fn(&mut Google);
    // What is changed, the message, and the ttv.yaml line it must point at (if any).
    let cases: &[(Change, &str, Option<&str>)] = &[
        (
            |g| g.set("video", "duration_seconds", "5"),
            "veo (veo-3.1-generate-001) cannot make 5 s segments",
            Some("duration_seconds: 5"),
        ),
        (
            |g| g.set("video", "resolution", "4k"),
            "veo (veo-3.1-generate-001) makes 4k video only in 8 s segments, not 4 s",
            Some("duration_seconds: 4"),
        ),
        (
            |g| g.set("video", "aspect_ratio", "\"4:3\""),
            "veo (veo-3.1-generate-001) cannot make 4:3 video",
            Some("aspect_ratio: \"4:3\""),
        ),
        (
            |g| g.without_env("GOOGLE_CLOUD_PROJECT"),
            "GOOGLE_CLOUD_PROJECT is not set: Vertex AI needs a project id",
            None,
        ),
        (
            |g| {
                g.without_env("GOOGLE_OAUTH_ACCESS_TOKEN");
                // No gcloud application_default_credentials.json to fall back on.
                let home = g.p.path("empty-home");
                std::fs::create_dir_all(&home).expect("create empty home");
                g.set_env("HOME", home.to_string_lossy().into_owned());
            },
            "no Google Cloud credentials found for Vertex AI",
            None,
        ),
        (
            |g| g.p.replace_in_yaml("api: vertex", "api: gemini\n  seed: 7"),
            "veo (veo-3.1-generate-001) does not accept a seed on this route",
            Some("seed: 7"),
        ),
    ];
    for (change, message, line_of) in cases {
        let mut g = Google::new();
        change(&mut g);
        let out = g.ttv(&["plan"]);
        out.code(2).stderr_contains(message);
        if let Some(setting) = line_of {
            out.stderr_contains(&format!("ttv.yaml:{}:", g.p.yaml_line_of(setting)));
        }
        assert!(
            g.fake.requests().is_empty(),
            "{message}: no request before the config is valid: {:#?}",
            g.fake.requests()
        );
    }
}

#[test]
fn a_permanent_failure_on_vertex_falls_back_to_the_gemini_api() {
    let g = Google::new();
    g.p.replace_in_yaml(
        "  max_retries: 3\n\nshots:",
        "  max_retries: 3\n  fallback:\n    - backend: veo\n      api: gemini\n\nshots:",
    );
    // The first submission for arrival is always Vertex's: the primary is tried first.
    g.fake.script(
        Fault::Status403,
        Match::prompt(ARRIVAL_MOTION).on(Route::VeoSubmit),
        1,
    );
    // The Gemini API may answer with the video inline instead of a file to download.
    g.fake
        .script(Fault::InlineVideo, Match::prompt(ARRIVAL_MOTION), 1);

    let out = g.build(&[]);
    out.success();
    let report = out.json();
    assert_eq!(generated_ids(&report), all_nodes(), "{report:#}");
    assert_eq!(g.fake.count(Route::Download), 0, "the video came inline");
    let arrival = node(&report, "segment/arrival");
    assert_eq!(
        str_field(&arrival, "backend"),
        "veo (gemini-api)",
        "{arrival:#}"
    );
    for id in ["segment/storm", "segment/dream"] {
        assert_eq!(str_field(&node(&report, id), "backend"), "veo (vertex)");
    }
    let tries: Vec<(Option<Api>, u16)> = g
        .sent(Route::VeoSubmit, ARRIVAL_MOTION)
        .iter()
        .map(|r| (r.api, r.status))
        .collect();
    assert_eq!(tries, [(Some(Api::Vertex), 403), (Some(Api::Gemini), 200)]);
    out.stderr_contains("segment/arrival: made by fallback veo (gemini-api)");
    assert!(g.p.exists("build/segments/001-arrival.mp4"));
    assert!(
        statuses_of(&report).values().all(|s| s == "generated"),
        "{report:#}"
    );
}

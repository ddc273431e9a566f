//! Google as it is in November 2026 (issue 6): the model registry's checks before any request,
//! Veo 3.1's samples and reference images, requests shaped as the official SDK sends them, the
//! recipe behind every request, uncertain submissions, keys that stay with Google, and
//! `ttv doctor`.

use serde_json::Value;

use crate::google::Google;
use crate::support::fake_google::{
    Fault, Match, Route, check_against_sdk, check_against_sdk_allowing,
};
use crate::support::project::{count, generated_ids, node, set, str_field};

fn tiny_png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([seed, 255 - seed, 128]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Vertex Veo 3.1 with audio on (the fixture turns it off for its Gemini-API fallback).
fn vertex_with_audio() -> Google {
    let g = Google::new();
    g.set("video", "generate_audio", "true");
    g
}

#[test]
fn a_retired_model_is_refused_before_any_request_naming_its_successor() {
    let g = Google::new();
    g.set("keyframes", "model", "gemini-2.5-flash-image");
    g.ttv(&["plan"])
        .code(2)
        .stderr_contains(
            "`gemini-2.5-flash-image` (Nano Banana) was retired by Google on 2026-10-02",
        )
        .stderr_contains("use `gemini-3.1-flash-image`, its successor")
        .stderr_contains(&format!(
            "ttv.yaml:{}:",
            g.p.yaml_line_of("model: gemini-2.5-flash-image")
        ));
    let g2 = Google::new();
    g2.set("video", "model", "veo-3.0-generate-001");
    g2.build(&[])
        .code(2)
        .stderr_contains("retired by Google on 2026-06-30")
        .stderr_contains("veo-3.1-generate-001");
    assert!(g.fake.requests().is_empty() && g2.fake.requests().is_empty());
}

#[test]
fn an_unknown_model_is_allowed_with_a_warning_and_an_unknown_cost() {
    let g = Google::new();
    g.set("video", "model", "veo-3.2-generate-001");
    let out = g.ttv(&["--json", "plan"]);
    out.success()
        .stderr_contains("model `veo-3.2-generate-001` is not in ttv's model registry");
    let plan = out.json();
    assert_eq!(plan["cost_unknown"], 3, "{plan:#}");
    let seg = node(&plan, "segment/storm");
    assert_eq!(seg["cost_unknown"], true);
    assert_eq!(seg["cost_usd"], 0.0);
    // Conservative capabilities: no last frame for a model ttv does not know.
    g.p.replace_in_yaml("  api: vertex", "  api: vertex\n  mode: first-last");
    g.ttv(&["plan"])
        .code(2)
        .stderr_contains("cannot take a first and a last frame");
    assert!(g.fake.requests().is_empty());
}

#[test]
fn limits_of_the_registry_are_checked_at_plan_time() {
    // 4k needs 8 s segments (the fixture's are 4 s).
    let g = Google::new();
    g.set("video", "resolution", "4k");
    g.ttv(&["plan"])
        .code(2)
        .stderr_contains("makes 4k video only in 8 s segments, not 4 s");

    // Four reference images for one video: Veo takes three.
    let g = Google::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        g.p.write(format!("references/{name}.png"), tiny_png(i as u8));
    }
    g.set("video", "duration_seconds", "8");
    g.p.replace_in_yaml(
        "  api: vertex",
        "  api: vertex\n  mode: references\n  references: [hero, lighthouse, a, b]",
    );
    g.ttv(&["plan"]).code(2).stderr_contains(
        "4 reference images for one video; veo (veo-3.1-generate-001) takes at most 3",
    );

    // Fifteen reference images (and the chained frame) for one image: the limit is 14.
    let g = Google::new();
    for i in 0..13u8 {
        g.p.write(format!("references/extra-{i:02}.png"), tiny_png(i));
    }
    g.ttv(&["plan"])
        .code(2)
        .stderr_contains("sends 15 images (15 reference images)")
        .stderr_contains("takes at most 14 in one request");

    // Reference images cannot go with a start or last frame.
    let g = Google::new();
    g.p.replace_in_yaml(
        "  api: vertex",
        "  api: vertex\n  mode: first-last\n  references: [hero]",
    );
    g.build(&[])
        .code(2)
        .stderr_contains("Veo does not take reference images together with a start or last frame");
    assert!(g.fake.requests().is_empty());
}

#[test]
fn first_last_with_two_samples_stores_two_takes_per_segment_from_one_submit() {
    let g = vertex_with_audio();
    g.set("video", "duration_seconds", "8");
    g.p.replace_in_yaml(
        "  api: vertex",
        "  api: vertex\n  mode: first-last\n  sample_count: 2",
    );
    let report = g.build_ok();
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    let submits = g.fake.requests_to(Route::VeoSubmit);
    assert_eq!(submits.len(), 3, "one submit per segment");
    for s in &submits {
        let body = s.body.as_ref().unwrap();
        assert_eq!(body["parameters"]["sampleCount"], 2);
        assert!(body["instances"][0]["lastFrame"].is_object(), "{body}");
        check_against_sdk("veo31-vertex-first-last", s).unwrap();
    }
    for id in ["segment/arrival", "segment/storm", "segment/dream"] {
        let n = node(&report, id);
        // 2 videos x 8 s x $0.40.
        assert!((n["cost_usd"].as_f64().unwrap() - 6.4).abs() < 1e-6, "{n}");
        assert_eq!(n["take"], 2, "the latest of the two takes is used: {n}");
        let takes = g.ttv(&["--json", "takes", id]).success().json();
        let takes = takes["takes"].as_array().unwrap();
        assert_eq!(takes.len(), 2, "{takes:#?}");
        assert_ne!(takes[0]["blob"], takes[1]["blob"]);
        let prov = &takes[0]["provenance"];
        assert!(
            str_field(prov, "response_id").contains("/operations/"),
            "{prov}"
        );
        assert_eq!(prov["params"]["sampleCount"], 2);
    }
    // Pinning take 1 brings the other sample back, with no request.
    g.p.replace_in_yaml(
        "motion: \"Camera cranes up the tower as rain starts\"",
        "motion: \"Camera cranes up the tower as rain starts\"\n    take: 1",
    );
    let before = g.fake.paid_requests();
    let again = g.build_ok();
    assert!(generated_ids(&again).contains("final") || generated_ids(&again).is_empty());
    assert_eq!(node(&again, "segment/storm")["take"], 1);
    assert_eq!(g.fake.paid_requests(), before);
}

#[test]
fn references_mode_sends_asset_images_and_pays_for_no_keyframe() {
    let g = vertex_with_audio();
    g.set("video", "duration_seconds", "8");
    g.p.replace_in_yaml(
        "  api: vertex",
        "  api: vertex\n  mode: references\n  references: [hero, lighthouse]",
    );
    let report = g.build_ok();
    assert_eq!(
        generated_ids(&report),
        set(&["segment/arrival", "segment/storm", "segment/dream"]),
        "{report:#}"
    );
    assert_eq!(
        g.fake.count(Route::GenerateContent),
        0,
        "no keyframe is paid for"
    );
    let submits = g.fake.requests_to(Route::VeoSubmit);
    assert_eq!(submits.len(), 3);
    for s in &submits {
        let instance = &s.body.as_ref().unwrap()["instances"][0];
        assert!(instance.get("image").is_none(), "{instance}");
        let refs = instance["referenceImages"].as_array().unwrap();
        assert_eq!(refs.len(), 2);
        assert!(refs.iter().all(|r| r["referenceType"] == "ASSET"));
        // The capture of this call leaves audio and the sample count at their defaults; the
        // first-last capture shows both fields.
        check_against_sdk_allowing(
            "veo31-vertex-reference-images",
            s,
            &["parameters.generateAudio", "parameters.sampleCount"],
        )
        .unwrap();
    }
}

#[test]
fn frames_carry_image_size_and_only_the_shots_references_as_the_sdk_does() {
    let g = Google::new();
    g.p.replace_in_yaml("  chain: true", "  chain: true\n  image_size: 2K");
    g.p.replace_in_yaml(
        "    motion: \"Drifting handheld shot over the flowers\"",
        "    motion: \"Drifting handheld shot over the flowers\"\n    references: [hero]",
    );
    let report = g.build(&["frames"]).success().json();
    assert_eq!(count(&report, "failed"), 0);
    let dream = g.sent(Route::GenerateContent, "A sunlit meadow");
    assert_eq!(dream.len(), 1);
    let labels: Vec<Option<String>> = dream[0].images().into_iter().map(|i| i.label).collect();
    assert_eq!(labels, [Some("Reference image 'hero':".to_string())]);
    for r in g.fake.requests_to(Route::GenerateContent) {
        assert_eq!(
            r.body.as_ref().unwrap()["generationConfig"]["imageConfig"]["imageSize"],
            "2K"
        );
        check_against_sdk("image-gemini-api-2k", &r).unwrap();
    }
    // Five frames of 2K Nano Banana 2, priced per size.
    assert_eq!(count(&report, "generated"), 5);
    assert!((report["cost_usd"].as_f64().unwrap() - 5.0 * 0.101).abs() < 1e-6);
}

#[test]
fn editing_person_generation_remakes_the_segments_and_explain_names_it() {
    let g = Google::new();
    g.build_ok();
    g.p.replace_in_yaml(
        "  api: vertex",
        "  api: vertex\n  person_generation: dont_allow",
    );
    let plan = g.ttv(&["--json", "plan"]).success().json();
    let dirty: Vec<&str> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "dirty")
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(dirty, ["segment/arrival", "segment/storm", "segment/dream"]);
    let explained = g
        .ttv(&["--json", "explain", "--recipe", "segment/storm"])
        .success()
        .json();
    assert_eq!(
        explained["reasons"],
        serde_json::json!(["person_generation changed (none -> dont_allow)"])
    );
    assert_eq!(
        explained["recipe"]["now"]["person_generation"],
        "dont_allow"
    );
    assert!(
        explained["recipe"]["last_build"]
            .get("person_generation")
            .is_none()
    );
    g.build_ok();
    for s in g.fake.requests_to(Route::VeoSubmit).iter().skip(3) {
        assert_eq!(
            s.body.as_ref().unwrap()["parameters"]["personGeneration"],
            "dont_allow"
        );
    }
}

#[test]
fn a_submission_whose_answer_is_lost_is_not_sent_again() {
    let g = Google::new();
    g.fake.script(
        Fault::DropAfterBody,
        Match::prompt("Camera cranes up the tower").on(Route::VeoSubmit),
        1,
    );
    let out = g.build(&[]);
    out.code(1);
    let report = out.json();
    let storm = node(&report, "segment/storm");
    assert_eq!(storm["status"], "failed");
    let error = str_field(&storm, "error");
    assert!(error.contains("ttv build --force segment/storm"), "{error}");
    let storm_submits = || g.sent(Route::VeoSubmit, "Camera cranes up the tower").len();
    assert_eq!(storm_submits(), 1, "not resent within the build");
    // Nor by the next build.
    g.build(&[]).code(1);
    assert_eq!(storm_submits(), 1, "not resent by the next build");
    // --force sends it again.
    g.build(&["--force", "segment/storm"]).success();
    assert_eq!(storm_submits(), 2);
}

#[test]
fn a_download_on_another_host_never_receives_the_key() {
    let g = Google::new();
    g.p.replace_in_yaml("  api: vertex", "  api: gemini");
    g.fake.downloads_elsewhere(true);
    let report = g.build_ok();
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    let elsewhere = g.fake.other_port_requests();
    assert!(!elsewhere.is_empty(), "the videos came from the other port");
    for r in &elsewhere {
        assert!(r.header("x-goog-api-key").is_none(), "{r:#?}");
        assert!(!r.query.contains("key="), "{r:#?}");
    }
}

#[test]
fn doctor_checks_everything_for_free() {
    let g = Google::new();
    let out = g.ttv(&["--json", "doctor"]);
    out.success();
    let report: Value = out.json();
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(
        g.fake.count(Route::ModelsGet) >= 2,
        "models.get asked on both routes"
    );

    // With a `storyboard:` section, the text model it drafts with is asked about too.
    let g = Google::new();
    g.p.edit_yaml(|s| format!("{s}\nstoryboard:\n  prompt: a lighthouse keeper's night\n"));
    g.ttv(&["doctor"])
        .success()
        .stderr_contains("ok   model gemini-3.5-flash")
        .stderr_contains(
            "ok   gemini-3.5-flash on the Gemini API (storyboard): served (generateContent)",
        );
    g.p.edit_yaml(|s| format!("{s}  model: gemini-3.1-flash-image\n"));
    g.ttv(&["doctor"]).code(2).stderr_contains(
        "FAIL model gemini-3.1-flash-image: Nano Banana 2 is an image model, not a text one",
    );

    // A retired model, a missing credential, a Veo model the Gemini API does not serve.
    let mut g = Google::new();
    g.set("keyframes", "model", "gemini-2.5-flash-image");
    g.without_env("GOOGLE_OAUTH_ACCESS_TOKEN");
    g.set_env(
        "HOME",
        g.p.path("empty-home").to_string_lossy().into_owned(),
    );
    g.p.replace_in_yaml(
        "  api: vertex",
        "  api: vertex\n  fallback:\n    - {backend: veo, api: gemini}",
    );
    g.fake.gemini_api_veo(false);
    let out = g.ttv(&["--json", "doctor"]);
    out.code(2)
        .stderr_contains("FAIL model gemini-2.5-flash-image: Nano Banana was retired by Google on 2026-10-02; use gemini-3.1-flash-image")
        .stderr_contains("FAIL Vertex AI credentials: no Google Cloud credentials found")
        .stderr_contains("FAIL veo-3.1-generate-001 on the Gemini API: known to the service, but it lists no predictLongRunning");
    assert_eq!(out.json()["ok"], false);
    assert_eq!(g.fake.paid_requests(), 0, "doctor pays for nothing");

    // A model neither ttv's registry nor Google knows: Google's 404 is the answer.
    let g = Google::new();
    g.set("video", "model", "veo-3.2-generate-001");
    g.ttv(&["doctor"])
        .code(2)
        .stderr_contains("ok   model veo-3.2-generate-001: not in ttv's model registry")
        .stderr_contains("FAIL veo-3.2-generate-001 on Vertex AI (us-central1): not found");
    assert_eq!(g.fake.paid_requests(), 0);
}

//! Coming from the Python TTV pipeline (issue 10): `ttv import` takes over its projects, in both
//! shapes of enhanced_prompt.json, and the result builds offline.

use serde_json::Value;
use ttv::project::{Config, Transition, parse_config};

use crate::support::project::{Project, count};

/// Imports `fixtures/<fixture>` into a new folder; the folder and the `--json` report.
fn import(fixture: &str) -> (Project, Project, Value) {
    let source = Project::from_fixture(fixture);
    let dest = Project::empty();
    let out = dest.ttv(&["--json", "import", source.path("").to_str().unwrap()]);
    out.success();
    assert_no_secret(&out.stdout);
    assert_no_secret(&out.stderr);
    let report = out.json();
    (source, dest, report)
}

/// Every secret of the fixtures ends so; none may reach the new project or a message.
fn assert_no_secret(text: &str) {
    assert!(
        !text.contains("do-not-copy"),
        "a secret was copied:\n{text}"
    );
}

fn config(p: &Project) -> Config {
    parse_config(&p.read("ttv.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn enhanced(source: &Project, rel: &str) -> Value {
    serde_json::from_str(&source.read(rel)).unwrap()
}

fn prompts(doc: &Value, list: &str) -> Vec<String> {
    doc[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["prompt"].as_str().unwrap().to_string())
        .collect()
}

fn reason_of<'a>(report: &'a Value, key: &str) -> &'a str {
    report["unmapped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["key"] == key)
        .unwrap_or_else(|| panic!("{key} is not listed as not imported: {report:#}"))["reason"]
        .as_str()
        .unwrap()
}

fn note_of<'a>(report: &'a Value, key: &str) -> &'a str {
    report["mapped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == key)
        .unwrap_or_else(|| panic!("{key} is not mapped: {report:#}"))["note"]
        .as_str()
        .unwrap_or("")
}

/// What the new project holds, every file, must not carry a secret of the source.
fn assert_no_secret_in(p: &Project) {
    for (path, bytes) in p.files_under("") {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("do-not-copy"),
            "{path} holds a secret of the pipeline project"
        );
    }
}

#[test]
fn an_early_pipeline_project_is_imported_and_builds_offline() {
    let (source, dest, report) = import("pipeline-early");
    assert_eq!(report["shots"], 3);
    assert_eq!(report["storyboard_request"], false);
    assert_eq!(
        report["references"],
        serde_json::json!(["milo.png", "pip.jpg"])
    );
    let c = config(&dest);
    let doc = enhanced(&source, "output/enhanced_prompt.json");
    let ends: Vec<_> = c.shots.iter().map(|s| s.end.clone()).collect();
    let motions: Vec<_> = c.shots.iter().map(|s| s.motion.clone()).collect();
    assert_eq!(ends, prompts(&doc, "keyframe_prompts"));
    assert_eq!(motions, prompts(&doc, "video_prompts"));
    assert!(c.shots.iter().all(|s| s.transition == Transition::Continue));
    // The initial image is the first start frame; the references are copied.
    assert_eq!(c.shots[0].start_image.as_deref(), Some("images/start.png"));
    assert_eq!(
        dest.read_bytes("images/start.png"),
        source.read_bytes("start.png")
    );
    assert_eq!(
        dest.read_bytes("references/pip.jpg"),
        source.read_bytes("input/pip.jpg")
    );

    // Settings, with the retired models replaced by their successors.
    assert_eq!(c.keyframes.model, "gemini-3.1-flash-image");
    assert!(
        note_of(&report, "image_generation_model")
            .contains("replaced by its successor `gemini-3.1-flash-image`")
    );
    assert_eq!(c.video.model, "veo-3.1-generate-001");
    assert!(note_of(&report, "google_veo.veo_model").contains("retired by Google"));
    assert_eq!(c.video.mode.as_str(), "first-last");
    assert_eq!(
        c.video.duration_seconds, 6,
        "5 s rounded up to a Veo length"
    );
    assert_eq!(c.video.seed, Some(42));
    assert_eq!(c.keyframes.image_size.as_deref(), Some("1K"));
    assert_eq!(
        c.storyboard.unwrap().prompt.as_deref(),
        Some("Milo, an orange tabby cat, chases Pip, a grey mouse, around a 1940s classroom.")
    );

    // What has no place in ttv is listed, with the reason; keys are never copied.
    assert!(reason_of(&report, "gemini_api_key").contains("never copied"));
    assert!(reason_of(&report, "gemini_api_key").contains("GEMINI_API_KEY"));
    assert!(reason_of(&report, "runway_ml.api_key").contains("never copied"));
    assert!(reason_of(&report, "wan2_dir").contains("local GPU"));
    assert!(reason_of(&report, "google_veo.project_id").contains("GOOGLE_CLOUD_PROJECT"));
    assert!(
        dest.read("ttv.yaml")
            .contains("#   wan2_dir: a setting of a local GPU")
    );
    assert_no_secret_in(&dest);

    let build = dest.build_json(&[]);
    assert_eq!(count(&build, "failed"), 0, "{build:#}");
    assert!(dest.exists("build/final.mp4"));
    assert_no_secret_in(&dest);

    dest.ttv(&["import", source.path("").to_str().unwrap()])
        .code(2)
        .stderr_contains("already exists; ttv import does not overwrite it without --force");
}

#[test]
fn a_later_pipeline_project_keeps_its_cuts_durations_and_says_what_chaining_became() {
    let (source, dest, report) = import("pipeline-late");
    let c = config(&dest);
    let doc = enhanced(&source, "enhanced_prompt.json");
    assert_eq!(c.shots.len(), 3);
    let transitions: Vec<_> = c.shots.iter().map(|s| s.transition).collect();
    assert_eq!(
        transitions,
        [Transition::Continue, Transition::Continue, Transition::Cut]
    );
    assert_eq!(
        c.shots[2].start.as_deref(),
        doc["keyframe_prompts"][2]["start_prompt"].as_str()
    );
    // A first shot with an initial image starts on it (its start_prompt is said to be unused).
    assert_eq!(c.shots[0].start_image.as_deref(), Some("images/start.png"));
    assert!(
        report["notes"]
            .to_string()
            .contains("start_prompt is not used")
    );
    let durations: Vec<_> = c.shots.iter().map(|s| s.duration_seconds).collect();
    assert_eq!(
        durations,
        [Some(6), Some(6), Some(8)],
        "5 s rounded up to Veo's 6"
    );
    let ends: Vec<_> = c.shots.iter().map(|s| s.end.clone()).collect();
    assert_eq!(ends, prompts(&doc, "keyframe_prompts"));

    assert_eq!(c.keyframes.model, "gemini-3-pro-image");
    assert_eq!(c.video.model, "veo-3.1-fast-generate-001");
    assert!(note_of(&report, "keyframe_position").contains("`middle` has no frame in ttv"));
    assert_eq!(c.video.mode.as_str(), "single");
    assert_eq!(c.video.storage_uri.as_deref(), Some("gs://my-bucket/ttv/"));
    assert_eq!(c.video.max_retries, 4);
    assert!(note_of(&report, "generation_mode").contains("last frame of the previous video"));
    assert!(c.video.chain, "chaining mode is ttv's video.chain");
    assert_no_secret_in(&dest);

    let build = dest.build_json(&[]);
    assert_eq!(count(&build, "failed"), 0, "{build:#}");
}

#[test]
fn a_pipeline_project_with_only_its_prompt_becomes_a_storyboard_request() {
    let source = Project::empty();
    source.write(
        "pipeline_config.yaml",
        "prompt: \"A paper boat sails down a rainy gutter\"\ngemini_api_key: \"AIza-do-not-copy\"\n",
    );
    let dest = Project::empty();
    let out = dest.ttv(&[
        "--json",
        "import",
        source.path("pipeline_config.yaml").to_str().unwrap(),
    ]);
    out.success();
    assert_eq!(out.json()["storyboard_request"], true);
    assert_no_secret_in(&dest);
    dest.ttv(&["build"])
        .code(2)
        .stderr_contains("run `ttv storyboard --write`");
    dest.ttv(&["storyboard", "--write", "--shots", "2"])
        .success();
    let c = config(&dest);
    assert_eq!(c.shots.len(), 2);
    assert!(
        c.shots[0]
            .end
            .contains("A paper boat sails down a rainy gutter")
    );
    let build = dest.build_json(&[]);
    assert_eq!(count(&build, "failed"), 0, "{build:#}");
}

//! From one prompt to a film (issue 10): `ttv storyboard` drafts the shots with a Gemini text
//! model, cached like any generation, and the draft builds.

use serde_json::Value;

use crate::support::fake_google::{FakeGoogle, Route, check_against_sdk_allowing};
use crate::support::project::{Output, Project, count, ffprobe_duration};

const PROMPT: &str = "A lighthouse keeper's night, from dusk to dawn";

/// What ttv's storyboard request sends beyond the SDK capture's three-field schema: the title,
/// the other shot fields and the bounds that pin the shot count and durations.
const SCHEMA_EXTRAS: &[&str] = &[
    "generationConfig.responseSchema.propertyOrdering",
    "generationConfig.responseSchema.properties.title",
    "generationConfig.responseSchema.properties.shots.minItems",
    "generationConfig.responseSchema.properties.shots.maxItems",
    "generationConfig.responseSchema.properties.shots.items.properties.transition",
    "generationConfig.responseSchema.properties.shots.items.properties.start",
    "generationConfig.responseSchema.properties.shots.items.properties.durationSeconds",
];

/// `ttv --json storyboard PROMPT --shots 3 --backend gemini EXTRA...` against the fake, whatever
/// its exit code.
fn run_storyboard(p: &Project, fake: &FakeGoogle, extra: &[&str]) -> Output {
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec![
        "--json",
        "storyboard",
        PROMPT,
        "--shots",
        "3",
        "--backend",
        "gemini",
    ];
    args.extend_from_slice(extra);
    p.ttv_env(&args, &env)
}

/// The same, succeeding: its report.
fn storyboard(p: &Project, fake: &FakeGoogle, extra: &[&str]) -> Value {
    run_storyboard(p, fake, extra).success().json()
}

#[test]
fn a_storyboard_is_drafted_once_written_built_and_rerolled_on_demand() {
    let fake = FakeGoogle::start();
    let p = Project::from_fixture("basic");

    let draft = storyboard(&p, &fake, &["--write", "--force"]);
    let requests = fake.requests_to(Route::GenerateContent);
    assert_eq!(requests.len(), 1, "{draft:#}");
    let sent = &requests[0];
    assert_eq!(sent.model.as_deref(), Some("gemini-3.5-flash"));
    check_against_sdk_allowing("text-json-schema-gemini-api", sent, SCHEMA_EXTRAS)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sent.prompt().unwrap().contains(PROMPT));
    let config = &sent.body.as_ref().unwrap()["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    let shots_schema = &config["responseSchema"]["properties"]["shots"];
    assert_eq!(shots_schema["minItems"], 3);
    assert_eq!(
        shots_schema["items"]["properties"]["transition"]["enum"],
        serde_json::json!(["continue", "cut"])
    );
    assert_eq!(draft["status"], "generated");
    assert_eq!(draft["take"], 1);
    assert!(draft["cost_usd"].as_f64().unwrap() > 0.0, "{draft:#}");

    // The fake answers one instance of the schema: its shots are now the project's, with the
    // durations Veo 3.1 makes at 720p.
    let yaml = p.read("ttv.yaml");
    assert!(!yaml.contains("id: arrival"), "{yaml}");
    for i in 1..=3 {
        assert!(yaml.contains(&format!("  - id: shot-{i}\n")), "{yaml}");
        assert!(
            yaml.contains(&format!("end: \"end {i}: A lighthouse keeper's night")),
            "{yaml}"
        );
    }
    assert!(yaml.contains("duration_seconds: 4"), "{yaml}");
    assert!(yaml.contains("name: basic"), "the rest of ttv.yaml stays");

    let report = p.build_json(&[]);
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    // Single mode from the start frame: the last end frame is not needed.
    assert_eq!(
        count(&report, "generated"),
        7,
        "1 start, 2 ends, 3 segments, final"
    );
    let clip = ffprobe_duration(&p.path("build/segments/001-shot-1.mp4"));
    assert!(
        (clip - 4.0).abs() < 0.2,
        "the preview clip lasts the shot: {clip}"
    );

    // The same request again: the cache answers (even after gc); no request, no cost.
    p.ttv(&["gc", "--yes"]).success();
    let again = storyboard(&p, &fake, &[]);
    assert_eq!(fake.count(Route::GenerateContent), 1);
    assert_eq!(again["status"], "cached");
    assert_eq!(again["cost_usd"], 0.0);
    assert_eq!(again["shots"], draft["shots"]);

    // Writing over the project's shots needs --force.
    run_storyboard(&p, &fake, &["--write"])
        .code(2)
        .stderr_contains("already has 3 shot(s); pass --force");

    let reroll = storyboard(&p, &fake, &["--reroll"]);
    assert_eq!(fake.count(Route::GenerateContent), 2);
    assert_eq!(reroll["status"], "generated");
    assert_eq!(reroll["take"], 2);

    // The first draft is still there, for nothing; a take never made is refused.
    let first = storyboard(&p, &fake, &["--take", "1"]);
    assert_eq!(fake.count(Route::GenerateContent), 2);
    assert_eq!(
        (first["status"].as_str(), first["take"].as_u64()),
        (Some("cached"), Some(1))
    );
    assert_eq!(first["shots"], draft["shots"]);
    run_storyboard(&p, &fake, &["--take", "3"])
        .code(2)
        .stderr_contains("take 3 of this storyboard does not exist (it has 2)");
    let takes = p.ttv(&["--json", "takes", "storyboard"]).success().json();
    let listed: Vec<u64> = takes["takes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["take"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2], "{takes:#}");
    assert!(
        takes["takes"][0]["cost_usd"].as_f64().unwrap() > 0.0,
        "{takes:#}"
    );
    // `--write` recorded the request in ttv.yaml: the latest take is the current one, and the
    // command without arguments asks for the same draft again, for nothing.
    assert_eq!(takes["takes"][1]["current"], true, "{takes:#}");
    let yaml = p.read("ttv.yaml");
    assert!(
        yaml.contains("storyboard:") && yaml.contains(&format!("  prompt: \"{PROMPT}\"")),
        "{yaml}"
    );
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bare = p.ttv_env(&["--json", "storyboard"], &env).success().json();
    assert_eq!(
        (bare["status"].as_str(), bare["take"].as_u64()),
        (Some("cached"), Some(2))
    );
    assert_eq!(fake.count(Route::GenerateContent), 2);
}

#[test]
fn the_preview_backend_drafts_a_placeholder_film_offline() {
    let p = Project::empty();
    let fox = [
        "storyboard",
        "A fox crosses a frozen river at night",
        "--backend",
        "preview",
        "--seconds",
        "12",
        "--shots",
        "2",
    ];
    let out = p.ttv(&fox);
    out.success();
    assert!(
        out.stdout.starts_with("shots:\n  - id: shot-1\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("duration_seconds: 6"), "{}", out.stdout);
    let again = p.ttv(&[&fox[..], &["--write"]].concat());
    again.success().stderr_contains("cached (take 1");
    assert_eq!(again.stdout, "", "--write prints no YAML");
    assert!(p.read("ttv.yaml").contains(&out.stdout));
    let report = p.build_json(&[]);
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    let film = ffprobe_duration(&p.path("build/final.mp4"));
    assert!((film - 12.0).abs() < 0.3, "{film}");
}

#[test]
fn a_storyboard_needs_a_prompt_and_a_text_model() {
    let p = Project::empty();
    p.ttv(&["storyboard", "--backend", "preview"])
        .code(2)
        .stderr_contains("no prompt");
    p.ttv(&["storyboard", "x", "--model", "veo-3.1-generate-001"])
        .code(2)
        .stderr_contains("a storyboard needs a text model");
    p.ttv(&["storyboard", "x", "--backend", "gemini"])
        .code(2)
        .stderr_contains("GEMINI_API_KEY is not set");
}

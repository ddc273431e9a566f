//! Trims (issue 10): `trim: [in_s, out_s]` under a shot cuts its segment in the final stitch
//! without regenerating anything; the real ttv on project.example with the preview backend,
//! real ffmpeg, and ffprobe measuring the result.

use crate::support::project::{Project, ffprobe_duration, generated_ids, set};

const STORM_DURATION: &str = "    duration_seconds: 4\n";

/// project.example with `arrival` kept from 0.5 s to 1.5 s and `storm` from 1 s to 3.5 s.
fn trimmed() -> Project {
    let p = Project::from_repo_dir("project.example");
    p.replace_in_yaml(
        "    motion: \"Slow dolly in as the keeper climbs the steps to the door\"\n",
        "    motion: \"Slow dolly in as the keeper climbs the steps to the door\"\n    trim: [0.5, 1.5]\n",
    );
    p.replace_in_yaml(
        STORM_DURATION,
        "    duration_seconds: 4\n    trim: [1, 3.5]\n",
    );
    p
}

#[test]
fn the_final_keeps_only_the_trimmed_spans_and_a_trim_edit_remakes_only_the_final() {
    let p = trimmed();
    p.build_json(&[]);
    // Untrimmed: 2 + 2 + 4 + 2 + 2 s. Trimmed: 1 + 2 + 2.5 + 2 + 2 s.
    let length = ffprobe_duration(&p.path("build/final.mp4"));
    assert!(
        (length - 9.5).abs() < 0.15,
        "final.mp4 lasts the sum of the kept spans: {length} s"
    );
    let storm = ffprobe_duration(&p.path("build/segments/003-storm.mp4"));
    assert!(
        (storm - 4.0).abs() < 0.15,
        "the segment itself is whole: {storm} s"
    );

    p.replace_in_yaml("trim: [1, 3.5]", "trim: [0, 2]");
    let report = p.build_json(&[]);
    assert_eq!(generated_ids(&report), set(&["final"]), "{report:#}");
    // The trimmed recipe of the last build reads back, so the reason names the field.
    let reasons = report["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == "final"))
        .map(|n| n["reasons"].to_string())
        .unwrap_or_default();
    assert!(reasons.contains("trims changed"), "{reasons}");
    let length = ffprobe_duration(&p.path("build/final.mp4"));
    assert!((length - 9.0).abs() < 0.15, "{length} s");

    let explained = p.ttv(&["explain", "final"]).success().stderr.clone();
    assert!(explained.contains("cached"), "{explained}");

    // Dropping every trim gives back the whole segments, again by making only the final.
    p.edit_yaml(|s| {
        s.replace("    trim: [0.5, 1.5]\n", "")
            .replace("    trim: [0, 2]\n", "")
    });
    let report = p.build_json(&[]);
    assert_eq!(generated_ids(&report), set(&["final"]), "{report:#}");
    let length = ffprobe_duration(&p.path("build/final.mp4"));
    assert!((length - 12.0).abs() < 0.15, "{length} s");
}

#[test]
fn a_trim_past_the_segment_is_refused_with_its_line() {
    let p = Project::from_repo_dir("project.example");
    p.replace_in_yaml(
        STORM_DURATION,
        "    duration_seconds: 4\n    trim: [1, 5]\n",
    );
    let line = p.yaml_line_of("trim: [1, 5]");
    let out = p.ttv(&["plan"]);
    out.code(2)
        .stderr_contains(&format!("ttv.yaml:{line}"))
        .stderr_contains("past the segment's 4 s");
    p.replace_in_yaml("trim: [1, 5]", "trim: [3, 2]");
    p.ttv(&["plan"])
        .code(2)
        .stderr_contains("must come after the start");
}

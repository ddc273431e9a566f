//! Chaining mode (issue 10): each continue-shot's segment starts on the last frame of the
//! previous shot's video, extracted by ffmpeg into a derived node. The real ttv on
//! project.example with `video.chain: true` and the preview backend, real ffmpeg.

use std::path::Path;
use std::process::Command;

use crate::support::project::{Project, generated_ids, set};

const ARRIVAL_MOTION: &str = "Slow dolly in as the keeper climbs the steps to the door";

fn chained() -> Project {
    let p = Project::from_repo_dir("project.example");
    p.replace_in_yaml("  mode: first-last ", "  chain: true\n  mode: first-last ");
    p
}

/// One frame of a video as RGB: the first (`last` false) or the last.
fn frame_of(video: &Path, last: bool, dir: &Path) -> image::RgbImage {
    let out = dir.join(if last { "last.png" } else { "first.png" });
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-y", "-v", "error"]);
    if last {
        cmd.args(["-sseof", "-1"]);
    }
    cmd.arg("-i").arg(video);
    if last {
        cmd.args(["-update", "1"]);
    } else {
        cmd.args(["-frames:v", "1"]);
    }
    let status = cmd.arg(&out).status().expect("run ffmpeg");
    assert!(
        status.success(),
        "ffmpeg read a frame of {}",
        video.display()
    );
    image::open(&out).expect("a PNG").to_rgb8()
}

/// Mean absolute difference per channel, 0-255.
fn difference(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}

#[test]
fn a_chained_segment_starts_on_the_last_frame_of_the_one_before() {
    let p = chained();
    let report = p.build_json(&[]);
    let made = generated_ids(&report);
    for id in [
        "frame/arrival/last",
        "frame/stairs/last",
        "frame/storm/last",
    ] {
        assert!(made.contains(id), "{id} is a node of its own: {made:?}");
    }
    assert!(!made.contains("frame/lamp/last"), "dawn is a cut: {made:?}");
    let tmp = tempfile::tempdir().unwrap();
    let end_of_one = frame_of(&p.path("build/segments/001-arrival.mp4"), true, tmp.path());
    let start_of_two = frame_of(&p.path("build/segments/002-stairs.mp4"), false, tmp.path());
    let d = difference(&end_of_one, &start_of_two);
    assert!(
        d < 6.0,
        "segment 2 starts where segment 1 ends (mean difference {d:.2})"
    );
    // Not merely two similar pictures: the start of segment 1 is far from both.
    let start_of_one = frame_of(&p.path("build/segments/001-arrival.mp4"), false, tmp.path());
    let apart = difference(&start_of_one, &start_of_two);
    assert!(apart > 3.0 * d.max(1.0), "{apart:.2} vs {d:.2}");

    // The plan shows the extra edges.
    p.replace_in_yaml(ARRIVAL_MOTION, "The keeper runs up the steps");
    let plan = p.ttv(&["plan"]).success().stderr.clone();
    assert!(
        plan.contains("frame/arrival/last")
            && plan.contains("input segment/arrival will be regenerated"),
        "{plan}"
    );

    // Editing shot 1's motion remakes its video, the frames extracted downstream and the videos
    // that start on them, and nothing else: no keyframe is paid for again.
    let report = p.build_json(&[]);
    assert_eq!(
        generated_ids(&report),
        set(&[
            "segment/arrival",
            "frame/arrival/last",
            "segment/stairs",
            "frame/stairs/last",
            "segment/storm",
            "frame/storm/last",
            "segment/lamp",
            "final",
        ]),
        "{report:#}"
    );
    let why = p
        .ttv(&["explain", "frame/arrival/last"])
        .success()
        .stderr
        .clone();
    assert!(why.contains("cached"), "{why}");
}

#[test]
fn the_first_shot_cannot_be_a_chain() {
    let p = Project::from_repo_dir("project.example");
    p.replace_in_yaml(
        "  - id: arrival\n",
        "  - id: arrival\n    transition: chain\n",
    );
    p.ttv(&["plan"])
        .code(2)
        .stderr_contains("the first shot cannot be a chain");
}

#[test]
fn the_review_sheet_shows_each_extracted_frame_under_its_shot_and_where_the_next_starts() {
    let p = chained();
    p.build_json(&[]);
    p.ttv(&["review", "--static"]).success();
    let html = p.read("build/review.html");
    let section = |shot: &str| -> String {
        let from = html
            .find(&format!("data-shot=\"{shot}\""))
            .unwrap_or_else(|| panic!("no section for {shot}: {html}"));
        let rest = &html[from..];
        rest[..rest.find("</section>").unwrap()].to_string()
    };
    // The extracted frame is a picture of its own under the shot whose video it comes from,
    // and the next shot says it starts there.
    let arrival = section("arrival");
    assert!(
        arrival.contains("<img class=\"current\" src=\"frames/001-arrival-last.png\""),
        "{arrival}"
    );
    assert!(
        section("stairs").contains("starts on frame/arrival/last"),
        "{html}"
    );
    // A cut starts on its own frame.
    assert!(!section("dawn").contains("starts on"), "{html}");
    assert!(!html.contains("frames/004-lamp-last.png"), "{html}");
}

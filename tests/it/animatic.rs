//! The offline animatic (issue 10): the preview backend writes each frame's shot and prompt on
//! it, and each clip lasts its shot and moves from its start frame to its end frame, with its
//! motion prompt below. Read back with OCR (tesseract), as a person would read it.

use std::path::Path;
use std::process::Command;

use crate::support::project::{Project, count, ffprobe_duration};

/// Where the frame's caption is (top) and where a clip's subtitle is (bottom).
#[derive(Clone, Copy)]
enum Region {
    Top,
    Bottom,
}

/// The words tesseract reads in a region of an image, lower case. The region is cut out (the
/// preview's striped background confuses tesseract's page layout) and enlarged three times
/// (the built-in font is 8 pixels high).
fn ocr(image: &Path, region: Region) -> String {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.png");
    let crop = match region {
        Region::Top => "crop=iw:ih*0.42:0:0",
        Region::Bottom => "crop=iw:ih*0.42:0:ih*0.58",
    };
    let scaled = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(image)
        .args(["-vf", &format!("{crop},scale=iw*3:ih*3:flags=neighbor")])
        .arg(&big)
        .status()
        .expect("run ffmpeg");
    assert!(
        scaled.success(),
        "ffmpeg could not enlarge {}",
        image.display()
    );
    let out = Command::new("tesseract")
        .arg(&big)
        .arg("stdout")
        .output()
        .expect("run tesseract (scripts/setup-debian.sh installs tesseract-ocr)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

fn assert_reads(text: &str, words: &[&str], what: &str) {
    let missing: Vec<_> = words.iter().filter(|w| !text.contains(*w)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {missing:?} not read in:\n{text}"
    );
}

/// One frame of a clip at `seconds`, as PNG.
fn frame_at(clip: &Path, seconds: f64, out: &Path) {
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-ss", &format!("{seconds}"), "-i"])
        .arg(clip)
        .args(["-frames:v", "1"])
        .arg(out)
        .status()
        .expect("run ffmpeg");
    assert!(ok.success());
}

#[test]
fn preview_frames_and_clips_carry_their_shot_and_prompt_words() {
    let p = Project::from_fixture("basic");
    p.replace_in_yaml(
        "  duration_seconds: 1\n",
        "  duration_seconds: 1\n  mode: first-last\n",
    );
    p.replace_in_yaml(
        "    motion: \"Slow dolly in as the keeper climbs the steps\"\n",
        "    motion: \"Slow dolly in as the keeper climbs the steps\"\n    duration_seconds: 3\n",
    );
    let report = p.build_json(&["arrival"]);
    assert_eq!(count(&report, "failed"), 0, "{report:#}");

    // "The keeper opens the lighthouse door, lantern raised"
    let end = ocr(&p.path("build/frames/001-arrival-end.png"), Region::Top);
    assert_reads(
        &end,
        &[
            "end frame",
            "keeper",
            "opens",
            "lighthouse",
            "door",
            "lantern",
        ],
        "the end frame",
    );
    // "Wide shot: a lighthouse at dusk, the keeper on the rocks"
    let start = ocr(&p.path("build/frames/001-arrival-start.png"), Region::Top);
    assert_reads(
        &start,
        &["start frame", "shot", "dusk", "rocks"],
        "the start frame",
    );

    // The clip lasts the shot, starts on the start frame, ends on the end frame, and says its
    // shot and motion all along.
    let clip = p.path("build/segments/001-arrival.mp4");
    let seconds = ffprobe_duration(&clip);
    assert!((seconds - 3.0).abs() < 0.1, "{seconds}");
    let dir = tempfile::tempdir().unwrap();
    let (first, last) = (dir.path().join("first.png"), dir.path().join("last.png"));
    frame_at(&clip, 0.0, &first);
    frame_at(&clip, 2.9, &last);
    let motion = ["arrival", "dolly", "keeper", "climbs", "steps"];
    assert_reads(
        &ocr(&first, Region::Top),
        &["start frame", "dusk"],
        "the clip's start",
    );
    let last_top = ocr(&last, Region::Top);
    assert_reads(&last_top, &["end frame", "lantern"], "the clip's end");
    assert_reads(&ocr(&last, Region::Bottom), &motion, "the clip's end");
    assert!(!last_top.contains("start frame"), "{last_top}");
}

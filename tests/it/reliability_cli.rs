//! Defects found by the bad-input, Ctrl-C and pipe trials (issue 7): each test failed before
//! its fix.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::engine::{basic, wait_for_first_result};
use crate::support::project::{Project, count, generated_ids};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ttv")
}

#[test]
fn a_fifo_in_references_is_skipped_with_a_note_not_waited_on() {
    let p = basic();
    let fifo = p.path("references/pipe.png");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut cmd = p.command(&["plan"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ttv plan hangs on a FIFO in references/");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("references/pipe.png skipped: not a regular file"),
        "{stderr}"
    );
}

#[test]
fn shot_ids_prompts_and_names_are_checked_before_anything_is_paid() {
    let long = "a".repeat(200);
    for (from, to, message) in [
        (
            "id: storm",
            format!("id: {long}"),
            "characters long; the most is 64",
        ),
        (
            "id: storm",
            "id: final".to_string(),
            "shot id `final` is a target group's name",
        ),
        (
            "end: \"Lightning over the lamp room\"",
            "end: \"   \"".to_string(),
            "the `end` prompt of shot `storm` is empty",
        ),
        (
            "motion: \"Camera cranes up the tower as rain starts\"",
            "motion: \"\"".to_string(),
            "the `motion` prompt of shot `storm` is empty",
        ),
    ] {
        let p = basic();
        p.replace_in_yaml(from, &to);
        let out = p.ttv(&["plan"]);
        out.code(2)
            .stderr_contains(message)
            .stderr_contains("help:");
        assert!(!p.exists(".ttv"), "{message}: nothing was made");
    }
}

#[test]
fn a_pinned_take_that_does_not_exist_is_refused() {
    let p = basic();
    p.build_json(&[]);
    p.replace_in_yaml(
        "motion: \"Camera cranes up the tower as rain starts\"",
        "motion: \"Camera cranes up the tower as rain starts\"\n    take: 99",
    );
    p.ttv(&["build"])
        .code(2)
        .stderr_contains("`take: 99` pins a take of segment/storm that does not exist (it has 1)")
        .stderr_contains("`take: 2`");
    // The next take is allowed: it is made.
    p.replace_in_yaml("take: 99", "take: 2");
    let report = p.build_json(&[]);
    assert!(generated_ids(&report).contains("segment/storm"));
}

#[test]
fn a_huge_reference_is_checked_by_its_header() {
    let p = basic();
    // 13000 x 13000 RGB pixels of one colour: a small file, 507 MB decoded.
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=navy:s=13000x13000",
        ])
        .args(["-frames:v", "1", "-pix_fmt", "rgb24"])
        .arg(p.path("references/huge.png"))
        .status()
        .unwrap();
    assert!(made.success());
    // Under a 400 MB address-space limit, decoding it whole cannot succeed.
    let script = format!(
        "ulimit -v 400000; exec '{}' -C '{}' plan",
        bin(),
        p.path("").display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    // The preview backend draws it as a tile rather than decoding it: a build stays small too.
    let script = format!(
        "ulimit -v 1000000; exec '{}' -C '{}' build frame/arrival/start",
        bin(),
        p.path("").display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

#[test]
fn commands_that_never_wait_do_not_suggest_no_wait_and_warnings_show_once() {
    let p = basic();
    let mut running = p.spawn(&["build"], &[("TTV_PREVIEW_LATENCY_MS", "800")]);
    wait_for_first_result(&p, &mut running);
    for cmd in [["verify"], ["gc"]] {
        let out = p.ttv(&cmd);
        out.check(out.code != Some(0), "fails while a build runs");
        out.check(
            !out.stderr.contains("--no-wait"),
            "no flag it does not have",
        );
    }
    p.wait(running).success();
    let p = basic();
    p.write("references/notes.txt", "not an image");
    let out = p.ttv(&["build"]);
    out.success();
    assert_eq!(
        out.stderr.matches("notes.txt skipped").count(),
        1,
        "{}",
        out.stderr
    );
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let p = basic();
    for cmd in [
        "plan --json",
        "build --json",
        "takes frame/storm/end --json",
    ] {
        let script = format!(
            "'{}' -C '{}' {cmd} | head -c 40 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
            bin(),
            p.path("").display()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!stderr.contains("panicked"), "{cmd}: {stderr}");
        assert!(code == "0" || code == "141", "{cmd}: exit {code}: {stderr}");
    }
}

#[test]
fn a_second_ctrl_c_keeps_paid_images_and_still_prints_the_report() {
    let p = basic();
    let mut running = p.spawn(&["--json", "build"], &[("TTV_PREVIEW_LATENCY_MS", "1500")]);
    wait_for_first_result(&p, &mut running);
    std::thread::sleep(Duration::from_millis(200));
    running.interrupt();
    std::thread::sleep(Duration::from_millis(200));
    running.interrupt();
    let out = p.wait(running);
    out.code(130);
    out.stderr_contains("waiting for");
    let report: Value = out.json();
    assert_eq!(report["interrupted"], true);
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    // The frames in flight at the second Ctrl-C were waited for and stored.
    let made = generated_ids(&report);
    let next = p.build_json(&[]);
    for id in &made {
        assert_eq!(
            crate::support::project::node(&next, id)["status"],
            "cached",
            "{id} was paid for and kept"
        );
    }
    let _ = Project::empty();
}

#[test]
fn yaml_shape_errors_speak_of_ttv_yaml_not_of_rust() {
    for (from, to, message) in [
        (
            "end: \"Lightning over the lamp room\"",
            "end:",
            "`shots.1.end` is empty",
        ),
        (
            "end: \"Lightning over the lamp room\"",
            "end: \"Lightning over the lamp room\"\n    transition: [cut]",
            "`shots.1.transition` must be a single word",
        ),
        (
            "end: \"Lightning over the lamp room\"",
            "end: \"Lightning over the lamp room\"\n    seed: [1]",
            "`shots.1.seed` must be a single value, not a list or a mapping",
        ),
    ] {
        let p = basic();
        p.replace_in_yaml(from, to);
        let out = p.ttv(&["plan"]);
        out.code(2).stderr_contains(message);
        for jargon in ["Option<", "enum", "deserialize"] {
            out.check(!out.stderr.contains(jargon), "no Rust jargon");
        }
    }
}

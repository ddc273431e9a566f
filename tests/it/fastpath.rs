//! The no-op fast path (issue 11): once a build generated nothing, the next one with nothing
//! changed is answered from `.ttv/noop` alone. These stories arm it, make one edit of the
//! engine's stories, and check that the build after it is the full one, with the same
//! generated set as without the fast path.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use walkdir::WalkDir;

use crate::engine::{all_needed, assert_generated, assert_nothing_generated, basic, green_png};
use crate::support::project::{Output, Project, count, set};

/// What the summary line says when the fast path answered.
const FAST: &str = "nothing changed since the last build";

/// Moves every file and folder of the project outside `.ttv/` ten seconds back, so that the stat
/// cache's rows made now are not racy (git's rule: a file modified in the second a row is made
/// is not trusted), instead of waiting for the clock to pass a second.
fn age(p: &Project) {
    let past = SystemTime::now() - Duration::from_secs(10);
    let walk = WalkDir::new(p.path(""))
        .into_iter()
        .filter_entry(|e| e.depth() != 1 || e.file_name() != ".ttv");
    for entry in walk {
        let entry = entry.expect("walk");
        let file = File::open(entry.path()).expect("open");
        file.set_modified(past)
            .unwrap_or_else(|e| panic!("set the mtime of {}: {e}", entry.path().display()));
    }
}

fn build(p: &Project, ttv: &Path, args: &[&str]) -> Output {
    let mut full = vec!["--json", "build"];
    full.extend_from_slice(args);
    let out = p.run(p.command_of(ttv, &full));
    out.success();
    out
}

fn answered_fast(out: &Output) -> bool {
    out.stderr.contains(FAST)
}

/// Brings the project to the state the fast path answers from: a full no-op build records it,
/// and the next build is answered by it, with the very same report.
fn arm(p: &Project, ttv: &Path, args: &[&str]) {
    age(p);
    let full = build(p, ttv, args);
    full.check(!answered_fast(&full), "the first no-op is a full build");
    assert_eq!(count(&full.json(), "generated"), 0, "{}", full.stdout);
    let fast = build(p, ttv, args);
    fast.check(
        answered_fast(&fast),
        "the next no-op is answered by the fast path",
    );
    assert_eq!(
        fast.json(),
        full.json(),
        "the fast path gives the full report"
    );
}

fn ttv() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ttv"))
}

/// The build after an edit: a full one, generating `expected`.
#[track_caller]
fn full_build_generates(p: &Project, expected: &BTreeSet<String>) -> Value {
    let out = build(p, ttv(), &[]);
    out.check(
        !answered_fast(&out),
        "an edit is never answered by the fast path",
    );
    let report = out.json();
    assert_generated(&report, expected);
    report
}

#[test]
fn prompt_and_reference_edits_are_never_hidden() {
    let p = basic();
    p.build_json(&[]);

    arm(&p, ttv(), &[]);
    p.replace_in_yaml(
        "Close push in on the flame catching",
        "Slow orbit around the flame",
    );
    full_build_generates(&p, &set(&["segment/lamp", "final"]));

    arm(&p, ttv(), &[]);
    p.write("references/hero.png", green_png());
    full_build_generates(&p, &all_needed());

    // A new reference is sent with every frame: the folder's listing changed.
    arm(&p, ttv(), &[]);
    p.write("references/extra.png", green_png());
    full_build_generates(&p, &all_needed());
}

#[test]
fn touched_files_and_build_outputs_are_checked_again() {
    let p = basic();
    p.build_json(&[]);

    // ttv.yaml is keyed on its bytes: touching it changes nothing.
    arm(&p, ttv(), &[]);
    let yaml = File::open(p.path("ttv.yaml")).expect("open ttv.yaml");
    yaml.set_modified(SystemTime::now())
        .expect("touch ttv.yaml");
    let out = build(&p, ttv(), &[]);
    out.check(answered_fast(&out), "ttv.yaml has the same bytes");

    // A touched reference with the same bytes: hashed again, nothing generated.
    let hero = File::open(p.path("references/hero.png")).expect("open hero.png");
    hero.set_modified(SystemTime::now())
        .expect("touch hero.png");
    full_build_generates(&p, &BTreeSet::new());

    arm(&p, ttv(), &[]);
    let lamp = "build/frames/003-lamp-end.png";
    let bytes = p.read_bytes(lamp);
    p.remove(lamp);
    full_build_generates(&p, &BTreeSet::new());
    assert!(p.read_bytes(lamp) == bytes, "the deleted output is back");

    // Other bytes of the same size and mtime in a new file: only the inode tells.
    arm(&p, ttv(), &[]);
    let storm = "build/segments/002-storm.mp4";
    let bytes = p.read_bytes(storm);
    let mtime = std::fs::metadata(p.path(storm))
        .unwrap()
        .modified()
        .unwrap();
    p.remove(storm);
    p.write(storm, vec![0u8; bytes.len()]);
    File::open(p.path(storm))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    full_build_generates(&p, &BTreeSet::new());
    assert!(
        p.read_bytes(storm) == bytes,
        "the replaced output is the blob again"
    );

    // Other targets are another build.
    arm(&p, ttv(), &[]);
    let frames = build(&p, ttv(), &["frames"]);
    frames.check(!answered_fast(&frames), "other targets");
    arm(&p, ttv(), &["frames"]);
}

#[test]
fn a_rebuilt_ttv_and_a_pinned_take_are_full_builds() {
    let p = basic();
    p.build_json(&[]);
    let bin = tempfile::tempdir().expect("temp dir");
    let copy = bin.path().join("ttv");
    std::fs::copy(ttv(), &copy).expect("copy ttv");
    // Another test's child may hold the copy's write handle for a moment (inherited while it
    // forked): exec then fails with "text file busy" until it execs.
    while std::process::Command::new(&copy)
        .arg("--version")
        .output()
        .is_err_and(|e| e.raw_os_error() == Some(26))
    {
        std::thread::sleep(Duration::from_millis(20));
    }

    arm(&p, &copy, &[]);
    // A rebuilt ttv, as far as anyone can tell by its stat.
    File::open(&copy)
        .expect("open the copy")
        .set_modified(SystemTime::now())
        .expect("touch the copy");
    let out = build(&p, &copy, &[]);
    out.check(!answered_fast(&out), "a rebuilt ttv decides again");
    assert_nothing_generated(&out.json());

    let first = p.build_json(&[]);
    p.ttv(&["build", "--reroll", "frame/lamp/end"]).success();
    arm(&p, ttv(), &[]);
    p.ttv(&["pin", "frame/lamp/end", "1"]).success();
    let pinned = full_build_generates(&p, &BTreeSet::new());
    assert_eq!(
        pinned["nodes"], first["nodes"],
        "every node is back on take 1"
    );
}

#[test]
fn a_verdict_is_seen_by_the_next_build() {
    let p = basic();
    p.replace_in_yaml(
        "  duration_seconds: 1\n",
        "  duration_seconds: 1\n  require_approval: true\n",
    );
    p.ttv(&["build", "frames"]).success();
    p.ttv(&["approve", "frames"]).success();
    p.build_json(&[]);
    arm(&p, ttv(), &[]);
    p.ttv(&["reject", "frame/storm/end"]).success();
    let out = build(&p, ttv(), &[]);
    out.check(!answered_fast(&out), "a verdict forgets the record");
}

#[test]
fn a_configured_remote_keeps_the_fast_path_and_edits_are_still_seen() {
    let p = basic();
    let remote = tempfile::tempdir().expect("temp dir");
    p.edit_yaml(|yaml| {
        format!(
            "{yaml}\ncache:\n  remote: file://{}\n",
            remote.path().display()
        )
    });
    p.build_json(&[]);
    let shared = |dir: &Path| -> Vec<(String, u64, SystemTime)> {
        WalkDir::new(dir)
            .sort_by_file_name()
            .into_iter()
            .map(|e| e.expect("walk"))
            .map(|e| {
                let meta = e.metadata().expect("metadata");
                (
                    e.path().display().to_string(),
                    meta.len(),
                    meta.modified().expect("mtime"),
                )
            })
            .collect()
    };
    let uploaded = shared(remote.path());
    assert!(uploaded.len() > 1, "the first build filled the remote");

    // ttv.yaml names the remote in its bytes: the fast path answers, and the remote is left
    // alone.
    arm(&p, ttv(), &[]);
    assert_eq!(shared(remote.path()), uploaded);

    p.replace_in_yaml(
        "Close push in on the flame catching",
        "Slow orbit around the flame",
    );
    full_build_generates(&p, &set(&["segment/lamp", "final"]));
}

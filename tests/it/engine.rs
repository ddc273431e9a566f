//! The engine's stories (issue 2): the real binary on a copy of fixtures/basic, offline preview
//! backends, real ffmpeg and SQLite. The fixture's five shots are arrival, storm, lamp and dawn,
//! which chain from arrival's start frame, and dream, a cut with a start frame of its own.

use std::collections::BTreeSet;
use std::fs::File;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::support::project::{
    Project, Running, blobs, count, ffprobe_duration, generated_ids, ids_with_status, node, nodes,
    set, statuses, str_field,
};

/// Every node a default build of fixtures/basic needs, with its output. dawn's and dream's end
/// frames are absent: no segment starts on them (dream is a cut, dream is the last shot).
const NEEDED: &[(&str, &str, &str)] = &[
    (
        "frame/arrival/start",
        "frame",
        "build/frames/001-arrival-start.png",
    ),
    (
        "frame/arrival/end",
        "frame",
        "build/frames/001-arrival-end.png",
    ),
    ("frame/storm/end", "frame", "build/frames/002-storm-end.png"),
    ("frame/lamp/end", "frame", "build/frames/003-lamp-end.png"),
    (
        "frame/dream/start",
        "frame",
        "build/frames/005-dream-start.png",
    ),
    (
        "segment/arrival",
        "segment",
        "build/segments/001-arrival.mp4",
    ),
    ("segment/storm", "segment", "build/segments/002-storm.mp4"),
    ("segment/lamp", "segment", "build/segments/003-lamp.mp4"),
    ("segment/dawn", "segment", "build/segments/004-dawn.mp4"),
    ("segment/dream", "segment", "build/segments/005-dream.mp4"),
    ("final", "final", "build/final.mp4"),
];

const STORM_END: &str = "Lightning over the lamp room";

pub(crate) fn all_needed() -> BTreeSet<String> {
    NEEDED.iter().map(|(id, _, _)| id.to_string()).collect()
}

pub(crate) fn basic() -> Project {
    Project::from_fixture("basic")
}

/// A report's node ids and statuses as one line each, for assertion messages.
fn summary(report: &Value) -> String {
    format!("{:#?}", statuses(report))
}

#[track_caller]
pub(crate) fn assert_generated(report: &Value, expected: &BTreeSet<String>) {
    assert_eq!(&generated_ids(report), expected, "{}", summary(report));
    assert_eq!(
        count(report, "generated"),
        expected.len() as u64,
        "{report:#}"
    );
    let cached = all_needed().difference(expected).cloned().collect();
    assert_eq!(
        ids_with_status(report, "cached"),
        cached,
        "{}",
        summary(report)
    );
    assert_eq!(count(report, "failed"), 0, "{report:#}");
    assert_eq!(count(report, "skipped"), 0, "{report:#}");
}

#[track_caller]
pub(crate) fn assert_nothing_generated(report: &Value) {
    assert_generated(report, &BTreeSet::new());
}

/// A different, valid PNG (the fixture's hero is solid red).
pub(crate) fn green_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(16, 16, image::Rgb([20, 200, 60]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode png");
    bytes.into_inner()
}

#[test]
fn fresh_build_generates_every_needed_node_and_a_valid_final_video() {
    let p = basic();
    let report = p.build_json(&[]);

    assert_generated(&report, &all_needed());
    let by_id = nodes(&report);
    for (id, kind, output) in NEEDED {
        let n = &by_id[*id];
        assert_eq!(str_field(n, "kind"), *kind, "{n:#}");
        assert_eq!(str_field(n, "output"), *output, "{n:#}");
        assert_eq!(str_field(n, "key").len(), 64, "a blake3 hex key: {n:#}");
        assert_eq!(str_field(n, "blob").len(), 64, "a blake3 hex blob: {n:#}");
        let bytes = p.read_bytes(output);
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            str_field(n, "blob"),
            "{output} holds the blob the report names"
        );
        if *kind == "frame" {
            image::load_from_memory(&bytes)
                .unwrap_or_else(|e| panic!("{output} is not an image: {e}"));
        }
    }
    assert!(
        !p.exists("build/frames/004-dawn-end.png") && !p.exists("build/frames/005-dream-end.png"),
        "frames no segment uses are not paid for:\n{}",
        p.listing()
    );
    let manifest: Value =
        serde_json::from_str(&p.read("build/manifest.json")).expect("manifest.json is JSON");
    assert!(manifest.is_object() || manifest.is_array(), "{manifest:#}");

    let segments: f64 = NEEDED
        .iter()
        .filter(|(_, kind, _)| *kind == "segment")
        .map(|(_, _, output)| ffprobe_duration(&p.path(output)))
        .sum();
    let whole = ffprobe_duration(&p.path("build/final.mp4"));
    assert!(
        (whole - segments).abs() <= 0.15,
        "final.mp4 lasts {whole} s, its segments {segments} s"
    );
    assert!(
        (segments - 5.0).abs() <= 0.5,
        "five one-second shots, got {segments} s"
    );
}

#[test]
fn second_build_generates_nothing() {
    let p = basic();
    let first = p.build_json(&[]);
    let second = p.build_json(&[]);

    assert_nothing_generated(&second);
    assert_eq!(blobs(&first), blobs(&second));
    for field in ["cost_usd", "saved_usd"] {
        let usd = second[field].as_f64().expect(field);
        assert!(
            usd == 0.0 && usd.is_sign_positive(),
            "the preview backend is free: {field} is {usd:?}"
        );
    }
}

#[test]
fn editing_a_motion_prompt_regenerates_that_segment_and_the_final_video() {
    let p = basic();
    p.build_json(&[]);
    p.replace_in_yaml(
        "Close push in on the flame catching",
        "Slow orbit around the flame",
    );

    let expected = set(&["segment/lamp", "final"]);
    let plan = p.ttv(&["--json", "plan"]).success().json();
    assert_eq!(
        ids_with_status(&plan, "dirty"),
        expected,
        "{}",
        summary(&plan)
    );
    let report = p.build_json(&[]);
    assert_generated(&report, &expected);
}

#[test]
fn editing_an_end_frame_prompt_follows_the_chain_until_the_cut() {
    let p = basic();
    let first = p.build_json(&[]);
    let dream_start = p.read_bytes("build/frames/005-dream-start.png");
    p.replace_in_yaml(STORM_END, "Hail hammers the lamp room windows");

    // storm's end frame is edited into lamp's, which segments lamp and dawn start on; dream is a
    // cut, so nothing of it changes.
    let expected = set(&[
        "frame/storm/end",
        "frame/lamp/end",
        "segment/lamp",
        "segment/dawn",
        "final",
    ]);
    let plan = p.ttv(&["--json", "plan"]).success().json();
    assert_eq!(
        ids_with_status(&plan, "dirty"),
        expected,
        "{}",
        summary(&plan)
    );
    let report = p.build_json(&[]);
    assert_generated(&report, &expected);

    let (before, after) = (blobs(&first), blobs(&report));
    for id in &expected {
        assert_ne!(before[id], after[id], "{id} was regenerated with new bytes");
    }
    assert_eq!(
        p.read_bytes("build/frames/005-dream-start.png"),
        dream_start
    );
}

#[test]
fn editing_an_end_frame_prompt_without_chain_regenerates_that_frame_only() {
    let p = basic();
    p.build_json(&[]);
    p.replace_in_yaml("chain: true", "chain: false");
    p.build_json(&[]);
    p.replace_in_yaml(STORM_END, "Hail hammers the lamp room windows");

    let report = p.build_json(&[]);
    assert_generated(&report, &set(&["frame/storm/end", "segment/lamp", "final"]));
}

#[test]
fn changing_a_reference_image_regenerates_every_frame_and_everything_after() {
    let p = basic();
    p.build_json(&[]);
    p.write("references/hero.png", green_png());

    let report = p.build_json(&[]);
    assert_generated(&report, &all_needed());
}

#[test]
fn touching_references_or_adding_other_files_regenerates_nothing() {
    let p = basic();
    p.build_json(&[]);

    let hero = File::options()
        .write(true)
        .open(p.path("references/hero.png"))
        .expect("open hero.png");
    hero.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
    drop(hero);
    assert_nothing_generated(&p.build_json(&[]));

    // Same bytes, new file (new inode and mtime): hashed again, found equal.
    let bytes = p.read_bytes("references/lighthouse.jpg");
    p.remove("references/lighthouse.jpg");
    p.write("references/lighthouse.jpg", bytes);
    assert_nothing_generated(&p.build_json(&[]));

    p.write("references/notes.txt", "the keeper's coat is blue\n");
    assert_nothing_generated(&p.build_json(&[]));
}

#[test]
fn deleted_outputs_come_back_from_the_cache_and_clean_keeps_the_cache() {
    let p = basic();
    p.build_json(&[]);
    let mut outputs = p.files_under("build");
    // The manifest may say when it was written; the outputs themselves must be identical.
    outputs.remove("build/manifest.json");
    assert_eq!(outputs.len(), NEEDED.len(), "{}", p.listing());

    p.remove("build");
    assert_nothing_generated(&p.build_json(&[]));
    let mut again = p.files_under("build");
    again.remove("build/manifest.json");
    assert!(
        outputs == again,
        "outputs differ after a rebuild:\n{}",
        p.listing()
    );

    p.ttv(&["clean"]).success();
    assert!(
        !p.exists("build") && p.exists(".ttv/ttv.db"),
        "{}",
        p.listing()
    );
    assert_nothing_generated(&p.build_json(&[]));
    assert!(p.exists("build/final.mp4"), "{}", p.listing());

    let refused = p.ttv(&["clean", "--cache"]);
    refused.code(2).check(
        p.exists(".ttv/ttv.db"),
        "clean --cache without --yes keeps the cache",
    );
    p.ttv(&["clean", "--cache", "--yes"]).success();
    assert!(!p.exists(".ttv") && !p.exists("build"), "{}", p.listing());
}

#[test]
fn a_reroll_keeps_both_takes_and_a_pin_brings_the_first_one_back() {
    let p = basic();
    let first = p.build_json(&[]);
    let first_frame = p.read_bytes("build/frames/003-lamp-end.png");
    let first_final = p.read_bytes("build/final.mp4");

    let out = p.ttv(&["--json", "build", "--reroll", "frame/lamp/end"]);
    out.success().stderr_contains("end_take");
    let reroll = out.json();
    // Only segment dawn starts on lamp's end frame; dawn's own end frame is not needed.
    assert_generated(&reroll, &set(&["frame/lamp/end", "segment/dawn", "final"]));
    assert_eq!(node(&reroll, "frame/lamp/end")["take"], 2, "{reroll:#}");
    assert_ne!(
        blobs(&first)["frame/lamp/end"],
        blobs(&reroll)["frame/lamp/end"]
    );

    let takes = p
        .ttv(&["--json", "takes", "frame/lamp/end"])
        .success()
        .json();
    assert_eq!(takes["node"], "frame/lamp/end", "{takes:#}");
    let list = takes["takes"].as_array().expect("takes array");
    let numbers: Vec<u64> = list.iter().map(|t| t["take"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2], "{takes:#}");
    assert_eq!(
        list[0]["blob"].as_str(),
        Some(&*blobs(&first)["frame/lamp/end"])
    );
    assert_eq!(
        list[1]["blob"].as_str(),
        Some(&*blobs(&reroll)["frame/lamp/end"])
    );
    assert_eq!(list[0]["current"], false, "{takes:#}");
    assert_eq!(
        list[1]["current"], true,
        "the latest take is used: {takes:#}"
    );
    assert_eq!(list[0]["backend"], "preview", "{takes:#}");
    assert_ne!(list[0]["key"], list[1]["key"], "{takes:#}");

    p.replace_in_yaml(
        "    end: \"The keeper lights the great lamp\"\n",
        "    end: \"The keeper lights the great lamp\"\n    end_take: 1\n",
    );
    let pinned = p.build_json(&[]);
    assert_nothing_generated(&pinned);
    assert_eq!(node(&pinned, "frame/lamp/end")["take"], 1, "{pinned:#}");
    assert_eq!(
        blobs(&pinned),
        blobs(&first),
        "every node is back on its take-1 entry"
    );
    assert!(p.read_bytes("build/frames/003-lamp-end.png") == first_frame);
    assert!(p.read_bytes("build/final.mp4") == first_final);

    let takes = p
        .ttv(&["--json", "takes", "frame/lamp/end"])
        .success()
        .json();
    let current: Vec<u64> = takes["takes"]
        .as_array()
        .expect("takes array")
        .iter()
        .filter(|t| t["current"] == true)
        .map(|t| t["take"].as_u64().unwrap())
        .collect();
    assert_eq!(current, [1], "the pin decides: {takes:#}");
}

#[test]
fn explain_names_what_changed_and_says_cached_otherwise() {
    let p = basic();
    p.build_json(&[]);

    let explain = |id: &str| p.ttv(&["--json", "explain", id]).success().json();
    let fresh = explain("frame/storm/end");
    assert_eq!(fresh["id"], "frame/storm/end", "{fresh:#}");
    assert_eq!(fresh["status"], "cached", "{fresh:#}");
    assert_eq!(fresh["reasons"], Value::Array(vec![]), "{fresh:#}");

    p.replace_in_yaml(STORM_END, "Hail hammers the lamp room windows");
    let edited = explain("frame/storm/end");
    assert_eq!(edited["status"], "dirty", "{edited:#}");
    assert_eq!(
        edited["reasons"],
        serde_json::json!(["prompt changed"]),
        "{edited:#}"
    );

    p.write("references/hero.png", green_png());
    let reference = explain("frame/arrival/start");
    assert_eq!(reference["status"], "dirty", "{reference:#}");
    let reasons = reference["reasons"].as_array().expect("reasons");
    assert!(
        reasons.iter().any(|r| {
            let r = r.as_str().unwrap_or_default();
            r.starts_with("reference hero") && r.ends_with("changed")
        }),
        "{reference:#}"
    );

    p.build_json(&[]);
    assert_eq!(explain("frame/storm/end")["status"], "cached");
}

#[test]
fn each_recipe_setting_makes_exactly_its_nodes_dirty_and_is_explained_by_name() {
    let p = basic();
    p.build_json(&[]);
    let segments_and_final = || {
        let mut all: BTreeSet<String> = ["arrival", "storm", "lamp", "dawn", "dream"]
            .iter()
            .map(|s| format!("segment/{s}"))
            .collect();
        all.insert("final".into());
        all
    };
    // (the edit, the nodes it must make dirty, a node, the reason it must give)
    type Edit = (&'static str, &'static str);
    let cases: Vec<(Edit, BTreeSet<String>, &str, &str)> = vec![
        (
            (
                "  duration_seconds: 1\n",
                "  duration_seconds: 1\n  sample_count: 2\n",
            ),
            segments_and_final(),
            "segment/lamp",
            "sample_count changed (1 -> 2)",
        ),
        (
            (
                "  duration_seconds: 1\n",
                "  duration_seconds: 1\n  negative_prompt: blur\n",
            ),
            segments_and_final(),
            "segment/arrival",
            "negative prompt changed",
        ),
        (
            (
                "  duration_seconds: 1\n",
                "  duration_seconds: 1\n  person_generation: dont_allow\n",
            ),
            segments_and_final(),
            "segment/dream",
            "person_generation changed (none -> dont_allow)",
        ),
        (
            (
                "  duration_seconds: 1\n",
                "  duration_seconds: 1\n  resolution: 1080p\n",
            ),
            segments_and_final(),
            "segment/dawn",
            "resolution changed (720p -> 1080p)",
        ),
        (
            (
                "motion: \"Camera cranes up the tower as rain starts\"",
                "motion: \"Camera cranes up the tower as rain starts\"\n    seed: 3",
            ),
            set(&["segment/storm", "final"]),
            "segment/storm",
            "seed changed (none -> 3)",
        ),
        (
            ("  chain: true\n", "  chain: true\n  image_size: 2K\n"),
            // Every node a build makes: each is downstream of a frame.
            p.ttv(&["--json", "plan"]).success().json()["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_str().unwrap().to_string())
                .collect(),
            "frame/arrival/start",
            "image_size changed (none -> 2K)",
        ),
    ];
    let original = p.read("ttv.yaml");
    for ((from, to), dirty, id, reason) in cases {
        p.write("ttv.yaml", original.replacen(from, to, 1));
        let plan = p.ttv(&["--json", "plan"]).success().json();
        assert_eq!(ids_with_status(&plan, "dirty"), dirty, "{to}: {plan:#}");
        let explained = p.ttv(&["--json", "explain", id]).success().json();
        let reasons = explained["reasons"].as_array().unwrap();
        assert!(
            reasons.iter().any(|r| r == reason),
            "{to}: {id} explained as {reasons:?}"
        );
    }
}

#[test]
fn a_failing_node_fails_only_its_dependents_and_the_next_build_finishes_the_rest() {
    let p = basic();
    let out = p.ttv_env(&["--json", "build"], &[("TTV_PREVIEW_FAIL", STORM_END)]);
    out.code(1);
    let report = out.json();

    let failed = set(&["frame/storm/end"]);
    let skipped = set(&["frame/lamp/end", "segment/lamp", "segment/dawn", "final"]);
    let finished = set(&[
        "frame/arrival/start",
        "frame/arrival/end",
        "frame/dream/start",
        "segment/arrival",
        "segment/storm",
        "segment/dream",
    ]);
    assert_eq!(ids_with_status(&report, "failed"), failed, "{report:#}");
    assert_eq!(ids_with_status(&report, "skipped"), skipped, "{report:#}");
    assert_eq!(generated_ids(&report), finished, "{report:#}");
    assert_eq!(count(&report, "failed"), 1, "{report:#}");
    assert_eq!(count(&report, "skipped"), 4, "{report:#}");
    assert_eq!(count(&report, "generated"), 6, "{report:#}");
    let error = node(&report, "frame/storm/end")["error"].clone();
    assert!(
        error.as_str().is_some_and(|e| !e.is_empty()),
        "the failure says why: {report:#}"
    );
    out.stderr_contains("frame/storm/end");
    assert!(p.exists("build/segments/005-dream.mp4"), "{}", p.listing());
    assert!(!p.exists("build/final.mp4"), "{}", p.listing());

    let retry = p.build_json(&[]);
    let missing: BTreeSet<String> = failed.union(&skipped).cloned().collect();
    assert_generated(&retry, &missing);
}

#[test]
fn concurrent_builds_take_turns_and_the_second_generates_nothing() {
    let p = basic();
    let latency = [("TTV_PREVIEW_LATENCY_MS", "300")];
    let a = p.spawn(&["--json", "build"], &latency);
    let b = p.spawn(&["--json", "build"], &latency);
    let (a, b) = (p.wait(a), p.wait(b));
    a.success();
    b.success();

    let (a_report, b_report) = (a.json(), b.json());
    let (builder, waiter) = if count(&a_report, "generated") > 0 {
        ((&a, a_report), (&b, b_report))
    } else {
        ((&b, b_report), (&a, a_report))
    };
    assert_generated(&builder.1, &all_needed());
    assert_nothing_generated(&waiter.1);
    waiter.0.check(
        waiter.0.stderr.to_lowercase().contains("wait"),
        "the second build says it waits for the first",
    );

    let db = rusqlite::Connection::open(p.path(".ttv/ttv.db")).expect("open ttv.db");
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    let actions: i64 = db
        .query_row("SELECT count(*) FROM actions", [], |r| r.get(0))
        .expect("count actions");
    assert_eq!(
        actions as usize,
        NEEDED.len(),
        "one action per generated node"
    );
}

/// Waits until a running build has stored its first result.
pub(crate) fn wait_for_first_result(p: &Project, running: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.blob_count() == 0 {
        assert!(
            running.is_running(),
            "the build ended before storing anything"
        );
        assert!(
            Instant::now() < deadline,
            "no blob stored:\n{}",
            p.listing()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_lets_running_generations_finish_and_the_next_build_does_the_rest() {
    let p = basic();
    let mut running = p.spawn(&["--json", "build"], &[("TTV_PREVIEW_LATENCY_MS", "1500")]);
    // Once the first result is stored, the next generations are in flight (jobs: 2).
    wait_for_first_result(&p, &mut running);
    std::thread::sleep(Duration::from_millis(300));
    running.interrupt();
    let first = p.wait(running);
    first.code(130);
    first.stderr_contains("interrupted");
    let report = first.json();
    assert_eq!(
        report["interrupted"],
        Value::Bool(true),
        "{}",
        summary(&report)
    );
    assert_eq!(count(&report, "failed"), 0, "{}", summary(&report));
    assert!(count(&report, "skipped") > 0, "{}", summary(&report));
    let finished = generated_ids(&report);
    // The generations in flight when Ctrl-C came were finished, not thrown away.
    assert!(finished.len() >= 2, "{}", summary(&report));

    let second = p.build_json(&[]);
    let remaining: BTreeSet<String> = all_needed().difference(&finished).cloned().collect();
    assert_generated(&second, &remaining);
}

#[test]
fn no_wait_fails_at_once_while_another_build_runs() {
    let p = basic();
    let mut first = p.spawn(&["build"], &[("TTV_PREVIEW_LATENCY_MS", "500")]);

    // A stored blob means the first build holds the lock and has several generations to go.
    wait_for_first_result(&p, &mut first);

    let second = p.ttv(&["build", "--no-wait"]);
    let still_running = first.is_running();
    second.check(
        second.code.is_some_and(|c| c != 0),
        "--no-wait fails while another build holds the lock",
    );
    second.check(
        still_running,
        "--no-wait returned before the first build ended",
    );
    p.wait(first).success();
}

#[test]
fn plan_and_dry_run_list_every_node_as_dirty_and_generate_nothing() {
    let p = basic();
    for args in [&["--json", "plan"][..], &["--json", "build", "--dry-run"]] {
        let out = p.ttv(args);
        let report = out.success().json();
        assert_eq!(
            ids_with_status(&report, "dirty"),
            all_needed(),
            "{report:#}"
        );
        assert_eq!(statuses(&report).len(), NEEDED.len(), "{report:#}");
        out.check(
            !p.exists("build") || p.files_under("build").is_empty(),
            "a plan writes no outputs",
        );
        out.check(p.blob_count() == 0, "a plan generates nothing");
    }

    p.build_json(&[]);
    // Without -C, from a folder inside the project: ttv searches upwards for ttv.yaml.
    let plan = p
        .run(p.command_in("references", &["--json", "plan"]))
        .success()
        .json();
    assert_eq!(ids_with_status(&plan, "cached"), all_needed(), "{plan:#}");
}

#[test]
fn a_lost_blob_is_made_again_and_verify_finds_a_damaged_one() {
    let p = basic();
    let first = p.build_json(&[]);
    let storm = blobs(&first)["frame/storm/end"].clone();
    p.remove(format!(".ttv/objects/{}/{}", &storm[..2], &storm[2..]));
    p.remove("build");

    // The preview backend draws the same frame again, so nothing after it changes.
    let report = p.build_json(&[]);
    assert_generated(&report, &set(&["frame/storm/end"]));
    assert_eq!(blobs(&report), blobs(&first));
    let bytes = p.read_bytes("build/frames/002-storm-end.png");
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), storm);

    let dream = blobs(&first)["segment/dream"].clone();
    let blob = format!(".ttv/objects/{}/{}", &dream[..2], &dream[2..]);
    let mut damaged = p.read_bytes(&blob);
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    p.write(&blob, damaged);
    let out = p.ttv(&["--json", "verify"]);
    out.code(1);
    let verify = out.json();
    assert_eq!(verify["damaged"], serde_json::json!([dream]), "{verify:#}");
    assert_eq!(verify["checked"], NEEDED.len(), "{verify:#}");

    p.remove("build");
    let report = p.build_json(&[]);
    assert!(
        generated_ids(&report).contains("segment/dream"),
        "{}",
        summary(&report)
    );
    for (id, _, output) in NEEDED {
        let bytes = p.read_bytes(output);
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            blobs(&report)[*id],
            "{output} is what the report says, never damaged bytes"
        );
    }
    p.ttv(&["verify"]).success();
}

#[test]
fn gc_drops_what_no_current_node_uses_and_keeps_every_take() {
    let p = basic();
    p.build_json(&[]);
    p.build_json(&["--reroll", "segment/dream"]);
    p.replace_in_yaml(STORM_END, "Hail hammers the lamp room windows");
    p.build_json(&[]);

    let dry = p.ttv(&["--json", "gc"]).success().json();
    assert_eq!(dry["dropped"], 0, "gc without --yes drops nothing: {dry:#}");
    // No current node uses the final video of dream's first take, nor what the storm prompt
    // used to reach: storm's and lamp's end frames, segments lamp and dawn, and a final video.
    let gc = p.ttv(&["--json", "gc", "--yes"]).success().json();
    assert_eq!(gc["dropped"], 6, "{gc:#}");
    assert_nothing_generated(&p.build_json(&[]));

    let takes = p
        .ttv(&["--json", "takes", "segment/dream"])
        .success()
        .json();
    assert_eq!(
        takes["takes"].as_array().map(Vec::len),
        Some(2),
        "both takes of a current segment stay pinnable: {takes:#}"
    );

    p.replace_in_yaml("Hail hammers the lamp room windows", STORM_END);
    let report = p.build_json(&[]);
    assert_generated(
        &report,
        &set(&[
            "frame/storm/end",
            "frame/lamp/end",
            "segment/lamp",
            "segment/dawn",
            "final",
        ]),
    );
}

#[test]
fn the_example_project_builds_offline() {
    let p = Project::from_repo_dir("project.example");
    let report = p.build_json(&[]);
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    assert_eq!(count(&report, "cached"), 0, "{report:#}");
    // Shots of 2, 2, 4, 2 and 2 seconds.
    let whole = ffprobe_duration(&p.path("build/final.mp4"));
    assert!((whole - 12.0).abs() <= 0.3, "final.mp4 lasts {whole} s");
    let again = p.build_json(&[]);
    assert!(generated_ids(&again).is_empty(), "{}", summary(&again));
    assert_eq!(
        count(&again, "cached"),
        count(&report, "generated"),
        "{again:#}"
    );
}

#[test]
fn init_writes_a_starter_project_once() {
    let p = Project::empty();
    p.ttv(&["init"]).success();
    assert!(
        p.exists("ttv.yaml") && p.path("references").is_dir(),
        "{}",
        p.listing()
    );
    let ignored = p.read(".gitignore");
    assert!(
        ignored.lines().any(|l| l == ".ttv/") && ignored.lines().any(|l| l == "build/"),
        "{ignored}"
    );
    let yaml = p.read("ttv.yaml");
    p.ttv(&["init"]).code(2).stderr_contains("ttv.yaml");
    assert_eq!(p.read("ttv.yaml"), yaml, "init never overwrites ttv.yaml");
}

#[test]
fn the_manifest_describes_every_output_in_build_even_after_a_partial_build() {
    let p = basic();
    let full = p.build_json(&[]);
    p.build_json(&["frames"]);
    let manifest: Value =
        serde_json::from_str(&p.read("build/manifest.json")).expect("manifest.json is JSON");
    let listed: BTreeSet<(String, String)> = manifest["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|e| {
            (
                str_field(e, "node").to_string(),
                str_field(e, "blob").to_string(),
            )
        })
        .collect();
    for (id, n) in nodes(&full) {
        assert!(
            listed.contains(&(id.clone(), str_field(&n, "blob").to_string())),
            "{id} missing from the manifest: {manifest:#}"
        );
    }
    // `build frames` also made the frames no segment uses; they are listed too.
    assert!(
        listed.iter().any(|(id, _)| id == "frame/dream/end"),
        "{manifest:#}"
    );
}

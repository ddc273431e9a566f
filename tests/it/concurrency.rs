//! Adaptive concurrency (issue 11): with `video.jobs: auto`, ttv finds how many Veo operations
//! the service runs at once. The fake Google runs at most K operations per project and refuses
//! a submission beyond them with 429 RESOURCE_EXHAUSTED, as Veo does.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::google::Google;
use crate::support::project::{count, generated_ids};

/// A storyboard of `shots` shots on Gemini frames (unchained, so they are all ready at once)
/// and Veo segments of `jobs` at once.
pub(crate) fn storyboard(shots: usize, jobs: &str) -> String {
    let mut yaml = format!(
        "version: 1
name: concurrency
keyframes:
  backend: gemini
  model: gemini-3.1-flash-image
  references: references
  chain: false
  jobs: 8
  request_timeout_seconds: 5
  max_retries: 3
video:
  backend: veo
  api: vertex
  model: veo-3.1-generate-001
  duration_seconds: 4
  generate_audio: false
  jobs: {jobs}
  request_timeout_seconds: 5
  poll_interval_seconds: 0.05
  poll_timeout_seconds: 60
  max_retries: 3
shots:
"
    );
    for i in 0..shots {
        let _ = writeln!(yaml, "  - id: s{i:03}");
        if i == 0 {
            let _ = writeln!(yaml, "    start: \"The first light of shot {i}\"");
        }
        let _ = writeln!(yaml, "    end: \"The end of shot {i}\"");
        let _ = writeln!(yaml, "    motion: \"Camera move {i}\"");
    }
    yaml
}

/// A cold build of `4 * k` segments against a fake that runs at most `k` operations.
fn build_against_limit(k: usize) -> (Google, Value) {
    let g = Google::new();
    g.fake.max_in_flight(k);
    // Done after its polls: the fake then holds an operation exactly as long as ttv does (with
    // a latency in time, an operation done between two polls is free at the service before ttv
    // knows, and ttv's limit may settle that much above K: the benchmark measures that case).
    g.fake.polls_before_done(3);
    g.p.write("ttv.yaml", storyboard(4 * k, "auto"));
    let report = g.build(&[]).success().json();
    (g, report)
}

#[track_caller]
fn check_settles(k: usize) {
    let (g, report) = build_against_limit(k);
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    let segments = generated_ids(&report)
        .iter()
        .filter(|id| id.starts_with("segment/"))
        .count();
    assert_eq!(segments, 4 * k, "every segment was made: {report:#}");
    let video = &report["concurrency"]["video"];
    let limit = video["limit"].as_u64().expect("a video limit") as usize;
    assert!(
        limit.abs_diff(k) <= 1,
        "with {k} operations at most, the limit settled at {limit}: {video}"
    );
    assert_eq!(
        g.fake.peak_in_flight(),
        k,
        "the service was used to its limit"
    );
    assert_eq!(
        video["throttled"].as_u64(),
        Some(g.fake.refused_for_load() as u64),
        "every 429 the fake sent was seen"
    );
    assert!(
        g.fake.refused_for_load() >= 1,
        "auto grows until the service refuses"
    );
}

#[test]
fn auto_settles_at_three_operations() {
    check_settles(3);
}

#[test]
fn auto_settles_at_six_operations() {
    check_settles(6);
}

#[test]
fn auto_settles_at_ten_operations() {
    check_settles(10);
}

#[test]
fn a_fixed_jobs_is_a_cap_auto_never_passes() {
    let g = Google::new();
    g.fake.max_in_flight(10);
    g.fake.operation_latency(Duration::from_millis(200));
    g.p.write("ttv.yaml", storyboard(12, "3"));
    let report = g.build(&[]).success().json();
    assert_eq!(report["concurrency"]["video"]["limit"], 3, "{report:#}");
    assert_eq!(report["concurrency"]["video"]["throttled"], 0, "{report:#}");
    assert_eq!(g.fake.peak_in_flight(), 3);
}

/// The wall time a build of `segments` operations of `latency` each needs at `k` at once, as
/// ttv sees them: an operation is seen done at the first poll after it is (polls start at
/// `first_poll` and grow by half each time, as veo.rs polls).
fn bound(segments: usize, k: usize, latency: f64, first_poll: f64) -> f64 {
    let (mut at, mut interval) = (first_poll, first_poll);
    while at < latency {
        interval *= 1.5;
        at += interval;
    }
    segments.div_ceil(k) as f64 * at
}

/// The benchmark of `bench/run.sh` (f): a cold build against a fake that runs K operations at
/// once (`BENCH_K`, default 10), each for `BENCH_LATENCY_MS` (default 2000), 4K segments, with
/// `jobs: auto` and with `jobs: K` (what a perfectly tuned project would set). Prints one
/// `BENCH {json}` line; asserts nothing about time.
#[test]
#[ignore = "a benchmark: bench/run.sh runs it"]
fn bench_adaptive_concurrency() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let k = env("BENCH_K", 10);
    let latency = Duration::from_millis(env("BENCH_LATENCY_MS", 2000) as u64);
    let segments = 4 * k;
    let mut runs = Vec::new();
    for jobs in ["auto".to_string(), k.to_string()] {
        let g = Google::new();
        g.fake.max_in_flight(k);
        g.fake.operation_latency(latency);
        g.fake.polls_before_done(0);
        g.p.write("ttv.yaml", storyboard(segments, &jobs));
        let started = std::time::Instant::now();
        let report = g.build(&[]).success().json();
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(count(&report, "failed"), 0, "{report:#}");
        runs.push(serde_json::json!({
            "jobs": jobs,
            "wall_s": (wall * 1000.0).round() / 1000.0,
            "limit": report["concurrency"]["video"]["limit"],
            "throttled": g.fake.refused_for_load(),
            "peak_in_flight": g.fake.peak_in_flight(),
        }));
    }
    let out = serde_json::json!({
        "k": k,
        "segments": segments,
        "latency_s": latency.as_secs_f64(),
        "bound_s": bound(segments, k, latency.as_secs_f64(), 0.05),
        "bound_jobs2_s": bound(segments, 2, latency.as_secs_f64(), 0.05),
        "auto": runs[0],
        "fixed": runs[1],
    });
    println!("BENCH {out}");
}

/// On a terminal, the totals bar says how many requests each backend runs at once and how long
/// the rest should take (from the latencies seen so far). `script` gives the build a terminal.
#[test]
fn the_progress_line_shows_each_limit_and_the_time_left() {
    let p = crate::engine::basic();
    let build = format!(
        "{} -C {} build",
        env!("CARGO_BIN_EXE_ttv"),
        p.path("").display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &build, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .env("TTV_PREVIEW_LATENCY_MS", "300")
        .output()
        .expect("run script (util-linux)");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    for shown in ["frames 2 at once", "video 2 at once", "left"] {
        assert!(
            screen.contains(shown),
            "`{shown}` not on the screen:\n{screen}"
        );
    }
}

//! Crashes (issue 7): `ttv build` killed with SIGKILL while Google works, against the fake
//! Google service. A killed build leaves a database that opens and passes SQLite's integrity
//! check, the next build finishes what was paid for (a fallback's operation too), and nothing
//! is paid twice: a Veo submission whose answer never arrived is reported, not sent again, until
//! the user forces it. A frame request cut short may be sent again (an image is cheap).
//!
//! `torture_kill_nine` repeats the kill at random moments; `scripts/torture.sh` runs it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use crate::google::{
    ARRIVAL_END, ARRIVAL_MOTION, ARRIVAL_START, DREAM_MOTION, DREAM_START, FRAMES, Google,
    SEGMENTS, STORM_MOTION,
};
use crate::support::fake_google::{Api, Fault, Match, Route};
use crate::support::project::{
    Output, Project, Running, count, ffprobe_duration, generated_ids, ids_with_status, node, nodes,
    set, str_field,
};

/// The prompts of the fixture's three frames (`FRAMES`).
const FRAME_PROMPTS: &[&str] = &[ARRIVAL_START, ARRIVAL_END, DREAM_START];
/// Each segment with its motion prompt, which identifies its Veo submissions.
const MOTIONS: &[(&str, &str)] = &[
    ("segment/arrival", ARRIVAL_MOTION),
    ("segment/storm", STORM_MOTION),
    ("segment/dream", DREAM_MOTION),
];

#[test]
fn a_build_killed_while_google_holds_the_submit_answer_does_not_submit_again() {
    let g = Google::new();
    // Google starts the job, then holds its answer: the kill lands in the submit window.
    g.fake.script(
        Fault::Hang(Duration::from_secs(30)),
        Match::prompt(STORM_MOTION).on(Route::VeoSubmit),
        1,
    );
    let mut running = g.spawn(&["--json", "build", "segment/storm"]);
    wait_for(&mut running, "Google to start the storm job", || {
        !g.sent(Route::VeoSubmit, STORM_MOTION).is_empty() && g.fake.operations().len() == 1
    });
    running.kill();
    assert_eq!(g.p.wait(running).code, None, "killed by a signal");
    assert_eq!(
        g.sent(Route::VeoSubmit, STORM_MOTION)[0].status,
        0,
        "ttv was killed before Google answered"
    );
    check_database(&g.p).unwrap();

    // The next build does not send it again: it says what to check and how to resubmit.
    let out = g.build(&["segment/storm"]);
    out.code(1);
    let storm = node(&out.json(), "segment/storm");
    assert_eq!(storm["status"], "failed", "{storm:#}");
    let error = str_field(&storm, "error");
    for needle in [
        "may have started a paid job",
        "ended before its answer was recorded",
        "ttv build --force segment/storm",
    ] {
        assert!(error.contains(needle), "`{needle}` in: {error}");
    }
    assert_eq!(g.fake.count(Route::VeoSubmit), 1, "nothing submitted again");
    assert_eq!(g.fake.operations().len(), 1);

    // The advice, to the letter: storm is sent exactly once more, the rest of the film once.
    let report = g.build(&["--force", "segment/storm"]).success().json();
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    assert_eq!(g.sent(Route::VeoSubmit, STORM_MOTION).len(), 2);
    assert_eq!(g.sent(Route::VeoSubmit, ARRIVAL_MOTION).len(), 1);
    assert_eq!(g.sent(Route::VeoSubmit, DREAM_MOTION).len(), 1);
    assert!(
        generated_ids(&report).contains("segment/storm"),
        "{report:#}"
    );
    check_outputs(&g.p, &report).unwrap();
}

#[test]
fn a_build_killed_right_after_the_submit_answer_polls_the_same_operation() {
    let g = Google::new();
    g.fake.script(
        Fault::NeverFinishes,
        Match::prompt(STORM_MOTION).on(Route::VeoSubmit),
        1,
    );
    let mut running = g.spawn(&["--json", "build", "segment/storm"]);
    wait_for(&mut running, "the storm operation to be recorded", || {
        recorded_operations(&g.p) == 1
    });
    running.kill();
    assert_eq!(g.p.wait(running).code, None, "killed by a signal");
    let operations = g.fake.operations();
    assert_eq!(operations.len(), 1, "{operations:#?}");
    check_database(&g.p).unwrap();

    // The job finishes while no build watches it; the next build collects it.
    g.fake.finish_stuck_operations();
    g.fake.clear_requests();
    let report = g.build(&["segment/storm"]).success().json();
    assert_eq!(g.fake.count(Route::VeoSubmit), 0, "no new submission");
    let polled = g.polled_operations();
    assert!(
        !polled.is_empty() && polled.iter().all(|n| *n == operations[0]),
        "only {} is polled: {polled:#?}",
        operations[0]
    );
    assert_eq!(node(&report, "segment/storm")["status"], "generated");
    check_outputs(&g.p, &report).unwrap();
}

#[test]
fn a_build_killed_during_a_frame_request_sends_it_again_and_completes() {
    let g = Google::new();
    g.fake.script(
        Fault::Hang(Duration::from_secs(30)),
        Match::prompt(ARRIVAL_START).on(Route::GenerateContent),
        1,
    );
    // Only arrival's nodes: nothing else is in flight when the kill lands.
    let mut running = g.spawn(&["--json", "build", "arrival"]);
    wait_for(&mut running, "the arrival start frame request", || {
        !g.sent(Route::GenerateContent, ARRIVAL_START).is_empty()
    });
    running.kill();
    assert_eq!(g.p.wait(running).code, None, "killed by a signal");
    check_database(&g.p).unwrap();

    let report = g.build(&[]).success().json();
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    let mut all = set(FRAMES);
    all.extend(set(SEGMENTS));
    assert_eq!(generated_ids(&report), all, "{report:#}");
    assert_eq!(
        g.sent(Route::GenerateContent, ARRIVAL_START).len(),
        2,
        "the lost frame request is sent again: an image is cheap"
    );
    assert_eq!(g.fake.count(Route::GenerateContent), 4);
    assert_eq!(g.fake.count(Route::VeoSubmit), 3);
    check_outputs(&g.p, &report).unwrap();
    g.p.ttv(&["verify"]).success();
    let again = g.build(&[]).success().json();
    assert_eq!(count(&again, "generated"), 0, "{again:#}");
}

/// The kill -9 trial, repeated: `TTV_TORTURE_TRIALS` trials (default 20) numbered from
/// `TTV_TORTURE_FIRST` (default 0). Each trial's fake Google has its own latencies, polls and
/// API, and its kills their own delays, all drawn from the trial's number (the moment a kill
/// lands in the build still varies from run to run).
#[test]
#[ignore = "a long trial: run it with scripts/torture.sh"]
fn torture_kill_nine() {
    let number = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
            .unwrap_or(default)
    };
    let trials = number("TTV_TORTURE_TRIALS", 20);
    let first = number("TTV_TORTURE_FIRST", 0);
    // A build in a shared target folder can replace the binary mid-run; the figures would then
    // mix two versions of ttv.
    let binary = || blake3::hash(&std::fs::read(env!("CARGO_BIN_EXE_ttv")).expect("ttv binary"));
    let tested = binary();
    let started = Instant::now();
    let mut tally = Tally::default();
    for n in first..first + trials {
        let t = trial(n);
        eprintln!("{}", t.line(n));
        tally.add(&t);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "torture: trials={trials} corrupt={} paid_twice={} forced={} frames_resent={} \
         stuck={} uncertain={} killed_twice={} finished_before_kill={} seconds={secs:.0} \
         ({:.2} s per trial)",
        tally.corrupt,
        tally.paid_twice,
        tally.forced,
        tally.frames_resent,
        tally.stuck,
        tally.uncertain,
        tally.killed_twice,
        tally.finished_before_kill,
        secs / f64::from(trials.max(1))
    );
    assert!(
        binary() == tested,
        "{} changed during the trials (a build in a shared target folder?): run them again",
        env!("CARGO_BIN_EXE_ttv")
    );
    assert_eq!(tally.corrupt, 0, "corrupt trials: see the lines above");
    assert_eq!(tally.paid_twice, 0, "paid twice: see the lines above");
    assert_eq!(tally.stuck, 0, "stuck trials: see the lines above");
}

/// Fake latencies per paid or polled route: enough for every request of a build.
const LATENCIES_PER_ROUTE: usize = 12;
/// Below the fixture's 2 s request timeout: a latency, not a lost answer.
const MAX_LATENCY_MS: u64 = 300;
/// A build of the fixture with its film takes 1 to 2.5 s here: most kills land in it, a few
/// after it.
const MAX_KILL_DELAY_MS: u64 = 2000;
/// A build of the fixture takes a second or two; one that takes this long is stuck.
const BUILD_LIMIT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Trial {
    /// Which API Veo is on: vertex, gemini, or fallback (vertex, then gemini).
    api: &'static str,
    kill_after: Duration,
    /// The build after the kill is killed too, after this long.
    kill_again_after: Option<Duration>,
    finished_before_kill: bool,
    /// Nodes the build after the kill reported as uncertain submissions.
    uncertain: Vec<String>,
    /// Veo submissions sent by the `--force` build, as the user asked.
    forced: usize,
    /// Veo submissions beyond one per segment that nobody asked for.
    paid_twice: usize,
    frames_resent: usize,
    corrupt: Vec<String>,
    stuck: Vec<String>,
}

impl Trial {
    fn line(&self, n: u32) -> String {
        let mut line = format!(
            "trial {n}: veo on {}, kill after {} ms{}",
            self.api,
            self.kill_after.as_millis(),
            if self.finished_before_kill {
                " (the build had finished)"
            } else {
                ""
            }
        );
        if let Some(after) = self.kill_again_after {
            line += &format!(", its next build killed after {} ms", after.as_millis());
        }
        if !self.uncertain.is_empty() {
            line += &format!(", uncertain {:?}, forced {}", self.uncertain, self.forced);
        }
        if self.frames_resent > 0 {
            line += &format!(", frames re-sent {}", self.frames_resent);
        }
        if self.paid_twice > 0 {
            line += &format!(", PAID TWICE {}", self.paid_twice);
        }
        for c in &self.corrupt {
            line += &format!("\n  CORRUPT: {c}");
        }
        for s in &self.stuck {
            line += &format!("\n  STUCK: {s}");
        }
        line
    }
}

#[derive(Default)]
struct Tally {
    corrupt: usize,
    paid_twice: usize,
    forced: usize,
    frames_resent: usize,
    stuck: usize,
    uncertain: usize,
    killed_twice: usize,
    finished_before_kill: usize,
}

impl Tally {
    fn add(&mut self, t: &Trial) {
        self.corrupt += usize::from(!t.corrupt.is_empty());
        self.paid_twice += t.paid_twice;
        self.forced += t.forced;
        self.frames_resent += t.frames_resent;
        self.stuck += usize::from(!t.stuck.is_empty());
        self.uncertain += t.uncertain.len();
        self.killed_twice += usize::from(t.kill_again_after.is_some());
        self.finished_before_kill += usize::from(t.finished_before_kill);
    }
}

/// A stream of numbers drawn from a trial's number (blake3's extendable output).
struct Rng(blake3::OutputReader);

impl Rng {
    fn new(trial: u32) -> Rng {
        let mut h = blake3::Hasher::new();
        h.update(b"ttv torture trial").update(&trial.to_le_bytes());
        Rng(h.finalize_xof())
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b) % n
    }
}

/// One kill -9 trial: a build killed after a random delay (and in a third of the trials the
/// build after it too), the next build (and a `--force` build for each submission it reports
/// uncertain), then every check.
fn trial(n: u32) -> Trial {
    let mut rng = Rng::new(n);
    let g = Google::new();
    // The stitched film too, so that a kill can land in ffmpeg.
    g.p.edit_yaml(|yaml| yaml + "\nfinal:\n  output: final.mp4\n");
    // Veo on Vertex, on the Gemini API (its own polls and downloads), or on Vertex falling
    // back to the Gemini API for the segments Vertex refuses (their first submission).
    let api = ["vertex", "gemini", "fallback"][rng.below(3) as usize];
    match api {
        "gemini" => g.p.replace_in_yaml("  api: vertex", "  api: gemini"),
        "fallback" => {
            g.p.replace_in_yaml(
                "  max_retries: 3\n\nshots:",
                "  max_retries: 3\n  fallback:\n    - backend: veo\n      api: gemini\n\nshots:",
            );
            for (_, motion) in MOTIONS {
                let first = Match::prompt(motion).on(Route::VeoSubmit);
                g.fake.script(Fault::Status403, first, 1);
            }
        }
        _ => {}
    }
    g.fake.polls_before_done(rng.below(4) as u32);
    let routes = [
        Route::GenerateContent,
        Route::VeoSubmit,
        Route::VeoPoll,
        Route::Download,
    ];
    for route in routes {
        for _ in 0..LATENCIES_PER_ROUTE {
            let latency = Duration::from_millis(rng.below(MAX_LATENCY_MS));
            g.fake.script(Fault::Hang(latency), Match::route(route), 1);
        }
    }
    let mut t = Trial {
        api,
        kill_after: Duration::from_millis(rng.below(MAX_KILL_DELAY_MS)),
        ..Trial::default()
    };
    // A third of the trials kill the build that recovers from the first kill too.
    if rng.below(3) == 0 {
        t.kill_again_after = Some(Duration::from_millis(rng.below(MAX_KILL_DELAY_MS)));
    }
    let kills = [Some(t.kill_after), t.kill_again_after];
    for (n, after) in kills.into_iter().flatten().enumerate() {
        let mut running = g.spawn(&["--json", "build"]);
        std::thread::sleep(after);
        let finished = !running.is_running();
        if !finished {
            running.kill();
        }
        t.finished_before_kill |= n == 0 && finished;
        g.p.wait(running);
        if let Err(e) = check_database(&g.p) {
            t.corrupt.push(format!("after kill {}: {e}", n + 1));
        }
    }

    // Submissions that may have started a job: refused ones (403) are free.
    let submits = |g: &Google| -> Vec<usize> {
        MOTIONS
            .iter()
            .map(|(_, motion)| {
                let sent = g.sent(Route::VeoSubmit, motion);
                sent.iter().filter(|r| r.status < 400).count()
            })
            .collect()
    };
    let Some((report, unforced)) = finish(&g, &mut t, submits) else {
        return t;
    };
    // Each segment is paid once by the builds, and once more by each `--force` the user ran.
    let forced: Vec<usize> = submits(&g)
        .iter()
        .zip(&unforced)
        .map(|(a, b)| a - b)
        .collect();
    t.forced = forced.iter().sum();
    t.paid_twice = unforced
        .iter()
        .chain(&forced)
        .map(|n| n.saturating_sub(1))
        .sum();
    t.frames_resent = FRAME_PROMPTS
        .iter()
        .map(|p| g.sent(Route::GenerateContent, p).len().saturating_sub(1))
        .sum();
    if let Err(e) = check_database(&g.p) {
        t.corrupt.push(format!("after the builds: {e}"));
    }
    let mut film = set(SEGMENTS);
    film.insert("final".into());
    let built = nodes(&report).into_keys().filter(|id| film.contains(id));
    if built.count() != film.len() {
        t.corrupt
            .push(format!("the report lacks a video: {report:#}"));
    }
    if let Err(e) = check_outputs(&g.p, &report).and_then(|()| check_manifest(&g.p)) {
        t.corrupt.push(e);
    }
    let verify = run_within(&g, &["verify"]);
    if verify.code != Some(0) {
        t.corrupt
            .push(format!("ttv verify failed:\n{}", verify.stderr));
    }
    let again = run_within(&g, &["--json", "build"]);
    let noop = serde_json::from_str::<Value>(&again.stdout)
        .is_ok_and(|r| again.code == Some(0) && count(&r, "generated") == 0);
    if !noop {
        t.stuck.push(format!(
            "the build after recovery is not a no-op:\n{}",
            story(&again)
        ));
    }
    t
}

/// The build after the kill, and `--force` for each submission it reports uncertain (the
/// user's part). The last report and the `submits` counted before the user's part, or None
/// when the project is stuck.
fn finish(
    g: &Google,
    t: &mut Trial,
    submits: impl Fn(&Google) -> Vec<usize>,
) -> Option<(Value, Vec<usize>)> {
    let out = run_within(g, &["--json", "build"]);
    if out.code == Some(0) {
        return Some((out.json(), submits(g)));
    }
    let report: Value = match (out.code, serde_json::from_str(&out.stdout)) {
        (Some(1), Ok(report)) => report,
        _ => {
            t.stuck
                .push(format!("the build after the kill:\n{}", story(&out)));
            return None;
        }
    };
    for id in ids_with_status(&report, "failed") {
        let error = str_field(&nodes(&report)[&id], "error").to_owned();
        if !error.contains(&format!("ttv build --force {id}")) {
            t.stuck.push(format!("{id} failed after the kill: {error}"));
        }
        t.uncertain.push(id);
    }
    if !t.stuck.is_empty() {
        return None;
    }
    let unforced = submits(g);
    let mut args = vec!["--json", "build"];
    for id in &t.uncertain {
        args.extend(["--force", id.as_str()]);
    }
    let forced = run_within(g, &args);
    if forced.code != Some(0) {
        t.stuck.push(format!(
            "the --force build after the kill:\n{}",
            story(&forced)
        ));
        return None;
    }
    Some((forced.json(), unforced))
}

/// `ttv ARGS...` against the fake, killed if it runs longer than [`BUILD_LIMIT`].
fn run_within(g: &Google, args: &[&str]) -> Output {
    let running = g.spawn(args);
    let pid = running.id().to_string();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(BUILD_LIMIT).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let out = g.p.wait(running);
    let _ = done.send(());
    watchdog.join().expect("watchdog");
    out
}

/// What a run printed, for a trial's report.
fn story(out: &Output) -> String {
    format!(
        "{}\nexit code: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.command, out.code, out.stdout, out.stderr
    )
}

/// The cache database, if the build got as far as making it, opens and passes SQLite's
/// integrity check.
fn check_database(p: &Project) -> Result<(), String> {
    let path = p.path(".ttv/ttv.db");
    if !path.exists() {
        return Ok(());
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("{} does not open: {e}", path.display()))?;
    let verdict: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("integrity check of {}: {e}", path.display()))?;
    match verdict.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        problems => Err(format!("{}: {problems:?}", path.display())),
    }
}

/// How many Veo operations the cache has recorded as submitted (0 while it has no database).
fn recorded_operations(p: &Project) -> i64 {
    let Ok(conn) =
        Connection::open_with_flags(p.path(".ttv/ttv.db"), OpenFlags::SQLITE_OPEN_READ_WRITE)
    else {
        return 0;
    };
    conn.query_row(
        "SELECT COUNT(*) FROM operations WHERE state = 'submitted'",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

/// Each video of the report (segments, the film) is in build/, an MP4 that ffprobe reads with
/// a duration.
fn check_outputs(p: &Project, report: &Value) -> Result<(), String> {
    let outputs: BTreeMap<String, String> = nodes(report)
        .into_iter()
        .map(|(id, n)| (id, str_field(&n, "output").to_owned()))
        .filter(|(_, output)| output.ends_with(".mp4"))
        .collect();
    for (id, output) in outputs {
        let path = p.path(&output);
        let probed = std::panic::catch_unwind(|| ffprobe_duration(Path::new(&path)));
        match probed {
            Ok(d) if d > 0.0 => {}
            Ok(d) => return Err(format!("{id}: {output} lasts {d} s")),
            Err(_) => return Err(format!("{id}: ffprobe refuses {output}")),
        }
    }
    Ok(())
}

/// build/manifest.json parses, and each file it lists holds the blob it names.
fn check_manifest(p: &Project) -> Result<(), String> {
    let text = std::fs::read_to_string(p.path("build/manifest.json"))
        .map_err(|e| format!("build/manifest.json: {e}"))?;
    let manifest: Value =
        serde_json::from_str(&text).map_err(|e| format!("build/manifest.json: {e}"))?;
    let outputs = manifest["outputs"]
        .as_array()
        .ok_or_else(|| format!("no outputs in build/manifest.json: {text}"))?;
    for entry in outputs {
        let output = str_field(entry, "output");
        let bytes = std::fs::read(p.path(output)).map_err(|e| format!("{output}: {e}"))?;
        if blake3::hash(&bytes).to_hex().as_str() != str_field(entry, "blob") {
            return Err(format!(
                "{output} is not the blob build/manifest.json names"
            ));
        }
    }
    Ok(())
}

/// Waits (up to 30 s) until `done`, while ttv runs.
#[track_caller]
fn wait_for(running: &mut Running, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(running.is_running(), "ttv ended before {what}");
        assert!(Instant::now() < deadline, "no {what} within 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_build_killed_while_a_fallback_polls_resumes_the_fallback_operation() {
    let g = Google::new();
    g.p.replace_in_yaml(
        "  max_retries: 3\n\nshots:",
        "  max_retries: 3\n  fallback:\n    - backend: veo\n      api: gemini\n\nshots:",
    );
    // Vertex refuses storm (a permission it lacks), so the Gemini API makes it, slowly.
    let storm = || Match::prompt(STORM_MOTION).on(Route::VeoSubmit);
    g.fake.script(Fault::Status403, storm(), 1);
    g.fake.script(Fault::NeverFinishes, storm(), 1);
    let mut running = g.spawn(&["--json", "build", "segment/storm"]);
    wait_for(&mut running, "a poll of the fallback's operation", || {
        g.fake.count(Route::VeoPoll) > 0
    });
    running.kill();
    assert_eq!(g.p.wait(running).code, None, "killed by a signal");
    let submits = |api| {
        g.sent(Route::VeoSubmit, STORM_MOTION)
            .iter()
            .filter(|r| r.api == Some(api))
            .count()
    };
    assert_eq!((submits(Api::Vertex), submits(Api::Gemini)), (1, 1));

    // The fallback's paid operation is collected; Vertex, which refused it, is not asked again
    // (asking would replace the record of the operation, and lose it).
    g.fake.script(Fault::Status403, storm(), 1);
    g.fake.finish_stuck_operations();
    let out = g.build(&["segment/storm"]);
    out.success().stderr_contains(
        "segment/storm: made by fallback veo (gemini-api) (the operation an earlier build \
         submitted)",
    );
    assert_eq!(
        (submits(Api::Vertex), submits(Api::Gemini)),
        (1, 1),
        "nothing is sent again"
    );
    let report = out.json();
    let storm = node(&report, "segment/storm");
    assert_eq!(
        str_field(&storm, "backend"),
        "veo (gemini-api)",
        "{storm:#}"
    );
    check_outputs(&g.p, &report).unwrap();
}

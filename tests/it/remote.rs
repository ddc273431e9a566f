//! The remote cache (issue 9): several "machines" (fresh copies of fixtures/google-project, each
//! with its own .ttv/) share one remote, a real S3-compatible server on 127.0.0.1 (moto, see
//! support/s3.rs) or a shared folder (`file://`), while the fake Google service counts every
//! paid request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::google::{ARRIVAL_END, ARRIVAL_MOTION, FRAMES, SEGMENTS};
use crate::support::fake_google::{ACCESS_TOKEN, FakeGoogle, Fault, Match, Route};
use crate::support::project::{Output, Project, Running, count, generated_ids, node, str_field};
use crate::support::s3::S3Server;

/// One fake Google and one remote, shared by the machines of a test.
struct Team {
    fake: FakeGoogle,
    env: Vec<(&'static str, String)>,
}

impl Team {
    fn new(remote_env: Vec<(&'static str, String)>) -> Team {
        let fake = FakeGoogle::start();
        let mut env = fake.env();
        env.push(("GOOGLE_OAUTH_ACCESS_TOKEN", ACCESS_TOKEN.to_owned()));
        env.extend(remote_env);
        Team { fake, env }
    }

    /// A shared folder as the remote.
    fn with_folder() -> (Team, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("file://{}", dir.path().display());
        (Team::new(vec![("TTV_REMOTE_CACHE", url)]), dir)
    }

    /// A machine: its own copy of the project, no .ttv/ yet.
    fn machine(&self) -> Project {
        Project::from_fixture("google-project")
    }

    fn env_with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend_from_slice(extra);
        env
    }

    fn ttv(&self, p: &Project, args: &[&str], extra: &[(&str, &str)]) -> Output {
        p.ttv_env(args, &self.env_with(extra))
    }

    fn build(&self, p: &Project, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut full = vec!["--json", "build"];
        full.extend_from_slice(args);
        self.ttv(p, &full, extra)
    }

    fn spawn(&self, p: &Project, args: &[&str], extra: &[(&str, &str)]) -> Running {
        p.spawn(args, &self.env_with(extra))
    }
}

/// Every node of the fixture's build (it has no `final:`).
fn all_nodes() -> Vec<&'static str> {
    FRAMES.iter().chain(SEGMENTS).copied().collect()
}

/// The outputs a build placed, by path under build/ (the manifest, which says when, aside).
fn outputs(p: &Project) -> BTreeMap<String, Vec<u8>> {
    let mut files = p.files_under("build");
    files.retain(|name, _| !name.ends_with("manifest.json"));
    files
}

fn sources(report: &Value) -> BTreeMap<String, String> {
    report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                str_field(n, "id").to_owned(),
                n["source"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

/// Machine A pays for every node; machine B, a fresh copy, gets all of it from the remote for
/// nothing, byte for byte.
fn second_machine_pays_nothing(team: &Team) {
    let a = team.machine();
    let ra = team.build(&a, &[], &[]).success().json();
    let paid = team.fake.paid_requests();
    assert_eq!(
        paid,
        FRAMES.len() + SEGMENTS.len(),
        "one paid request per dirty node"
    );
    assert_eq!(count(&ra, "generated") as usize, all_nodes().len());

    let b = team.machine();
    let out = team.build(&b, &[], &[]);
    let rb = out.success().json();
    assert_eq!(
        team.fake.paid_requests(),
        paid,
        "machine B paid for nothing"
    );
    assert_eq!(count(&rb, "generated"), 0, "{rb:#}");
    assert_eq!(
        rb["remote"].as_u64(),
        Some(all_nodes().len() as u64),
        "{rb:#}"
    );
    for (id, source) in sources(&rb) {
        assert_eq!(source, "remote", "{id} came from the remote: {rb:#}");
    }
    assert!(
        (rb["saved_usd"].as_f64().unwrap() - ra["cost_usd"].as_f64().unwrap()).abs() < 1e-6,
        "what B did not pay is counted as saved: {rb:#}"
    );
    assert_eq!(outputs(&a), outputs(&b), "identical outputs in build/");

    // B's next build is a local no-op: nothing from the remote any more.
    let again = team.build(&b, &[], &[]).success().json();
    assert_eq!(again["remote"].as_u64(), None, "{again:#}");
    for (id, source) in sources(&again) {
        assert_eq!(source, "local", "{id}: {again:#}");
    }
}

#[test]
fn a_second_machine_builds_from_an_s3_remote_without_paying() {
    let s3 = S3Server::start();
    let team = Team::new(s3.env("team"));
    second_machine_pays_nothing(&team);
    // A no-op build with the remote configured sends it nothing.
    let before = s3.requests().len();
    let again = team.machine();
    team.build(&again, &[], &[]).success();
    let fetched = s3.requests().len();
    assert!(fetched > before, "a fresh machine asks the remote");
    team.build(&again, &[], &[]).success();
    assert_eq!(
        s3.requests().len(),
        fetched,
        "the no-op build sent nothing to the remote: {:#?}",
        &s3.requests()[fetched..]
    );
    let writes = s3.writes();
    assert!(
        writes.iter().any(|w| w.contains("/team/v1/blobs/"))
            && writes.iter().any(|w| w.contains("/team/v1/actions/")),
        "blobs and actions were uploaded under the prefix: {writes:#?}"
    );
}

#[test]
fn a_second_machine_builds_from_a_shared_folder_without_paying() {
    let (team, dir) = Team::with_folder();
    second_machine_pays_nothing(&team);
    assert!(dir.path().join("v1/blobs").is_dir());
    assert!(dir.path().join("v1/actions").is_dir());
}

#[test]
fn read_only_mode_writes_nothing_and_keeps_its_generations_local() {
    let s3 = S3Server::start();
    let team = Team::new(s3.env("ci"));
    let a = team.machine();
    team.build(&a, &[], &[]).success();
    let paid = team.fake.paid_requests();

    // CI: a fresh clone with one edited frame prompt, read-only.
    let ci = team.machine();
    ci.replace_in_yaml(
        ARRIVAL_END,
        "The keeper opens the door, lantern high, wind howling",
    );
    let writes_before = s3.writes().len();
    let out = team.build(&ci, &["--remote-read-only"], &[]);
    let report = out.success().json();
    assert_eq!(
        s3.writes().len(),
        writes_before,
        "a read-only build sends no write: {:#?}",
        &s3.writes()[writes_before..]
    );
    assert_eq!(
        generated_ids(&report),
        ["frame/arrival/end", "segment/storm"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "only what the edit changed is made"
    );
    assert_eq!(team.fake.paid_requests(), paid + 2);
    let sources = sources(&report);
    assert_eq!(sources["frame/arrival/start"], "remote");
    assert_eq!(sources["segment/dream"], "remote");

    // The same through the environment (TTV_REMOTE_READ_ONLY), and the remote still lacks
    // what CI made.
    let status = team
        .ttv(
            &ci,
            &["--json", "cache", "status"],
            &[("TTV_REMOTE_READ_ONLY", "1")],
        )
        .success()
        .json();
    let rows: BTreeMap<String, Value> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (str_field(n, "id").to_owned(), n.clone()))
        .collect();
    assert_eq!(rows["frame/arrival/end"]["local"], Value::Bool(true));
    assert_eq!(
        rows["frame/arrival/end"]["remote"],
        Value::Bool(false),
        "{status:#}"
    );
    assert_eq!(
        rows["frame/arrival/start"]["remote"],
        Value::Bool(true),
        "{status:#}"
    );
    assert_eq!(s3.writes().len(), writes_before, "status writes nothing");
}

/// The `remote cache` line of a `ttv doctor --json` report.
fn remote_check(report: &Value) -> Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| str_field(c, "name") == "remote cache")
        .unwrap_or_else(|| panic!("no remote cache check: {report:#}"))
        .clone()
}

/// The remote folder's file for a blob.
fn remote_blob(dir: &Path, hash: &str) -> PathBuf {
    dir.join("v1/blobs").join(&hash[..2]).join(hash)
}

#[test]
fn a_damaged_remote_blob_is_not_used_and_the_node_is_made_again() {
    let (team, dir) = Team::with_folder();
    let a = team.machine();
    let ra = team.build(&a, &[], &[]).success().json();
    let blob = str_field(&node(&ra, "frame/arrival/start"), "blob").to_owned();
    let path = remote_blob(dir.path(), &blob);
    let mut bytes = std::fs::read(&path).expect("the frame's blob is in the remote");
    bytes.truncate(bytes.len() / 2);
    bytes.extend_from_slice(b"not the bytes that were uploaded");
    std::fs::write(&path, &bytes).unwrap();
    let paid = team.fake.paid_requests();

    let b = team.machine();
    let out = team.build(&b, &[], &[]);
    out.stderr_contains("is damaged");
    let rb = out.success().json();
    // The damaged frame is made again (the fake's images differ each time, so what is made
    // from it is new too); everything else comes from the remote.
    let made = generated_ids(&rb);
    assert!(made.contains("frame/arrival/start"), "{rb:#}");
    assert!(
        !made.contains("frame/dream/start") && !made.contains("segment/dream"),
        "nothing independent of the damaged frame is made: {rb:#}"
    );
    assert_eq!(team.fake.paid_requests(), paid + made.len(), "{made:?}");
    let paid = team.fake.paid_requests();
    let frame = node(&rb, "frame/arrival/start");
    assert_eq!(str_field(&frame, "status"), "generated", "{rb:#}");
    let placed = b.read_bytes(str_field(&frame, "output"));
    assert_eq!(
        blake3::hash(&placed).to_hex().as_str(),
        str_field(&frame, "blob"),
        "build/ holds whole, checked bytes"
    );
    assert_eq!(sources(&rb)["segment/dream"], "remote");

    // B's uploads mended the remote: a third machine pays nothing.
    let c = team.machine();
    let rc = team.build(&c, &[], &[]).success().json();
    assert_eq!(team.fake.paid_requests(), paid, "{rc:#}");
    assert_eq!(outputs(&b), outputs(&c));
}

#[test]
fn an_unreachable_remote_leaves_the_build_local_and_cache_push_uploads_later() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s3 = S3Server::start();
    let mut down_env = s3.env("later");
    for (k, v) in &mut down_env {
        if *k == "AWS_ENDPOINT_URL" {
            *v = format!("http://127.0.0.1:{closed}");
        }
    }
    let team = Team::new(down_env);
    let a = team.machine();
    // `ttv doctor` says so before any build.
    let doctor = team.ttv(&a, &["--json", "doctor"], &[]);
    let report = doctor.code(2).json();
    let check = remote_check(&report);
    assert_eq!(check["ok"], Value::Bool(false), "{report:#}");
    assert!(
        str_field(&check, "detail").contains("local cache only"),
        "{check:#}"
    );
    let started = Instant::now();
    let out = team.build(&a, &[], &[]);
    out.stderr_contains("continuing with the local cache only");
    let report = out.success().json();
    assert_eq!(count(&report, "generated") as usize, all_nodes().len());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the build does not wait on the remote"
    );
    let status = team
        .ttv(&a, &["--json", "cache", "status"], &[])
        .success()
        .json();
    assert_eq!(
        status["local"]["unpushed"].as_u64(),
        Some(all_nodes().len() as u64)
    );
    assert!(status["remote"]["error"].is_string(), "{status:#}");

    // The remote is back.
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let up = [("AWS_ENDPOINT_URL", endpoint.as_str())];
    let pushed = team
        .ttv(&a, &["--json", "cache", "push"], &up)
        .success()
        .json();
    assert_eq!(
        pushed["pushed"].as_u64(),
        Some(all_nodes().len() as u64),
        "{pushed:#}"
    );
    let status = team
        .ttv(&a, &["--json", "cache", "status"], &up)
        .success()
        .json();
    assert_eq!(status["local"]["unpushed"].as_u64(), Some(0));
    assert_eq!(
        status["remote"]["actions"].as_u64(),
        Some(all_nodes().len() as u64),
        "{status:#}"
    );
    let again = team
        .ttv(&a, &["--json", "cache", "push"], &up)
        .success()
        .json();
    assert_eq!(again["pushed"].as_u64(), Some(0), "nothing twice");

    let doctor = team.ttv(&a, &["--json", "doctor"], &up).success().json();
    let check = remote_check(&doctor);
    assert!(
        str_field(&check, "detail").contains("reachable, 6 result(s)"),
        "{check:#}"
    );

    let paid = team.fake.paid_requests();
    let b = team.machine();
    let rb = team.build(&b, &[], &up).success().json();
    assert_eq!(team.fake.paid_requests(), paid);
    assert_eq!(rb["remote"].as_u64(), Some(all_nodes().len() as u64));
}

#[test]
fn two_machines_building_the_same_nodes_at_once_pay_once() {
    let s3 = S3Server::start();
    let team = Team::new(s3.env("race"));
    // Each segment's operation runs 1.5 s: the machines, started together, both need every
    // segment while the other is making it.
    team.fake.operation_latency(Duration::from_millis(1500));
    let (a, b) = (team.machine(), team.machine());
    let lease = [
        ("TTV_LEASE_SECONDS", "4"),
        ("TTV_MACHINE_NAME", "machine-a"),
    ];
    let lease_b = [
        ("TTV_LEASE_SECONDS", "4"),
        ("TTV_MACHINE_NAME", "machine-b"),
    ];
    let ra = team.spawn(&a, &["--json", "build"], &lease);
    let rb = team.spawn(&b, &["--json", "build"], &lease_b);
    let (oa, ob) = (a.wait(ra), b.wait(rb));
    let (ja, jb) = (oa.success().json(), ob.success().json());
    assert_eq!(
        team.fake.paid_requests(),
        FRAMES.len() + SEGMENTS.len(),
        "exactly one paid request per node over both machines\nA: {ja:#}\nB: {jb:#}"
    );
    assert_eq!(outputs(&a), outputs(&b), "both end with the same results");
    // Each segment was made by one machine while the other, which started at the same time,
    // waited on its lease and took its result.
    for id in FRAMES.iter().chain(SEGMENTS) {
        let made = [&ja, &jb]
            .iter()
            .filter(|r| str_field(&node(r, id), "status") == "generated")
            .count();
        assert_eq!(
            made, 1,
            "{id} was made by one machine\nA: {ja:#}\nB: {jb:#}"
        );
    }
}

#[test]
fn a_build_killed_during_a_veo_operation_is_resumed_by_another_machine() {
    let (team, dir) = Team::with_folder();
    let lease = [("TTV_LEASE_SECONDS", "2")];
    // The frames first, so that machine A's kill happens while the segment's operation runs.
    let a = team.machine();
    team.build(&a, &["frame/arrival/start", "frame/arrival/end"], &lease)
        .success();
    team.fake
        .script(Fault::NeverFinishes, Match::prompt(ARRIVAL_MOTION), 1);
    let mut running = team.spawn(&a, &["--json", "build", "segment/arrival"], &lease);
    let deadline = Instant::now() + Duration::from_secs(30);
    let operations = dir.path().join("v1/operations");
    while team.fake.count(Route::VeoPoll) < 1
        || std::fs::read_dir(&operations).map_or(0, |d| d.count()) == 0
    {
        assert!(running.is_running(), "machine A ended before polling");
        assert!(
            Instant::now() < deadline,
            "no poll and no shared operation within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    running.kill();
    a.wait(running);
    assert_eq!(team.fake.count(Route::VeoSubmit), 1);
    let submitted = team.fake.operations();

    team.fake.finish_stuck_operations();
    team.fake.clear_requests();
    let b = team.machine();
    let out = team.build(&b, &["segment/arrival"], &lease);
    let report = out.success().json();
    assert_eq!(
        team.fake.count(Route::VeoSubmit),
        0,
        "machine B submits nothing: it polls A's operation"
    );
    let polled: Vec<String> = team
        .fake
        .requests_to(Route::VeoPoll)
        .iter()
        .map(|r| str_field(r.body.as_ref().expect("poll body"), "operationName").to_owned())
        .collect();
    assert!(
        !polled.is_empty() && polled.iter().all(|p| submitted.contains(p)),
        "B polled the operation A submitted: {polled:#?} vs {submitted:#?}"
    );
    let segment = node(&report, "segment/arrival");
    assert_eq!(str_field(&segment, "status"), "generated", "{report:#}");
    assert_eq!(sources(&report)["frame/arrival/start"], "remote");
}

#[test]
fn cache_pull_fetches_without_generating_and_gc_remote_drops_what_no_node_uses() {
    let (team, dir) = Team::with_folder();
    let a = team.machine();
    team.build(&a, &[], &[]).success();
    let paid = team.fake.paid_requests();

    // A fresh machine prefetches everything: nothing generated, build/ complete.
    let b = team.machine();
    let pulled = team
        .ttv(&b, &["--json", "cache", "pull"], &[])
        .success()
        .json();
    assert_eq!(team.fake.paid_requests(), paid);
    assert_eq!(
        pulled["remote"].as_u64(),
        Some(all_nodes().len() as u64),
        "{pulled:#}"
    );
    assert_eq!(outputs(&a), outputs(&b));

    // An edited frame is in neither cache: pull skips it (and what uses it) and pays nothing.
    b.replace_in_yaml(ARRIVAL_END, "The keeper opens the door in a storm");
    let pulled = team
        .ttv(&b, &["--json", "cache", "pull"], &[])
        .success()
        .json();
    assert_eq!(team.fake.paid_requests(), paid, "pull never generates");
    assert_eq!(
        str_field(&node(&pulled, "frame/arrival/end"), "status"),
        "skipped"
    );
    assert_eq!(
        str_field(&node(&pulled, "segment/dream"), "status"),
        "cached"
    );

    // A builds the edit; the old end frame and segment/storm made from it are now used by no
    // node. gc without --remote leaves the remote alone; with it, they go.
    a.replace_in_yaml(ARRIVAL_END, "The keeper opens the door in a storm");
    team.build(&a, &[], &[]).success();
    let actions = |d: &Path| {
        walkdir::WalkDir::new(d.join("v1/actions"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .count()
    };
    let before = actions(dir.path());
    assert_eq!(
        before,
        all_nodes().len() + 2,
        "the new end frame and segment/storm uploaded"
    );
    team.ttv(&a, &["gc", "--yes"], &[]).success();
    assert_eq!(
        actions(dir.path()),
        before,
        "gc alone never deletes from the remote"
    );
    let out = team.ttv(&a, &["gc", "--remote"], &[]);
    out.success().stderr_contains("would drop 2 result(s)");
    assert_eq!(actions(dir.path()), before, "without --yes nothing goes");
    team.ttv(&a, &["gc", "--remote", "--yes"], &[]).success();
    assert_eq!(actions(dir.path()), all_nodes().len());

    // What is current is still all there for a new machine.
    let c = team.machine();
    c.replace_in_yaml(ARRIVAL_END, "The keeper opens the door in a storm");
    let rc = team.build(&c, &[], &[]).success().json();
    assert_eq!(
        rc["remote"].as_u64(),
        Some(all_nodes().len() as u64),
        "{rc:#}"
    );
    assert_eq!(team.fake.paid_requests(), paid + 2);
}

#[test]
fn results_made_while_the_remote_was_down_are_uploaded_by_the_next_build() {
    let (team, dir) = Team::with_folder();
    let a = team.machine();
    // A folder that cannot be made: the remote is down for this build.
    let down = [("TTV_REMOTE_CACHE", "file:///proc/ttv-no-such-folder")];
    let out = team.build(&a, &[], &down);
    out.stderr_contains("continuing with the local cache only");
    out.success();
    assert!(
        !dir.path().join("v1/actions").exists(),
        "nothing reached the remote"
    );

    // The next build, with the remote back, has nothing to make and sends the queue.
    let out = team.build(&a, &[], &[]);
    out.stderr_contains(&format!(
        "uploading {} result(s) that earlier builds could not send",
        all_nodes().len()
    ));
    assert_eq!(count(&out.success().json(), "generated"), 0);
    let status = team
        .ttv(&a, &["--json", "cache", "status"], &[])
        .success()
        .json();
    assert_eq!(status["local"]["unpushed"].as_u64(), Some(0), "{status:#}");

    let paid = team.fake.paid_requests();
    let b = team.machine();
    let rb = team.build(&b, &[], &[]).success().json();
    assert_eq!(team.fake.paid_requests(), paid);
    assert_eq!(rb["remote"].as_u64(), Some(all_nodes().len() as u64));
}

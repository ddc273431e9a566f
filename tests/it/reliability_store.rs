//! The store under damage (issue 7): temp links left in build/, damaged and lost blobs, a full
//! disk, a damaged cache database, the modes of outputs and stale temp files. The real binary on
//! a copy of fixtures/basic with the offline preview backends, real ffmpeg and SQLite; the
//! damage is done to the real files, as a disk, a crash or a user would do it.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use walkdir::WalkDir;

use crate::support::project::{
    Output, Project, blobs, count, generated_ids, ids_with_status, node, set, str_field,
};

/// Every output of a default build of fixtures/basic, by node.
const OUTPUTS: usize = 11;

fn basic() -> Project {
    Project::from_fixture("basic")
}

/// The blob of node `id` in a build report, relative to the project.
fn blob_of(report: &Value, id: &str) -> String {
    let hash = &blobs(report)[id];
    format!(".ttv/objects/{}/{}", &hash[..2], &hash[2..])
}

/// Flips one byte in the middle of a file, as a bad sector would; `keep_mtime` puts its
/// modification time back, so that nothing but its bytes tells.
fn flip_a_byte(p: &Project, rel: &str, keep_mtime: bool) {
    let path = p.path(rel);
    let meta = fs::metadata(&path).expect("the file to damage");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut bytes = fs::read(&path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    // Rewritten in place (same inode), as the disk would.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    std::io::Write::write_all(&mut &file, &bytes).expect("write");
    if keep_mtime {
        file.set_modified(meta.modified().expect("mtime"))
            .expect("set mtime");
    }
    fs::set_permissions(&path, meta.permissions()).expect("chmod back");
}

/// Each output the report lists holds exactly the blob it names.
#[track_caller]
fn assert_outputs_are_the_reported_blobs(p: &Project, report: &Value) {
    for n in report["nodes"].as_array().expect("nodes") {
        let output = str_field(n, "output");
        let bytes = p.read_bytes(output);
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            str_field(n, "blob"),
            "{output} must hold the blob the report names:\n{}",
            p.listing()
        );
    }
}

/// Hidden temp names (`.NAME.tmp-PID`) anywhere in build/.
fn temp_files_in_build(p: &Project) -> Vec<String> {
    WalkDir::new(p.path("build"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .map(|e| e.path().display().to_string())
        .collect()
}

/// Checked without ttv's own code: a PNG decodes whole, an MP4 is read by ffprobe (which
/// refuses one without its `moov` index).
fn is_whole_media(path: &Path) -> Result<(), String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    if bytes.starts_with(b"\x89PNG") {
        return image::load_from_memory(&bytes)
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration"])
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every blob in the cache is a whole PNG or MP4.
#[track_caller]
fn assert_every_blob_is_whole(p: &Project) {
    for e in WalkDir::new(p.path(".ttv/objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
    {
        if let Err(why) = is_whole_media(e.path()) {
            panic!(
                "the cache holds a broken file {}: {why}\n{}",
                e.path().display(),
                p.listing()
            );
        }
    }
}

/// `ttv ARGS...` run with this umask (set in the child before ttv starts).
fn ttv_with_umask(p: &Project, umask: u32, args: &[&str]) -> Output {
    let mut cmd = p.command(args);
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    p.run(cmd)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").mode() & 0o777
}

/// Defect 1: `rename(tmp, dest)` does nothing when both are links to the same blob, so the
/// temp name stayed: after a second build, a touched output, a copy of the project.
#[test]
fn no_temp_link_is_left_in_build_by_later_builds_a_touched_output_or_a_copied_project() {
    let p = basic();
    p.build_json(&[]);
    // Within the second of the first build the stat cache does not vouch for the outputs (the
    // racy-timestamp rule), so the second build places them again.
    p.build_json(&[]);
    assert_eq!(temp_files_in_build(&p), Vec::<String>::new());

    fs::File::options()
        .write(true)
        .open(p.path("build/final.mp4"))
        .or_else(|_| fs::File::open(p.path("build/final.mp4")))
        .expect("open final.mp4")
        .set_modified(SystemTime::now())
        .expect("touch final.mp4");
    let report = p.build_json(&[]);
    assert_eq!(count(&report, "generated"), 0, "{report:#}");
    assert_eq!(temp_files_in_build(&p), Vec::<String>::new());

    // `cp -a` keeps the links between build/ and the cache, with new inodes.
    let copy = Project::empty();
    let status = Command::new("cp")
        .arg("-a")
        .arg(p.path("."))
        .arg(copy.path("project"))
        .status()
        .expect("run cp -a");
    assert!(status.success());
    let out = copy.run(copy.command_in("project", &["--json", "build"]));
    assert_eq!(count(&out.success().json(), "generated"), 0);
    let copied = WalkDir::new(copy.path("project/build"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .count();
    assert_eq!(copied, 0, "{}", copy.listing());
}

/// Defect 2: a damaged blob of a node that makes the same bytes again (the final video) was
/// kept under its name, so every build failed with "the blob just stored ... does not match".
#[test]
fn a_damaged_blob_is_replaced_when_its_node_makes_the_same_bytes_again() {
    let p = basic();
    let first = p.build_json(&[]);
    let blob = blob_of(&first, "final");
    flip_a_byte(&p, &blob, false);

    let report = p.build_json(&[]);
    assert_eq!(generated_ids(&report), set(&["final"]), "{report:#}");
    assert_eq!(blobs(&report), blobs(&first), "the same bytes as before");
    assert_outputs_are_the_reported_blobs(&p, &report);
    assert_eq!(
        blake3::hash(&p.read_bytes(&blob)).to_hex().as_str(),
        blobs(&first)["final"],
        "the blob holds its bytes again"
    );
    assert_eq!(count(&p.build_json(&[]), "generated"), 0);
    p.ttv(&["verify"]).success();
}

/// Defect 3: a lost blob whose output in build/ is intact comes back from it at `ttv verify`,
/// at no cost.
#[test]
fn verify_restores_a_lost_blob_from_its_output_in_build() {
    let p = basic();
    let first = p.build_json(&[]);
    let blob = blob_of(&first, "segment/storm");
    p.remove(&blob);

    let out = p.ttv(&["--json", "verify"]);
    let verify = out.code(1).json();
    let hash = &blobs(&first)["segment/storm"];
    assert_eq!(verify["damaged"], serde_json::json!([hash]), "{verify:#}");
    assert_eq!(verify["restored"], serde_json::json!([hash]), "{verify:#}");
    assert_eq!(
        blake3::hash(&p.read_bytes(&blob)).to_hex().as_str(),
        hash.as_str()
    );

    let report = p.build_json(&[]);
    assert_eq!(count(&report, "generated"), 0, "{report:#}");
    assert_outputs_are_the_reported_blobs(&p, &report);
    p.ttv(&["verify"]).success();
}

/// Defect 3: a blob rotted in place with its mtime kept (so its output in build/, the same
/// file, too) was never remade: verify found it, builds kept the wrong segment. Now verify
/// drops it and the wrong output, and the next build makes it again.
#[test]
fn a_rotted_blob_found_by_verify_is_made_again_by_the_next_build() {
    let p = basic();
    let first = p.build_json(&[]);
    let output = str_field(&node(&first, "segment/lamp"), "output").to_string();
    flip_a_byte(&p, &blob_of(&first, "segment/lamp"), true);

    let out = p.ttv(&["--json", "verify"]);
    let verify = out.code(1).json();
    assert_eq!(
        verify["damaged"],
        serde_json::json!([blobs(&first)["segment/lamp"]]),
        "{verify:#}"
    );
    assert!(
        !p.exists(&output),
        "{output} showed the damaged bytes and must be gone:\n{}",
        p.listing()
    );

    let report = p.build_json(&[]);
    assert!(
        generated_ids(&report).contains("segment/lamp"),
        "{report:#}"
    );
    assert_eq!(blobs(&report), blobs(&first));
    assert_outputs_are_the_reported_blobs(&p, &report);
    p.ttv(&["verify"]).success();
}

/// A mounted tmpfs, unmounted on drop (also when the test fails).
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    /// None where the test may not mount one (not root, no tmpfs).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Defect 4 on a real full disk: the project on a 500 KiB tmpfs (this test mounts one, which
/// needs root; elsewhere it says so and passes, and the next test covers ffmpeg's side with a
/// file-size limit). The build fails saying the disk is full, the cache holds only whole
/// files, and once there is room the next build finishes.
#[test]
fn a_full_disk_stores_nothing_partial_and_the_next_build_finishes() {
    let p = basic();
    let files = p.files_under("");
    let Some(disk) = Tmpfs::mount(&p.path(""), "500k") else {
        eprintln!("cannot mount a tmpfs here (not root?): the full-disk test is skipped");
        return;
    };
    for (rel, bytes) in files {
        p.write(rel, bytes);
    }

    // Whichever write meets the full disk first (a blob, ffmpeg's clip, the database), the
    // build fails saying so. (Not --json: when the database is full too, the report cannot be
    // finished.)
    let out = p.ttv(&["build"]);
    out.code(1).check(
        out.stderr
            .to_lowercase()
            .contains("no space left on device"),
        "the error says the disk is full",
    );
    assert_every_blob_is_whole(&p);
    p.ttv(&["verify"]).success();

    disk.resize("64m");
    let report = p.build_json(&[]);
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    assert_outputs_are_the_reported_blobs(&p, &report);
    assert_every_blob_is_whole(&p);
    drop(disk);
}

/// Defect 4 where ffmpeg runs out of room: a file-size limit (`ulimit -f` in a wrapper that
/// `TTV_FFMPEG` names, with SIGXFSZ ignored so writes fail with EFBIG) lets the 90 KB clips
/// (captioned: the animatic) through and cuts the 390 KB final video short. ffmpeg prints
/// "Error writing trailer ... File too large" and exits 0; ttv stored that file as the final
/// video.
#[test]
fn a_final_video_cut_short_by_ffmpeg_is_not_stored_and_the_error_says_why() {
    let p = basic();
    let wrapper = p.path("ffmpeg-limited.sh");
    p.write(
        "ffmpeg-limited.sh",
        // 300 blocks: 150 KiB where a block is 512 bytes (dash, POSIX), 300 KiB in bash; either
        // way above the clips (under 90 KB) and below the final video (390 KB).
        "#!/bin/sh\ntrap '' XFSZ\nulimit -f 300\nexec ffmpeg \"$@\"\n",
    );
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
    let limited = [("TTV_FFMPEG", wrapper.to_str().expect("utf-8 path"))];

    let out = p.ttv_env(&["--json", "build"], &limited);
    out.code(1)
        .stderr_contains("no space left on device while writing the final video")
        .stderr_contains("nothing partial was stored");
    let report = out.json();
    assert_eq!(
        ids_with_status(&report, "failed"),
        set(&["final"]),
        "{report:#}"
    );
    assert!(!p.exists("build/final.mp4"), "{}", p.listing());
    assert_every_blob_is_whole(&p);

    let report = p.build_json(&[]);
    assert_eq!(generated_ids(&report), set(&["final"]), "{report:#}");
    assert_every_blob_is_whole(&p);
    assert_outputs_are_the_reported_blobs(&p, &report);
}

/// The build must cost nothing, and say that it rebuilt the database, naming it.
#[track_caller]
fn assert_rebuilt_at_no_cost(p: &Project) -> Value {
    let out = p.ttv(&["--json", "build"]);
    out.success()
        .stderr_contains(&format!(
            "the cache database {} was damaged",
            p.path(".ttv/ttv.db").display()
        ))
        .stderr_contains("from build/manifest.json (each checked against its blob");
    let report = out.json();
    assert_eq!(count(&report, "generated"), 0, "{report:#}");
    assert_eq!(count(&report, "cached"), OUTPUTS as u64, "{report:#}");
    assert_outputs_are_the_reported_blobs(p, &report);
    // Once: the rebuilt database is sound.
    let again = p.ttv(&["--json", "build"]);
    again.success().check(
        !again.stderr.contains("damaged"),
        "the rebuilt database is used as it is",
    );
    report
}

/// Defect 10: an empty ttv.db was taken for a new cache, and everything was made again.
#[test]
fn an_empty_database_is_rebuilt_from_the_manifest_and_nothing_is_made_again() {
    let p = basic();
    p.build_json(&[]);
    p.write(".ttv/ttv.db", "");
    assert_rebuilt_at_no_cost(&p);
    // explain copes with a result whose recipe was lost with the database.
    p.ttv(&["explain", "segment/storm"])
        .success()
        .stderr_contains("segment/storm is cached");
}

/// Defect 10: a cut-short ttv.db made every command fail with "database disk image is
/// malformed". It is moved aside, and a rerolled take (not take 1) is still the one used.
#[test]
fn a_truncated_database_is_moved_aside_and_rebuilt_keeping_the_takes_in_use() {
    let p = basic();
    p.build_json(&[]);
    let rerolled = p.build_json(&["--reroll", "segment/storm"]);
    assert_eq!(node(&rerolled, "segment/storm")["take"], 2);
    let db = p.path(".ttv/ttv.db");
    let len = fs::metadata(&db).expect("ttv.db").len();
    fs::File::options()
        .write(true)
        .open(&db)
        .and_then(|f| f.set_len(len / 3))
        .expect("truncate ttv.db");

    let report = assert_rebuilt_at_no_cost(&p);
    assert_eq!(node(&report, "segment/storm")["take"], 2, "{report:#}");
    assert_eq!(blobs(&report), blobs(&rerolled));
    let aside: Vec<String> = fs::read_dir(p.path(".ttv"))
        .expect("read .ttv")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ttv.db.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{}", p.listing());
    let pinned = p.build_json(&["--reroll", "segment/storm"]);
    assert_eq!(node(&pinned, "segment/storm")["take"], 3, "{pinned:#}");
}

/// Defect 10: damage inside the database that opening it does not show (an index page the
/// plan reads) fails the command naming the file and `ttv verify`, which runs SQLite's
/// integrity check and rebuilds it.
#[test]
fn damage_inside_the_database_names_verify_which_rebuilds_it() {
    let p = basic();
    p.build_json(&[]);
    p.build_json(&["--reroll", "segment/storm"]);
    let db = p.path(".ttv/ttv.db");
    let (page_size, root): (i64, i64) = {
        let conn = rusqlite::Connection::open(&db).expect("open ttv.db");
        let page_size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'actions_cover'",
                [],
                |r| r.get(0),
            )
            .expect("the plan's index");
        (page_size, root)
    };
    let mut bytes = fs::read(&db).expect("read ttv.db");
    let (start, len) = (((root - 1) * page_size) as usize, page_size as usize);
    bytes[start..start + len].fill(0xAB);
    fs::write(&db, bytes).expect("write ttv.db");

    let out = p.ttv(&["build"]);
    out.code(1)
        .stderr_contains(&format!("the cache database {} is damaged", db.display()))
        .stderr_contains("run `ttv verify`");

    let verify = p.ttv(&["--json", "verify"]);
    let json = verify.code(1).json();
    assert_eq!(json["database"], "rebuilt", "{json:#}");
    assert_eq!(json["damaged"], serde_json::json!([]), "{json:#}");
    let report = p.build_json(&[]);
    assert_eq!(count(&report, "generated"), 0, "{report:#}");
    p.ttv(&["verify"]).success();
    // The rows were still readable in the damaged file, checked by their keys: both takes,
    // with the recipes `explain` compares.
    let takes = p.ttv(&["takes", "segment/storm"]);
    let listed = format!("{}{}", takes.stdout, takes.stderr);
    takes.success().check(
        listed.contains("take 1") && listed.contains("take 2"),
        "both takes are listed",
    );
    p.replace_in_yaml("Lightning over the lamp room", "Hail on the lamp room");
    p.ttv(&["explain", "frame/storm/end"])
        .success()
        .stderr_contains("prompt changed");
}

/// Defect 11: outputs were 0400 whatever the umask. Blobs have no write bits and are readable
/// as the umask allows; build/ holds links to them, so the same goes for the outputs. Blobs of
/// an older ttv (0400) are brought to that mode by the next build.
#[test]
fn outputs_are_readable_as_the_umask_allows_and_never_writable() {
    let p = basic();
    let out = ttv_with_umask(&p, 0o022, &["--json", "build"]);
    let report = out.success().json();
    for (id, _) in blobs(&report) {
        let n = node(&report, &id);
        assert_eq!(mode(&p.path(str_field(&n, "output"))), 0o444, "{id}");
        assert_eq!(mode(&p.path(blob_of(&report, &id))), 0o444, "{id}");
    }

    for id in blobs(&report).keys() {
        fs::set_permissions(
            p.path(blob_of(&report, id)),
            fs::Permissions::from_mode(0o400),
        )
        .expect("chmod");
    }
    let again = ttv_with_umask(&p, 0o022, &["--json", "build"]);
    assert_eq!(count(&again.success().json(), "generated"), 0);
    assert_eq!(mode(&p.path("build/final.mp4")), 0o444);
    assert_eq!(mode(&p.path(blob_of(&report, "final"))), 0o444);

    let private = basic();
    ttv_with_umask(&private, 0o077, &["build"]).success();
    assert_eq!(mode(&private.path("build/final.mp4")), 0o400);
}

/// Defect 11: temp files of builds that were killed stayed in .ttv/tmp for ever. A build
/// removes those older than an hour; a recent one may belong to something still running.
#[test]
fn a_build_removes_stale_temp_files() {
    let p = basic();
    p.build_json(&[]);
    p.write(".ttv/tmp/preview-killed.mp4", vec![0u8; 4096]);
    p.write(".ttv/tmp/recent.mp4", vec![0u8; 4096]);
    fs::File::options()
        .write(true)
        .open(p.path(".ttv/tmp/preview-killed.mp4"))
        .expect("open")
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
        .expect("age the file");

    p.build_json(&[]);
    assert!(
        !p.exists(".ttv/tmp/preview-killed.mp4") && p.exists(".ttv/tmp/recent.mp4"),
        "{}",
        p.listing()
    );
}

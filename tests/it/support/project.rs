//! A temp copy of a fixture project and the real `ttv` binary run on it (n2's TestSpace,
//! ripgrep's failure messages): when an assertion fails, the message shows the command, where it
//! ran, what the folder held, and everything the command printed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use serde_json::Value;
use walkdir::WalkDir;

/// Environment variables of the user's shell that could change what a test run does: credentials
/// and endpoints of the real backends, and ttv's own knobs (tests set those explicitly).
const SCRUBBED_ENV_PREFIXES: &[&str] = &["GEMINI", "GOOGLE", "GCP_", "TTV_", "AWS_", "AZURE_"];

pub struct Project {
    root: PathBuf,
    /// Removed on drop unless kept.
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl Project {
    /// A fresh copy of `fixtures/<name>` in its own temp folder.
    pub fn from_fixture(name: &str) -> Project {
        Project::copy_of(&fixtures_dir().join(name))
    }

    /// A fresh copy of a folder of this repository (`project.example`).
    pub fn from_repo_dir(rel: &str) -> Project {
        Project::copy_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
    }

    /// An empty temp folder.
    pub fn empty() -> Project {
        Project::new("empty")
    }

    fn copy_of(src: &Path) -> Project {
        assert!(src.is_dir(), "no project folder at {}", src.display());
        let name = src.file_name().expect("folder name").to_string_lossy();
        let project = Project::new(&name);
        copy_tree(src, &project.root);
        project
    }

    fn new(name: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ttv-test-{name}-"))
            .tempdir()
            .expect("create temp dir");
        // Canonical, so that paths ttv prints can be compared with ours (macOS /private/var).
        let root = dir.path().canonicalize().expect("canonicalize temp dir");
        Project {
            root,
            dir: Some(dir),
            keep: std::env::var_os("TTV_TEST_KEEP").is_some_and(|v| v == "1"),
        }
    }

    /// Keeps the folder after the test, for poking at it by hand; its path is printed. Added to a
    /// test while debugging it, never committed in one (TTV_TEST_KEEP=1 keeps every folder).
    #[allow(dead_code)]
    pub fn keep(mut self) -> Project {
        self.keep = true;
        self
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// `ttv -C <project> ARGS...` run in the project folder, with a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(env!("CARGO_BIN_EXE_ttv")), args)
    }

    /// Like [`Project::command`], with another ttv executable (a copy, to rebuild it).
    pub fn command_of(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = self.bare_command(program, &self.root);
        cmd.arg("-C").arg(&self.root).args(args);
        cmd
    }

    /// `ttv ARGS...` run in a folder of the project without `-C`: ttv finds the project itself.
    pub fn command_in(&self, subdir: &str, args: &[&str]) -> Command {
        let mut cmd = self.bare_command(Path::new(env!("CARGO_BIN_EXE_ttv")), &self.path(subdir));
        cmd.args(args);
        cmd
    }

    fn bare_command(&self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if SCRUBBED_ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
                cmd.env_remove(key.as_ref());
            }
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// Runs `ttv ARGS...` and returns what happened, whatever the exit code.
    pub fn ttv(&self, args: &[&str]) -> Output {
        self.ttv_env(args, &[])
    }

    /// Like [`Project::ttv`], with extra environment variables.
    pub fn ttv_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        self.run(cmd)
    }

    pub fn run(&self, mut cmd: Command) -> Output {
        let description = describe(&cmd);
        let cwd = cmd.get_current_dir().unwrap_or(&self.root).to_path_buf();
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
        let mut out = Output::new(self, description, out);
        out.cwd = cwd;
        out
    }

    /// Starts `ttv ARGS...` without waiting, its output captured; finish it with [`Project::wait`].
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let description = describe(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
        Running { child, description }
    }

    pub fn wait(&self, running: Running) -> Output {
        let out = running
            .child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", running.description));
        Output::new(self, running.description, out)
    }

    /// `ttv --json build ARGS...`, which must succeed; its JSON report.
    pub fn build_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json", "build"];
        full.extend_from_slice(args);
        self.ttv(&full).success().json()
    }

    /// Rewrites ttv.yaml with `edit`, which must change it (a no-op edit means the test is stale).
    pub fn edit_yaml(&self, edit: impl FnOnce(String) -> String) {
        let before = self.read("ttv.yaml");
        let after = edit(before.clone());
        assert_ne!(before, after, "the edit left ttv.yaml unchanged:\n{before}");
        self.write("ttv.yaml", after);
    }

    /// Replaces the one occurrence of `from` in ttv.yaml with `to`.
    pub fn replace_in_yaml(&self, from: &str, to: &str) {
        self.edit_yaml(|s| {
            assert_eq!(
                s.matches(from).count(),
                1,
                "expected `{from}` exactly once in ttv.yaml:\n{s}"
            );
            s.replacen(from, to, 1)
        });
    }

    /// The 1-based line of ttv.yaml holding `needle` (which must occur once).
    pub fn yaml_line_of(&self, needle: &str) -> usize {
        let text = self.read("ttv.yaml");
        let lines: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(lines.len(), 1, "`{needle}` on lines {lines:?} of:\n{text}");
        lines[0]
    }

    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent folder");
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    pub fn read(&self, rel: impl AsRef<Path>) -> String {
        String::from_utf8(self.read_bytes(rel)).expect("utf-8 file")
    }

    pub fn read_bytes(&self, rel: impl AsRef<Path>) -> Vec<u8> {
        let path = self.path(rel);
        fs::read(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}\n{}", path.display(), listing(&self.root)))
    }

    /// Removes a file or a whole folder.
    pub fn remove(&self, rel: impl AsRef<Path>) {
        let path = self.path(rel);
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    pub fn exists(&self, rel: impl AsRef<Path>) -> bool {
        self.path(rel).exists()
    }

    /// Every file under `rel` (relative to the project) with its bytes.
    pub fn files_under(&self, rel: &str) -> BTreeMap<String, Vec<u8>> {
        WalkDir::new(self.path(rel))
            .into_iter()
            .map(|e| e.expect("walk"))
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = self.relative(e.path());
                (rel, fs::read(e.path()).expect("read"))
            })
            .collect()
    }

    /// How many blobs the cache holds.
    pub fn blob_count(&self) -> usize {
        WalkDir::new(self.path(".ttv/objects"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .count()
    }

    /// Every file and folder under the cache and build folders, with each file's size and
    /// modification time: equal snapshots mean nothing in them was written.
    pub fn snapshot(&self) -> BTreeMap<String, (u64, SystemTime)> {
        [".ttv", "build"]
            .iter()
            .flat_map(|top| WalkDir::new(self.path(top)).into_iter())
            .map(|e| e.expect("walk"))
            // Taking the build lock is not a change to the cache.
            .filter(|e| e.path() != self.path(".ttv/lock"))
            .map(|e| {
                let meta = e.metadata().expect("metadata");
                // A folder's mtime moves when a temp file comes and goes; its entries are what
                // count, and each of them is in the snapshot.
                let stamp = if meta.is_dir() {
                    (0, SystemTime::UNIX_EPOCH)
                } else {
                    (meta.len(), meta.modified().expect("mtime"))
                };
                (self.relative(e.path()), stamp)
            })
            .collect()
    }

    /// A listing of the project folder, for failure messages.
    pub fn listing(&self) -> String {
        listing(&self.root)
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.keep
            && let Some(dir) = self.dir.take()
        {
            eprintln!("kept test project: {}", dir.keep().display());
        }
    }
}

pub struct Running {
    child: Child,
    description: String,
}

impl Running {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// The process id, for a watchdog that must kill it from another thread.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL on Unix: the process gets no chance to clean up, as after a crash or power loss.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill ttv");
    }

    /// SIGINT, as Ctrl-C in a terminal sends it.
    pub fn interrupt(&mut self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill -INT");
        assert!(status.success(), "kill -INT {} failed", self.child.id());
    }
}

/// What one run of `ttv` did.
pub struct Output {
    pub command: String,
    pub cwd: PathBuf,
    /// None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    listing: String,
}

impl Output {
    fn new(project: &Project, command: String, out: std::process::Output) -> Output {
        Output {
            command,
            cwd: project.root.clone(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            listing: project.listing(),
        }
    }

    /// Panics with `what` and everything known about the run.
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n\ncommand: {}\ncwd: {}\nexit code: {:?}\n\nfolder after the run:\n{}\n\
             stdout:\n{}\nstderr:\n{}",
            self.command,
            self.cwd.display(),
            self.code,
            self.listing,
            self.stdout,
            self.stderr
        )
    }

    #[track_caller]
    pub fn code(&self, expected: i32) -> &Output {
        if self.code != Some(expected) {
            self.fail(&format!("expected exit code {expected}"));
        }
        self
    }

    #[track_caller]
    pub fn success(&self) -> &Output {
        self.code(0)
    }

    #[track_caller]
    pub fn stderr_contains(&self, needle: &str) -> &Output {
        if !self.stderr.contains(needle) {
            self.fail(&format!("expected stderr to contain `{needle}`"));
        }
        self
    }

    /// `check` must hold, or the test fails with the whole story of the run.
    #[track_caller]
    pub fn check(&self, ok: bool, what: &str) -> &Output {
        if !ok {
            self.fail(what);
        }
        self
    }

    /// stdout parsed as the one JSON object of `--json`.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| self.fail(&format!("stdout is not one JSON object: {e}")))
    }
}

/// The `nodes` of a build or plan report, by id.
pub fn nodes(report: &Value) -> BTreeMap<String, Value> {
    report["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no `nodes` array in {report:#}"))
        .iter()
        .map(|n| (str_field(n, "id").to_owned(), n.clone()))
        .collect()
}

/// The node of a report with this id.
pub fn node(report: &Value, id: &str) -> Value {
    nodes(report)
        .remove(id)
        .unwrap_or_else(|| panic!("no node {id} in {report:#}"))
}

/// Node id -> status.
pub fn statuses(report: &Value) -> BTreeMap<String, String> {
    nodes(report)
        .into_iter()
        .map(|(id, n)| (id, str_field(&n, "status").to_owned()))
        .collect()
}

/// The ids of the nodes with this status.
pub fn ids_with_status(report: &Value, status: &str) -> BTreeSet<String> {
    statuses(report)
        .into_iter()
        .filter(|(_, s)| s == status)
        .map(|(id, _)| id)
        .collect()
}

pub fn generated_ids(report: &Value) -> BTreeSet<String> {
    ids_with_status(report, "generated")
}

/// Node id -> blob hash.
pub fn blobs(report: &Value) -> BTreeMap<String, String> {
    nodes(report)
        .into_iter()
        .map(|(id, n)| (id, str_field(&n, "blob").to_owned()))
        .collect()
}

/// A string field of a JSON object, which must be there.
pub fn str_field<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{field}` in {v:#}"))
}

/// A count field (`generated`, `cached`, ...) of a report.
pub fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no count `{field}` in {report:#}"))
}

pub fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Duration of a media file in seconds, as ffprobe reports it.
pub fn ffprobe_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration"])
        .args(["-of", "default=noprint_wrappers=1:nokey=1"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ffprobe {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("ffprobe duration `{text}` of {}: {e}", path.display()))
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Copies a project's own files: not the cache (`.ttv/`) nor the outputs (`build/`) that a run
/// of ttv in the source folder may have left (the README's first command builds
/// project.example in place).
fn copy_tree(src: &Path, dst: &Path) {
    let walk = WalkDir::new(src).into_iter().filter_entry(|e| {
        e.depth() != 1 || !matches!(e.file_name().to_str(), Some(".ttv" | "build"))
    });
    for entry in walk {
        let entry = entry.expect("walk fixture");
        let rel = entry.path().strip_prefix(src).expect("under the fixture");
        let target = dst.join(rel);
        if entry.file_type().is_dir() {
            fs::create_dir_all(&target).expect("create folder");
        } else {
            fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(s, "{}={} ", key.to_string_lossy(), value.to_string_lossy());
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        let _ = write!(s, " {}", arg.to_string_lossy());
    }
    s
}

/// Every entry under `root` with its size; blobs under .ttv/objects are only counted.
fn listing(root: &Path) -> String {
    let objects = root.join(".ttv/objects");
    let mut out = String::new();
    let walk = WalkDir::new(root).sort_by_file_name().into_iter();
    for entry in walk.filter_entry(|e| e.path() == objects || !e.path().starts_with(&objects)) {
        let Ok(entry) = entry else { continue };
        if entry.path() == objects {
            let blobs = WalkDir::new(&objects)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .count();
            let _ = writeln!(out, "  .ttv/objects/ ({blobs} blobs)");
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.file_type();
        if kind.is_dir() {
            let _ = writeln!(out, "  {}/", rel.display());
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path()).unwrap_or_default();
            let _ = writeln!(out, "  {} -> {}", rel.display(), target.display());
        } else {
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = writeln!(out, "  {} ({size} bytes)", rel.display());
        }
    }
    out
}

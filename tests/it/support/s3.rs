//! A real S3-compatible server on 127.0.0.1 for the remote cache tests: moto's server (PyPI
//! `moto[server]`, installed in a venv by scripts/setup-debian.sh). Chosen over a Rust crate
//! because it is the S3 test double most projects use, it implements conditional writes
//! (`If-None-Match: *` → 412) which leases and take numbering rely on, and it logs every request
//! it serves, so a test can count the writes a build sent.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "ttv-team";

pub struct S3Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The moto_server executable: `TTV_TEST_MOTO_SERVER`, the venv scripts/setup-debian.sh makes,
/// or one on PATH.
fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("TTV_TEST_MOTO_SERVER") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("moto_server");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "moto_server not found: run the tests through scripts/setup-debian.sh (it installs moto[server] in target/moto-venv), or set TTV_TEST_MOTO_SERVER"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `PUT /BUCKET`; the status line of the answer.
fn create_bucket(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

impl S3Server {
    /// Starts moto on a free port and makes the bucket.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("moto.log");
        let port = free_port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            )
            .spawn()
            .expect("start moto_server");
        let server = S3Server {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // moto serves anonymous bucket creation; the tests' ttv signs its requests.
            match create_bucket(port) {
                Ok(status) if status.starts_with("HTTP/1.1 200") => break,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                r => panic!(
                    "moto_server did not start on port {port}: {r:?}\n{}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                ),
            }
        }
        server
    }

    /// The environment that points ttv at this server (credentials are any: moto does not
    /// check them, but object_store signs with them as it would for AWS).
    pub fn env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("TTV_REMOTE_CACHE", format!("s3://{BUCKET}/{prefix}")),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test-access-key".into()),
            ("AWS_SECRET_ACCESS_KEY", "test-secret-key".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The request lines moto logged so far (`PUT /bucket/key HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let start = l.find('"')? + 1;
                let end = start + l[start..].find('"')?;
                // Error lines are coloured: strip the escape codes.
                let line: String = l[start..end]
                    .split('\u{1b}')
                    .map(|part| {
                        part.trim_start_matches(|c: char| {
                            c == '[' || c.is_ascii_digit() || c == ';' || c == 'm'
                        })
                    })
                    .collect();
                Some(line)
            })
            .filter(|l| l.contains(&format!("/{BUCKET}")))
            .collect()
    }

    /// Writes among those: PUT, POST and DELETE requests to the bucket's objects.
    pub fn writes(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|l| {
                (l.starts_with("PUT ") || l.starts_with("POST ") || l.starts_with("DELETE "))
                    && l.contains(&format!("/{BUCKET}/"))
            })
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

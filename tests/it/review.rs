//! `ttv review` (issue 8): the server's safety over plain HTTP, the page in a real headless
//! chromium (approve and pin by clicking, then build), and the static contact sheet.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::project::{Project, generated_ids, ids_with_status, set};

/// fixtures/basic in first-last mode with `require_approval`, its frames built.
fn gated_with_frames() -> Project {
    let p = Project::from_fixture("basic");
    p.replace_in_yaml(
        "  duration_seconds: 1\n",
        "  duration_seconds: 1\n  mode: first-last\n  require_approval: true\n",
    );
    p.build_json(&["frames"]);
    p
}

/// A running `ttv review`, stopped on drop.
struct Review {
    child: Child,
    url: String,
    port: u16,
    token: String,
}

impl Review {
    fn start(p: &Project) -> Review {
        let mut cmd = p.command(&["review"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start ttv review");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the URL ttv review prints");
        let url = line.trim().to_string();
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .unwrap_or_else(|| panic!("ttv review printed `{url}`, not a 127.0.0.1 URL"));
        let (port, token) = rest.split_once("/?token=").expect("a token in the URL");
        assert!(
            token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "{token}"
        );
        Review {
            port: port.parse().expect("a port"),
            token: token.to_string(),
            url,
            child,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> Value {
        let url = format!("{}/api/state?token={}", self.base(), self.token);
        runtime().block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
    }
}

impl Drop for Review {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A request written by hand, so that no client normalizes `..` in the path first.
fn raw_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_review_server_answers_on_localhost_only_and_refuses_requests_without_its_token() {
    let p = gated_with_frames();
    let review = Review::start(&p);
    // Bound to 127.0.0.1 itself: another loopback address of this machine gets no answer.
    assert!(TcpStream::connect(("127.0.0.1", review.port)).is_ok());
    assert!(
        TcpStream::connect(("127.0.0.2", review.port)).is_err(),
        "the server answers on 127.0.0.2: it is not bound to 127.0.0.1 only"
    );
    assert!(TcpStream::connect(("::1", review.port)).is_err());

    let yaml = p.read("ttv.yaml");
    let base = review.base();
    let statuses = runtime().block_on(async {
        let http = crate::support::http().build().unwrap();
        let mut out = Vec::new();
        for (path, body) in [
            (
                "/api/approve",
                json!({"nodes": ["frame/arrival/start", "frame/arrival/end"]}),
            ),
            ("/api/reject", json!({"nodes": ["frames"]})),
            ("/api/pin", json!({"node": "frame/arrival/end", "take": 1})),
            ("/api/build", json!({"targets": ["segments"]})),
        ] {
            let none = http
                .post(format!("{base}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let wrong = http
                .post(format!("{base}{path}?token=0123"))
                .header("x-ttv-token", "f".repeat(64))
                .json(&body)
                .send()
                .await
                .unwrap();
            out.push((path, none.status().as_u16(), wrong.status().as_u16()));
        }
        let state = http.get(format!("{base}/api/state")).send().await.unwrap();
        out.push(("/api/state", state.status().as_u16(), 0));
        out
    });
    for (path, none, wrong) in statuses {
        assert_eq!(none, 403, "POST {path} without the token");
        assert!(
            wrong == 403 || path == "/api/state",
            "{path} with a wrong token: {wrong}"
        );
    }
    // Nothing changed: no verdict, no pin, no build.
    assert_eq!(p.read("ttv.yaml"), yaml);
    let state = review.state();
    let nodes: Vec<&Value> = state["shots"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["nodes"].as_array().unwrap())
        .collect();
    assert!(nodes.iter().all(|n| n["verdict"].is_null()), "{state:#}");
    assert!(
        nodes
            .iter()
            .filter(|n| n["kind"] == "segment")
            .all(|n| n["status"] == "waiting"),
        "{state:#}"
    );
    assert!(!p.path("build/segments").exists());

    // Blobs only, by hash, from the cache.
    let blob = nodes[0]["blob"].as_str().expect("a frame's blob");
    let ok = raw_get(review.port, &format!("/blob/{blob}"));
    assert!(ok.contains(" 200 "), "{ok}");
    for path in [
        "/blob/../../etc/passwd".to_string(),
        "/blob/%2e%2e/%2e%2e/etc/passwd".into(),
        "/blob/%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
        "/blob/..%2F..%2F..%2F..%2Fetc%2Fpasswd".into(),
        "/blob/".to_string() + &"0".repeat(64),
        "/blob/".to_string() + &blob.to_uppercase(),
        "/blob/".to_string() + &blob[..63],
        "/ttv.yaml".into(),
        "/.ttv/ttv.db".into(),
    ] {
        let status = raw_get(review.port, &path);
        assert!(status.contains(" 404 "), "GET {path}: {status}");
    }
}

/// A free port on 127.0.0.1 (free when this returns; chromedriver takes it a moment later).
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// chromedriver on 127.0.0.1, stopped on drop.
struct Driver(Child, u16);

impl Driver {
    fn start() -> Driver {
        let found = |p: &str| Path::new(p).is_file();
        assert!(
            found("/usr/bin/chromedriver") && found("/usr/bin/chromium"),
            "the review page tests drive Debian's chromium through its WebDriver, and \
             /usr/bin/chromium or /usr/bin/chromedriver is missing: install them with \
             `sudo apt-get install chromium chromium-driver` (scripts/setup-debian.sh does)"
        );
        let port = free_port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1500,1900"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a chromium session through chromedriver")
}

/// Waits until the page shows `selector` (it re-renders after every action).
async fn shows(c: &Client, selector: &str) {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("the page never showed `{selector}`: {e}"));
}

async fn click(c: &Client, selector: &str) {
    c.find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("no `{selector}` on the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking `{selector}`: {e}"));
}

#[test]
fn the_page_shows_every_shot_and_approving_and_pinning_there_decide_what_is_built() {
    let driver = Driver::start();
    let p = gated_with_frames();
    // A second take of dream's end frame, to pin the first one back from the page.
    p.build_json(&["--reroll", "frame/dream/end", "frame/dream/end"]);
    let review = Review::start(&p);
    let rt = runtime();
    let c = rt.block_on(browser(&driver));
    let yaml_before = p.read("ttv.yaml");
    rt.block_on(async {
        c.goto(&review.url).await.expect("open the page");
        shows(&c, "body[data-loaded=\"true\"]").await;

        // Every shot with its prompts; every frame made and cached, every segment waiting.
        let shots = [
            (
                "arrival",
                "The keeper opens the lighthouse door, lantern raised",
            ),
            ("storm", "Lightning over the lamp room"),
            ("lamp", "The keeper lights the great lamp"),
            ("dawn", "A calm sea at dawn, the beam still turning"),
            ("dream", "The meadow dissolves into waves"),
        ];
        for (id, end) in shots {
            let text = c
                .find(Locator::Css(&format!("section.shot[data-shot=\"{id}\"]")))
                .await
                .unwrap_or_else(|e| panic!("no row for shot {id}: {e}"))
                .text()
                .await
                .unwrap();
            assert!(text.contains(end), "shot {id} without its prompt: {text}");
            shows(
                &c,
                &format!("[data-node=\"frame/{id}/end\"][data-status=\"cached\"] img.current"),
            )
            .await;
            shows(
                &c,
                &format!("[data-node=\"segment/{id}\"][data-status=\"waiting\"]"),
            )
            .await;
        }
        for start in ["arrival", "dream"] {
            shows(
                &c,
                &format!("[data-node=\"frame/{start}/start\"][data-status=\"cached\"]"),
            )
            .await;
        }
        let text = c
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("Wide shot: a lighthouse at dusk, the keeper on the rocks"));

        // Pin dream's end frame back to take 1 by clicking its thumbnail.
        shows(&c, "[data-node=\"frame/dream/end\"][data-take=\"2\"]").await;
        click(
            &c,
            "[data-node=\"frame/dream/end\"] img.take-thumb[data-take=\"1\"]",
        )
        .await;
        shows(&c, "[data-node=\"frame/dream/end\"][data-take=\"1\"]").await;

        // Approve both frames of arrival and of dream.
        for node in [
            "frame/arrival/start",
            "frame/arrival/end",
            "frame/dream/start",
            "frame/dream/end",
        ] {
            click(&c, &format!("[data-node=\"{node}\"] button.approve")).await;
            shows(
                &c,
                &format!("[data-node=\"{node}\"][data-verdict=\"approved\"]"),
            )
            .await;
        }
        shows(&c, "[data-node=\"segment/arrival\"][data-status=\"dirty\"]").await;
        shows(&c, "[data-node=\"segment/storm\"][data-status=\"waiting\"]").await;
    });
    // (On a failure above, dropping the driver ends the browser.)
    let _ = rt.block_on(c.close());

    // Exactly one line of ttv.yaml changed: dream's end_take.
    let yaml_after = p.read("ttv.yaml");
    let before: Vec<&str> = yaml_before.lines().collect();
    let after: Vec<&str> = yaml_after.lines().collect();
    let added: Vec<&&str> = after.iter().filter(|l| !before.contains(l)).collect();
    let removed: Vec<&&str> = before.iter().filter(|l| !after.contains(l)).collect();
    assert_eq!(added, [&"    end_take: 1"], "{yaml_after}");
    assert!(
        removed.is_empty() && after.len() == before.len() + 1,
        "{yaml_after}"
    );

    // The build makes exactly the segments whose frames were approved on the page.
    let built = p.build_json(&[]);
    assert_eq!(
        generated_ids(&built),
        set(&["segment/arrival", "segment/dream"]),
        "{built:#}"
    );
    let waiting = ids_with_status(&built, "waiting");
    assert!(
        ["segment/storm", "segment/lamp", "segment/dawn", "final"]
            .iter()
            .all(|id| waiting.contains(*id)),
        "{built:#}"
    );

    // The screenshot for the README, with the segments now playable on the page.
    let c = rt.block_on(browser(&driver));
    rt.block_on(async {
        c.goto(&review.url).await.expect("open the page");
        shows(
            &c,
            "[data-node=\"segment/arrival\"][data-status=\"cached\"] video",
        )
        .await;
        let png = c.screenshot().await.expect("a screenshot");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/review.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, png).expect("write docs/review.png");
        let _ = c.close().await;
    });
}

#[test]
fn the_static_contact_sheet_references_only_files_in_build() {
    let p = Project::from_fixture("basic");
    p.build_json(&[]);
    let out = p.ttv(&["review", "--static"]);
    out.success();
    let path = p.path("build/review.html");
    assert_eq!(out.stdout.trim(), path.display().to_string());
    let html = p.read("build/review.html");
    assert!(
        !html.contains("<button") && !html.contains("<script"),
        "{html}"
    );
    let sources: BTreeSet<&str> = html
        .split("src=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    for src in &sources {
        assert!(!src.starts_with('/') && !src.contains(".."), "{src}");
        assert!(
            p.path("build").join(src).is_file(),
            "{src} is not in build/"
        );
    }
    assert!(
        sources.contains("frames/001-arrival-start.png"),
        "{sources:?}"
    );
    assert!(sources.contains("final.mp4"), "{sources:?}");
    assert_eq!(
        sources
            .iter()
            .filter(|s| s.starts_with("segments/"))
            .count(),
        5,
        "{sources:?}"
    );
    assert!(html.contains("Lightning over the lamp room"));
}

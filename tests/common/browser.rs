//! Headless Chromium for tests, driven over the W3C WebDriver protocol by Debian's
//! `chromedriver` (`chromium-driver`), with [`super::server::Client`] as the HTTP client:
//! no browser download and no WebDriver crate. [`Browser::start`] runs chromedriver on a
//! free loopback port and opens a session on `/usr/bin/chromium` (headless, no sandbox,
//! no network of its own, a fresh profile); dropping it ends the session (Chromium quits)
//! and stops chromedriver by its PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::server::Client;

/// How long chromedriver gets to say which port it listens on.
const DRIVER_START: Duration = Duration::from_secs(30);

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.is_file())
}

pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A browser session; `None` (after saying so) when Chromium or chromedriver is not
    /// installed and this is not CI, where that is a failure.
    pub fn start() -> Option<Browser> {
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("chromium and chromedriver are required (Debian: chromium chromium-driver)");
            }
            println!("skipping: chromium or chromedriver not installed");
            return None;
        };
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromedriver");
        let port = read_port(&mut child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let profile = tempfile::tempdir().expect("a Chromium profile dir");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1280,1000",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
        }}});
        let mut b = Browser {
            driver: child,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let v = b.call("POST", "/session", Some(&caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Some(b)
    }

    /// One WebDriver command; its `value`. Panics on an error answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Type", "application/json")]
        };
        let r = Client::connect(self.addr)
            .and_then(|mut c| c.request(method, path, headers, body.as_bytes()))
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"));
        let v = r.json();
        assert_eq!(r.status, 200, "chromedriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn open(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(&json!({ "url": url })),
        );
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub fn eval(&self, script: &str) -> Value {
        let body = json!({ "script": script, "args": [] });
        self.call("POST", &self.session_path("/execute/sync"), Some(&body))
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let v = self.call("GET", &self.session_path("/screenshot"), None);
        let png = decode_base64(v.as_str().expect("a base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = self.session_path("");
            let _ =
                Client::connect(self.addr).and_then(|mut c| c.request("DELETE", &path, &[], b""));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// chromedriver's port, from its "started successfully on port N" line.
fn read_port(child: &mut Child) -> u16 {
    let out = child.stdout.take().expect("chromedriver stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let port = line
                .split("started successfully on port ")
                .nth(1)
                .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok());
            if let Some(p) = port {
                let _ = tx.send(p);
            }
        }
    });
    match rx.recv_timeout(DRIVER_START) {
        Ok(port) if port != 0 => port,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromedriver did not report its port: {other:?}");
        }
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c:?}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

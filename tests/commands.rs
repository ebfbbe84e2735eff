//! The binary's commands besides a normal `serve`, and its exit statuses: `decode` agrees
//! with `GET /ids/{id}`, `health` probes a server, a bad setting exits 2 naming the key, a
//! start-up failure exits 1 with the cause.

mod common;

use std::process::{Command, Output};

use common::server::{Server, ServerOpts};

/// Runs the numgen binary with `args`, without any `NUMGEN_*` variable of ours.
fn numgen(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_numgen"));
    for (k, _) in std::env::vars() {
        if k.starts_with("NUMGEN_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).output().expect("run numgen")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn decode_prints_what_the_server_says_about_an_id() {
    let s = Server::start(ServerOpts::default());
    s.register("D", r#"{"format":"D-{SEQ:19}"}"#);
    let id = s.get("/numbers/D").json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let served = s.get(&format!("/ids/{id}")).json();

    let out = numgen(&["decode", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, served);

    let out = numgen(&["decode", "not-a-number"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not an ID"), "{}", stderr(&out));
}

#[test]
fn health_succeeds_only_against_a_live_server() {
    let s = Server::start(ServerOpts::default());
    let addr = s.addr().to_string();
    let out = numgen(&["health", "--listen", &addr]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = numgen(&["health", "--listen", &closed]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no healthy server"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_setting_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = numgen(&["serve", "--data-dir", data, "--lease-ttl-s", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("lease_ttl_s"), "{}", stderr(&out));

    let missing = dir.path().join("missing.toml");
    let out = numgen(&["serve", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("config"), "{}", stderr(&out));
}

#[test]
fn a_start_up_failure_exits_1_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().to_str().unwrap();
    let out = numgen(&["serve", "--listen", &addr, "--data-dir", data]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot bind"), "{}", stderr(&out));
}

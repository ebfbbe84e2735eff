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

/// `numgen serve` on a port that is taken: it logs the failure (at ERROR, through the
/// text log) and exits 1. Returns everything it wrote, run as `sh -c` by `wrap`.
fn failed_start_output(wrap: impl FnOnce(&str) -> Command) -> String {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let serve = format!(
        "NUMGEN_LOG_FORMAT=text '{}' serve --listen {addr} --data-dir '{}'",
        env!("CARGO_BIN_EXE_numgen"),
        dir.path().display()
    );
    let mut cmd = wrap(&serve);
    cmd.env_remove("NO_COLOR");
    let out = cmd.output().expect("run numgen");
    let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(
        text.contains("ERROR") && text.contains("cannot bind"),
        "{text:?}"
    );
    text
}

#[test]
fn text_logs_to_a_pipe_or_file_carry_no_colour_codes() {
    let piped = failed_start_output(|serve| {
        let mut c = Command::new("sh");
        c.args(["-c", serve]);
        c
    });
    assert!(
        !piped.contains('\x1b'),
        "escape codes in a piped log: {piped:?}"
    );
}

#[test]
fn text_logs_on_a_terminal_are_coloured_unless_no_color() {
    // `script` (util-linux) runs the command on a pseudo-terminal and copies what it wrote.
    let on_tty = |serve: &str| {
        let mut c = Command::new("script");
        c.args(["-qec", serve, "/dev/null"]);
        c
    };
    let coloured = failed_start_output(on_tty);
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = failed_start_output(|serve| on_tty(&format!("NO_COLOR=1 {serve}")));
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

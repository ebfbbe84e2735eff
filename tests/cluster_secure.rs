//! etcd as production runs it (SPEC section 5, "etcd security"): client TLS with client
//! certificates (`--client-cert-auth`), and authentication with a user whose role may only
//! read and write the numgen root. Certificates are made by the harness with the `openssl`
//! CLI, users and roles with `etcdctl` (`tests/common/etcd.rs`).
//!
//! - [`nodes_work_over_tls_as_a_user_limited_to_the_root`]: the cluster tests' core on a
//!   3-member cluster: worker IDs claimed, a config written on one node reaching the other,
//!   sequence and strict numbers from both, a graceful restart, and a user that can do
//!   nothing outside the root.
//! - [`a_wrong_password_ca_or_certificate_stops_the_node_naming_the_key`]: each mistake
//!   stops `numgen serve` at start with exit status 2 and a message naming the setting,
//!   and the password is never in the output.

mod common;

use common::cluster::{FEW_SECONDS, listed_workers, ready, tail, wait_for, wait_ready};
use common::etcd::EtcdCluster;
use common::history::History;
use common::server::{Server, ServerOpts, random_token};

const ROOT: &str = "/numgen-secure";
const USER: &str = "numgen";
const PASSWORD: &str = "user-secret-4711";

/// A cluster of `n` members with TLS and the limited user (`None`: etcd not installed).
fn secure_cluster(n: usize) -> Option<EtcdCluster> {
    EtcdCluster::builder()
        .members(n)
        .tls()
        .auth(USER, PASSWORD, &format!("{ROOT}/"))
        .start()
}

/// `numgen serve` options for a node of `etcd` under [`ROOT`], with `args` replacing the
/// harness's connection flags when given.
fn node_opts(etcd: &EtcdCluster, token: &str, args: Option<Vec<String>>) -> ServerOpts {
    let mut opts = ServerOpts::default()
        .admin_token(token)
        .arg("--etcd-root")
        .arg(ROOT)
        .arg("--lease-ttl-s")
        .arg("10");
    for a in args.unwrap_or_else(|| etcd.client_args()) {
        opts = opts.arg(a);
    }
    opts
}

/// Draws `count` numbers of `key` from `s` into `rec`; panics unless 200.
fn draw(s: &Server, rec: &mut common::history::Recorder, key: &str, count: u64) {
    let r = s.get(&format!("/numbers/{key}?count={count}"));
    assert_eq!(r.status, 200, "{key} from {}: {}", s.addr(), r.text());
    rec.record_body(key, &r.body, true).expect("numbers");
}

#[test]
fn nodes_work_over_tls_as_a_user_limited_to_the_root() {
    let Some(etcd) = secure_cluster(3) else {
        return;
    };
    let token = random_token();
    let a = Server::start(node_opts(&etcd, &token, None));
    let mut b = Server::start(node_opts(&etcd, &token, None));
    wait_ready(&a, FEW_SECONDS);
    wait_ready(&b, FEW_SECONDS);
    assert_eq!(listed_workers(&a), vec![0, 1], "two nodes, two worker IDs");

    a.register("SF", r#"{"format":"{prefix}-{SEQ:19}","mode":"snowflake"}"#);
    a.register("SQ", r#"{"format":"{prefix}-{SEQ:6}","mode":"sequence"}"#);
    a.register(
        "ST",
        r#"{"format":"{prefix}-{SEQ:6}","mode":"sequence","strict":true}"#,
    );
    // A changed config reaches the other node by the watch.
    let put = a.admin(
        "PUT",
        "/prefix-configs/SQ",
        r#"{"format":"{prefix}-B{SEQ:6}","mode":"sequence"}"#,
    );
    assert_eq!(put.status, 200, "{}", put.text());
    wait_for(
        FEW_SECONDS,
        || format!("the new SQ format did not reach {}\n{}", b.addr(), tail(&b)),
        || {
            let r = b.get("/numbers/SQ");
            (r.status == 200 && r.text().contains("SQ-B")).then_some(())
        },
    );

    let history = History::new();
    for round in 0..3 {
        for (k, s) in [&a, &b].into_iter().enumerate() {
            let mut rec = history.recorder(format!("node{k}-{round}"));
            for key in ["SF", "SQ", "ST"] {
                draw(s, &mut rec, key, 50);
            }
        }
        if round == 1 {
            // A graceful restart: the lease is given back and taken again, the sequence
            // tail returned, and everything goes on above what was issued.
            b.restart();
            wait_ready(&b, FEW_SECONDS);
        }
    }
    let report = history.assert_clean();
    println!(
        "measure: secure cluster: {} numbers checked",
        report.numbers
    );

    // The user's role covers the root and nothing else.
    let user = format!("{USER}:{PASSWORD}");
    let layout = etcd
        .etcdctl(
            Some(&user),
            &["get", &format!("{ROOT}/layout"), "--print-value-only"],
        )
        .expect("the user reads under the root");
    assert!(!layout.trim().is_empty(), "no layout under {ROOT}");
    let outside = etcd.etcdctl(Some(&user), &["put", "/elsewhere", "x"]);
    assert!(
        outside
            .as_ref()
            .is_err_and(|e| e.contains("permission denied")),
        "{outside:?}"
    );
    for s in [&a, &b] {
        assert!(!s.logs().contains(PASSWORD), "the password was logged");
        assert_eq!(ready(s).0, 200);
    }
}

#[test]
fn a_wrong_password_ca_or_certificate_stops_the_node_naming_the_key() {
    let Some(etcd) = secure_cluster(1) else {
        return;
    };
    let certs = etcd.certs().expect("certificates").clone();
    let good = etcd.client_args();
    // `good` with the value after `flag` replaced, or `flag` and its value dropped.
    let with = |flag: &str, value: Option<String>| -> Vec<String> {
        let mut args = Vec::new();
        let mut it = good.iter();
        while let Some(a) = it.next() {
            if a == flag {
                let _ = it.next();
                if let Some(v) = &value {
                    args.extend([flag.to_string(), v.clone()]);
                }
            } else {
                args.push(a.clone());
            }
        }
        args
    };
    let without = |flags: &[&str]| -> Vec<String> {
        let mut args = good.clone();
        for f in flags {
            if let Some(i) = args.iter().position(|a| a == f) {
                args.drain(i..i + 2);
            }
        }
        args
    };
    let cases = [
        (
            "wrong password",
            with("--etcd-password", Some("not-the-password".into())),
            "etcd_password",
        ),
        (
            "unknown user",
            with("--etcd-username", Some("nobody".into())),
            "etcd_password",
        ),
        (
            "a CA that did not sign etcd's certificate",
            with("--etcd-ca-file", Some(certs.other_ca.display().to_string())),
            "etcd_ca_file",
        ),
        (
            "no client certificate",
            without(&["--etcd-cert-file", "--etcd-key-file"]),
            "etcd_cert_file",
        ),
    ];
    let token = random_token();
    for (what, args, key) in cases {
        let started = Server::try_start(node_opts(&etcd, &token, Some(args)));
        let err = match started {
            Ok(s) => panic!("{what}: numgen started\n{}", s.logs()),
            Err(e) => e,
        };
        assert_eq!(
            err.status.and_then(|s| s.code()),
            Some(2),
            "{what}: exit status\n{}",
            err.logs
        );
        assert!(
            err.logs.contains(&format!("{key}:")),
            "{what}: the message does not name {key}\n{}",
            err.logs
        );
        assert!(
            !err.logs.contains("not-the-password"),
            "{what}: password logged"
        );
        assert!(!err.logs.contains(PASSWORD), "{what}: password logged");
        println!("measure: {what}: {}", last_error(&err.logs));
    }
}

/// The `numgen:` line a failed start printed last.
fn last_error(logs: &str) -> &str {
    logs.lines()
        .rev()
        .find(|l| l.starts_with("numgen:"))
        .unwrap_or("")
}

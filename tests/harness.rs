//! Tests of the test harness itself: the history checker finds what it must, the proxy
//! passes, delays and cuts traffic, and a 3-member etcd cluster elects a leader and
//! survives losing it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::history::{History, Number};
use common::proxy::Proxy;

#[test]
fn the_checker_finds_repeats_and_reordering() {
    let h = History::new();
    let n = |number: &str, id: &str| Number {
        number: number.into(),
        id: id.into(),
        degraded: false,
    };
    {
        let mut a = h.recorder("a");
        a.record("K", &[n("K-1", "1"), n("K-2", "2")]);
        let mut b = h.recorder("b");
        b.record("K", &[n("K-3", "3")]);
        // Another prefix may render the same string: uniqueness is per prefix.
        b.record("L", &[n("K-1", "1")]);
    }
    assert!(h.check().is_clean(), "{}", h.check().describe());
    {
        let mut c = h.recorder("c");
        c.record("K", &[n("K-2", "9"), n("X", "5")]);
    }
    let r = h.check();
    assert_eq!(r.repeated_numbers.len(), 1, "{}", r.describe());
    assert_eq!(r.repeated_ids.len(), 0, "{}", r.describe());
    assert_eq!(r.backwards.len(), 1, "{}", r.describe());
    assert_eq!(r.numbers, 6);
}

/// An echo server on loopback; returns its address.
fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn round_trip(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    c.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got)?;
    Ok(got)
}

#[test]
fn the_proxy_passes_delays_cuts_and_restores() {
    let proxy = Proxy::start(echo_server());
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(round_trip(&mut c, b"hello").unwrap(), b"hello");

    proxy.set_delay(Duration::from_millis(100));
    let t = Instant::now();
    assert_eq!(round_trip(&mut c, b"slow").unwrap(), b"slow");
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    proxy.set_delay(Duration::ZERO);

    proxy.cut();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.write_all(b"held").unwrap();
    let mut buf = [0u8; 4];
    let err = c.read_exact(&mut buf).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    // A new connection is accepted but carries nothing either.
    let mut d = TcpStream::connect(proxy.addr()).unwrap();
    d.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    d.write_all(b"new!").unwrap();
    assert!(d.read_exact(&mut buf).is_err());

    proxy.restore();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(
        &buf, b"held",
        "bytes sent during the cut arrive intact after it"
    );
    d.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"new!");

    proxy.reset();
    let closed = c.read(&mut buf);
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let mut e = TcpStream::connect(proxy.addr()).unwrap();
    e.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(round_trip(&mut e, b"after").unwrap(), b"after");
    assert!(proxy.accepted() >= 3);
}

#[test]
fn a_three_member_etcd_elects_a_new_leader_when_the_old_one_dies() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    assert_eq!(etcd.endpoints().split(',').count(), 3);
    let leader = etcd.wait_leader(Duration::from_secs(10)).expect("a leader");
    etcd.member(leader).kill();
    let next = etcd
        .wait_leader(Duration::from_secs(15))
        .expect("a new leader");
    assert_ne!(next, leader);
    etcd.member(leader).restart();
    assert!(etcd.wait_leader(Duration::from_secs(10)).is_some());
}

#[test]
fn the_proxy_holds_replies_while_requests_pass() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = Proxy::start(upstream.local_addr().unwrap());
    proxy.hold_replies();
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.write_all(b"ping").unwrap();
    // The request arrives upstream...
    let (mut server, _) = upstream.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // ...its answer does not, until the proxy is restored.
    server.write_all(b"pong").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(c.read_exact(&mut buf).is_err());
    proxy.restore();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // A reply delay holds answers back for a while, not requests.
    proxy.set_reply_delay(Duration::from_millis(200));
    let t = Instant::now();
    c.write_all(b"ping").unwrap();
    server.read_exact(&mut buf).unwrap();
    let arrived = t.elapsed();
    server.write_all(b"pong").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert!(arrived < Duration::from_millis(200), "{arrived:?}");
}

//! Shared harness for the black-box tests: real etcd processes ([`etcd`]) and the real
//! numgen binary ([`server`]), both on loopback with random ports and temp dirs; a TCP
//! proxy the test controls ([`proxy`]: cut, delay, reset) and a checker over every number
//! a test got back ([`history`]); the HTTP API tests' body readers ([`api`]); nodes of
//! one etcd-backed cluster and the helpers the `cluster_*` tests read them with
//! ([`cluster`]); a clock moved by libfaketime ([`faketime`]); headless Chromium over
//! WebDriver ([`browser`]).
#![allow(dead_code)]

pub mod api;
pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod faketime;
pub mod history;
pub mod proxy;
pub mod rng;
pub mod server;

/// Sorts `ids` and returns the first (up to 10) numbers that occur more than once.
pub fn repeats(ids: &mut [u64]) -> Vec<u64> {
    ids.sort_unstable();
    ids.windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .take(10)
        .collect()
}

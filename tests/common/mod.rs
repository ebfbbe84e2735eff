//! Shared harness for the black-box tests: a real etcd process ([`etcd`]) and the real
//! numgen binary ([`server`]), both on loopback with random ports and temp dirs.
#![allow(dead_code)]

pub mod etcd;
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

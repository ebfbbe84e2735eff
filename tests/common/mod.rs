//! Shared harness for the black-box tests: a real etcd process ([`etcd`]) and the real
//! numgen binary ([`server`]), both on loopback with random ports and temp dirs.
#![allow(dead_code)]

pub mod etcd;
pub mod rng;
pub mod server;

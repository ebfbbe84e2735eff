//! numgen: an HTTP service that issues unique numbers (order numbers, invoice numbers,
//! ticket IDs) for business keys called prefixes. The contract is `SPEC.md`; this is the
//! map of the code.
//!
//! # Layout
//!
//! The pure core, free of I/O and async, with unit tests beside it:
//! - [`id`]: the bit [`id::layout`] of a snowflake ID and the per-prefix
//!   [`id::generator`] (one `AtomicU64` per prefix, no lock).
//! - [`format`]: format templates, parsed with positioned errors and rendered into a buffer.
//! - [`clock`]: the `Clock` trait and the guard that turns readings into a time that never
//!   goes backward and notices steps back and jumps forward.
//! - [`prefix`]: prefix configs, parsed strictly from request bodies.
//! - [`sync`]: the one `SeqLock` (the TSC clock's base, the worker grant), with its
//!   memory-ordering argument.
//!
//! The state of a running node, and its edges:
//! - [`node`]: the worker grant, reservation ceiling, health flags; bounds per request.
//! - [`worker`]: where worker IDs come from, their high-water marks, and keeping timestamps
//!   reserved ahead of use.
//! - [`sequence`]: dense counters from blocks reserved in the store, prefetched.
//! - [`service`]: the prefix registry and the issue/admin operations the HTTP layer calls.
//! - [`store`]: the `Store` trait; embedded (redb) and etcd backends.
//! - [`cluster`]: cluster mode on etcd (worker-ID lease, node registry, config watch, peer
//!   skew); `/cluster/nodes`.
//! - [`timing`]: every period, deadline and retry wait of the background work, in one
//!   place (a leaf: it depends on nothing in the crate).
//! - [`http`]: accept loop, router, handlers, the HTTP error type.
//! - [`metrics`]: every exported metric, in one registry.
//! - [`config`]: file, environment and flags into one checked `Config`; secrets as
//!   `Secret`, which never prints.
//! - [`standalone`]: the locked data dir, the embedded store in it, the admin token file.
//! - [`app`]: wiring and shutdown order: choose the backend, spawn and track the
//!   background tasks, serve, stop in order.

pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod format;
pub mod http;
pub mod id;
pub mod metrics;
pub mod node;
pub mod prefix;
pub mod sequence;
pub mod service;
pub mod standalone;
pub mod store;
pub mod sync;
pub mod timing;
pub mod worker;

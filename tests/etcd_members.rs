//! The etcd store over several members (`store::etcd::members`), on a real 3-member etcd:
//! calls leave a member that does not answer, and a write whose answer is lost is never
//! applied twice.
//!
//! - [`a_frozen_member_costs_a_call_one_attempt`]: calls keep succeeding with the first
//!   listed member frozen (etcd-client's own balancing sent about a third of them there, to
//!   wait for the store deadline).
//! - [`a_reservation_whose_answer_is_lost_leaves_a_gap_never_a_repeat`]: the first
//!   attempt commits but its answer is held by a proxy; the retry on another member
//!   reserves the next block. The lost block is a gap, and no block is handed out twice.
//! - [`a_retried_create_finds_its_own_config`]: the same for a `POST` whose answer comes
//!   too late: the retry finds the config it wrote and reports it created, not "exists".
//! - [`a_release_held_back_by_the_network_cannot_rewind_the_counter`]: a release held in
//!   a partition while a retry released and another node reserved again cannot rewind
//!   the counter under that node's block when it finally arrives.
//!
//! Each test starts its own etcd cluster (tests run in parallel).

mod common;

use std::time::Duration;

use numgen::config::EtcdConfig;
use numgen::prefix::{Mode, PrefixConfig, Reset, UtcOffset};
use numgen::store::etcd::EtcdStore;
use numgen::store::{SeqBlock, Store, Written};

use common::etcd::EtcdCluster;
use common::proxy::Proxy;

const ROOT: &str = "/members-test";

fn etcd_config(endpoints: Vec<String>) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        root: ROOT.to_string(),
        username: None,
        password: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    }
}

/// A 3-member cluster (`None`: etcd not installed, the test skips) and the index of a
/// follower.
async fn cluster() -> Option<(EtcdCluster, usize)> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .unwrap()?;
    let leader = etcd.wait_leader(Duration::from_secs(15)).expect("a leader");
    Some((etcd, (leader + 1) % 3))
}

/// A store whose first (preferred) endpoint is `first`, then every other member.
async fn store_preferring(etcd: &EtcdCluster, first: String, skip: usize) -> EtcdStore {
    let mut endpoints = vec![first];
    endpoints.extend(
        (0..etcd.len())
            .filter(|&i| i != skip)
            .map(|i| etcd.members()[i].endpoint()),
    );
    EtcdStore::connect(&etcd_config(endpoints)).await.unwrap()
}

fn block(start: u64, end: u64) -> SeqBlock {
    SeqBlock { start, end }
}

fn config(format: &str) -> PrefixConfig {
    PrefixConfig {
        format: format.to_string(),
        seq_length: 4,
        initial_seq: 0,
        mode: Mode::Sequence,
        reset: Reset::Never,
        utc_offset: UtcOffset::default(),
        strict: false,
    }
}

#[tokio::test]
async fn a_frozen_member_costs_a_call_one_attempt() {
    let Some((etcd, follower)) = cluster().await else {
        return;
    };
    let frozen = etcd.members()[follower].endpoint();
    let store = store_preferring(&etcd, frozen, follower).await;
    assert_eq!(store.reserve_seq("F", 10, 0).await.unwrap(), block(1, 10));
    etcd.members()[follower].pause();
    // Every call succeeds: the first one leaves the frozen member after one attempt, the
    // rest go to the member that answered.
    for k in 1..=10u64 {
        let got = store.reserve_seq("F", 10, 0).await;
        assert_eq!(got, Ok(block(10 * k + 1, 10 * k + 10)), "call {k}");
        store.get_seq("F").await.unwrap();
        store.list_prefixes().await.unwrap();
    }
    assert_ne!(store.members().preferred(), 0, "still on the frozen member");
    etcd.members()[follower].resume();
}

#[tokio::test]
async fn a_reservation_whose_answer_is_lost_leaves_a_gap_never_a_repeat() {
    let Some((etcd, follower)) = cluster().await else {
        return;
    };
    let proxy = Proxy::for_endpoint(&etcd.members()[follower].endpoint());
    let store = store_preferring(&etcd, proxy.endpoint(), follower).await;
    let other = store_preferring(&etcd, etcd.members()[follower].endpoint(), follower).await;
    assert_eq!(store.reserve_seq("G", 10, 0).await.unwrap(), block(1, 10));

    // The next reservation reaches etcd and commits (11..=20), but its answer is held: the
    // call retries on another member, finds the counter moved, and takes the block after.
    proxy.hold_replies();
    let second = store.reserve_seq("G", 10, 0).await.unwrap();
    assert_eq!(
        second,
        block(21, 30),
        "the retry must not hand out 11..=20 again"
    );
    assert_eq!(store.get_seq("G").await.unwrap(), Some(30));
    // Another node goes on above it; so does this one after the network heals.
    assert_eq!(other.reserve_seq("G", 10, 0).await.unwrap(), block(31, 40));
    proxy.restore();
    assert_eq!(store.reserve_seq("G", 10, 0).await.unwrap(), block(41, 50));
}

#[tokio::test]
async fn a_retried_create_finds_its_own_config() {
    let Some((etcd, follower)) = cluster().await else {
        return;
    };
    let proxy = Proxy::for_endpoint(&etcd.members()[follower].endpoint());
    let store = store_preferring(&etcd, proxy.endpoint(), follower).await;
    let cfg = config("P-{SEQ:4}");
    store.get_prefix("P").await.unwrap();
    // Answers take 300 ms: the read before the write comes back within the attempt's
    // 500 ms, the write's answer (at about 600 ms) does not. (On a machine so slow that the
    // read does not either, the retry simply creates it: the answer is the same.)
    proxy.set_reply_delay(Duration::from_millis(300));
    assert_eq!(store.create_prefix("P", &cfg).await, Ok(Written::Created));
    proxy.set_reply_delay(Duration::ZERO);
    // Another config, or the same one again, is a conflict as always.
    assert_eq!(store.create_prefix("P", &cfg).await, Ok(Written::Exists));
    assert_eq!(
        store.create_prefix("P", &config("Q-{SEQ:4}")).await,
        Ok(Written::Exists)
    );
    assert_eq!(store.get_prefix("P").await.unwrap(), Some(cfg));
}

#[tokio::test]
async fn a_release_held_back_by_the_network_cannot_rewind_the_counter() {
    let Some((etcd, follower)) = cluster().await else {
        return;
    };
    let proxy = Proxy::for_endpoint(&etcd.members()[follower].endpoint());
    let store = store_preferring(&etcd, proxy.endpoint(), follower).await;
    let other = store_preferring(&etcd, etcd.members()[follower].endpoint(), follower).await;
    assert_eq!(store.reserve_seq("R", 10, 0).await.unwrap(), block(1, 10));

    // The release's first attempt is held in a partition; the retry on another member
    // gives 1..=10 back, and another node reserves them: the counter ends at 10 again.
    proxy.cut();
    assert_eq!(store.release_seq("R", 10, 0).await, Ok(true));
    assert_eq!(other.reserve_seq("R", 10, 0).await.unwrap(), block(1, 10));
    // The partition heals and the held attempt arrives. Then a call through the proxy, on
    // a connection of its own, so the held bytes have gone ahead of it.
    proxy.restore();
    let late = EtcdStore::connect(&etcd_config(vec![proxy.endpoint()]))
        .await
        .unwrap();
    assert_eq!(late.get_seq("R").await.unwrap(), Some(10), "rewound");
    assert_eq!(other.reserve_seq("R", 10, 0).await.unwrap(), block(11, 20));
}

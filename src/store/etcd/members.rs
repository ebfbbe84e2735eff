//! The etcd members of one cluster, and which of them answer: one etcd client per member,
//! and every call made on a member that answers, moving on when one does not.
//!
//! Why not etcd-client's own balancing: its `Client` balances each request over one
//! channel with every endpoint (tower's power-of-two-choices with a load of 0, so a random
//! ready endpoint). A member that is frozen (SIGSTOP, a stalled VM, a dead disk) keeps its
//! TCP connection open and looks ready, so about a third of the requests would wait for it
//! until the store deadline, and HTTP/2 pings cannot find it sooner than etcd allows pings
//! (every 5 s). So [`Members`] keeps a client per member and chooses:
//!
//! - **Sticky preference.** Calls go to one preferred member (at first the first endpoint
//!   listed) while it answers; a node's reads, writes and watch then see one member.
//! - **Per-attempt deadlines.** [`Members::call`] gives each attempt [`ATTEMPT_TIMEOUT`]
//!   (doubling each round through the members, so a cluster that is merely slow still gets
//!   the whole store deadline), and on a timeout or a member-level error (connection
//!   refused, no leader, ...) tries the next member, so the store deadline is spent on
//!   members that answer.
//! - **Health.** A member that timed out or failed is in trouble: it is tried last until it
//!   answers again. [`Members::watch_health`] (a background task) asks every member for
//!   its status every [`PROBE_EVERY`], so a frozen preferred member is usually left before a
//!   real call waits on it, and a member that is back is known to be back.
//! - **No leader, no answer.** Requests carry etcd's require-leader flag: a member cut off
//!   from the others refuses at once instead of holding the request.
//!
//! # Retrying writes is safe here
//! An attempt that timed out may still commit (its bytes may sit in a frozen member's
//! socket and run when it resumes). Every write numgen makes is a transaction guarded on
//! what it read (`mod_revision`, `create_revision == 0`, or the worker key's lease), so a
//! retry and a late first attempt can never both apply: whichever commits second finds its
//! guard broken. What a retry can do is find the first attempt's effect: a sequence block
//! reserved twice leaves the first one unused (a gap, never a repeat, see
//! `EtcdStore::reserve_seq`), and the callers that care (a `POST` that finds its own config,
//! a claim that finds its own worker key) recognise their own write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use super::unavailable;
use crate::config::Secret;
use crate::store::StoreError;
use crate::timing::{ATTEMPT_TIMEOUT, PROBE_EVERY, PROBE_TIMEOUT, RETRY_PAUSE};

/// Why one attempt of a [`Members::call`] failed.
#[derive(Debug)]
pub enum Failure {
    /// What etcd or the connection said. Member-level trouble (see [`member_trouble`]) moves
    /// the call to another member; anything else is the answer.
    Etcd(etcd_client::Error),
    /// An outcome of the operation itself (a corrupt value, an overflow): the answer.
    Store(StoreError),
}

impl From<etcd_client::Error> for Failure {
    fn from(e: etcd_client::Error) -> Failure {
        Failure::Etcd(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Store(e)
    }
}

/// True when `e` says something about the member or the connection to it rather than
/// about the request: another member may well answer.
pub fn member_trouble(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        E::LeaseKeepAliveError(m) => m != "lease not found",
        E::GRpcStatus(s) => !matches!(
            s.code(),
            Code::InvalidArgument
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::FailedPrecondition
                | Code::NotFound
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::Unimplemented
        ),
        _ => false,
    }
}

/// One member: its endpoint, its client, and since when it has been in trouble.
struct Member {
    endpoint: String,
    /// Made without I/O; with credentials it authenticates before its first call.
    client: Client,
    /// True until the client has authenticated (always false without credentials).
    needs_login: AtomicBool,
    /// Milliseconds since [`Shared::born`], plus one, when it last stopped answering; 0
    /// while it answers.
    trouble_since: AtomicU64,
}

struct Shared {
    members: Vec<Member>,
    /// The member calls go to first.
    preferred: AtomicUsize,
    /// The user and password each member's client authenticates with.
    login: Option<(String, Secret)>,
    /// The highest raft term in which a member named a leader.
    leader_term: AtomicU64,
    /// Bumped when a member names a leader of a newer term.
    leader_changes: watch::Sender<u64>,
    born: Instant,
}

/// Every member of one etcd cluster. Cheap to clone: a handle on shared state.
#[derive(Clone)]
pub struct Members {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&str> = self.endpoints().collect();
        f.debug_struct("Members")
            .field("endpoints", &endpoints)
            .finish_non_exhaustive()
    }
}

impl From<Client> for Members {
    /// One member behind an existing (already authenticated) client, for tests and tools:
    /// calls have nowhere else to go, but keep their per-attempt deadlines and retries.
    fn from(client: Client) -> Members {
        Members::new(vec![("etcd".to_string(), client)], None)
    }
}

impl Members {
    /// Members in the given order (the first is preferred at first), each with a client
    /// made without I/O; with `login`, each client authenticates before its first call.
    pub fn new(members: Vec<(String, Client)>, login: Option<(String, Secret)>) -> Members {
        let members = members
            .into_iter()
            .map(|(endpoint, client)| Member {
                endpoint,
                client,
                needs_login: AtomicBool::new(login.is_some()),
                trouble_since: AtomicU64::new(0),
            })
            .collect();
        Members {
            shared: Arc::new(Shared {
                members,
                preferred: AtomicUsize::new(0),
                login,
                leader_term: AtomicU64::new(0),
                leader_changes: watch::Sender::new(0),
                born: Instant::now(),
            }),
        }
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.shared.members.iter().map(|m| m.endpoint.as_str())
    }

    pub fn len(&self) -> usize {
        self.shared.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.members.is_empty()
    }

    /// The preferred member's client, for callers that need a plain client (tests,
    /// tools). Calls made on it are not moved to other members.
    pub fn client(&self) -> Client {
        self.shared.members[self.preferred()].client.clone()
    }

    /// The index of the member calls go to first.
    pub fn preferred(&self) -> usize {
        self.shared.preferred.load(Ordering::Relaxed)
    }

    /// True while member `i` answers (as far as anyone knows).
    pub fn answers(&self, i: usize) -> bool {
        self.shared.members[i].trouble_since.load(Ordering::Relaxed) == 0
    }

    /// Member `i`'s client, authenticated first when it must be.
    pub(super) async fn client_of(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let m = &self.shared.members[i];
        let mut client = m.client.clone();
        if m.needs_login.load(Ordering::Acquire)
            && let Some((user, password)) = &self.shared.login
        {
            // Clones of a client share its credentials and token: this logs them all in.
            client
                .update_user(Some((user.clone(), password.expose().to_string())))
                .await?;
            m.needs_login.store(false, Ordering::Release);
        }
        Ok(client)
    }

    /// The order in which a call tries the members: the preferred one if it answers, then
    /// the others that answer, then those in trouble, longest in trouble last.
    fn order(&self) -> Vec<usize> {
        let n = self.shared.members.len();
        let first = self.preferred();
        let mut order: Vec<usize> = (0..n).map(|k| (first + k) % n).collect();
        // Stable: among those that answer, the preferred one and then index order.
        order.sort_by_key(|&i| {
            let since = self.shared.members[i].trouble_since.load(Ordering::Relaxed);
            if since == 0 { 0 } else { u64::MAX - since }
        });
        order
    }

    /// A member named `leader` (0: none) in raft term `term`: a leader of a newer term than
    /// any seen before is a leader change (the first one seen only sets the term).
    fn saw_leader(&self, leader: u64, term: u64) {
        if leader == 0 {
            return;
        }
        let before = self.shared.leader_term.fetch_max(term, Ordering::Relaxed);
        if before != 0 && term > before {
            tracing::info!(term, "etcd has a new leader");
            self.shared.leader_changes.send_modify(|n| *n += 1);
        }
    }

    /// Member `i` answered: it is out of trouble, and becomes the preferred member when
    /// that one is in trouble.
    fn answered(&self, i: usize) {
        let m = &self.shared.members[i];
        if m.trouble_since.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(endpoint = %m.endpoint, "etcd member answers again");
        }
        let preferred = self.preferred();
        if preferred != i && !self.answers(preferred) {
            self.shared.preferred.store(i, Ordering::Relaxed);
            tracing::info!(
                from = %self.shared.members[preferred].endpoint,
                to = %m.endpoint,
                "etcd calls move to another member"
            );
        }
    }

    /// Member `i` does not answer (`why`), as a caller found out on its own (a watch that
    /// fell silent): calls try it last until it answers again.
    pub fn not_answering(&self, i: usize, why: &dyn std::fmt::Display) {
        self.troubled(i, why);
        let preferred = self.preferred();
        if preferred == i
            && let Some(&next) = self.order().iter().find(|&&k| self.answers(k))
        {
            self.shared.preferred.store(next, Ordering::Relaxed);
        }
    }

    /// Member `i` did not answer (`why`).
    fn troubled(&self, i: usize, why: &dyn std::fmt::Display) {
        let m = &self.shared.members[i];
        let now = self.shared.born.elapsed().as_millis() as u64 + 1;
        if m.trouble_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(endpoint = %m.endpoint, error = %why, "etcd member does not answer");
        }
    }

    /// Runs `op` on a member that answers, within `limit` in all: each attempt under its own
    /// deadline, and on a timeout or member-level trouble again on the next member (see the
    /// module doc for why retrying numgen's writes is safe). `op` gets the client and the
    /// attempt's number (0 first): an attempt after the first may find an earlier one's
    /// effect. Returns the answer, the first error that is not member trouble, or (when
    /// `limit` ran out) the last trouble seen.
    pub async fn call<T, F, Fut>(&self, limit: Duration, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client, u32) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.call_on(limit, |c, attempt, _| op(c, attempt))
            .await
            .map(|(v, _)| v)
    }

    /// [`Members::call`], also saying which member answered; `op` gets its index too.
    pub async fn call_on<T, F, Fut>(
        &self,
        limit: Duration,
        mut op: F,
    ) -> Result<(T, usize), StoreError>
    where
        F: FnMut(Client, u32, usize) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let deadline = Instant::now() + limit;
        let mut tried = vec![false; self.len()];
        let mut round = 0;
        let mut last = StoreError::Timeout(limit);
        let mut leaders = self.shared.leader_changes.subscribe();
        for attempt in 0u32.. {
            if tried.iter().all(|t| *t) {
                // Every member failed once: do not spin on quick refusals (no leader yet).
                round += 1;
                tried.fill(false);
                let pause = RETRY_PAUSE * round.min(4);
                tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // The best member not tried in this round, as things stand now.
            let Some(i) = self.order().into_iter().find(|&k| !tried[k]) else {
                break;
            };
            tried[i] = true;
            let per = (ATTEMPT_TIMEOUT * (1 << round.min(4))).min(left);
            let attempt_of = async {
                let client = self.client_of(i).await?;
                op(client, attempt, i).await
            };
            leaders.borrow_and_update();
            let outcome = tokio::select! {
                r = tokio::time::timeout(per, attempt_of) => r,
                // A new leader: a write sent before it went to the old one and may wait
                // there for good; send it again now rather than wait out the attempt.
                Ok(()) = leaders.changed() => {
                    tried[i] = false;
                    continue;
                }
            };
            match outcome {
                Ok(Ok(v)) => {
                    self.answered(i);
                    return Ok((v, i));
                }
                Ok(Err(Failure::Etcd(e))) if member_trouble(&e) => {
                    self.troubled(i, &e);
                    last = unavailable(e);
                }
                Ok(Err(Failure::Etcd(e))) => return Err(refused(e)),
                Ok(Err(Failure::Store(e))) => return Err(e),
                Err(_) => {
                    self.troubled(i, &format_args!("no answer within {per:?}"));
                    last = StoreError::Timeout(limit);
                }
            }
        }
        Err(last)
    }

    /// Asks each member for its status every [`PROBE_EVERY`] until `stop`, so that calls
    /// leave a member that stopped answering before they wait on it, know when it is back,
    /// and learn at once when a new leader is elected.
    pub async fn watch_health(self, mut stop: watch::Receiver<bool>) {
        let mut probes = tokio::task::JoinSet::new();
        for i in 0..self.len() {
            let me = self.clone();
            probes.spawn(async move {
                let mut tick = tokio::time::interval(PROBE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let _ = me.probe(i, PROBE_TIMEOUT).await;
                }
            });
        }
        // Dropping the set ends the probes.
        let _ = stop.changed().await;
    }

    /// One status request to member `i` (after logging in, when it must), under `limit`:
    /// records whether it answered, and returns what went wrong.
    pub(super) async fn probe(&self, i: usize, limit: Duration) -> Result<(), etcd_client::Error> {
        let status = async {
            let mut c = self.client_of(i).await?;
            c.status().await
        };
        let result = match tokio::time::timeout(limit, status).await {
            Ok(Ok(status)) => {
                self.saw_leader(status.leader(), status.raft_term());
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(etcd_client::Error::EndpointError(format!(
                "no status within {limit:?}"
            ))),
        };
        match &result {
            Ok(()) => self.answered(i),
            Err(e) => self.troubled(i, e),
        }
        result
    }
}

/// An error etcd answered about the request itself (permission, a bad argument): not
/// retried, and said as etcd said it.
fn refused(e: etcd_client::Error) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::PermissionDenied => {
            StoreError::Unavailable(format!(
                "etcd refused: {} (the role of etcd_username needs readwrite on the etcd_root prefix)",
                s.message()
            ))
        }
        _ => unavailable(e),
    }
}

//! What one connection may hold in responses its client has not read (SPEC 7), HTTP/1.1
//! and HTTP/2 alike.
//!
//! Every request is admitted against its connection's byte budget ([`MAX_HELD_BYTES`])
//! before it runs: it reserves what its response will need (a batch of N numbers about
//! 96·N bytes), and its [`Ticket`] then holds the response's real size until hyper drops
//! the body, sent or reset. A request that does not fit waits, without having allocated
//! anything, until earlier responses leave. So an HTTP/2 client that opens 64 streams of
//! 10,000 numbers each and never reads pins about one batch, not 64; an HTTP/1.1 client
//! holds one response at a time anyway.
//!
//! [`ResponseBody`] hands its bytes to hyper in [`CHUNK`]-sized copies, so that what the
//! h2 send queue keeps of an unread response is one chunk, never the whole allocation
//! (`Bytes::slice` would share it), and each chunk taken counts as progress, which the
//! connection's watchdog (`super::conn`) checks.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::Response;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use super::HttpResponse;

/// The bytes of unsent responses (and reservations for responses being made) one
/// connection may hold; a single response larger than this is still served, alone.
pub const MAX_HELD_BYTES: usize = 1024 * 1024;

/// The size of the pieces a response body is handed to hyper in (one HTTP/2 frame).
pub const CHUNK: usize = 16 * 1024;

/// What a request reserves when nothing tells how large its response will be.
pub const SMALL_RESPONSE: usize = 4 * 1024;

/// The counters one connection shares between its requests, bodies and watchdog.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Reserved plus held bytes: what admission compares with [`MAX_HELD_BYTES`].
    used: AtomicUsize,
    /// Bytes of responses made and not yet dropped by hyper.
    held: AtomicUsize,
    /// Requests admitted whose response body hyper has not dropped yet.
    requests: AtomicUsize,
    /// Bumped whenever a request starts or ends and whenever hyper takes a body chunk.
    progress: AtomicU64,
    /// Requests waiting for admission (so that releases notify only when someone waits).
    waiting: AtomicUsize,
    /// Set when the connection is closed: waiting requests give up.
    closed: AtomicBool,
    freed: Notify,
}

/// What the watchdog reads of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub progress: u64,
    pub requests: usize,
    pub held: usize,
}

impl ConnState {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            progress: self.progress.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
        }
    }

    /// Admits a request that reserves `bytes`, if the budget has room (or holds nothing).
    pub fn try_admit(self: &Arc<Self>, bytes: usize) -> Option<Ticket> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used == 0 || used.saturating_add(bytes) <= MAX_HELD_BYTES)
                    .then(|| used.saturating_add(bytes))
            })
            .ok()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.progress.fetch_add(1, Ordering::Relaxed);
        Some(Ticket {
            conn: self.clone(),
            reserved: bytes,
            held: 0,
        })
    }

    /// Admits a request that reserves `bytes` once the budget has room; `None` when the
    /// connection closes first.
    pub async fn admit(self: &Arc<Self>, bytes: usize) -> Option<Ticket> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let ticket = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                break None;
            }
            if let Some(t) = self.try_admit(bytes) {
                break Some(t);
            }
            freed.await;
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        ticket
    }

    /// Marks the connection closed and wakes every waiting request.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    fn release(&self, reserved: usize, held: usize) {
        self.used.fetch_sub(reserved, Ordering::SeqCst);
        self.held.fetch_sub(held, Ordering::Relaxed);
        self.requests.fetch_sub(1, Ordering::Relaxed);
        self.progress.fetch_add(1, Ordering::Relaxed);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }
}

/// An admitted request's share of its connection's budget, released on drop.
#[derive(Debug)]
pub struct Ticket {
    conn: Arc<ConnState>,
    /// What this request counts in `used`.
    reserved: usize,
    /// What it counts in `held`.
    held: usize,
}

impl Ticket {
    /// Swaps the reservation for the real size of the response, `len` bytes.
    fn hold(&mut self, len: usize) {
        let c = &self.conn;
        if len >= self.reserved {
            c.used.fetch_add(len - self.reserved, Ordering::SeqCst);
        } else {
            c.used.fetch_sub(self.reserved - len, Ordering::SeqCst);
        }
        c.held.fetch_add(len, Ordering::Relaxed);
        self.reserved = len;
        self.held = len;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.conn.release(self.reserved, self.held);
    }
}

/// The body of every response numgen sends: the bytes of a complete response, handed out
/// in [`CHUNK`]s, with the request's [`Ticket`] until hyper drops it.
#[derive(Debug, Default)]
pub struct ResponseBody {
    rest: Bytes,
    /// The body came in more than one chunk: copy each, so that no chunk keeps the whole
    /// allocation alive after the body is gone.
    copy: bool,
    ticket: Option<Ticket>,
}

impl ResponseBody {
    fn new(bytes: Bytes, ticket: Option<Ticket>) -> ResponseBody {
        ResponseBody {
            copy: bytes.len() > CHUNK,
            rest: bytes,
            ticket,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let me = self.get_mut();
        if me.rest.is_empty() {
            return Poll::Ready(None);
        }
        let chunk = if me.copy {
            let n = me.rest.len().min(CHUNK);
            let chunk = Bytes::copy_from_slice(&me.rest[..n]);
            me.rest.advance(n);
            chunk
        } else {
            std::mem::take(&mut me.rest)
        };
        if let Some(t) = &me.ticket {
            t.conn.progress.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// The response with its body counted against the connection (`ticket`, when admitted).
pub fn hold(resp: HttpResponse, ticket: Option<Ticket>) -> Response<ResponseBody> {
    let (parts, body) = resp.into_parts();
    let bytes = full_bytes(body);
    let ticket = ticket.map(|mut t| {
        t.hold(bytes.len());
        t
    });
    Response::from_parts(parts, ResponseBody::new(bytes, ticket))
}

/// The bytes of a complete body. `Full` yields its one frame on the first poll, ready.
fn full_bytes(mut body: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn ok(len: usize) -> HttpResponse {
        Response::new(Full::new(Bytes::from(vec![b'x'; len])))
    }

    #[test]
    fn a_response_is_held_until_its_body_is_dropped() {
        let conn = Arc::new(ConnState::default());
        let t = conn.try_admit(1000).unwrap();
        assert_eq!(conn.used.load(Ordering::SeqCst), 1000);
        assert_eq!(conn.snapshot().requests, 1);
        let resp = hold(ok(300), Some(t));
        assert_eq!(
            (conn.used.load(Ordering::SeqCst), conn.snapshot().held),
            (300, 300)
        );
        assert_eq!(resp.body().size_hint().exact(), Some(300));
        drop(resp);
        assert_eq!(
            conn.snapshot(),
            Snapshot {
                progress: 2,
                requests: 0,
                held: 0
            }
        );
        assert_eq!(conn.used.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn admission_stops_at_the_budget_but_one_request_always_fits() {
        let conn = Arc::new(ConnState::default());
        let big = conn.try_admit(MAX_HELD_BYTES * 3).expect("alone, it fits");
        assert!(conn.try_admit(1).is_none());
        drop(big);
        let a = conn.try_admit(MAX_HELD_BYTES / 2).unwrap();
        let b = conn.try_admit(MAX_HELD_BYTES / 2).unwrap();
        assert!(conn.try_admit(1).is_none());
        drop((a, b));
        assert!(conn.try_admit(MAX_HELD_BYTES).is_some());
    }

    #[tokio::test]
    async fn a_waiting_request_is_admitted_when_a_body_leaves() {
        let conn = Arc::new(ConnState::default());
        let first = hold(ok(MAX_HELD_BYTES), conn.try_admit(SMALL_RESPONSE));
        let waiter = tokio::spawn({
            let conn = conn.clone();
            async move { conn.admit(SMALL_RESPONSE).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn waiting_requests_give_up_when_the_connection_closes() {
        let conn = Arc::new(ConnState::default());
        let _held = hold(ok(MAX_HELD_BYTES), conn.try_admit(SMALL_RESPONSE));
        let waiter = tokio::spawn({
            let conn = conn.clone();
            async move { conn.admit(SMALL_RESPONSE).await.is_none() }
        });
        tokio::task::yield_now().await;
        conn.close();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn large_bodies_leave_in_copied_chunks_that_count_as_progress() {
        let conn = Arc::new(ConnState::default());
        let len = CHUNK * 2 + 5;
        let resp = hold(ok(len), conn.try_admit(SMALL_RESPONSE));
        let mut body = resp.into_body();
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [CHUNK, CHUNK, 5]);
        assert!(body.is_end_stream());
        // Admission, three chunks.
        assert_eq!(conn.snapshot().progress, 4);
        assert_eq!(conn.snapshot().held, len);
        drop(body);
        assert_eq!(conn.snapshot().held, 0);
    }

    #[tokio::test]
    async fn small_bodies_leave_whole() {
        let resp = hold(ok(10), None);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 10);
    }
}

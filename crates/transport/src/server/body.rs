//! Request and response bodies of the listener: a request body that counts
//! the bytes of its incomplete gRPC message against the connection's and the
//! listener's budget and fails when it stalls mid-message, and a response
//! body that keeps its request counted in flight.
//!
//! Why a budget and not only flow-control windows: tonic reads a request's
//! body as fast as it arrives and keeps the part of a message received so far
//! in its own buffer, which hands the window back to the sender. The windows
//! bound what hyper holds unread; the budget bounds what the handlers'
//! decoders hold.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use futures::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tonic::Status;

use super::registry::InFlight;
use crate::BoxError;

/// What a request whose message was dropped from the budget sees.
fn evicted_status() -> Status {
    Status::resource_exhausted(
        "request message dropped: the server's buffer for incomplete messages is full and this one was the largest; \
         retry later",
    )
}

fn stalled_status(stall: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "request body made no progress for {stall:?} in the middle of a message; stream reset"
    ))
}

/// Set on a request body whose bytes were taken back by the budget.
#[derive(Debug, Default)]
struct Eviction {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Eviction {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

struct Holder {
    conn: u64,
    held: usize,
    eviction: Arc<Eviction>,
}

#[derive(Default)]
struct ConnAccount {
    used: usize,
    /// `(held, holder)`, largest last.
    by_size: BTreeSet<(usize, u64)>,
}

#[derive(Default)]
struct Accounts {
    used: usize,
    by_size: BTreeSet<(usize, u64)>,
    conns: HashMap<u64, ConnAccount>,
    holders: HashMap<u64, Holder>,
}

impl Accounts {
    /// Takes `holder`'s bytes back and tells it.
    fn evict(&mut self, holder: u64) {
        if let Some(h) = self.remove(holder) {
            h.eviction.evict();
        }
    }

    fn remove(&mut self, holder: u64) -> Option<Holder> {
        let h = self.holders.remove(&holder)?;
        self.used -= h.held;
        self.by_size.remove(&(h.held, holder));
        if let Some(conn) = self.conns.get_mut(&h.conn) {
            conn.used -= h.held;
            conn.by_size.remove(&(h.held, holder));
            if conn.by_size.is_empty() {
                self.conns.remove(&h.conn);
            }
        }
        Some(h)
    }
}

/// Bytes of incomplete request messages one listener holds: at most
/// `conn_limit` per connection and `limit` in all. A body that needs more
/// always gets it, and the largest holders (perhaps itself) are dropped until
/// the totals fit again, so no body ever waits on another and a small call
/// gets through while large stalled ones fill the budget.
pub(crate) struct Budget {
    conn_limit: usize,
    limit: usize,
    accounts: Mutex<Accounts>,
    next_holder: AtomicU64,
    /// Messages dropped since the start.
    pub(crate) evicted_total: AtomicU64,
    metrics: crate::metrics::ServerMetrics,
}

impl Budget {
    #[cfg(test)]
    pub(crate) fn new(conn_limit: usize, limit: usize) -> Arc<Self> {
        Self::with_metrics(conn_limit, limit, crate::metrics::ServerMetrics::default())
    }

    /// [`Self::new`] that also counts dropped messages in `metrics`.
    pub(crate) fn with_metrics(conn_limit: usize, limit: usize, metrics: crate::metrics::ServerMetrics) -> Arc<Self> {
        Arc::new(Self {
            conn_limit,
            limit,
            accounts: Mutex::new(Accounts::default()),
            next_holder: AtomicU64::new(1),
            evicted_total: AtomicU64::new(0),
            metrics,
        })
    }

    /// Bytes held right now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.accounts.lock().used
    }

    /// Sets what `holder` holds to `held`, dropping the largest holders
    /// while the totals are over a limit. `Err` if `holder` itself was
    /// dropped.
    fn set(&self, holder: u64, conn: u64, eviction: &Arc<Eviction>, held: usize) -> Result<(), ()> {
        let mut acc = self.accounts.lock();
        acc.remove(holder);
        if held == 0 {
            return Ok(());
        }
        acc.used += held;
        acc.by_size.insert((held, holder));
        let account = acc.conns.entry(conn).or_default();
        account.used += held;
        account.by_size.insert((held, holder));
        acc.holders.insert(holder, Holder { conn, held, eviction: eviction.clone() });
        let mut dropped = 0;
        while let Some(account) = acc.conns.get(&conn)
            && account.used > self.conn_limit
            && let Some(&(_, largest)) = account.by_size.last()
        {
            acc.evict(largest);
            dropped += 1;
        }
        while acc.used > self.limit
            && let Some(&(_, largest)) = acc.by_size.last()
        {
            acc.evict(largest);
            dropped += 1;
        }
        if dropped > 0 {
            self.evicted_total.fetch_add(dropped, Ordering::Relaxed);
            self.metrics.incomplete_dropped("budget", dropped);
        }
        if eviction.is_evicted() { Err(()) } else { Ok(()) }
    }

    fn release(&self, holder: u64) {
        self.accounts.lock().remove(holder);
    }
}

/// How a request body is framed, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// gRPC or binary gRPC-Web: length-prefixed messages. Only the message
    /// being received counts, and silence between messages is fine (a
    /// streaming call may wait for a long time between them).
    Messages,
    /// Anything else (gRPC-Web text is base64): the whole body counts until
    /// it ends, at three quarters of its size for base64.
    Whole { base64: bool },
}

impl Framing {
    pub(crate) fn of(content_type: Option<&http::HeaderValue>) -> Self {
        let ct = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
        let base = ct.split(';').next().unwrap_or("").trim();
        if base.starts_with("application/grpc-web-text") {
            Framing::Whole { base64: true }
        } else if base.starts_with("application/grpc") {
            Framing::Messages
        } else {
            Framing::Whole { base64: false }
        }
    }
}

/// Where a length-prefixed stream is: the bytes of the message being
/// received (prefix included) and how many of its payload are still to come.
#[derive(Debug, Default)]
struct Messages {
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: usize,
    received: usize,
}

impl Messages {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                self.received = if self.remaining == 0 { 0 } else { self.received + n };
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            self.received += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                self.remaining = usize::try_from(len).unwrap_or(usize::MAX);
                if self.remaining == 0 {
                    self.received = 0;
                }
            }
        }
    }
}

/// The part of a request body the budget knows about; returns its bytes on drop.
struct Account {
    budget: Arc<Budget>,
    holder: u64,
    conn: u64,
    /// Created when the body first holds bytes (most requests never do:
    /// their message arrives in one frame).
    eviction: Option<Arc<Eviction>>,
    framing: Framing,
    messages: Messages,
    whole: usize,
    held: usize,
}

impl Account {
    /// Counts `data`; `Err` if the budget dropped this body.
    fn feed(&mut self, data: &[u8]) -> Result<(), ()> {
        let held = match self.framing {
            Framing::Messages => {
                self.messages.feed(data);
                self.messages.received
            }
            Framing::Whole { base64 } => {
                self.whole = self.whole.saturating_add(data.len());
                if base64 { self.whole / 4 * 3 } else { self.whole }
            }
        };
        if held == self.held {
            return Ok(());
        }
        self.held = held;
        let eviction = self.eviction.get_or_insert_with(Default::default);
        self.budget.set(self.holder, self.conn, eviction, held)
    }

    fn is_evicted(&self) -> bool {
        self.eviction.as_ref().is_some_and(|e| e.is_evicted())
    }

    /// In the middle of a message: silence now is a stall.
    fn mid_message(&self) -> bool {
        match self.framing {
            Framing::Messages => self.messages.received > 0,
            Framing::Whole { .. } => true,
        }
    }

    fn finish(&mut self) {
        if self.held > 0 {
            self.held = 0;
            self.budget.release(self.holder);
        }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.finish();
    }
}

pin_project_lite::pin_project! {
    /// A request body under the listener's budget and stall timeout.
    pub(crate) struct GuardedBody<B> {
        #[pin]
        inner: B,
        account: Account,
        stall: Duration,
        stalled: Option<Pin<Box<tokio::time::Sleep>>>,
        failed: bool,
    }
}

impl<B> GuardedBody<B> {
    pub(crate) fn new(inner: B, budget: Arc<Budget>, conn: u64, framing: Framing, stall: Duration) -> Self {
        let holder = budget.next_holder.fetch_add(1, Ordering::Relaxed);
        let account =
            Account { budget, holder, conn, eviction: None, framing, messages: Messages::default(), whole: 0, held: 0 };
        Self { inner, account, stall, stalled: None, failed: false }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, BoxError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let evicted = |failed: &mut bool, account: &mut Account| {
            *failed = true;
            account.finish();
            Poll::Ready(Some(Err(Box::new(evicted_status()) as BoxError)))
        };
        if this.account.is_evicted() {
            return evicted(this.failed, this.account);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.stalled = None;
                if let Some(data) = frame.data_ref()
                    && this.account.feed(data.chunk()).is_err()
                {
                    return evicted(this.failed, this.account);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.failed = true;
                this.account.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.account.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(eviction) = &this.account.eviction {
                    eviction.waker.register(cx.waker());
                }
                if this.account.is_evicted() {
                    return evicted(this.failed, this.account);
                }
                if this.account.mid_message() {
                    let stall = *this.stall;
                    let sleep = this.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        *this.failed = true;
                        this.account.finish();
                        this.account.budget.metrics.incomplete_dropped("stalled", 1);
                        return Poll::Ready(Some(Err(Box::new(stalled_status(stall)))));
                    }
                } else {
                    *this.stalled = None;
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until hyper
    /// drops it (sent, or the stream reset).
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self { inner, in_flight }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;

    fn framed(len: u32, payload: usize) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&len.to_be_bytes());
        v.resize(5 + payload, 7);
        v
    }

    #[test]
    fn messages_track_the_incomplete_one() {
        let mut m = Messages::default();
        m.feed(&framed(3, 3));
        assert_eq!(m.received, 0);
        m.feed(&framed(0, 0));
        assert_eq!(m.received, 0);
        let partial = framed(10, 4);
        m.feed(&partial[..2]);
        assert_eq!(m.received, 2);
        m.feed(&partial[2..]);
        assert_eq!(m.received, 9);
        // The rest of that message and the start of the next one in one chunk.
        let mut chunk = vec![7; 6];
        chunk.extend_from_slice(&framed(100, 1));
        m.feed(&chunk);
        assert_eq!(m.received, 6);
        assert_eq!(m.remaining, 99);
    }

    #[test]
    fn framing_from_content_type() {
        let of = |s: &'static str| Framing::of(Some(&http::HeaderValue::from_static(s)));
        assert_eq!(of("application/grpc"), Framing::Messages);
        assert_eq!(of("application/grpc+proto"), Framing::Messages);
        assert_eq!(of("application/grpc-web+proto"), Framing::Messages);
        assert_eq!(of("application/grpc-web-text"), Framing::Whole { base64: true });
        assert_eq!(of("text/plain"), Framing::Whole { base64: false });
        assert_eq!(Framing::of(None), Framing::Whole { base64: false });
    }

    #[test]
    fn the_largest_holders_are_dropped() {
        let budget = Budget::new(100, 150);
        let e = || Arc::new(Eviction::default());
        let (a, b, c, d) = (e(), e(), e(), e());
        assert!(budget.set(1, 1, &a, 60).is_ok());
        assert!(budget.set(2, 1, &b, 30).is_ok());
        // Connection 1 over 100: its largest (holder 1) goes.
        assert!(budget.set(3, 1, &c, 20).is_ok());
        assert!(a.is_evicted() && !b.is_evicted() && !c.is_evicted());
        assert_eq!(budget.used(), 50);
        // Another connection: fits in the listener's 150 until it does not.
        assert!(budget.set(4, 2, &d, 90).is_ok());
        assert!(budget.set(4, 2, &d, 101).is_err(), "over its connection's limit, the holder drops itself");
        assert!(d.is_evicted());
        assert_eq!(budget.used(), 50);
        budget.release(2);
        budget.release(3);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.evicted_total.load(Ordering::Relaxed), 2);
    }

    /// A body that yields its chunks, then waits forever.
    struct Chunks(Vec<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0.is_empty() { Poll::Pending } else { Poll::Ready(Some(Ok(Frame::data(self.0.remove(0))))) }
        }
    }

    async fn next_error(body: &mut GuardedBody<Chunks>) -> Status {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return *e.downcast::<Status>().expect("a status"),
                None => panic!("ended"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_stalled_mid_message_fails_and_returns_its_bytes() {
        let budget = Budget::new(1 << 20, 1 << 20);
        let stall = Duration::from_secs(30);
        let chunks = vec![Bytes::from(framed(1000, 400))];
        let mut body = GuardedBody::new(Chunks(chunks), budget.clone(), 1, Framing::Messages, stall);
        let started = tokio::time::Instant::now();
        let status = next_error(&mut body).await;
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), stall);
        assert_eq!(budget.used(), 0);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_between_messages_is_not_a_stall() {
        let budget = Budget::new(1 << 20, 1 << 20);
        let mut body = guarded(&budget, 1, framed(10, 10));
        assert!(body.frame().await.is_some());
        let mut next = std::pin::pin!(body.frame());
        let waited = tokio::time::timeout(Duration::from_secs(3600), std::future::poll_fn(|cx| next.as_mut().poll(cx)));
        assert!(waited.await.is_err(), "no error after an hour between messages");
    }

    fn guarded(budget: &Arc<Budget>, conn: u64, message: Vec<u8>) -> GuardedBody<Chunks> {
        GuardedBody::new(
            Chunks(vec![Bytes::from(message)]),
            budget.clone(),
            conn,
            Framing::Messages,
            Duration::from_secs(30),
        )
    }

    #[tokio::test]
    async fn an_evicted_body_fails_when_polled() {
        let budget = Budget::new(100, 100);
        let mut big = guarded(&budget, 1, framed(1000, 80));
        assert!(big.frame().await.is_some());
        let mut small = guarded(&budget, 2, framed(1000, 30));
        assert!(small.frame().await.is_some());
        assert_eq!(next_error(&mut big).await.code(), tonic::Code::ResourceExhausted);
        assert_eq!(budget.used(), 35);
    }
}

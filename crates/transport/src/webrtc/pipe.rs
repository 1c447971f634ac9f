//! The I/O side of a data channel: received messages as a queue, a writer
//! task that respects the channel's buffered amount (send back-pressure), and
//! open/close signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::RTCDataChannel;

/// Pause writing while the channel has more than this buffered (the default
/// `high_water` of [`PipeOptions`]).
///
/// Small on purpose: every byte buffered here is a byte a small call on
/// another stream must wait behind (SCTP sends one channel's data in order).
/// 128 KiB is still several round trips of data at loopback rates, so bulk
/// throughput does not drop (measured with `tether-bench --only 4,5`: 1 MiB
/// buffered took a small call's p50 behind an 8 MiB transfer from 7 to 41 ms
/// with no throughput gain).
const HIGH_WATER: usize = 128 << 10;
/// Resume below this (the default `low_water`).
const LOW_WATER: usize = 32 << 10;

/// Packets handed to the writer but not yet given to the channel (the default
/// `writer_queue`). Packets wait in the framing state machine instead, where
/// the round-robin scheduler can still put another stream's packet first.
const WRITER_QUEUE: usize = 4;

/// How much a [`Pipe`] lets pile up on the sending side before senders wait.
///
/// The default suits tether's client and machine: little buffered, so a small
/// call on one stream does not wait long behind a bulk transfer on another.
/// The cost shows on long paths: webrtc-rs counts a byte as buffered until the
/// peer acknowledges it, so `high_water` also bounds the
/// bytes in flight, and one channel moves at most about that much per round
/// trip (128 KiB per 50 ms is about 2.6 MB/s). Raise it for bulk transfers
/// over such links, at the price of that head-of-line wait.
///
/// ```
/// use tether_transport::webrtc::pipe::PipeOptions;
/// let bulk = PipeOptions::default().high_water(1 << 20).low_water(256 << 10);
/// assert_eq!((bulk.high_water, bulk.writer_queue), (1 << 20, PipeOptions::default().writer_queue));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipeOptions {
    /// Packets the writer task may hold (default 4; at least 1 is used).
    pub writer_queue: usize,
    /// Pause sending while the channel buffers more than this many bytes
    /// (default 128 KiB).
    pub high_water: usize,
    /// Resume once it buffers at most this many (default 32 KiB; at most
    /// `high_water` is used).
    pub low_water: usize,
}

impl Default for PipeOptions {
    fn default() -> Self {
        Self { writer_queue: WRITER_QUEUE, high_water: HIGH_WATER, low_water: LOW_WATER }
    }
}

impl PipeOptions {
    /// Sets `writer_queue`.
    pub fn writer_queue(mut self, packets: usize) -> Self {
        self.writer_queue = packets;
        self
    }

    /// Sets `high_water`.
    pub fn high_water(mut self, bytes: usize) -> Self {
        self.high_water = bytes;
        self
    }

    /// Sets `low_water`.
    pub fn low_water(mut self, bytes: usize) -> Self {
        self.low_water = bytes;
        self
    }
}

/// A data channel's message queue and writer.
///
/// Sending takes the shortest way that keeps order and back-pressure: while
/// nothing waits in the writer and the channel buffers at most the high-water
/// mark ([`PipeOptions`]), a packet goes straight to the channel from the
/// sending task; otherwise it queues for the writer task, which waits for the
/// channel to drain below the low-water mark. (The writer alone costs a task
/// hand-off per packet, about a tenth of a unary call over WebRTC.)
pub struct Pipe {
    /// Received messages, in order.
    pub incoming: mpsc::UnboundedReceiver<Bytes>,
    /// Cancelled when the channel opens.
    pub opened: CancellationToken,
    /// Cancelled when the channel closes or fails (or [`Pipe::close`]).
    pub closed: CancellationToken,
    /// Packets to send, in order.
    pub outgoing: Outgoing,
}

/// The sending half of a [`Pipe`].
#[derive(Clone)]
pub struct Outgoing {
    queue: mpsc::Sender<Bytes>,
    /// Packets given to the writer and not yet sent by it.
    backlog: Arc<AtomicUsize>,
    high_water: usize,
    dc: Arc<RTCDataChannel>,
    closed: CancellationToken,
}

/// Room for one packet in the writer's queue ([`Outgoing::reserve`]).
pub struct Permit<'a> {
    permit: mpsc::Permit<'a, Bytes>,
    backlog: &'a AtomicUsize,
}

impl Permit<'_> {
    /// Queues `packet` for the writer.
    pub fn send(self, packet: Bytes) {
        self.backlog.fetch_add(1, Ordering::AcqRel);
        self.permit.send(packet);
    }
}

impl Pipe {
    /// Attaches to `dc`. Must be called before the channel can receive
    /// anything (right after creating it), so no message is lost.
    pub fn attach(dc: Arc<RTCDataChannel>) -> Self {
        Self::attach_with(dc, PipeOptions::default())
    }

    /// [`Pipe::attach`] with other [`PipeOptions`].
    pub fn attach_with(dc: Arc<RTCDataChannel>, options: PipeOptions) -> Self {
        let high_water = options.high_water;
        let low_water = options.low_water.min(high_water);
        let (in_tx, incoming) = mpsc::unbounded_channel();
        let (queue, mut out_rx) = mpsc::channel::<Bytes>(options.writer_queue.max(1));
        let backlog = Arc::new(AtomicUsize::new(0));
        let opened = CancellationToken::new();
        let closed = CancellationToken::new();
        let low = Arc::new(Notify::new());
        {
            let opened = opened.clone();
            dc.on_open(Box::new(move || {
                opened.cancel();
                Box::pin(async {})
            }));
        }
        {
            let closed = closed.clone();
            dc.on_close(Box::new(move || {
                closed.cancel();
                Box::pin(async {})
            }));
        }
        {
            let closed = closed.clone();
            dc.on_error(Box::new(move |e| {
                tracing::debug!("data channel error: {e}");
                closed.cancel();
                Box::pin(async {})
            }));
        }
        dc.on_message(Box::new(move |msg| {
            let _ = in_tx.send(msg.data);
            Box::pin(async {})
        }));
        let writer_dc = dc.clone();
        let writer_closed = closed.clone();
        let writer_low = low.clone();
        let writer_backlog = backlog.clone();
        tokio::spawn(async move {
            writer_dc.set_buffered_amount_low_threshold(low_water).await;
            {
                let low = writer_low.clone();
                writer_dc
                    .on_buffered_amount_low(Box::new(move || {
                        low.notify_waiters();
                        Box::pin(async {})
                    }))
                    .await;
            }
            loop {
                let packet = tokio::select! {
                    p = out_rx.recv() => match p { Some(p) => p, None => return },
                    _ = writer_closed.cancelled() => return,
                };
                loop {
                    let notified = writer_low.notified();
                    if writer_dc.buffered_amount().await <= high_water {
                        break;
                    }
                    tokio::select! {
                        _ = notified => {}
                        _ = writer_closed.cancelled() => return,
                    }
                }
                let sent = writer_dc.send(&packet).await;
                writer_backlog.fetch_sub(1, Ordering::AcqRel);
                if let Err(e) = sent {
                    tracing::debug!("data channel send failed: {e}");
                    writer_closed.cancel();
                    return;
                }
            }
        });
        let outgoing = Outgoing { queue, backlog, high_water, dc, closed: closed.clone() };
        Self { incoming, opened, closed, outgoing }
    }

    /// The channel.
    pub fn channel(&self) -> &Arc<RTCDataChannel> {
        &self.outgoing.dc
    }

    /// Marks the pipe closed (the writer stops).
    pub fn close(&self) {
        self.closed.cancel();
    }
}

impl Outgoing {
    /// Whether a packet may go straight to the channel: nothing is waiting
    /// in the writer (order) and the channel is under the high-water mark.
    async fn direct(&self) -> bool {
        self.backlog.load(Ordering::Acquire) == 0 && self.dc.buffered_amount().await <= self.high_water
    }

    async fn send_direct(&self, packet: &Bytes) -> bool {
        if let Err(e) = self.dc.send(packet).await {
            tracing::debug!("data channel send failed: {e}");
            self.closed.cancel();
            return false;
        }
        true
    }

    /// Sends `packet`, waiting for room in the writer if the channel is
    /// backed up. Err if the pipe is closed.
    pub async fn send(&self, packet: Bytes) -> Result<(), Bytes> {
        if self.closed.is_cancelled() {
            return Err(packet);
        }
        if self.direct().await {
            return if self.send_direct(&packet).await { Ok(()) } else { Err(packet) };
        }
        match self.reserve().await {
            Some(permit) => {
                permit.send(packet);
                Ok(())
            }
            None => Err(packet),
        }
    }

    /// Sends what `next` yields for as long as that needs no waiting: straight
    /// to the channel while nothing waits in the writer and the channel is
    /// under the high-water mark, then into the
    /// writer's queue while it has room. Returns false if the pipe closed.
    /// `next` is only called when its packet can go at once, so what it
    /// does not yield stays with the caller (e.g. in the framing scheduler,
    /// where another stream's packet may still overtake it).
    pub async fn flush(&self, mut next: impl FnMut() -> Option<Bytes>) -> bool {
        loop {
            if self.closed.is_cancelled() {
                return false;
            }
            if self.direct().await {
                let Some(packet) = next() else { return true };
                if !self.send_direct(&packet).await {
                    return false;
                }
                continue;
            }
            let Ok(permit) = self.queue.try_reserve() else { return true };
            let Some(packet) = next() else { return true };
            Permit { permit, backlog: &self.backlog }.send(packet);
        }
    }

    /// Waits for room in the writer's queue; None if the writer stopped.
    pub async fn reserve(&self) -> Option<Permit<'_>> {
        let permit = self.queue.reserve().await.ok()?;
        Some(Permit { permit, backlog: &self.backlog })
    }
}

/// Per-stream send credit: a producer waits while its stream has more than a
/// window of bytes waiting to be transmitted, so one bulk stream cannot fill
/// memory, and the others are never blocked by it.
#[derive(Debug, Default)]
pub struct Credit {
    /// Bytes of this stream queued in the framing layer.
    pub queued: AtomicUsize,
    /// Bytes handed to the driver but not yet queued.
    pub inflight: AtomicUsize,
    /// Signalled when `queued` drops.
    pub notify: Notify,
}

/// Per-stream window.
pub const STREAM_WINDOW: usize = 1 << 20;

impl Credit {
    /// Waits until the stream is under its window, then accounts `len` bytes
    /// as in flight. Returns false if `cancel` fired first.
    pub async fn acquire(&self, len: usize, cancel: &CancellationToken) -> bool {
        loop {
            let notified = self.notify.notified();
            if self.queued.load(Ordering::Acquire) + self.inflight.load(Ordering::Acquire) <= STREAM_WINDOW {
                self.inflight.fetch_add(len, Ordering::AcqRel);
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = cancel.cancelled() => return false,
            }
        }
    }

    /// The driver queued `len` in-flight bytes; `queued` is the stream's new total.
    pub fn enqueued(&self, len: usize, queued: usize) {
        self.inflight.fetch_sub(len.min(self.inflight.load(Ordering::Acquire)), Ordering::AcqRel);
        self.queued.store(queued, Ordering::Release);
    }

    /// The driver transmitted from this stream; `queued` is its new total.
    pub fn transmitted(&self, queued: usize) {
        self.queued.store(queued, Ordering::Release);
        if queued <= STREAM_WINDOW {
            self.notify.notify_waiters();
        }
    }
}

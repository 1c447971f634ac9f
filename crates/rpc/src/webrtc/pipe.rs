//! The I/O side of a data channel: received messages as a queue, a writer
//! task that respects the channel's buffered amount (send back-pressure), and
//! open/close signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::RTCDataChannel;

/// Pause writing while the channel has more than this buffered.
///
/// Small on purpose: every byte buffered here is a byte a small call on
/// another stream must wait behind (SCTP sends one channel's data in order).
/// 128 KiB is still several round trips of data at loopback rates, so bulk
/// throughput does not drop (measured with `tether bench --only 4,5`: 1 MiB
/// buffered took a small call's p50 behind an 8 MiB transfer from 7 to 41 ms
/// with no throughput gain).
pub const HIGH_WATER: usize = 128 << 10;
/// Resume below this.
pub const LOW_WATER: usize = 32 << 10;

/// Packets handed to the writer but not yet given to the channel (bounds the
/// writer queue). Packets wait in the framing state machine instead, where the
/// round-robin scheduler can still put another stream's packet first.
pub const WRITER_QUEUE: usize = 4;

/// A data channel's message queue and writer.
pub struct Pipe {
    /// Received messages, in order.
    pub incoming: mpsc::UnboundedReceiver<Bytes>,
    /// Packets to send, in order.
    pub outgoing: mpsc::Sender<Bytes>,
    /// Cancelled when the channel opens.
    pub opened: CancellationToken,
    /// Cancelled when the channel closes or fails (or [`Pipe::close`]).
    pub closed: CancellationToken,
    dc: Arc<RTCDataChannel>,
}

impl Pipe {
    /// Attaches to `dc`. Must be called before the channel can receive
    /// anything (right after creating it), so no message is lost.
    pub fn attach(dc: Arc<RTCDataChannel>) -> Self {
        let (in_tx, incoming) = mpsc::unbounded_channel();
        let (outgoing, mut out_rx) = mpsc::channel::<Bytes>(WRITER_QUEUE);
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
        tokio::spawn(async move {
            writer_dc.set_buffered_amount_low_threshold(LOW_WATER).await;
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
                    if writer_dc.buffered_amount().await <= HIGH_WATER {
                        break;
                    }
                    tokio::select! {
                        _ = notified => {}
                        _ = writer_closed.cancelled() => return,
                    }
                }
                if let Err(e) = writer_dc.send(&packet).await {
                    tracing::debug!("data channel send failed: {e}");
                    writer_closed.cancel();
                    return;
                }
            }
        });
        Self { incoming, outgoing, opened, closed, dc }
    }

    /// The channel.
    pub fn channel(&self) -> &Arc<RTCDataChannel> {
        &self.dc
    }

    /// Marks the pipe closed (the writer stops).
    pub fn close(&self) {
        self.closed.cancel();
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

//! The `data` channel without the framing: whole messages in, whole messages
//! out. For measuring the transport under the framing (the bench's raw rows)
//! and for tests that need to send what no client would.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;

use super::driver::{Endpoint, RtcPeer, Shared};

/// Messages a [`RawChannel`] queues before `send` waits for the channel.
const RAW_QUEUE: usize = 16;

/// The raw role's part of the peer state.
#[derive(Default)]
pub(crate) struct RawSide {
    incoming: VecDeque<Bytes>,
    in_waker: Option<Waker>,
    outgoing: VecDeque<Bytes>,
    out_waker: Option<Waker>,
}

impl RawSide {
    pub(crate) fn on_message(&mut self, message: Bytes, wake: &mut Vec<Waker>) {
        self.incoming.push_back(message);
        wake.extend(self.in_waker.take());
    }

    pub(crate) fn poll_transmit(&mut self, wake: &mut Vec<Waker>) -> Option<Bytes> {
        let m = self.outgoing.pop_front()?;
        wake.extend(self.out_waker.take());
        Some(m)
    }

    pub(crate) fn on_close(&mut self, wake: &mut Vec<Waker>) {
        wake.extend(self.in_waker.take());
        wake.extend(self.out_waker.take());
    }
}

/// A peer's `data` channel carrying whole messages as they are.
#[derive(Clone)]
pub struct RawChannel {
    shared: Arc<Shared>,
}

impl RtcPeer {
    /// Makes this peer's `data` channel carry raw messages.
    pub fn raw(&self) -> RawChannel {
        let shared = self.shared.clone();
        self.shared.with(|inner, wake| inner.attach(Endpoint::Raw(RawSide::default()), &shared, wake));
        RawChannel { shared: self.shared.clone() }
    }
}

impl RawChannel {
    /// Queues `message`, waiting while [`RAW_QUEUE`] messages wait already.
    /// Gives the message back if the connection is closed.
    pub async fn send(&self, message: Bytes) -> Result<(), Bytes> {
        let mut message = Some(message);
        poll_fn(|cx| {
            let mut inner = self.shared.inner.lock();
            if inner.closed.is_some() {
                return Poll::Ready(Err(message.take().unwrap_or_default()));
            }
            let Endpoint::Raw(side) = &mut inner.endpoint else {
                return Poll::Ready(Err(message.take().unwrap_or_default()));
            };
            if side.outgoing.len() >= RAW_QUEUE {
                side.out_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            side.outgoing.extend(message.take());
            Poll::Ready(Ok(()))
        })
        .await?;
        self.shared.wake_driver();
        Ok(())
    }

    /// The next message; None once the connection is closed.
    pub async fn recv(&self) -> Option<Bytes> {
        poll_fn(|cx| {
            let mut inner = self.shared.inner.lock();
            let closed = inner.closed.is_some();
            let Endpoint::Raw(side) = &mut inner.endpoint else { return Poll::Ready(None) };
            if let Some(m) = side.incoming.pop_front() {
                return Poll::Ready(Some(m));
            }
            if closed {
                return Poll::Ready(None);
            }
            side.in_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

//! The bounded queue between finished spans and the exporter. Pushing never blocks, and it
//! wakes the exporter only when a batch is ready or the tracer is gone, not once per span:
//! at a 1 % sampling rate, scheduling the exporter for each span cost more than the span.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::span::EncodedSpan;
use super::{MAX_EXPORT_BATCH, QUEUE_CAPACITY};

/// Why a span could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PushError {
    /// The queue holds `QUEUE_CAPACITY` spans.
    Full,
    /// The exporter has ended.
    Closed,
}

/// Shared between the two ends.
#[derive(Default)]
struct Signal {
    notify: Notify,
    /// Set when the sending end is dropped: everything it pushed is already queued.
    closed: AtomicBool,
}

/// The sending end, owned by the tracer.
pub(super) struct SpanSender {
    tx: mpsc::Sender<EncodedSpan>,
    signal: Arc<Signal>,
}

/// The exporter's end.
pub(super) struct SpanReceiver {
    rx: mpsc::Receiver<EncodedSpan>,
    signal: Arc<Signal>,
}

/// A queue of `QUEUE_CAPACITY` spans.
pub(super) fn channel() -> (SpanSender, SpanReceiver) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let signal = Arc::new(Signal::default());
    (
        SpanSender {
            tx,
            signal: Arc::clone(&signal),
        },
        SpanReceiver { rx, signal },
    )
}

impl SpanSender {
    /// Queues `span`; wakes the exporter once a full batch is waiting.
    pub fn push(&self, span: EncodedSpan) -> Result<(), PushError> {
        self.tx.try_send(span).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PushError::Full,
            mpsc::error::TrySendError::Closed(_) => PushError::Closed,
        })?;
        if QUEUE_CAPACITY - self.tx.capacity() >= MAX_EXPORT_BATCH {
            self.signal.notify.notify_one();
        }
        Ok(())
    }
}

impl Drop for SpanSender {
    fn drop(&mut self) {
        // Pushes take `&self`, so none is in progress or to come: the exporter may drain and end.
        self.signal.closed.store(true, Ordering::Release);
        self.signal.notify.notify_one();
    }
}

impl SpanReceiver {
    /// Resolves when a full batch is waiting or the sender is gone (a wake-up that arrives
    /// while the exporter is busy is kept for its next wait).
    pub async fn batch_ready(&self) {
        self.signal.notify.notified().await;
    }

    /// Whether the sender is gone; what it queued is still to be drained.
    pub fn sender_gone(&self) -> bool {
        self.signal.closed.load(Ordering::Acquire)
    }

    /// Moves queued spans into `batch` until it holds `MAX_EXPORT_BATCH`; returns how many.
    pub fn drain(&mut self, batch: &mut Vec<EncodedSpan>) -> usize {
        let before = batch.len();
        while batch.len() < MAX_EXPORT_BATCH {
            match self.rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        batch.len() - before
    }
}

//! The acknowledgements of client streams, counted by the stream producer's delivery reports.
//!
//! A stream's records are not awaited one by one: each record's delivery opaque is a number
//! (its stream's slot and its index in the stream), and the delivery report adds to the slot's
//! counts. A record costs no allocation, no channel and no reference count, and the stream's
//! task touches no shared counter per record (it counts what it sent itself).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};

/// Bits of a delivery opaque holding the record's index in its stream; the bits above hold
/// the stream's slot.
const INDEX_BITS: u32 = 40;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
/// Slots a delivery opaque can name.
const MAX_SLOTS: usize = 1 << (usize::BITS - INDEX_BITS);

/// The counts of the stream holding a slot.
#[derive(Default)]
pub struct StreamAcks {
    /// Delivery reports received, acknowledged or failed.
    done: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicBool,
    /// The stream's earliest failed record: (its index, the error).
    failure: Mutex<Option<(u64, KafkaError)>>,
    /// `done` that wakes the stream's task (0: it does not wait).
    wake_at: AtomicU64,
    wake: tokio::sync::Notify,
    /// The records the stream handed to the producer, once its call has ended (u64::MAX while
    /// it runs): the slot is free again when `done` reaches it.
    sent_when_closed: AtomicU64,
    released: AtomicBool,
}

/// The streams publishing at a time, by slot.
#[derive(Default)]
pub struct StreamSlots {
    slots: RwLock<Vec<Arc<StreamAcks>>>,
    free: Mutex<Vec<usize>>,
}

impl StreamSlots {
    /// A slot for a stream that starts; None when every slot a delivery opaque can name is in
    /// use.
    pub fn open(self: &Arc<Self>) -> Option<Stream> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (slot, acks) = match reused {
            Some(slot) => (slot, self.slots.read().unwrap_or_else(|p| p.into_inner())[slot].clone()),
            None => {
                let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
                if slots.len() >= MAX_SLOTS {
                    return None;
                }
                slots.push(Arc::new(StreamAcks::default()));
                (slots.len() - 1, slots[slots.len() - 1].clone())
            }
        };
        // No report of the slot's last stream is outstanding: it was released when its last
        // one came in.
        acks.done.store(0, Ordering::SeqCst);
        acks.acknowledged.store(0, Ordering::SeqCst);
        acks.failed.store(false, Ordering::SeqCst);
        *acks.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        acks.wake_at.store(0, Ordering::SeqCst);
        acks.sent_when_closed.store(u64::MAX, Ordering::SeqCst);
        acks.released.store(false, Ordering::SeqCst);
        Some(Stream { slots: self.clone(), slot, acks, sent: 0 })
    }

    fn release(&self, slot: usize, acks: &StreamAcks) {
        if !acks.released.swap(true, Ordering::SeqCst) {
            self.free.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
        }
    }
}

/// One stream's side of its slot.
pub struct Stream {
    slots: Arc<StreamSlots>,
    slot: usize,
    acks: Arc<StreamAcks>,
    /// Records handed to the producer.
    sent: u64,
}

impl Stream {
    /// The delivery opaque of the stream's record `index`.
    pub fn opaque(&self, index: u64) -> usize {
        (self.slot << INDEX_BITS) | (index as usize).min(INDEX_MASK)
    }

    /// The record of the last `opaque` was taken by the producer.
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// Records sent and not yet acknowledged or failed.
    pub fn pending(&self) -> u64 {
        self.sent - self.acks.done.load(Ordering::SeqCst)
    }

    pub fn acknowledged(&self) -> u64 {
        self.acks.acknowledged.load(Ordering::SeqCst)
    }

    /// The stream's earliest failed record so far: (its index, the error).
    pub fn failure(&self) -> Option<(u64, KafkaError)> {
        if !self.acks.failed.load(Ordering::SeqCst) {
            return None;
        }
        self.acks.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until at most `pending` records are pending (woken once, not at every report).
    pub async fn pending_at_most(&self, pending: u64) {
        let target = self.sent.saturating_sub(pending);
        if target == 0 {
            return;
        }
        self.acks.wake_at.store(target, Ordering::SeqCst);
        loop {
            let woken = self.acks.wake.notified();
            if self.acks.done.load(Ordering::SeqCst) >= target {
                break;
            }
            woken.await;
        }
        self.acks.wake_at.store(0, Ordering::SeqCst);
    }
}

impl Drop for Stream {
    /// The slot is free again once every record sent has its report: now, or at the last one.
    fn drop(&mut self) {
        self.acks.sent_when_closed.store(self.sent, Ordering::SeqCst);
        if self.acks.done.load(Ordering::SeqCst) >= self.sent {
            self.slots.release(self.slot, &self.acks);
        }
    }
}

/// The stream producer's context: delivery reports counted in their stream's slot.
pub struct StreamContext {
    pub slots: Arc<StreamSlots>,
}

impl rdkafka::ClientContext for StreamContext {}

impl ProducerContext for StreamContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        self.slots.report(opaque, result.as_ref().err().map(|(e, _)| e));
    }
}

impl StreamSlots {
    /// Counts the delivery report of the record of `opaque`: acknowledged, or failed with
    /// `failure`.
    fn report(&self, opaque: usize, failure: Option<&KafkaError>) {
        let (slot, index) = (opaque >> INDEX_BITS, (opaque & INDEX_MASK) as u64);
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let Some(acks) = slots.get(slot) else { return };
        match failure {
            None => {
                acks.acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            Some(e) => {
                let mut first = acks.failure.lock().unwrap_or_else(|p| p.into_inner());
                if first.as_ref().is_none_or(|(i, _)| index < *i) {
                    *first = Some((index, e.clone()));
                }
                acks.failed.store(true, Ordering::SeqCst);
            }
        }
        let done = acks.done.fetch_add(1, Ordering::SeqCst) + 1;
        let wake_at = acks.wake_at.load(Ordering::SeqCst);
        if wake_at != 0 && done >= wake_at {
            acks.wake.notify_one();
        }
        if done >= acks.sent_when_closed.load(Ordering::SeqCst) {
            self.release(slot, acks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(stream: &mut Stream, records: u64) -> Vec<usize> {
        (0..records)
            .map(|i| {
                let opaque = stream.opaque(i);
                stream.sent();
                opaque
            })
            .collect()
    }

    fn timed_out() -> KafkaError {
        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
    }

    #[test]
    fn a_slot_is_reused_only_after_the_last_report_of_its_stream() {
        let slots = Arc::new(StreamSlots::default());
        let mut first = slots.open().unwrap();
        let sent = send(&mut first, 3);
        slots.report(sent[0], None);
        assert_eq!((first.pending(), first.acknowledged()), (2, 1));
        // The call ends (an error, say) with two records still out: the slot stays taken.
        drop(first);
        let mut second = slots.open().unwrap();
        assert_eq!(second.opaque(0) >> INDEX_BITS, 1, "a new slot, not the first stream's");
        slots.report(sent[2], Some(&timed_out()));
        slots.report(sent[1], None);
        // Its last report frees it, and the next stream starts from zero there.
        let third = slots.open().unwrap();
        assert_eq!(third.opaque(7), 7, "slot 0 again, index 7");
        assert_eq!((third.pending(), third.acknowledged(), third.failure().is_none()), (0, 0, true));

        // A stream names its earliest failed record, whatever order the reports come in.
        let out = send(&mut second, 4);
        slots.report(out[3], Some(&timed_out()));
        slots.report(out[0], None);
        slots.report(out[1], Some(&timed_out()));
        assert_eq!(second.failure().map(|(i, _)| i), Some(1));
        assert_eq!((second.pending(), second.acknowledged()), (1, 1));
        slots.report(out[2], None);
        drop(second);
        let fourth = slots.open().unwrap();
        assert_eq!(fourth.opaque(0) >> INDEX_BITS, 1, "the second's slot, free at once (nothing out)");
    }

    #[tokio::test]
    async fn a_waiting_stream_wakes_when_enough_reports_are_in() {
        let slots = Arc::new(StreamSlots::default());
        let mut stream = slots.open().unwrap();
        let sent = send(&mut stream, 8);
        let reporter = {
            let slots = slots.clone();
            tokio::spawn(async move {
                for opaque in sent {
                    tokio::task::yield_now().await;
                    slots.report(opaque, None);
                }
            })
        };
        stream.pending_at_most(6).await;
        assert!(stream.pending() <= 6);
        stream.pending_at_most(0).await;
        assert_eq!((stream.pending(), stream.acknowledged()), (0, 8));
        reporter.await.unwrap();
    }
}

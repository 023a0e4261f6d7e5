//! A catch-up subscription to `$all` that works over any backend able to
//! read a window of positions: read from the checkpoint in bounded windows
//! until the head, say "caught up", then sleep on the head watch and read
//! whatever was committed since.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use referral_domain::eventlog::{AllFilter, RecordedEvent, StoreError, Subscription, SubscriptionMessage};
use tokio::sync::watch;

/// How many positions one catch-up read covers.
pub(crate) const WINDOW: u64 = 1024;

/// A backend's `$all`, read by position window.
#[async_trait]
pub(crate) trait PositionWindow: Send + Sync + 'static {
    /// Events with `after < position <= up_to` that pass `filter`, in order.
    async fn read_window(&self, after: u64, up_to: u64, filter: &AllFilter) -> Result<Vec<RecordedEvent>, StoreError>;
}

pub(crate) struct CatchUpSubscription {
    log: Arc<dyn PositionWindow>,
    filter: AllFilter,
    /// Last position read (delivered or filtered out).
    after: u64,
    head: watch::Receiver<u64>,
    buffer: VecDeque<RecordedEvent>,
    caught_up: bool,
}

impl CatchUpSubscription {
    pub fn new(log: Arc<dyn PositionWindow>, filter: AllFilter, after: u64, head: watch::Receiver<u64>) -> Self {
        CatchUpSubscription { log, filter, after, head, buffer: VecDeque::new(), caught_up: false }
    }
}

#[async_trait]
impl Subscription for CatchUpSubscription {
    async fn next(&mut self) -> Result<SubscriptionMessage, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(SubscriptionMessage::Event(event));
            }
            let head = *self.head.borrow_and_update();
            if self.after < head {
                let up_to = head.min(self.after + WINDOW);
                let events = self.log.read_window(self.after, up_to, &self.filter).await?;
                self.after = up_to;
                self.buffer.extend(events);
                continue;
            }
            if !self.caught_up {
                self.caught_up = true;
                return Ok(SubscriptionMessage::CaughtUp);
            }
            if self.head.changed().await.is_err() {
                return Err(StoreError::Unavailable("the event store was closed".into()));
            }
        }
    }
}

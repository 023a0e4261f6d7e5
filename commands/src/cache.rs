//! Streams this process has recently read or written, decoded, so that a
//! command on a stream it just touched needs no read from the store.
//!
//! The cache may be stale (another process may have written since): that is
//! safe because every append names the revision the command decided on, so
//! a stale decision fails with "wrong expected version" and the handler
//! reads again, and a refusal decided on cached state is re-checked on a
//! fresh read before it is returned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use referral_domain::eventlog::{Position, StreamName, StreamRevision};
use uuid::Uuid;

use crate::codec::DomainEvent;

/// How many streams the cache holds; a referral's stream is a few kilobytes.
pub const DEFAULT_CAPACITY: usize = 4096;

/// One event of a stream, decoded.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub id: Uuid,
    pub event_type: String,
    pub revision: StreamRevision,
    /// The event's `$all` position. Events the handler appended itself know
    /// only the position of their append's last event; the others are `None`.
    pub position: Option<Position>,
    pub event: DomainEvent,
}

pub type Events = Arc<Vec<StreamEvent>>;

pub struct StreamCache {
    capacity: usize,
    streams: Mutex<HashMap<StreamName, Events>>,
}

impl StreamCache {
    pub fn new(capacity: usize) -> Self {
        StreamCache { capacity, streams: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StreamName, Events>> {
        // Entries are replaced whole, so a panic elsewhere cannot leave one torn.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, stream: &StreamName) -> Option<Events> {
        self.lock().get(stream).cloned()
    }

    /// Records a stream as just read from the store.
    pub fn put(&self, stream: &StreamName, events: Events) {
        if self.capacity == 0 || events.is_empty() {
            return;
        }
        let mut streams = self.lock();
        if streams.len() >= self.capacity && !streams.contains_key(stream) {
            // Any entry will do: a miss costs one read.
            if let Some(victim) = streams.keys().next().cloned() {
                streams.remove(&victim);
            }
        }
        streams.insert(stream.clone(), events);
    }

    /// Adds what an append wrote, if the cached stream is exactly the one the
    /// append was decided on (ends at `before`); otherwise forgets it.
    pub fn extend(&self, stream: &StreamName, before: Option<StreamRevision>, appended: Vec<StreamEvent>) {
        let mut streams = self.lock();
        let current = streams.get(stream).map(|e| e.last().map(|l| l.revision));
        match current {
            Some(last) if last == before => {
                let mut events = streams.get(stream).map(|e| e.as_ref().clone()).unwrap_or_default();
                events.extend(appended);
                streams.insert(stream.clone(), Arc::new(events));
            }
            Some(_) => {
                streams.remove(stream);
            }
            None if before.is_none() => {
                drop(streams);
                self.put(stream, Arc::new(appended));
            }
            None => {}
        }
    }

    pub fn forget(&self, stream: &StreamName) {
        self.lock().remove(stream);
    }
}

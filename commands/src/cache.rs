//! Streams this process has recently read or written, decoded, so that a
//! command on a stream it just touched needs no read from the store.
//!
//! The cache may be stale (another process may have written since): that is
//! safe because every append names the revision the command decided on, so
//! a stale decision fails with "wrong expected version" and the handler
//! reads again, and a refusal decided on cached state is re-checked on a
//! fresh read before it is returned.
//!
//! The one decision an append cannot guard is an RFI's check of the
//! partner's profile: the referral's stream is written, not the profile's.
//! There the handler takes a cached profile only while the store confirmed
//! it recently (`get_within`), which bounds how late a change made through
//! another engine instance is seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use referral_domain::eventlog::{Position, StreamName, StreamRevision};
use uuid::Uuid;

use referral_domain::codec::DomainEvent;

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
    inner: Mutex<Inner>,
}

/// A cached stream.
struct Entry {
    events: Events,
    /// The tick it was last used at.
    used: u64,
    /// When the store last confirmed it: read from the store, or extended
    /// by an append the store accepted.
    confirmed: Instant,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<StreamName, Entry>,
    tick: u64,
}

impl Inner {
    fn touch(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Makes room by dropping the least recently used eighth.
    fn evict(&mut self, capacity: usize) {
        if self.streams.len() < capacity {
            return;
        }
        let mut ticks: Vec<u64> = self.streams.values().map(|e| e.used).collect();
        let cut = (capacity / 8).max(1).min(ticks.len() - 1);
        let (_, oldest_kept, _) = ticks.select_nth_unstable(cut);
        let oldest_kept = *oldest_kept;
        self.streams.retain(|_, e| e.used >= oldest_kept);
    }

    fn insert(&mut self, stream: &StreamName, events: Events, capacity: usize) {
        if !self.streams.contains_key(stream) {
            self.evict(capacity);
        }
        let used = self.touch();
        self.streams.insert(stream.clone(), Entry { events, used, confirmed: Instant::now() });
    }
}

impl StreamCache {
    pub fn new(capacity: usize) -> Self {
        StreamCache { capacity, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Entries are replaced whole, so a panic elsewhere cannot leave one torn.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, stream: &StreamName) -> Option<Events> {
        self.get_within(stream, Duration::MAX)
    }

    /// The cached stream, if the store confirmed it less than `max_age` ago.
    pub fn get_within(&self, stream: &StreamName, max_age: Duration) -> Option<Events> {
        let mut inner = self.lock();
        let tick = inner.touch();
        let entry = inner.streams.get_mut(stream).filter(|e| e.confirmed.elapsed() < max_age)?;
        entry.used = tick;
        Some(entry.events.clone())
    }

    /// Records a stream as just read from the store.
    pub fn put(&self, stream: &StreamName, events: Events) {
        if self.capacity == 0 || events.is_empty() {
            return;
        }
        self.lock().insert(stream, events, self.capacity);
    }

    /// Adds what an append wrote, if the cached stream is exactly the one the
    /// append was decided on (ends at `before`); otherwise forgets it.
    pub fn extend(&self, stream: &StreamName, before: Option<StreamRevision>, appended: Vec<StreamEvent>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        // Taken out of the map, the entry is usually the only handle on its
        // events, so appending to it copies nothing.
        match inner.streams.remove(stream) {
            Some(Entry { mut events, .. }) if events.last().map(|l| l.revision) == before => {
                Arc::make_mut(&mut events).extend(appended);
                inner.insert(stream, events, self.capacity);
            }
            Some(_) => {}
            None if before.is_none() && !appended.is_empty() => inner.insert(stream, Arc::new(appended), self.capacity),
            None => {}
        }
    }

    pub fn forget(&self, stream: &StreamName) {
        self.lock().streams.remove(stream);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use referral_domain::ids::{PartnerId, RegionId};
    use referral_domain::profile::{PartnerEvent, ProfilePaused};

    use super::*;

    fn stream(n: usize) -> StreamName {
        StreamName::new(format!("partner-p{n}")).expect("stream name")
    }

    fn event(revision: u64) -> StreamEvent {
        StreamEvent {
            id: Uuid::new_v4(),
            event_type: "PartnerProfilePaused".into(),
            revision: StreamRevision(revision),
            position: None,
            event: DomainEvent::Partner(PartnerEvent::ProfilePaused(ProfilePaused {
                partner: PartnerId::parse("p").expect("partner"),
                region: RegionId::parse("emea").expect("region"),
                paused_at: Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).single().expect("time"),
            })),
        }
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let cache = StreamCache::new(8);
        for n in 0..8 {
            cache.put(&stream(n), Arc::new(vec![event(0)]));
        }
        assert!(cache.get(&stream(0)).is_some());
        cache.put(&stream(8), Arc::new(vec![event(0)]));
        assert!(cache.get(&stream(0)).is_some(), "recently used survives");
        assert!(cache.get(&stream(1)).is_none(), "least recently used goes");
        assert!(cache.get(&stream(8)).is_some());
    }

    #[test]
    fn extends_only_the_revision_the_append_was_decided_on() {
        let cache = StreamCache::new(8);
        cache.put(&stream(0), Arc::new(vec![event(0)]));
        cache.extend(&stream(0), Some(StreamRevision(0)), vec![event(1)]);
        assert_eq!(cache.get(&stream(0)).map(|e| e.len()), Some(2));
        // Decided on revision 0 while the cache already holds revision 1: stale, so forgotten.
        cache.extend(&stream(0), Some(StreamRevision(0)), vec![event(1)]);
        assert!(cache.get(&stream(0)).is_none());
        // A new stream's first append is cached.
        cache.extend(&stream(1), None, vec![event(0)]);
        assert_eq!(cache.get(&stream(1)).map(|e| e.len()), Some(1));
    }

    #[test]
    fn an_entry_is_as_fresh_as_the_stores_last_word_on_it() {
        let cache = StreamCache::new(8);
        cache.put(&stream(0), Arc::new(vec![event(0)]));
        std::thread::sleep(Duration::from_millis(20));
        assert!(cache.get_within(&stream(0), Duration::from_millis(10)).is_none(), "read too long ago");
        assert!(cache.get_within(&stream(0), Duration::from_secs(60)).is_some());
        assert!(cache.get(&stream(0)).is_some(), "no age limit");
        // An accepted append confirms the stream again.
        cache.extend(&stream(0), Some(StreamRevision(0)), vec![event(1)]);
        assert_eq!(cache.get_within(&stream(0), Duration::from_millis(10)).map(|e| e.len()), Some(2));
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = StreamCache::new(0);
        cache.put(&stream(0), Arc::new(vec![event(0)]));
        cache.extend(&stream(1), None, vec![event(0)]);
        assert!(cache.get(&stream(0)).is_none() && cache.get(&stream(1)).is_none());
    }
}

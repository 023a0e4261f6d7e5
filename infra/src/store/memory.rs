//! An in-memory [`EventStore`] with the same semantics as the SQLite one,
//! for unit tests and benchmarks' baselines. Nothing survives the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use referral_domain::eventlog::{
    AllFilter, AllStart, AppendResult, CurrentRevision, DeleteResult, Direction, EventData, EventStore,
    ExpectedRevision, Position, RecordedEvent, StoreError, StreamName, StreamRevision, StreamStart, Subscription,
    SubscriptionStart,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::semantics::{self, StreamHead, StreamIds};
use super::subscription::{CatchUpSubscription, PositionWindow};

struct Row {
    stream: String,
    revision: u64,
    id: Uuid,
    event_type: String,
    data: Vec<u8>,
    metadata: Vec<u8>,
    created: DateTime<Utc>,
}

#[derive(Default)]
struct Log {
    /// `rows[i]` is at position `i + 1`.
    rows: Vec<Row>,
    heads: HashMap<String, StreamHead>,
    /// Positions of each stream's rows, in revision order.
    by_stream: HashMap<String, Vec<u64>>,
}

/// One stream's ids, as the idempotency check asks for them.
struct Ids<'a> {
    log: &'a Log,
    stream: &'a str,
}

impl StreamIds for Ids<'_> {
    fn at(&mut self, revision: u64) -> Result<Option<(Uuid, u64)>, StoreError> {
        let position = self.log.by_stream.get(self.stream).and_then(|p| p.get(revision as usize));
        Ok(position.map(|&p| (self.log.row(p).id, p)))
    }

    fn find(&mut self, id: &Uuid, from: u64) -> Result<Option<u64>, StoreError> {
        let Some(positions) = self.log.by_stream.get(self.stream) else { return Ok(None) };
        Ok(positions
            .iter()
            .enumerate()
            .skip(from as usize)
            .find(|(_, &p)| self.log.row(p).id == *id)
            .map(|(r, _)| r as u64))
    }
}

impl Log {
    fn head(&self, stream: &str) -> StreamHead {
        self.heads.get(stream).copied().unwrap_or_default()
    }

    fn row(&self, position: u64) -> &Row {
        &self.rows[(position - 1) as usize]
    }

    fn push(&mut self, row: Row) -> u64 {
        let position = self.rows.len() as u64 + 1;
        self.by_stream.entry(row.stream.clone()).or_default().push(position);
        self.rows.push(row);
        position
    }

    fn recorded(&self, position: u64) -> Option<RecordedEvent> {
        let row = self.row(position);
        let stream = StreamName::stored(row.stream.clone()).ok()?;
        Some(RecordedEvent {
            stream,
            revision: StreamRevision(row.revision),
            position: Position::at(position),
            id: row.id,
            event_type: row.event_type.clone(),
            data: row.data.clone(),
            metadata: row.metadata.clone(),
            created: row.created,
        })
    }

    fn record_control(&mut self, stream: &StreamName, event_type: &str, data: Vec<u8>) -> u64 {
        let meta = semantics::metadata_stream(stream);
        let revision = self.by_stream.get(&meta).map_or(0, |p| p.len() as u64);
        self.push(Row {
            stream: meta,
            revision,
            id: Uuid::new_v4(),
            event_type: event_type.into(),
            data,
            metadata: Vec::new(),
            created: Utc::now(),
        })
    }
}

struct Shared {
    log: Mutex<Log>,
    head: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock leaves the log consistent (every
        // mutation is a push after its checks), so poisoning is ignored.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl PositionWindow for Shared {
    async fn read_window(&self, after: u64, up_to: u64, filter: &AllFilter) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.lock();
        let up_to = up_to.min(log.rows.len() as u64);
        Ok(((after + 1)..=up_to)
            .filter(|&p| {
                let row = log.row(p);
                filter.matches(&row.stream, &row.event_type)
            })
            .filter_map(|p| log.recorded(p))
            .collect())
    }
}

/// An event store held in memory.
#[derive(Clone)]
pub struct InMemoryEventStore {
    shared: Arc<Shared>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    pub fn new() -> Self {
        let (head, _) = watch::channel(0);
        InMemoryEventStore { shared: Arc::new(Shared { log: Mutex::new(Log::default()), head }) }
    }

    fn publish(&self, head: u64) {
        self.shared.head.send_replace(head);
    }
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let log = self.shared.lock();
        let head = log.head(stream.as_str());
        let mut ids = Ids { log: &log, stream: stream.as_str() };
        if let Some(replayed) = semantics::check_append(stream, expected, &events, &head, &mut ids)? {
            return Ok(replayed);
        }
        if events.is_empty() {
            // Nothing to write: answer with the stream's current head.
            return match head.current() {
                CurrentRevision::NoStream => Err(StoreError::StreamNotFound(stream.clone())),
                CurrentRevision::Current(last) => {
                    let position = log.by_stream[stream.as_str()][last.0 as usize];
                    Ok(AppendResult { next_expected_revision: last, position: Position::at(position) })
                }
            };
        }
        self.write(log, stream, head, events)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        direction: Direction,
        from: StreamStart,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.shared.lock();
        let head = log.head(stream.as_str());
        if head.tombstoned {
            return Err(StoreError::StreamDeleted(stream.clone()));
        }
        if !head.is_readable() {
            return Err(StoreError::StreamNotFound(stream.clone()));
        }
        let positions = &log.by_stream[stream.as_str()];
        let (first, last) = (head.truncate_before, head.last.unwrap_or(0));
        let revisions: Box<dyn Iterator<Item = u64>> = match (direction, from) {
            (Direction::Forwards, StreamStart::Start) => Box::new(first..=last),
            (Direction::Forwards, StreamStart::Revision(r)) => Box::new(r.0.max(first)..=last),
            (Direction::Forwards, StreamStart::End) => Box::new(std::iter::empty()),
            (Direction::Backwards, StreamStart::End) => Box::new((first..=last).rev()),
            (Direction::Backwards, StreamStart::Start) => Box::new(std::iter::once(first)),
            (Direction::Backwards, StreamStart::Revision(r)) if r.0 >= first => Box::new((first..=r.0.min(last)).rev()),
            (Direction::Backwards, _) => Box::new(std::iter::empty()),
        };
        Ok(revisions.take(max_count).filter_map(|r| log.recorded(positions[r as usize])).collect())
    }

    async fn read_all(
        &self,
        direction: Direction,
        from: AllStart,
        filter: &AllFilter,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.shared.lock();
        let head = log.rows.len() as u64;
        let positions: Box<dyn Iterator<Item = u64>> = match (direction, from) {
            (Direction::Forwards, AllStart::Start) => Box::new(1..=head),
            (Direction::Forwards, AllStart::Position(p)) => Box::new(p.commit.max(1)..=head),
            (Direction::Forwards, AllStart::End) => Box::new(std::iter::empty()),
            (Direction::Backwards, AllStart::End) => Box::new((1..=head).rev()),
            (Direction::Backwards, AllStart::Position(p)) => Box::new((1..=p.commit.min(head)).rev()),
            (Direction::Backwards, AllStart::Start) => Box::new(std::iter::empty()),
        };
        Ok(positions
            .filter(|&p| {
                let row = log.row(p);
                filter.matches(&row.stream, &row.event_type)
            })
            .filter_map(|p| log.recorded(p))
            .take(max_count)
            .collect())
    }

    async fn subscribe_all(
        &self,
        start: SubscriptionStart,
        filter: AllFilter,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        let receiver = self.shared.head.subscribe();
        let after = match start {
            SubscriptionStart::Start => 0,
            SubscriptionStart::After(p) => p.commit,
            SubscriptionStart::End => *receiver.borrow(),
        };
        Ok(Box::new(CatchUpSubscription::new(self.shared.clone(), filter, after, receiver)))
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<DeleteResult, StoreError> {
        let mut log = self.shared.lock();
        let mut head = log.head(stream.as_str());
        semantics::check_delete(stream, expected, &head)?;
        head.soft_delete();
        let position = log.record_control(
            stream,
            semantics::METADATA_EVENT_TYPE,
            semantics::truncate_before_body(head.truncate_before),
        );
        log.heads.insert(stream.as_str().to_owned(), head);
        drop(log);
        self.publish(position);
        Ok(DeleteResult { position: Position::at(position) })
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult, StoreError> {
        let mut log = self.shared.lock();
        let mut head = log.head(stream.as_str());
        semantics::check_delete(stream, expected, &head)?;
        head.tombstoned = true;
        let position = log.record_control(stream, semantics::TOMBSTONE_EVENT_TYPE, b"{}".to_vec());
        log.heads.insert(stream.as_str().to_owned(), head);
        drop(log);
        self.publish(position);
        Ok(DeleteResult { position: Position::at(position) })
    }

    async fn head_position(&self) -> Result<Option<Position>, StoreError> {
        let head = self.shared.lock().rows.len() as u64;
        Ok((head > 0).then(|| Position::at(head)))
    }
}

impl InMemoryEventStore {
    fn write(
        &self,
        mut log: MutexGuard<'_, Log>,
        stream: &StreamName,
        mut head: StreamHead,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let created = Utc::now();
        let mut revision = head.next_revision();
        let mut position = 0;
        for event in events {
            position = log.push(Row {
                stream: stream.as_str().to_owned(),
                revision,
                id: event.id,
                event_type: event.event_type,
                data: event.data,
                metadata: event.metadata,
                created,
            });
            head.last = Some(revision);
            revision += 1;
        }
        head.soft_deleted = false;
        log.heads.insert(stream.as_str().to_owned(), head);
        drop(log);
        self.publish(position);
        Ok(AppendResult { next_expected_revision: StreamRevision(revision - 1), position: Position::at(position) })
    }
}

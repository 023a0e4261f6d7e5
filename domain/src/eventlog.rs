//! The event-log vocabulary: stream names, revisions, positions and the
//! [`EventStore`] port every backend implements.
//!
//! The semantics are EventStoreDB's, so that the embedded store and the
//! EventStoreDB adapter behave the same:
//!
//! * stream revisions are 0-based and contiguous;
//! * an append names an [`ExpectedRevision`]; on mismatch the store answers
//!   [`StoreError::WrongExpectedVersion`] with the stream's actual revision;
//! * re-appending the same event ids at the same expected revision is a no-op
//!   that returns the original [`AppendResult`];
//! * every event has a global [`Position`] in `$all`;
//! * a soft-deleted stream reads as not found and may be written again (its
//!   revisions continue); a tombstoned stream is gone for good.
//!
//! Nothing here performs I/O: backends live in `referral-infra`.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest stream name accepted by every backend.
pub const MAX_STREAM_NAME_LEN: usize = 256;

/// The name of a stream, e.g. `referral-6f1c…` or `partner-acme`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

impl StreamName {
    /// Validates a stream name: non-empty, at most [`MAX_STREAM_NAME_LEN`] bytes,
    /// no control characters, and not a system stream (leading `$`).
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidStreamName> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidStreamName { name, reason: "is empty" });
        }
        if name.len() > MAX_STREAM_NAME_LEN {
            return Err(InvalidStreamName { name, reason: "is longer than 256 bytes" });
        }
        if name.starts_with('$') {
            return Err(InvalidStreamName { name, reason: "starts with '$' (reserved for system streams)" });
        }
        Self::without_control_characters(name)
    }

    /// A system stream's name, such as the `$$<stream>` metadata stream a
    /// delete writes to. Stores write system streams and `$all` readers may
    /// ask to see them ([`AllFilter::system_streams`]); the engine never
    /// appends to them.
    pub fn system(name: impl Into<String>) -> Result<Self, InvalidStreamName> {
        let name = name.into();
        if !name.starts_with('$') {
            return Err(InvalidStreamName { name, reason: "does not start with '$' (system streams do)" });
        }
        // `$$` and an ordinary stream's name.
        if name.len() > MAX_STREAM_NAME_LEN + 2 {
            return Err(InvalidStreamName { name, reason: "is longer than 258 bytes" });
        }
        Self::without_control_characters(name)
    }

    fn without_control_characters(name: String) -> Result<Self, InvalidStreamName> {
        if name.chars().any(char::is_control) {
            return Err(InvalidStreamName { name, reason: "contains a control character" });
        }
        Ok(Self(name))
    }

    /// A name as a store has it: an ordinary stream's or a system stream's.
    pub fn stored(name: impl Into<String>) -> Result<Self, InvalidStreamName> {
        let name = name.into();
        if name.starts_with('$') {
            Self::system(name)
        } else {
            Self::new(name)
        }
    }

    /// Whether this is a system stream (a leading `$`).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The aggregate category: the part before the first `-` (`referral`, `partner`).
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(self.0.as_str(), |(c, _)| c)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamName {
    type Error = InvalidStreamName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamName> for String {
    fn from(value: StreamName) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream name {name:?} {reason}")]
pub struct InvalidStreamName {
    pub name: String,
    pub reason: &'static str,
}

/// A 0-based revision of one event within its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamRevision(pub u64);

impl StreamRevision {
    pub const FIRST: StreamRevision = StreamRevision(0);

    pub fn next(self) -> StreamRevision {
        StreamRevision(self.0 + 1)
    }
}

impl fmt::Display for StreamRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A position in the global `$all` log.
///
/// EventStoreDB gives every event a commit and a prepare position; the
/// embedded store uses the same number for both. Positions order events
/// globally; a checkpoint is the position of the last event a reader handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub commit: u64,
    pub prepare: u64,
}

impl Position {
    pub const START: Position = Position { commit: 0, prepare: 0 };

    /// A position whose commit and prepare parts are the same number.
    pub const fn at(n: u64) -> Position {
        Position { commit: n, prepare: n }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.commit == self.prepare {
            write!(f, "{}", self.commit)
        } else {
            write!(f, "C:{}/P:{}", self.commit, self.prepare)
        }
    }
}

/// What the writer believes the stream's revision to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must not exist (or must have been soft-deleted).
    NoStream,
    /// The stream must exist with at least one event.
    StreamExists,
    /// The stream's last event must have exactly this revision.
    Exact(StreamRevision),
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedRevision::Any => f.write_str("any"),
            ExpectedRevision::NoStream => f.write_str("no stream"),
            ExpectedRevision::StreamExists => f.write_str("stream exists"),
            ExpectedRevision::Exact(r) => write!(f, "revision {r}"),
        }
    }
}

/// The revision a stream actually has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CurrentRevision {
    NoStream,
    Current(StreamRevision),
}

impl CurrentRevision {
    /// The expected revision that would match this current revision exactly.
    pub fn as_expected(self) -> ExpectedRevision {
        match self {
            CurrentRevision::NoStream => ExpectedRevision::NoStream,
            CurrentRevision::Current(r) => ExpectedRevision::Exact(r),
        }
    }
}

impl fmt::Display for CurrentRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CurrentRevision::NoStream => f.write_str("no stream"),
            CurrentRevision::Current(r) => write!(f, "revision {r}"),
        }
    }
}

/// An event to be appended. `data` and `metadata` are JSON documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    pub id: Uuid,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
}

/// An event as the store recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: StreamName,
    pub revision: StreamRevision,
    pub position: Position,
    pub id: Uuid,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
    /// When the store recorded the event (the store's clock, not the domain's).
    pub created: DateTime<Utc>,
}

/// What a successful append returns: the revision of the stream's last event
/// and the `$all` position of that event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppendResult {
    pub next_expected_revision: StreamRevision,
    pub position: Position,
}

/// What a delete or tombstone returns: the `$all` position it was recorded at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeleteResult {
    pub position: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Forwards,
    Backwards,
}

/// Where a stream read starts (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamStart {
    Start,
    End,
    Revision(StreamRevision),
}

/// Where an `$all` read starts. `Position(p)` is inclusive for reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllStart {
    Start,
    End,
    Position(Position),
}

/// Which events an `$all` read or subscription delivers.
///
/// Empty prefix lists mean "everything". System streams (leading `$`) are
/// delivered only with `system_streams`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AllFilter {
    pub stream_prefixes: Vec<String>,
    pub event_type_prefixes: Vec<String>,
    /// Also deliver events of system streams (delete markers in `$$<stream>`),
    /// as EventStoreDB's unfiltered `$all` does.
    pub system_streams: bool,
}

impl AllFilter {
    pub fn everything() -> AllFilter {
        AllFilter::default()
    }

    pub fn streams_starting_with(prefixes: &[&str]) -> AllFilter {
        AllFilter { stream_prefixes: prefixes.iter().map(|p| p.to_string()).collect(), ..AllFilter::default() }
    }

    /// Every event, those of system streams included.
    pub fn with_system_streams() -> AllFilter {
        AllFilter { system_streams: true, ..AllFilter::default() }
    }

    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        if stream.starts_with('$') && !self.system_streams {
            return false;
        }
        let stream_ok =
            self.stream_prefixes.is_empty() || self.stream_prefixes.iter().any(|p| stream.starts_with(p.as_str()));
        let type_ok = self.event_type_prefixes.is_empty()
            || self.event_type_prefixes.iter().any(|p| event_type.starts_with(p.as_str()));
        stream_ok && type_ok
    }
}

/// Where a subscription to `$all` starts. `After(p)` is exclusive: the first
/// event delivered is the one after the checkpoint `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStart {
    Start,
    After(Position),
    End,
}

/// One message from a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionMessage {
    Event(RecordedEvent),
    /// Everything written before the subscription started has been delivered;
    /// what follows is live.
    CaughtUp,
}

/// A subscription to `$all`: catches up from its start, then tails live writes.
#[async_trait]
pub trait Subscription: Send {
    /// The next message. Waits while there is nothing new.
    async fn next(&mut self) -> Result<SubscriptionMessage, StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("wrong expected version on stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion { stream: StreamName, expected: ExpectedRevision, actual: CurrentRevision },
    #[error("stream {0} not found")]
    StreamNotFound(StreamName),
    #[error("stream {0} is deleted (tombstoned); it can never be written again")]
    StreamDeleted(StreamName),
    #[error("append to stream {stream} reuses event ids of another append: {reason}")]
    IdempotencyConflict { stream: StreamName, reason: String },
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("the event store failed: {0}")]
    Backend(String),
}

/// The port every event store implements (embedded SQLite, in-memory,
/// EventStoreDB).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` atomically to `stream` if its revision matches `expected`.
    /// An empty `events` only checks the expected revision.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError>;

    /// Reads at most `max_count` events of one stream. A stream that does not
    /// exist or was soft-deleted answers [`StoreError::StreamNotFound`]; a
    /// tombstoned one [`StoreError::StreamDeleted`].
    async fn read_stream(
        &self,
        stream: &StreamName,
        direction: Direction,
        from: StreamStart,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads at most `max_count` events of `$all` that pass `filter`, in
    /// global order (or its reverse).
    async fn read_all(
        &self,
        direction: Direction,
        from: AllStart,
        filter: &AllFilter,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Subscribes to `$all`: catch-up from `start`, a [`SubscriptionMessage::CaughtUp`]
    /// marker, then live events as they are committed.
    async fn subscribe_all(
        &self,
        start: SubscriptionStart,
        filter: AllFilter,
    ) -> Result<Box<dyn Subscription>, StoreError>;

    /// Soft-deletes a stream: it reads as not found; appending again re-creates
    /// it with revisions continuing after the deleted ones.
    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<DeleteResult, StoreError>;

    /// Tombstones a stream: every later read or append answers
    /// [`StoreError::StreamDeleted`].
    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult, StoreError>;

    /// The position of the last event in `$all` (the head), or `None` when empty.
    async fn head_position(&self) -> Result<Option<Position>, StoreError>;
}

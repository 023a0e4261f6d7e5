//! What a projection is: a stable name, a schema, tables per version, and a
//! function that applies a batch of events to those tables.

use chrono::{DateTime, Utc};
use referral_domain::codec::{self, CodecError, DomainEvent, EventMetadata};
use referral_domain::eventlog::{Position, RecordedEvent, StreamRevision};
use rusqlite::Connection;
use std::sync::Arc;

/// A version of a projection's tables: `inbox_v3` is table `inbox` of version 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32);

impl Version {
    /// The name of table `base` in this version.
    pub fn table(&self, base: &str) -> String {
        format!("{base}_v{}", self.0)
    }
}

/// An event as projections see it: decoded, with where it sits in the log.
#[derive(Debug, Clone)]
pub struct ProjectedEvent {
    pub position: Position,
    pub stream: String,
    pub revision: StreamRevision,
    pub event_type: String,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    pub metadata: EventMetadata,
    pub event: DomainEvent,
    /// The payload as stored (JSON), for timelines.
    pub data: Vec<u8>,
}

impl ProjectedEvent {
    /// Decodes a stored event.
    pub fn decode(recorded: RecordedEvent) -> Result<ProjectedEvent, CodecError> {
        let (event, metadata) = codec::decode_with_metadata(&recorded)?;
        Ok(ProjectedEvent {
            position: recorded.position,
            stream: recorded.stream.as_str().to_string(),
            revision: recorded.revision,
            event_type: recorded.event_type,
            recorded_at: recorded.created,
            metadata,
            event,
            data: recorded.data,
        })
    }
}

/// Why a projection could not apply an event. The runner stops the projection
/// and reports it with the event's position; it never skips the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("view database: {0}")]
    Storage(String),
    #[error("{0}")]
    Inconsistent(String),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Storage(e.to_string())
    }
}

/// A failure inside a batch: which event (by index in the batch) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    pub index: usize,
    pub error: ApplyError,
}

/// A projection: pure SQL over its own tables, driven by the runner.
///
/// The runner applies events through an [`Applier`] inside its write
/// transaction, which also stores the checkpoint: either the events and
/// their checkpoint land, or nothing does. The runner never hands a
/// projection an event at or before its checkpoint.
pub trait Projection: Send + Sync + 'static {
    /// Stable name, used in the registry, the CLI and the API.
    fn name(&self) -> &'static str;
    /// The layout and meaning of the tables; bump it when either changes.
    fn schema(&self) -> u32;
    /// Base names of the projection's tables (without the version suffix).
    fn tables(&self) -> &'static [&'static str];
    /// Creates the tables of `version`, without their secondary indexes.
    fn create(&self, conn: &Connection, version: Version) -> rusqlite::Result<()>;
    /// The secondary indexes of `version`'s tables, as `CREATE INDEX IF NOT
    /// EXISTS` statements. A live version has them from the start; a rebuild
    /// creates them once it has caught up, just before the swap, so that
    /// loading the whole log does not maintain them row by row.
    fn indexes(&self, _version: Version) -> Vec<String> {
        Vec::new()
    }
    /// A new applier for the tables of `version`, with nothing held yet.
    fn applier(&self, version: Version) -> Box<dyn Applier>;
    /// Applies `events` (in log order) to the tables of `version` and writes
    /// everything out: one applier, one `apply`, one `flush`.
    fn apply_batch(
        &self,
        conn: &Connection,
        version: Version,
        events: &[Arc<ProjectedEvent>],
    ) -> Result<(), BatchError> {
        let mut applier = self.applier(version);
        applier.apply(conn, events)?;
        applier.flush(conn).map_err(|error| BatchError { index: events.len().saturating_sub(1), error })
    }
}

/// Applies events to one version's tables in two steps: `apply` folds events
/// into changes held in memory, `flush` writes them. A referral's row that
/// four events change is then written once, and the write transaction is
/// held only while the changes are written.
///
/// The runner calls `apply` for consecutive runs of events outside any write
/// transaction: it may read the tables (it sees what was committed, and must
/// remember what it changed since) but never writes them. Then, in one write
/// transaction, it calls `flush`, saves the checkpoint of the last event and
/// commits. After `flush` the tables hold everything applied so far, so what
/// the applier still keeps (clean rows it may reuse) matches the committed
/// tables. When that transaction fails, or `apply` refuses an event, the
/// runner calls `reset` and the applier forgets everything it holds.
pub trait Applier: Send {
    /// Folds `events`, in log order, after those applied before; reads but
    /// never writes the tables.
    fn apply(&mut self, conn: &Connection, events: &[Arc<ProjectedEvent>]) -> Result<(), BatchError>;
    /// Writes every change held in memory to the tables.
    fn flush(&mut self, conn: &Connection) -> Result<(), ApplyError>;
    /// Forgets everything held, applied or not.
    fn reset(&mut self);
}

/// Creates the secondary indexes of `version` (those that do not exist yet).
pub fn create_indexes(conn: &Connection, projection: &dyn Projection, version: Version) -> rusqlite::Result<()> {
    for statement in projection.indexes(version) {
        conn.execute_batch(&statement)?;
    }
    Ok(())
}

/// Drops the tables of `version`.
pub fn drop_tables(conn: &Connection, projection: &dyn Projection, version: Version) -> rusqlite::Result<()> {
    for base in projection.tables() {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", version.table(base)))?;
    }
    Ok(())
}

/// Microseconds since the Unix epoch: how views store instants, so that they
/// sort and compare as integers.
pub fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The inverse of [`micros`].
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

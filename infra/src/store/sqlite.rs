//! The embedded event store: one SQLite database in WAL mode with
//! `synchronous=FULL`.
//!
//! Writes go through one writer thread that owns the only write connection.
//! It takes every request waiting in its queue, applies them in one
//! transaction and commits once (group commit), so concurrent appends share
//! one fsync. A caller's append is answered only after that commit returned,
//! so an acknowledged append is on disk. The writer keeps each stream's head
//! in memory (it is the only writer, so the cache is authoritative) and
//! checks expected revisions and event-id idempotency before it writes
//! anything; a request that is refused leaves no trace in the transaction.
//!
//! A commit writes event rows only; their per-stream index entries are
//! written later in sorted batches (`index`), so a commit stays a few
//! sequential pages however many streams it touches.
//!
//! Reads use a small pool of read connections on blocking threads; WAL lets
//! them run beside the writer. Subscriptions sleep on a watch channel that
//! the writer bumps to the new head after each commit.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use referral_domain::eventlog::{
    AllFilter, AllStart, AppendResult, CurrentRevision, DeleteResult, Direction, EventData, EventStore,
    ExpectedRevision, Position, RecordedEvent, StoreError, StreamName, StreamRevision, StreamStart, Subscription,
    SubscriptionStart,
};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use uuid::Uuid;

use super::index::{self, PendingIndex};
use super::semantics::{self, StreamHead, StreamIds};
use super::subscription::{CatchUpSubscription, PositionWindow};

/// The schema version this build reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// Events are stored in `$all` order; `stream_index` finds them by stream
/// and revision and is written in batches (see `index`); `index_state` says
/// up to which position it is complete.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    truncate_before INTEGER NOT NULL DEFAULT 0,
    soft_deleted    INTEGER NOT NULL DEFAULT 0,
    tombstoned      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    position   INTEGER PRIMARY KEY,
    stream_id  INTEGER NOT NULL REFERENCES streams (id),
    revision   INTEGER NOT NULL,
    event_id   BLOB    NOT NULL,
    event_type TEXT    NOT NULL,
    data       BLOB    NOT NULL,
    metadata   BLOB    NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_index (
    stream_id INTEGER NOT NULL,
    revision  INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    PRIMARY KEY (stream_id, revision)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS index_state (indexed_up_to INTEGER NOT NULL);
INSERT INTO index_state SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM index_state);
";

/// Selects an event row with its stream's name, in the order `recorded_event` reads.
const SELECT_EVENTS: &str =
    "SELECT e.position, s.name, e.revision, e.event_id, e.event_type, e.data, e.metadata, e.created_us
     FROM events e JOIN streams s ON s.id = e.stream_id";

/// Tuning knobs; the defaults suit a small server.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most write requests committed in one transaction.
    pub max_batch: usize,
    /// Most read connections in use at once.
    pub readers: usize,
    /// Stream heads the writer keeps in memory before it starts over.
    pub head_cache: usize,
    /// SQLite page cache per connection, in KiB.
    pub cache_kib: i64,
    /// Recent events' index entries held in memory before they are written
    /// to the per-stream index in one sorted batch.
    pub index_flush: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { max_batch: 2048, readers: 8, head_cache: 100_000, cache_kib: 16 * 1024, index_flush: 8192 }
    }
}

/// The embedded, durable event store.
pub struct SqliteEventStore {
    writer: Option<mpsc::Sender<WriteRequest>>,
    writer_thread: Option<JoinHandle<()>>,
    readers: Arc<ReaderPool>,
    pending: Arc<Mutex<PendingIndex>>,
    head: watch::Receiver<u64>,
    path: PathBuf,
    /// Held for the store's lifetime so that a second process cannot write.
    _lock: File,
}

impl SqliteEventStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let lock_path = lock_path(path);
        let lock = File::create(&lock_path)
            .map_err(|e| StoreError::Backend(format!("cannot create lock file {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            StoreError::Unavailable(format!("the event store {} is in use by another process", path.display()))
        })?;
        let conn = open_connection(path, options.cache_kib)?;
        migrate(&conn, path)?;
        let head: u64 = conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get::<_, i64>(0))
            .map_err(backend)? as u64;
        let pending = Arc::new(Mutex::new(index::recover(&conn).map_err(backend)?));
        let (head_tx, head_rx) = watch::channel(head);
        let (requests, queue) = mpsc::channel(options.max_batch * 4);
        let writer = Writer {
            conn,
            cache: HashMap::new(),
            cache_limit: options.head_cache,
            head,
            head_tx,
            pending: pending.clone(),
            index_flush: options.index_flush,
        };
        let max_batch = options.max_batch;
        let writer_thread = std::thread::Builder::new()
            .name("event-store-writer".into())
            .spawn(move || writer.run(queue, max_batch))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        let readers = Arc::new(ReaderPool {
            path: path.to_path_buf(),
            // A reader's cache is emptied whenever the writer commits, and a
            // catch-up subscription reads each page once: a small one serves.
            cache_kib: options.cache_kib.min(1024),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(options.readers.max(1)),
        });
        Ok(SqliteEventStore {
            writer: Some(requests),
            writer_thread: Some(writer_thread),
            readers,
            pending,
            head: head_rx,
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or_else(closed)?;
        writer.send(WriteRequest { op, reply }).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

impl Drop for SqliteEventStore {
    /// Closes the queue and waits for the writer to commit what it holds.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            if thread.join().is_err() {
                tracing::error!("the event store writer thread panicked");
            }
        }
    }
}

/// Locks a mutex whose holders never leave it half-changed, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

fn closed() -> StoreError {
    StoreError::Unavailable("the event store is shut down".into())
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// WAL pages between checkpoints (SQLite's default is 1,000). A checkpoint
/// runs inside the writer's commit: it copies the pages into the database
/// file and syncs both files, 10-15 ms during which no append commits. Ten
/// times further apart, a page that many commits change is copied once per
/// checkpoint, and the writer spent 11-18 % of its time in them rather than
/// 18-23 % (bench commands, 64 writers); the p99 of a durable append at 64
/// writers fell from 16-19 ms to 2-6 ms. The WAL grows to about 40 MB; until
/// a new WAL file has grown that far, each commit also extends it, which
/// slows single-writer commits for the first few thousand.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

fn open_connection(path: &Path, cache_kib: i64) -> Result<Connection, StoreError> {
    let conn =
        Connection::open(path).map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -{cache_kib};
         PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
    ))
    .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    match version {
        0 => conn
            .execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
            .map_err(backend),
        SCHEMA_VERSION => Ok(()),
        newer => Err(StoreError::Backend(format!(
            "{} has schema version {newer}; this build understands version {SCHEMA_VERSION}",
            path.display()
        ))),
    }
}

/// A stream as the store knows it: its row id (none before its first
/// write) and its head.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    id: Option<i64>,
    head: StreamHead,
}

/// Reads a stream's head as committed (or as written so far by the
/// writer's open transaction, on the writer's connection).
fn load_stream(conn: &Connection, pending: &Mutex<PendingIndex>, stream: &str) -> rusqlite::Result<Known> {
    let row = conn
        .prepare_cached("SELECT id, truncate_before, soft_deleted, tombstoned FROM streams WHERE name = ?1")?
        .query_row([stream], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, bool>(2)?, r.get::<_, bool>(3)?))
        })
        .optional()?;
    let Some((id, truncate_before, soft_deleted, tombstoned)) = row else { return Ok(Known::default()) };
    let last = index::last_indexed_revision(conn, id)?.max(lock(pending).last_revision(id));
    Ok(Known {
        id: Some(id),
        head: StreamHead { last, truncate_before: truncate_before as u64, soft_deleted, tombstoned },
    })
}

fn recorded_event(row: &Row<'_>) -> rusqlite::Result<Result<RecordedEvent, StoreError>> {
    let position = row.get::<_, i64>(0)? as u64;
    let stream: String = row.get(1)?;
    let id: [u8; 16] = row.get(3)?;
    let created_us: i64 = row.get(7)?;
    let stream = match StreamName::stored(stream) {
        Ok(s) => s,
        Err(e) => return Ok(Err(StoreError::Backend(format!("event at position {position}: {e}")))),
    };
    Ok(Ok(RecordedEvent {
        stream,
        revision: StreamRevision(row.get::<_, i64>(2)? as u64),
        position: Position::at(position),
        id: Uuid::from_bytes(id),
        event_type: row.get(4)?,
        data: row.get(5)?,
        metadata: row.get(6)?,
        created: DateTime::from_timestamp_micros(created_us).unwrap_or_default(),
    }))
}

/// What one query over the events table found.
struct Scan {
    events: Vec<RecordedEvent>,
    /// Rows looked at, kept or not.
    rows: usize,
    /// Position of the last row looked at.
    last_position: Option<i64>,
}

/// Runs a query whose rows are events and keeps those `keep` accepts, until
/// `max` are kept.
fn collect_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    max: usize,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<Scan, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = statement.query(params).map_err(backend)?;
    let mut scan = Scan { events: Vec::new(), rows: 0, last_position: None };
    while let Some(row) = rows.next().map_err(backend)? {
        scan.rows += 1;
        scan.last_position = Some(row.get(0).map_err(backend)?);
        let stream = row.get_ref(1).map_err(backend)?.as_str().map_err(|e| StoreError::Backend(e.to_string()))?;
        let event_type = row.get_ref(4).map_err(backend)?.as_str().map_err(|e| StoreError::Backend(e.to_string()))?;
        if !keep(stream, event_type) {
            continue;
        }
        scan.events.push(recorded_event(row).map_err(backend)??);
        if scan.events.len() >= max {
            break;
        }
    }
    Ok(scan)
}

fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------- writer --

enum WriteOp {
    Append { stream: StreamName, expected: ExpectedRevision, events: Vec<EventData> },
    Delete { stream: StreamName, expected: ExpectedRevision, tombstone: bool },
}

enum Outcome {
    Appended(AppendResult),
    Deleted(DeleteResult),
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

struct Writer {
    conn: Connection,
    /// Committed streams.
    cache: HashMap<String, Known>,
    cache_limit: usize,
    /// Committed `$all` head.
    head: u64,
    head_tx: watch::Sender<u64>,
    /// Index entries committed but not yet in `stream_index`, shared with readers.
    pending: Arc<Mutex<PendingIndex>>,
    index_flush: usize,
}

/// Longest the writer waits for more requests to share a commit with.
const GATHER_WINDOW: Duration = Duration::from_micros(300);
const GATHER_POLL: Duration = Duration::from_micros(40);

/// Moves whatever is queued (up to `max`) into `requests`.
fn drain(queue: &mut mpsc::Receiver<WriteRequest>, requests: &mut Vec<WriteRequest>, max: usize) {
    while requests.len() < max {
        match queue.try_recv() {
            Ok(next) => requests.push(next),
            Err(_) => break,
        }
    }
}

/// What one open transaction has changed so far.
struct Batch {
    streams: HashMap<String, Known>,
    next_position: u64,
    created_us: i64,
    /// Index entries of the events this transaction wrote.
    index: Vec<(i64, u64, u64)>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<WriteRequest>, max_batch: usize) {
        let mut requests = Vec::with_capacity(max_batch);
        let mut last_batch = 0;
        while let Some(first) = queue.blocking_recv() {
            requests.push(first);
            drain(&mut queue, &mut requests, max_batch);
            // Writers answered by the previous commit are about to send their
            // next request. When that commit was shared by many, wait a
            // moment for them so they share the next fsync too instead of
            // splitting into a small commit and a large one.
            if requests.len() * 2 < last_batch {
                let deadline = Instant::now() + GATHER_WINDOW;
                while requests.len() < last_batch && Instant::now() < deadline {
                    std::thread::sleep(GATHER_POLL);
                    drain(&mut queue, &mut requests, max_batch);
                }
            }
            last_batch = requests.len();
            let outcomes = self.commit(&requests);
            for (request, outcome) in requests.drain(..).zip(outcomes) {
                // A caller that went away no longer needs its answer.
                let _ = request.reply.send(outcome);
            }
        }
    }

    /// Applies every request in one transaction. If the transaction cannot
    /// commit, every request in it is answered with the error.
    fn commit(&mut self, requests: &[WriteRequest]) -> Vec<Result<Outcome, StoreError>> {
        let mut batch = Batch {
            streams: HashMap::new(),
            next_position: self.head + 1,
            created_us: Utc::now().timestamp_micros(),
            index: Vec::new(),
        };
        // Every pending entry is of a committed event, at or before `self.head`.
        let flush = {
            let pending = lock(&self.pending);
            if pending.len() >= self.index_flush.max(1) {
                pending.sorted()
            } else {
                Vec::new()
            }
        };
        let flushed_up_to = self.head;
        let applied = (|| -> rusqlite::Result<Vec<Result<Outcome, StoreError>>> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(apply(&tx, &self.cache, &self.pending, &mut batch, &request.op)?);
            }
            if !flush.is_empty() {
                index::flush(&tx, &flush, flushed_up_to)?;
            }
            tx.commit()?;
            Ok(outcomes)
        })();
        match applied {
            Ok(outcomes) => {
                {
                    let mut pending = lock(&self.pending);
                    pending.add(&batch.index);
                    if !flush.is_empty() {
                        pending.remove_up_to(flushed_up_to);
                    }
                }
                if self.cache.len() + batch.streams.len() > self.cache_limit {
                    self.cache.clear();
                }
                self.cache.extend(batch.streams);
                let new_head = batch.next_position - 1;
                if new_head != self.head {
                    self.head = new_head;
                    self.head_tx.send_replace(new_head);
                }
                outcomes
            }
            Err(e) => {
                tracing::error!(error = %e, requests = requests.len(), "event store transaction failed");
                let error = StoreError::Unavailable(format!("the write transaction failed: {e}"));
                requests.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}

fn known(
    conn: &Connection,
    cache: &HashMap<String, Known>,
    pending: &Mutex<PendingIndex>,
    batch: &Batch,
    stream: &str,
) -> rusqlite::Result<Known> {
    if let Some(known) = batch.streams.get(stream).or_else(|| cache.get(stream)) {
        return Ok(*known);
    }
    load_stream(conn, pending, stream)
}

/// A stream's index entries with `low <= revision <= high` that are not in
/// the table: pending ones and those of this transaction.
fn unflushed(
    pending: &Mutex<PendingIndex>,
    batch_index: &[(i64, u64, u64)],
    stream: i64,
    low: u64,
    high: u64,
) -> BTreeMap<u64, u64> {
    let mut entries = lock(pending).range(stream, low, high);
    entries
        .extend(batch_index.iter().filter(|e| e.0 == stream && (low..=high).contains(&e.1)).map(|&(_, r, p)| (r, p)));
    entries
}

fn event_id_at(conn: &Connection, position: u64) -> rusqlite::Result<Option<Uuid>> {
    conn.prepare_cached("SELECT event_id FROM events WHERE position = ?1")?
        .query_row([position as i64], |r| r.get::<_, [u8; 16]>(0))
        .optional()
        .map(|id| id.map(Uuid::from_bytes))
}

/// The row id of a stream, creating its row on first use.
fn stream_id(conn: &Connection, stream: &str, known: &mut Known) -> rusqlite::Result<i64> {
    if let Some(id) = known.id {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO streams (name) VALUES (?1)")?.execute([stream])?;
    let id = conn.last_insert_rowid();
    known.id = Some(id);
    Ok(id)
}

/// The writer's view of one stream's event ids, inside its transaction.
struct WriterIds<'a> {
    conn: &'a Connection,
    stream_id: Option<i64>,
    pending: &'a Mutex<PendingIndex>,
    batch_index: &'a [(i64, u64, u64)],
    /// The SQL error that stopped a lookup; it aborts the transaction.
    failure: Option<rusqlite::Error>,
}

impl WriterIds<'_> {
    fn fail(&mut self, e: rusqlite::Error) -> StoreError {
        let error = StoreError::Backend(e.to_string());
        self.failure = Some(e);
        error
    }
}

impl StreamIds for WriterIds<'_> {
    fn at(&mut self, revision: u64) -> Result<Option<(Uuid, u64)>, StoreError> {
        let Some(stream_id) = self.stream_id else { return Ok(None) };
        let entries = unflushed(self.pending, self.batch_index, stream_id, revision, revision);
        let found =
            index::positions(self.conn, stream_id, revision, revision, false, 1, &entries).and_then(|p| {
                match p.first() {
                    Some(&(_, position)) => Ok(event_id_at(self.conn, position)?.map(|id| (id, position))),
                    None => Ok(None),
                }
            });
        found.map_err(|e| self.fail(e))
    }

    fn find(&mut self, id: &Uuid, from: u64) -> Result<Option<u64>, StoreError> {
        let Some(stream_id) = self.stream_id else { return Ok(None) };
        let entries = unflushed(self.pending, self.batch_index, stream_id, from, u64::MAX);
        let found =
            index::positions(self.conn, stream_id, from, u64::MAX, false, usize::MAX, &entries).and_then(|positions| {
                for (revision, position) in positions {
                    if event_id_at(self.conn, position)?.as_ref() == Some(id) {
                        return Ok(Some(revision));
                    }
                }
                Ok(None)
            });
        found.map_err(|e| self.fail(e))
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_row(
    conn: &Connection,
    batch: &mut Batch,
    stream_id: i64,
    revision: u64,
    id: &Uuid,
    event_type: &str,
    data: &[u8],
    metadata: &[u8],
) -> rusqlite::Result<u64> {
    let position = batch.next_position;
    conn.prepare_cached(INSERT_EVENT)?.execute(params![
        position as i64,
        stream_id,
        revision as i64,
        id.as_bytes(),
        event_type,
        data,
        metadata,
        batch.created_us
    ])?;
    batch.next_position += 1;
    batch.index.push((stream_id, revision, position));
    Ok(position)
}

fn save_deletes(conn: &Connection, stream_id: i64, head: &StreamHead) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE streams SET truncate_before = ?2, soft_deleted = ?3, tombstoned = ?4 WHERE id = ?1")?
        .execute(params![stream_id, head.truncate_before as i64, head.soft_deleted, head.tombstoned])?;
    Ok(())
}

/// Applies one request inside the open transaction. The outer error aborts
/// the whole transaction; the inner one refuses only this request, before it
/// wrote anything.
fn apply(
    conn: &Connection,
    cache: &HashMap<String, Known>,
    pending: &Mutex<PendingIndex>,
    batch: &mut Batch,
    op: &WriteOp,
) -> rusqlite::Result<Result<Outcome, StoreError>> {
    match op {
        WriteOp::Append { stream, expected, events } => {
            let mut known = known(conn, cache, pending, batch, stream.as_str())?;
            let mut ids = WriterIds { conn, stream_id: known.id, pending, batch_index: &batch.index, failure: None };
            let checked = semantics::check_append(stream, *expected, events, &known.head, &mut ids);
            if let Some(e) = ids.failure {
                return Err(e);
            }
            match checked {
                Err(refused) => return Ok(Err(refused)),
                Ok(Some(replayed)) => return Ok(Ok(Outcome::Appended(replayed))),
                Ok(None) => {}
            }
            if events.is_empty() {
                // Nothing to write: answer with the stream's current head.
                return Ok(match (known.head.current(), known.id) {
                    (CurrentRevision::Current(last), Some(id)) => {
                        let entries = unflushed(pending, &batch.index, id, last.0, last.0);
                        let found = index::positions(conn, id, last.0, last.0, false, 1, &entries)?;
                        let position = found.first().map_or(0, |&(_, p)| p);
                        Ok(Outcome::Appended(AppendResult {
                            next_expected_revision: last,
                            position: Position::at(position),
                        }))
                    }
                    _ => Err(StoreError::StreamNotFound(stream.clone())),
                });
            }
            let id = stream_id(conn, stream.as_str(), &mut known)?;
            let mut position = 0;
            for event in events {
                let revision = known.head.next_revision();
                position =
                    insert_row(conn, batch, id, revision, &event.id, &event.event_type, &event.data, &event.metadata)?;
                known.head.last = Some(revision);
            }
            if known.head.soft_deleted {
                known.head.soft_deleted = false;
                save_deletes(conn, id, &known.head)?;
            }
            let last = known.head.last.unwrap_or_default();
            batch.streams.insert(stream.as_str().to_owned(), known);
            Ok(Ok(Outcome::Appended(AppendResult {
                next_expected_revision: StreamRevision(last),
                position: Position::at(position),
            })))
        }
        WriteOp::Delete { stream, expected, tombstone } => {
            let mut known = known(conn, cache, pending, batch, stream.as_str())?;
            if let Err(refused) = semantics::check_delete(stream, *expected, &known.head) {
                return Ok(Err(refused));
            }
            let (event_type, body) = if *tombstone {
                known.head.tombstoned = true;
                (semantics::TOMBSTONE_EVENT_TYPE, b"{}".to_vec())
            } else {
                known.head.soft_delete();
                (semantics::METADATA_EVENT_TYPE, semantics::truncate_before_body(known.head.truncate_before))
            };
            let id = stream_id(conn, stream.as_str(), &mut known)?;
            save_deletes(conn, id, &known.head)?;
            batch.streams.insert(stream.as_str().to_owned(), known);
            let meta_stream = semantics::metadata_stream(stream);
            let mut meta = self::known(conn, cache, pending, batch, &meta_stream)?;
            let meta_id = stream_id(conn, &meta_stream, &mut meta)?;
            let revision = meta.head.next_revision();
            let position = insert_row(conn, batch, meta_id, revision, &Uuid::new_v4(), event_type, &body, b"")?;
            meta.head.last = Some(revision);
            batch.streams.insert(meta_stream, meta);
            Ok(Ok(Outcome::Deleted(DeleteResult { position: Position::at(position) })))
        }
    }
}

// --------------------------------------------------------------- readers --

struct ReaderPool {
    path: PathBuf,
    cache_kib: i64,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReaderPool {
    /// Runs `read` on a pooled read connection on a blocking thread.
    async fn run<R: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let _permit = self.permits.acquire().await.map_err(|_| closed())?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => {
                    let conn = open_connection(&pool.path, pool.cache_kib)?;
                    conn.execute_batch("PRAGMA query_only = ON").map_err(backend)?;
                    conn
                }
            };
            let result = read(&conn);
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("a read task failed: {e}")))?
    }
}

/// The pool as the subscriptions' window reader.
struct WindowReader(Arc<ReaderPool>);

#[async_trait]
impl PositionWindow for WindowReader {
    async fn read_window(&self, after: u64, up_to: u64, filter: &AllFilter) -> Result<Vec<RecordedEvent>, StoreError> {
        let filter = filter.clone();
        self.0
            .run(move |conn| {
                let sql = format!("{SELECT_EVENTS} WHERE e.position > ?1 AND e.position <= ?2 ORDER BY e.position");
                let scan = collect_events(conn, &sql, params![after as i64, up_to as i64], usize::MAX, |s, t| {
                    filter.matches(s, t)
                })?;
                Ok(scan.events)
            })
            .await
    }
}

/// Rows read per query while looking for events that pass a filter.
const SCAN_PAGE: usize = 1024;

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        match self.write(WriteOp::Append { stream: stream.clone(), expected, events }).await? {
            Outcome::Appended(result) => Ok(result),
            Outcome::Deleted(_) => Err(StoreError::Backend("the writer answered an append with a delete".into())),
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        direction: Direction,
        from: StreamStart,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.clone();
        let pending = self.pending.clone();
        self.readers
            .run(move |conn| {
                // A stream's row exists once it was written or deleted; if it
                // is neither soft-deleted nor tombstoned it has readable events.
                let row = conn
                    .prepare_cached("SELECT id, truncate_before, soft_deleted, tombstoned FROM streams WHERE name = ?1")
                    .and_then(|mut s| {
                        s.query_row([stream.as_str()], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, bool>(2)?, r.get::<_, bool>(3)?))
                        })
                        .optional()
                    })
                    .map_err(backend)?;
                let (id, first) = match row {
                    Some((_, _, _, true)) => return Err(StoreError::StreamDeleted(stream)),
                    None | Some((_, _, true, _)) => return Err(StoreError::StreamNotFound(stream)),
                    Some((id, truncate_before, false, false)) => (id, truncate_before),
                };
                let first = first as u64;
                let (descending, low, high) = match (direction, from) {
                    (Direction::Forwards, StreamStart::End) => return Ok(Vec::new()),
                    (Direction::Forwards, StreamStart::Start) => (false, first, u64::MAX),
                    (Direction::Forwards, StreamStart::Revision(r)) => (false, first.max(r.0), u64::MAX),
                    (Direction::Backwards, StreamStart::Start) => (true, first, first),
                    (Direction::Backwards, StreamStart::End) => (true, first, u64::MAX),
                    (Direction::Backwards, StreamStart::Revision(r)) => (true, first, r.0),
                };
                // Copy the pending entries before the snapshot starts (see `index`).
                let unflushed = lock(&pending).range(id, low, high);
                let snapshot = conn.unchecked_transaction().map_err(backend)?;
                let positions =
                    index::positions(&snapshot, id, low, high, descending, max_count, &unflushed).map_err(backend)?;
                let sql = format!("{SELECT_EVENTS} WHERE e.position = ?1");
                let mut events = Vec::with_capacity(positions.len());
                for (_, position) in positions {
                    let scan = collect_events(&snapshot, &sql, [position as i64], 1, |_, _| true)?;
                    events.extend(scan.events);
                }
                snapshot.finish().map_err(backend)?;
                Ok(events)
            })
            .await
    }

    async fn read_all(
        &self,
        direction: Direction,
        from: AllStart,
        filter: &AllFilter,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let filter = filter.clone();
        self.readers
            .run(move |conn| {
                let forwards = direction == Direction::Forwards;
                let mut cursor = match (direction, from) {
                    (Direction::Forwards, AllStart::Start) => 1,
                    (Direction::Forwards, AllStart::Position(p)) => sql_limit(p.commit as usize),
                    (Direction::Backwards, AllStart::Position(p)) => sql_limit(p.commit as usize),
                    (Direction::Backwards, AllStart::End) => i64::MAX,
                    (Direction::Forwards, AllStart::End) | (Direction::Backwards, AllStart::Start) => {
                        return Ok(Vec::new())
                    }
                };
                let sql = if forwards {
                    format!("{SELECT_EVENTS} WHERE e.position >= ?1 ORDER BY e.position ASC LIMIT ?2")
                } else {
                    format!("{SELECT_EVENTS} WHERE e.position <= ?1 ORDER BY e.position DESC LIMIT ?2")
                };
                let mut events = Vec::new();
                while events.len() < max_count {
                    let wanted = max_count - events.len();
                    let page = wanted.clamp(1, SCAN_PAGE);
                    let scan = collect_events(conn, &sql, params![cursor, sql_limit(page)], wanted, |s, t| {
                        filter.matches(s, t)
                    })?;
                    events.extend(scan.events);
                    match scan.last_position {
                        Some(last) if scan.rows == page => {
                            cursor = if forwards { last + 1 } else { last - 1 };
                        }
                        _ => break,
                    }
                }
                Ok(events)
            })
            .await
    }

    async fn subscribe_all(
        &self,
        start: SubscriptionStart,
        filter: AllFilter,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        let receiver = self.head.clone();
        let after = match start {
            SubscriptionStart::Start => 0,
            SubscriptionStart::After(p) => p.commit,
            SubscriptionStart::End => *receiver.borrow(),
        };
        let reader = Arc::new(WindowReader(self.readers.clone()));
        Ok(Box::new(CatchUpSubscription::new(reader, filter, after, receiver)))
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<DeleteResult, StoreError> {
        match self.write(WriteOp::Delete { stream: stream.clone(), expected, tombstone: false }).await? {
            Outcome::Deleted(result) => Ok(result),
            Outcome::Appended(_) => Err(StoreError::Backend("the writer answered a delete with an append".into())),
        }
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult, StoreError> {
        match self.write(WriteOp::Delete { stream: stream.clone(), expected, tombstone: true }).await? {
            Outcome::Deleted(result) => Ok(result),
            Outcome::Appended(_) => Err(StoreError::Backend("the writer answered a delete with an append".into())),
        }
    }

    async fn head_position(&self) -> Result<Option<Position>, StoreError> {
        let head = *self.head.borrow();
        Ok((head > 0).then(|| Position::at(head)))
    }
}

/// A connection to a fresh database at `path` with the store's pragmas and
/// schema but none of its machinery: the benchmarks' baseline.
pub(crate) fn plain_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_connection(path, SqliteOptions::default().cache_kib)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// The statement the writer appends one event row with.
pub(crate) const INSERT_EVENT: &str =
    "INSERT INTO events (position, stream_id, revision, event_id, event_type, data, metadata, created_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

//! `bench append`: durable single-event appends/s.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use referral_domain::eventlog::{
    AllFilter, EventData, EventStore, ExpectedRevision, StreamName, SubscriptionMessage, SubscriptionStart,
};
use rusqlite::{params, Connection};
use uuid::Uuid;

use super::driver::{drive, median, runs_note, Measured, Worker};
use super::{BenchError, BenchReport, BenchRow, WRITER_COUNTS};
use crate::store::{plain_connection, EsdbEventStore, SqliteEventStore, INSERT_EVENT};

const BASELINE: &str = "plain SQLite loop, same schema and pragmas (WAL, synchronous=FULL): one transaction and one fsync per append, writers take turns";

/// A referral-sized event: about 400 bytes of JSON data and 250 of metadata.
fn payload() -> (Vec<u8>, Vec<u8>) {
    let data = serde_json::json!({
        "referral": "0c7d5a3e-2f4b-5b7e-9d61-1f0a3c2b4e5d",
        "engagement_name": "Fabrikam ERP migration",
        "estimated_value": {"currency": "EUR", "amount": "125000.50"},
        "estimated_purchase_date": "2026-12-31",
        "notes": "Needs a phased migration of finance first, then logistics; the customer wants a workshop in January.",
        "crm_id": "CRM-100234",
        "accepted_at": "2026-11-24T09:00:00Z"
    });
    let metadata = serde_json::json!({
        "$correlationId": "8f0e2c1a-5b7d-4e3f-9a6c-2d1b0e9f8a7c",
        "$causationId": "8f0e2c1a-5b7d-4e3f-9a6c-2d1b0e9f8a7c",
        "commandId": "8f0e2c1a-5b7d-4e3f-9a6c-2d1b0e9f8a7c",
        "actor": "partner:acme/bench",
        "schemaVersion": 1,
        "occurredAt": "2026-11-24T09:00:00Z"
    });
    (data.to_string().into_bytes(), metadata.to_string().into_bytes())
}

struct StoreWorker {
    store: Arc<dyn EventStore>,
    stream: StreamName,
    expected: ExpectedRevision,
    data: Vec<u8>,
    metadata: Vec<u8>,
}

#[async_trait]
impl Worker for StoreWorker {
    async fn step(&mut self) -> Result<(), String> {
        let event = EventData {
            id: Uuid::new_v4(),
            event_type: "ReferralEngagementUpdated".into(),
            data: self.data.clone(),
            metadata: self.metadata.clone(),
        };
        let result = self.store.append(&self.stream, self.expected, vec![event]).await.map_err(|e| e.to_string())?;
        self.expected = ExpectedRevision::Exact(result.next_expected_revision);
        Ok(())
    }
}

/// The baseline's shared state: one connection, the next position.
struct Plain {
    conn: Connection,
    next_position: i64,
}

struct PlainWorker {
    plain: Arc<Mutex<Plain>>,
    stream: String,
    /// The stream's row id once its first append created it.
    stream_id: Option<i64>,
    next_revision: i64,
    data: Arc<Vec<u8>>,
    metadata: Arc<Vec<u8>>,
}

#[async_trait]
impl Worker for PlainWorker {
    async fn step(&mut self) -> Result<(), String> {
        let plain = self.plain.clone();
        let (stream, stream_id, revision, data, metadata) =
            (self.stream.clone(), self.stream_id, self.next_revision, self.data.clone(), self.metadata.clone());
        let stream_id = tokio::task::spawn_blocking(move || {
            let mut plain = plain.lock().map_err(|_| "baseline connection poisoned".to_string())?;
            let position = plain.next_position;
            let tx = plain.conn.transaction().map_err(|e| e.to_string())?;
            let stream_id = match stream_id {
                Some(id) => id,
                None => {
                    tx.execute("INSERT INTO streams (name) VALUES (?1)", [&stream]).map_err(|e| e.to_string())?;
                    tx.last_insert_rowid()
                }
            };
            tx.prepare_cached(INSERT_EVENT)
                .and_then(|mut s| {
                    s.execute(params![
                        position,
                        stream_id,
                        revision,
                        Uuid::new_v4().as_bytes(),
                        "ReferralEngagementUpdated",
                        data.as_slice(),
                        metadata.as_slice(),
                        chrono::Utc::now().timestamp_micros()
                    ])
                })
                .map_err(|e| e.to_string())?;
            tx.execute(
                "INSERT INTO stream_index (stream_id, revision, position) VALUES (?1, ?2, ?3)",
                params![stream_id, revision, position],
            )
            .map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            plain.next_position += 1;
            Ok::<_, String>(stream_id)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.stream_id = Some(stream_id);
        self.next_revision += 1;
        Ok(())
    }
}

/// A row of the writers table: the engine beside the baseline.
fn writers_row(writers: usize, engine: &Measured, baseline: &Measured) -> BenchRow {
    BenchRow {
        writers,
        value: engine.per_second,
        baseline: baseline.per_second,
        ratio: engine.per_second / baseline.per_second.max(f64::MIN_POSITIVE),
        p50_us: engine.p50_us,
        p99_us: engine.p99_us,
        baseline_p50_us: baseline.p50_us,
        baseline_p99_us: baseline.p99_us,
        ..Default::default()
    }
}

/// Measures the store's durable appends/s at 1, 16 and 64 writers, each
/// beside the plain-SQLite baseline.
pub async fn bench_append(dir: &Path, duration: Duration, repeat: usize) -> Result<BenchReport, BenchError> {
    let (data, metadata) = payload();
    let store =
        Arc::new(SqliteEventStore::open(&dir.join("append-engine.db")).map_err(|e| BenchError::Setup(e.to_string()))?);
    let conn = plain_connection(&dir.join("append-baseline.db")).map_err(|e| BenchError::Setup(e.to_string()))?;
    let plain = Arc::new(Mutex::new(Plain { conn, next_position: 1 }));
    let (shared_data, shared_metadata) = (Arc::new(data.clone()), Arc::new(metadata.clone()));
    let (mut rows, mut notes) = (Vec::new(), Vec::new());
    for (round, writers) in WRITER_COUNTS.into_iter().enumerate() {
        let (mut engine_runs, mut baseline_runs) = (Vec::new(), Vec::new());
        for run in 0..repeat.max(1) {
            let engine_workers = (0..writers)
                .map(|w| {
                    let stream = StreamName::new(format!("bench-{round}-{run}-{w}"))
                        .map_err(|e| BenchError::Setup(e.to_string()))?;
                    Ok(Box::new(StoreWorker {
                        store: store.clone() as Arc<dyn EventStore>,
                        stream,
                        expected: ExpectedRevision::NoStream,
                        data: data.clone(),
                        metadata: metadata.clone(),
                    }) as Box<dyn Worker>)
                })
                .collect::<Result<Vec<_>, BenchError>>()?;
            engine_runs.push(drive(engine_workers, duration).await?);
            let baseline_workers = (0..writers)
                .map(|w| {
                    Box::new(PlainWorker {
                        plain: plain.clone(),
                        stream: format!("bench-{round}-{run}-{w}"),
                        stream_id: None,
                        next_revision: 0,
                        data: shared_data.clone(),
                        metadata: shared_metadata.clone(),
                    }) as Box<dyn Worker>
                })
                .collect();
            baseline_runs.push(drive(baseline_workers, duration).await?);
        }
        if engine_runs.len() > 1 {
            notes.push(runs_note(writers, &engine_runs, &baseline_runs));
        }
        rows.push(writers_row(writers, &median(engine_runs), &median(baseline_runs)));
    }
    let mut report = BenchReport::new("append", "durable appends/s", BASELINE, duration.as_secs_f64(), rows);
    report.notes = notes;
    Ok(report)
}

/// Which EventStoreDB `bench append --store` measures.
pub enum EsdbTarget {
    /// A compatible node started in this process over a fresh embedded
    /// store, on a loopback port (`--store esdb-node`).
    InProcessNode,
    /// A running server (`--store esdb://host:port?tls=false`).
    Server(String),
}

const ESDB_BASELINE: &str =
    "the embedded SQLite store in this process, same workers and events: the ratio is the cost \
                             of going through the EventStoreDB client, gRPC and the server";

fn workers(store: &Arc<dyn EventStore>, round: &str, writers: usize) -> Result<Vec<Box<dyn Worker>>, BenchError> {
    let (data, metadata) = payload();
    (0..writers)
        .map(|w| {
            let stream = StreamName::new(format!("bench-{round}-{w}-{}", Uuid::new_v4().simple()))
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            Ok(Box::new(StoreWorker {
                store: store.clone(),
                stream,
                expected: ExpectedRevision::NoStream,
                data: data.clone(),
                metadata: metadata.clone(),
            }) as Box<dyn Worker>)
        })
        .collect()
}

/// Subscribes to `$all` from the start and counts events until caught up;
/// answers (events, seconds).
async fn catch_up(store: &Arc<dyn EventStore>) -> Result<(u64, f64), BenchError> {
    let operation = |e: String| BenchError::Operation(e);
    let began = std::time::Instant::now();
    let mut subscription = store
        .subscribe_all(SubscriptionStart::Start, AllFilter::everything())
        .await
        .map_err(|e| operation(e.to_string()))?;
    let mut events = 0u64;
    loop {
        match subscription.next().await.map_err(|e| operation(e.to_string()))? {
            SubscriptionMessage::Event(e) => {
                std::hint::black_box(&e);
                events += 1;
            }
            SubscriptionMessage::CaughtUp => return Ok((events, began.elapsed().as_secs_f64())),
        }
    }
}

/// Durable appends/s through the EventStoreDB adapter at 1, 16 and 64
/// writers, then a `$all` catch-up read, each beside the embedded store in
/// the same run.
pub async fn bench_append_esdb(dir: &Path, duration: Duration, target: EsdbTarget) -> Result<BenchReport, BenchError> {
    let setup = |e: String| BenchError::Setup(e);
    let mut notes = Vec::new();
    let (connection, _node) = match target {
        EsdbTarget::Server(connection) => {
            notes.push(format!("EventStoreDB at {connection}"));
            (connection, None)
        }
        EsdbTarget::InProcessNode => {
            let inner: Arc<dyn EventStore> =
                Arc::new(SqliteEventStore::open(&dir.join("append-esdb-node.db")).map_err(|e| setup(e.to_string()))?);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| setup(e.to_string()))?;
            let addr = listener.local_addr().map_err(|e| setup(e.to_string()))?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(crate::esdb::node::run(inner, listener, async {
                let _ = stopped.await;
            }));
            notes.push(format!(
                "the project's EventStoreDB-compatible node in this process on {addr}, over its own embedded store \
                 (client and node share the machine's cores)"
            ));
            (format!("esdb://{addr}?tls=false"), Some(stop))
        }
    };
    let esdb: Arc<dyn EventStore> = Arc::new(EsdbEventStore::connect(&connection).map_err(|e| setup(e.to_string()))?);
    let embedded: Arc<dyn EventStore> =
        Arc::new(SqliteEventStore::open(&dir.join("append-embedded.db")).map_err(|e| setup(e.to_string()))?);
    let mut rows = Vec::new();
    for (round, writers) in WRITER_COUNTS.into_iter().enumerate() {
        let engine = drive(workers(&esdb, &round.to_string(), writers)?, duration).await?;
        let baseline = drive(workers(&embedded, &round.to_string(), writers)?, duration).await?;
        rows.push(BenchRow { label: Some("appends/s".into()), ..writers_row(writers, &engine, &baseline) });
    }
    let headline = rows.last().cloned();
    let (events, seconds) = catch_up(&esdb).await?;
    let (baseline_events, baseline_seconds) = catch_up(&embedded).await?;
    let (rate, baseline_rate) = (events as f64 / seconds, baseline_events as f64 / baseline_seconds);
    notes.push(format!(
        "$all catch-up read: {events} events through EventStoreDB in {seconds:.2} s, {baseline_events} from the \
         embedded store in {baseline_seconds:.2} s (the events the appends above wrote)"
    ));
    rows.push(BenchRow {
        writers: 1,
        value: rate,
        baseline: baseline_rate,
        ratio: rate / baseline_rate.max(f64::MIN_POSITIVE),
        label: Some("$all catch-up events/s".into()),
        events: Some(events),
        seconds: Some(seconds),
        ..Default::default()
    });
    let mut report = BenchReport::new("append", "durable appends/s", ESDB_BASELINE, duration.as_secs_f64(), rows);
    if let Some(headline) = headline {
        (report.value, report.baseline, report.ratio) = (headline.value, headline.baseline, headline.ratio);
    }
    report.value_description = Some(format!(
        "durable appends/s through the EventStoreDB adapter at {} writers, one event per append",
        WRITER_COUNTS[WRITER_COUNTS.len() - 1]
    ));
    report.notes = notes;
    Ok(report)
}

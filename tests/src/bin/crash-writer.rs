//! Writes to a `SqliteEventStore` until it is killed, for the crash test.
//!
//! Usage: `crash-writer <database path>`
//!
//! Sixteen writer tasks append 1–3 events at a time to a handful of streams
//! with exact expected revisions, retrying on conflict. After every
//! acknowledged append one line goes to stdout:
//!
//! `ack <stream> <first revision> <last revision> <position> <id>,<id>,…`
//!
//! Each writer's appends follow a fixed plan and their event ids are derived
//! from (writer, append, index), so a run started on a database left by a
//! killed run knows where each writer stopped. It re-sends the last append
//! each writer has in the store with that append's original expected
//! revision; the store must answer with the original result, which is
//! acknowledged again (the append the killed run may have committed without
//! printing is thereby covered).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use referral_domain::eventlog::{
    AllFilter, AllStart, AppendResult, Direction, EventData, EventStore, ExpectedRevision, RecordedEvent, StoreError,
    StreamName, StreamRevision,
};
use referral_infra::store::SqliteEventStore;
use uuid::Uuid;

const WRITERS: u64 = 16;
const STREAMS: u64 = 5;
/// A writer stops after this many appends; a run is killed long before.
const MAX_APPENDS: u64 = 1_000_000;
const NAMESPACE: Uuid = Uuid::from_u128(0x6a1e_3c2b_9d4f_4e8a_b7c5_0f1d_2e3a_4b5c);

/// One planned append: where it goes and what it writes.
struct Planned {
    stream: StreamName,
    events: Vec<EventData>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a deterministic, well-spread plan from (writer, append).
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn event_id(writer: u64, append: u64, index: u64) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{writer}/{append}/{index}").as_bytes())
}

fn plan(writer: u64, append: u64) -> Planned {
    let h = mix(writer << 32 | append);
    let stream = StreamName::new(format!("crash-{}", h % STREAMS)).expect("valid stream name");
    let count = 1 + (h >> 32) % 3;
    let events = (0..count)
        .map(|index| EventData {
            id: event_id(writer, append, index),
            event_type: "CrashTestEvent".into(),
            data: format!("{{\"writer\":{writer},\"append\":{append},\"index\":{index},\"count\":{count}}}")
                .into_bytes(),
            metadata: b"{}".to_vec(),
        })
        .collect();
    Planned { stream, events }
}

/// Prints one acknowledgement as a single write, so that a kill cannot
/// interleave or split lines (a trailing partial line is ignored anyway).
fn acknowledge(stream: &StreamName, events: &[EventData], result: &AppendResult) {
    let last = result.next_expected_revision.0;
    let first = last + 1 - events.len() as u64;
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    let line = format!("ack {stream} {first} {last} {} {}\n", result.position.commit, ids.join(","));
    let mut out = std::io::stdout().lock();
    if out.write_all(line.as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

fn fail(message: String) -> ! {
    eprintln!("crash-writer: {message}");
    std::process::exit(2);
}

/// Re-sends a writer's last stored append with its original expected revision.
async fn replay(store: &SqliteEventStore, writer: u64, append: u64, stored: &HashMap<Uuid, RecordedEvent>) {
    let planned = plan(writer, append);
    let first = &stored[&planned.events[0].id];
    let expected = match first.revision.0 {
        0 => ExpectedRevision::NoStream,
        n => ExpectedRevision::Exact(StreamRevision(n - 1)),
    };
    match store.append(&planned.stream, expected, planned.events.clone()).await {
        Ok(result) => acknowledge(&planned.stream, &planned.events, &result),
        Err(e) => fail(format!("re-sending append {append} of writer {writer} with {expected}: {e}")),
    }
}

async fn write(store: Arc<SqliteEventStore>, writer: u64, first_append: u64) {
    let mut known: HashMap<StreamName, ExpectedRevision> = HashMap::new();
    for append in first_append..MAX_APPENDS {
        let planned = plan(writer, append);
        let mut expected = known.get(&planned.stream).copied().unwrap_or(ExpectedRevision::NoStream);
        loop {
            match store.append(&planned.stream, expected, planned.events.clone()).await {
                Ok(result) => {
                    acknowledge(&planned.stream, &planned.events, &result);
                    known.insert(planned.stream.clone(), ExpectedRevision::Exact(result.next_expected_revision));
                    break;
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => expected = actual.as_expected(),
                Err(e) => fail(format!("append {append} of writer {writer} with {expected}: {e}")),
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: crash-writer <database path>");
        return ExitCode::from(64);
    };
    let store = match SqliteEventStore::open(&path) {
        Ok(store) => Arc::new(store),
        Err(e) => fail(format!("cannot open {}: {e}", path.display())),
    };
    let stored: HashMap<Uuid, RecordedEvent> =
        match store.read_all(Direction::Forwards, AllStart::Start, &AllFilter::everything(), usize::MAX).await {
            Ok(events) => events.into_iter().map(|e| (e.id, e)).collect(),
            Err(e) => fail(format!("cannot read $all: {e}")),
        };

    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        // A writer's appends are sequential, so the stored ones are a prefix
        // of its plan.
        let next = (0..).find(|&append| !stored.contains_key(&event_id(writer, append, 0))).unwrap_or(0);
        if next > 0 {
            replay(&store, writer, next - 1, &stored).await;
        }
        tasks.push(tokio::spawn(write(store.clone(), writer, next)));
    }
    for task in tasks {
        if let Err(e) = task.await {
            fail(format!("a writer task failed: {e}"));
        }
    }
    ExitCode::SUCCESS
}

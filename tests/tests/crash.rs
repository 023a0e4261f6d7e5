//! Kills a process writing to a `SqliteEventStore` with SIGKILL at random
//! moments, again and again on the same database, and checks after every
//! kill that nothing acknowledged was lost and the log is consistent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use referral_domain::eventlog::{
    AllFilter, AllStart, Direction, EventStore, RecordedEvent, StreamName, StreamRevision, StreamStart,
};
use referral_infra::store::SqliteEventStore;
use uuid::Uuid;

const RUNS: usize = 20;
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `ack` line of the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    stream: String,
    first: u64,
    last: u64,
    position: u64,
    ids: Vec<Uuid>,
}

fn parse_ack(line: &str) -> Ack {
    let fields: Vec<&str> = line.split(' ').collect();
    let number = |s: &str| s.parse::<u64>().unwrap_or_else(|e| panic!("bad number {s:?} in {line:?}: {e}"));
    assert!(fields.len() == 6 && fields[0] == "ack", "unexpected line from crash-writer: {line:?}");
    let ids = fields[5].split(',').map(|id| Uuid::parse_str(id).unwrap_or_else(|e| panic!("bad id in {line:?}: {e}")));
    Ack {
        stream: fields[1].to_owned(),
        first: number(fields[2]),
        last: number(fields[3]),
        position: number(fields[4]),
        ids: ids.collect(),
    }
}

/// The complete lines of the writer's output; a line cut by the kill has no
/// newline and was never acknowledged to anyone.
fn complete_acks(output: &str) -> Vec<Ack> {
    let complete = match output.rfind('\n') {
        Some(end) => &output[..end],
        None => "",
    };
    complete.lines().filter(|l| !l.is_empty()).map(parse_ack).collect()
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // The pipe breaks when the child dies; what was read so far counts.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs the writer for `run_for`, kills it and returns its acknowledgements.
fn run_and_kill(db: &Path, run_for: Duration) -> Vec<Ack> {
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start crash-writer");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    std::thread::sleep(run_for);
    let exited_early = child.try_wait().expect("poll crash-writer");
    if exited_early.is_none() {
        child.kill().expect("SIGKILL crash-writer");
    }
    let status = child.wait().expect("reap crash-writer");
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    if let Some(status) = exited_early {
        panic!("crash-writer exited by itself with {status}:\n{stderr}");
    }
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "crash-writer should die of SIGKILL: {status}\n{stderr}");
    }
    complete_acks(&stdout)
}

/// One stored event of a planned append, as its data describes it.
struct Part<'a> {
    index: u64,
    count: u64,
    event: &'a RecordedEvent,
}

/// Everything the store holds after a kill.
struct Snapshot {
    all: Vec<RecordedEvent>,
}

async fn verify(db: &Path, acks: &[Ack], previous: Option<&Snapshot>) -> Snapshot {
    let store = SqliteEventStore::open(db).expect("reopen the store after the kill");
    let all = store
        .read_all(Direction::Forwards, AllStart::Start, &AllFilter::everything(), usize::MAX)
        .await
        .expect("read $all");

    // Positions strictly increase, and the head is the last one.
    assert!(all.windows(2).all(|w| w[0].position < w[1].position), "$all positions must strictly increase");
    assert!(all.iter().all(|e| e.position.commit == e.position.prepare && e.position.commit > 0));
    assert_eq!(store.head_position().await.expect("head"), all.last().map(|e| e.position));

    // No event id twice.
    let mut seen = HashSet::new();
    for event in &all {
        assert!(seen.insert(event.id), "event id {} appears twice in $all", event.id);
    }

    // Every stream's revisions are contiguous from 0, and a stream read
    // agrees with $all.
    let mut streams: BTreeMap<&str, Vec<&RecordedEvent>> = BTreeMap::new();
    for event in &all {
        streams.entry(event.stream.as_str()).or_default().push(event);
    }
    for (name, events) in &streams {
        let revisions: Vec<u64> = events.iter().map(|e| e.revision.0).collect();
        assert_eq!(revisions, (0..events.len() as u64).collect::<Vec<_>>(), "revisions of {name}");
        let stream = StreamName::new(*name).expect("stream name");
        let read = store
            .read_stream(&stream, Direction::Forwards, StreamStart::Start, usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert_eq!(read.iter().collect::<Vec<_>>(), *events, "read_stream({name}) disagrees with $all");
    }

    // Appends are atomic: each stored append has all its events, in order,
    // at consecutive revisions of one stream; and each writer's stored
    // appends are a prefix of its plan.
    let mut appends: BTreeMap<(u64, u64), Vec<Part>> = BTreeMap::new();
    for event in &all {
        let data: serde_json::Value = serde_json::from_slice(&event.data).expect("event data is JSON");
        let field = |name: &str| data[name].as_u64().unwrap_or_else(|| panic!("event data without {name}: {data}"));
        let part = Part { index: field("index"), count: field("count"), event };
        appends.entry((field("writer"), field("append"))).or_default().push(part);
    }
    let mut per_writer: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for ((writer, append), parts) in &appends {
        let indices: Vec<u64> = parts.iter().map(|p| p.index).collect();
        assert_eq!(indices, (0..parts[0].count).collect::<Vec<_>>(), "append {append} of writer {writer} is torn");
        let first = parts[0].event;
        for (offset, part) in parts.iter().enumerate() {
            assert_eq!(part.event.stream, first.stream, "append {append} of writer {writer} spans streams");
            assert_eq!(part.event.revision, StreamRevision(first.revision.0 + offset as u64));
        }
        per_writer.entry(*writer).or_default().push(*append);
    }
    for (writer, stored) in &per_writer {
        assert_eq!(*stored, (0..stored.len() as u64).collect::<Vec<_>>(), "writer {writer} has gaps");
    }

    // Every acknowledged append is there, unchanged.
    let by_id: HashMap<Uuid, &RecordedEvent> = all.iter().map(|e| (e.id, e)).collect();
    for ack in acks {
        assert_eq!(ack.last + 1 - ack.first, ack.ids.len() as u64, "malformed ack {ack:?}");
        for (offset, id) in ack.ids.iter().enumerate() {
            let event = by_id.get(id).unwrap_or_else(|| panic!("acknowledged event {id} is lost: {ack:?}"));
            assert_eq!(event.stream.as_str(), ack.stream, "{ack:?}");
            assert_eq!(event.revision.0, ack.first + offset as u64, "{ack:?}");
        }
        let last = by_id[ack.ids.last().expect("ids")];
        assert_eq!(last.position.commit, ack.position, "acknowledged position of {ack:?}");
    }

    // What an earlier check saw is still there, at the same place.
    if let Some(previous) = previous {
        assert!(previous.all.len() <= all.len(), "events disappeared: {} then {}", previous.all.len(), all.len());
        assert_eq!(previous.all[..], all[..previous.all.len()], "committed events changed after a later kill");
    }
    Snapshot { all }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test seed {seed} (set CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("events.db");

    let started = Instant::now();
    let mut acks = Vec::new();
    let mut snapshot = None;
    let mut runs_with_acks = 0;
    for run in 0..RUNS {
        let run_for = Duration::from_millis(rng.gen_range(50..=400));
        let new = run_and_kill(&db, run_for);
        if !new.is_empty() {
            runs_with_acks += 1;
        }
        acks.extend(new);
        let checked = runtime
            .block_on(async { tokio::time::timeout(VERIFY_TIMEOUT, verify(&db, &acks, snapshot.as_ref())).await })
            .unwrap_or_else(|_| panic!("checking the store after kill {run} took too long"));
        snapshot = Some(checked);
    }
    let stored = snapshot.map_or(0, |s| s.all.len());
    eprintln!("{RUNS} kills, {} acknowledged appends, {stored} events stored, {:?}", acks.len(), started.elapsed());
    assert!(runs_with_acks >= RUNS / 2, "the writer acknowledged appends in only {runs_with_acks} of {RUNS} runs");
}

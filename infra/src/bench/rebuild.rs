//! `bench rebuild`: how fast the projections are rebuilt from the log, and
//! how much memory that takes as the log grows.
//!
//! Set-up: referral lifecycles from [`super::workload`] (one time-ordered
//! log over hundreds of partners, steps of many referrals interleaved) are
//! encoded with the domain codec and appended straight to a fresh
//! `SqliteEventStore`, thousands of appends at a time with their exact
//! expected revisions; the command handler would take far longer and adds
//! nothing a rebuild sees.
//!
//! Measured over a log of a quarter of the events (all projections at once)
//! and over one of all of them (each projection alone, then all at once),
//! each log generated from the same seed into its own store:
//!
//! * baseline: one `subscribe_all` from the start until `CaughtUp`, each
//!   event decoded with `ProjectedEvent::decode`, nothing written;
//! * engine: `Projector::open` on a fresh view database, then `rebuild` of
//!   each projection on its own, then `rebuild_together` of all four (one
//!   shared feed); timed from the rebuild call until every new version is
//!   active at the log's head (`Projector::wait_for`, which the runner only answers once the
//!   rebuilt version has been swapped in, confirmed with `status`).
//!
//! Each measured phase (the baseline, each rebuild) runs in a fresh child
//! process, `referral-engine bench-rebuild-phase`, that opens the store and
//! a new view database from disk, as an operator's rebuild does; its peak RSS
//! is that process's high-water mark (`VmHWM`), so nothing the set-up or an
//! earlier phase left in the allocator counts towards it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use referral_domain::codec;
use referral_domain::eventlog::{
    EventData, EventStore, ExpectedRevision, Position, StreamName, StreamRevision, SubscriptionMessage,
    SubscriptionStart,
};
use referral_projections::runner::{
    projected_streams, CATCH_UP_COMMIT_TIME, CATCH_UP_HELD_BYTES, CATCH_UP_HELD_EVENTS,
};
use referral_projections::{all_projections, ProjectedEvent, Projection, Projector, RunnerOptions, ViewDb};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::workload::{Generated, Workload};
use super::{peak_rss_mb, BenchError, BenchReport, BenchRow, Layout};
use crate::store::{SqliteEventStore, SqliteOptions};

const BASELINE: &str =
    "the same events read and decoded without writing views: one subscribe_all from the start until \
                        CaughtUp, ProjectedEvent::decode on each (what one projection's feeder does), in a process of \
                        its own like each rebuild";
/// The hidden subcommand that runs one measured phase.
pub const PHASE_COMMAND: &str = "bench-rebuild-phase";
/// The phase that reads and decodes without writing views.
const BASELINE_PHASE: &str = "baseline";
/// The phase that rebuilds every projection at once.
const ALL_PHASE: &str = "all";
const SEED: u64 = 0x5eed_0001;
/// Partners in the generated log (a few large, a long tail of small ones).
const PARTNERS: usize = 400;
/// Appends sent to the store at once while setting up.
const CHUNK: usize = 8192;

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// One append of the set-up.
struct Append {
    stream: StreamName,
    expected: ExpectedRevision,
    event: EventData,
}

fn encode(g: Generated) -> Append {
    let expected = match g.revision {
        StreamRevision(0) => ExpectedRevision::NoStream,
        StreamRevision(r) => ExpectedRevision::Exact(StreamRevision(r - 1)),
    };
    Append { stream: g.stream, expected, event: codec::encode(Uuid::new_v4(), &g.event, &g.metadata) }
}

/// Cuts the time-ordered log into chunks of appends that can be sent at
/// once: an event whose stream already has one in the chunk waits for the
/// next chunk (with every later event of that stream), so each append's
/// expected revision is the one before it.
fn chunks(mut workload: Workload, count: u64, tx: tokio::sync::mpsc::Sender<Vec<Append>>) -> Workload {
    let mut generated = 0u64;
    let mut deferred: VecDeque<Generated> = VecDeque::new();
    while generated < count || !deferred.is_empty() {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut in_chunk: HashSet<u64> = HashSet::new();
        let mut waiting: HashSet<u64> = HashSet::new();
        let carried = std::mem::take(&mut deferred);
        let mut place = |g: Generated, chunk: &mut Vec<Append>, deferred: &mut VecDeque<Generated>| {
            if in_chunk.contains(&g.key) || waiting.contains(&g.key) {
                waiting.insert(g.key);
                deferred.push_back(g);
            } else {
                in_chunk.insert(g.key);
                chunk.push(encode(g));
            }
        };
        for g in carried {
            place(g, &mut chunk, &mut deferred);
        }
        while chunk.len() < CHUNK && generated < count {
            generated += 1;
            place(workload.next_event(), &mut chunk, &mut deferred);
        }
        if tx.blocking_send(chunk).is_err() {
            break;
        }
    }
    workload
}

/// Writes the first `count` events of `workload` to a new store at `path`;
/// answers how many referrals they begin and how many are still open.
async fn write_events(path: &Path, workload: Workload, count: u64) -> Result<(u64, usize), BenchError> {
    let options = SqliteOptions { max_batch: CHUNK, ..Default::default() };
    let store = SqliteEventStore::open_with(path, options).map_err(setup)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Append>>(2);
    let generator = tokio::task::spawn_blocking(move || chunks(workload, count, tx));
    let mut failure = None;
    while let Some(chunk) = rx.recv().await {
        let store = &store;
        let results = futures::future::join_all(
            chunk.into_iter().map(|a| async move { store.append(&a.stream, a.expected, vec![a.event]).await }),
        )
        .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            failure = Some(e);
            break;
        }
    }
    drop(rx);
    let workload = generator.await.map_err(setup)?;
    if let Some(e) = failure {
        return Err(BenchError::Setup(format!("writing the generated log failed: {e}")));
    }
    drop(store);
    Ok((workload.referrals(), workload.open_referrals()))
}

/// Reads every projected event from the start and decodes it; returns how many.
async fn read_and_decode(store: Arc<dyn EventStore>) -> Result<u64, BenchError> {
    let operation = |e: String| BenchError::Operation(e);
    let mut subscription = store
        .subscribe_all(SubscriptionStart::Start, projected_streams())
        .await
        .map_err(|e| operation(e.to_string()))?;
    let mut count = 0u64;
    loop {
        match subscription.next().await.map_err(|e| operation(e.to_string()))? {
            SubscriptionMessage::Event(recorded) => {
                let event = ProjectedEvent::decode(recorded).map_err(|e| operation(e.to_string()))?;
                std::hint::black_box(&event);
                count += 1;
            }
            SubscriptionMessage::CaughtUp => return Ok(count),
        }
    }
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// What one rebuild took.
struct Rebuilt {
    /// Until every projection's new version was active at the head.
    seconds: f64,
    /// Until each one's was.
    each: Vec<(&'static str, f64)>,
}

/// One measured phase, as its process reports it on standard output.
#[derive(Debug, Serialize, Deserialize)]
pub struct PhaseOutcome {
    pub seconds: f64,
    /// Per projection, seconds until its new version was active at the head.
    pub each: Vec<(String, f64)>,
    /// The phase process's peak resident set size, MB.
    pub peak_rss_mb: f64,
}

/// Runs one phase in this process: `phase` is `baseline`, `all`, or the name
/// of one projection; `store` holds a log whose head is at `head`.
pub async fn run_phase(
    store_path: &Path,
    views_path: &Path,
    phase: &str,
    head: u64,
    options: RunnerOptions,
) -> Result<PhaseOutcome, BenchError> {
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(store_path).map_err(setup)?);
    let at = store.head_position().await.map_err(setup)?.ok_or_else(|| setup("the log is empty"))?;
    if at.commit != head {
        return Err(setup(format!("the log's head is at {at}, expected {head}")));
    }
    let (seconds, each) = if phase == BASELINE_PHASE {
        let began = Instant::now();
        let decoded = read_and_decode(store.clone()).await?;
        if decoded != head {
            return Err(BenchError::Operation(format!("the baseline read {decoded} events, expected {head}")));
        }
        (began.elapsed().as_secs_f64(), Vec::new())
    } else {
        let projections: Vec<Arc<dyn Projection>> = if phase == ALL_PHASE {
            all_projections()
        } else {
            all_projections().into_iter().filter(|p| p.name() == phase).collect()
        };
        if projections.is_empty() {
            return Err(setup(format!("no projection is named {phase:?}")));
        }
        let rebuilt = rebuild(store.clone(), views_path, projections, at, options).await?;
        (rebuilt.seconds, rebuilt.each.into_iter().map(|(n, s)| (n.to_string(), s)).collect())
    };
    drop(store);
    Ok(PhaseOutcome { seconds, each, peak_rss_mb: peak_rss_mb().unwrap_or(0.0) })
}

/// Runs one phase in a child process of `exe` and reads what it reports.
async fn phase_in_child(
    exe: &Path,
    store_path: &Path,
    views_path: &Path,
    phase: &str,
    head: u64,
    options: RunnerOptions,
) -> Result<PhaseOutcome, BenchError> {
    let args: Vec<OsString> = vec![
        PHASE_COMMAND.into(),
        "--store".into(),
        store_path.into(),
        "--views".into(),
        views_path.into(),
        "--phase".into(),
        phase.into(),
        "--head".into(),
        head.to_string().into(),
        "--batch-size".into(),
        options.rebuild_batch_size.to_string().into(),
    ];
    let output = tokio::process::Command::new(exe)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| setup(format!("cannot run {}: {e}", exe.display())))?;
    if !output.status.success() {
        return Err(BenchError::Operation(format!("the {phase} phase failed ({})", output.status)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
    serde_json::from_str(line)
        .map_err(|e| BenchError::Operation(format!("the {phase} phase reported {line:?}, not an outcome: {e}")))
}

/// Rebuilds `projections` at once on a fresh view database at `path`, from
/// position 0 to `head`; fails if any projection stops on an event.
async fn rebuild(
    store: Arc<dyn EventStore>,
    path: &Path,
    projections: Vec<Arc<dyn Projection>>,
    head: Position,
    options: RunnerOptions,
) -> Result<Rebuilt, BenchError> {
    let _ = std::fs::remove_dir_all(path);
    let db = ViewDb::open(path).map_err(setup)?;
    let projector = Projector::open(store, db, projections, options).await.map_err(setup)?;
    let outcome = run_rebuild(&projector, head).await;
    projector.shutdown().await;
    drop(projector);
    let _ = std::fs::remove_dir_all(path);
    outcome
}

async fn run_rebuild(projector: &Projector, head: Position) -> Result<Rebuilt, BenchError> {
    let operation = |e: String| BenchError::Operation(e);
    let names = projector.names();
    let started = Instant::now();
    let versions = projector.rebuild_together(&names).await.map_err(|e| operation(e.to_string()))?;
    let building: HashMap<&str, u32> = names.iter().copied().zip(versions).collect();
    // One waiter per projection notes when its new version went live at the head.
    let waiters: Vec<_> = names
        .iter()
        .map(|&name| {
            let projector = projector.clone();
            (
                name,
                tokio::spawn(async move {
                    while projector.wait_for(name, head, Duration::from_millis(500)).await.is_err() {}
                    started.elapsed().as_secs_f64()
                }),
            )
        })
        .collect();
    // Allow 5 ms per event on top of a minute before calling it stuck.
    let limit = Duration::from_secs(60) + Duration::from_millis(head.commit.saturating_mul(5));
    let outcome = loop {
        let status = projector.status().await.map_err(|e| operation(e.to_string()))?;
        let failed = status.iter().find_map(|s| {
            s.versions.iter().find_map(|v| {
                v.failure
                    .as_ref()
                    .map(|(at, why)| format!("projection {} v{} failed at {at}: {why}", s.name, v.version))
            })
        });
        if let Some(failure) = failed {
            break Err(operation(failure));
        }
        if waiters.iter().all(|(_, w)| w.is_finished()) {
            break Ok(());
        }
        if started.elapsed() > limit {
            break Err(operation(format!("the rebuild did not finish within {} s", limit.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut each = Vec::new();
    for (name, waiter) in waiters {
        if outcome.is_err() {
            waiter.abort();
            continue;
        }
        each.push((name, waiter.await.map_err(|e| operation(e.to_string()))?));
    }
    outcome?;
    let status = projector.status().await.map_err(|e| operation(e.to_string()))?;
    for s in &status {
        let active = s.active().ok_or_else(|| operation(format!("projection {} has no active version", s.name)))?;
        if Some(&active.version) != building.get(s.name.as_str())
            || active.checkpoint.map(|c| c.commit) < Some(head.commit)
        {
            return Err(operation(format!(
                "projection {}: version {} at {:?} is active, expected the rebuilt version {:?} at {head}",
                s.name,
                active.version,
                active.checkpoint,
                building.get(s.name.as_str())
            )));
        }
    }
    let seconds = each.iter().map(|(_, s)| *s).fold(0.0, f64::max);
    Ok(Rebuilt { seconds, each })
}

/// Measures the rebuild over a log of a quarter of `events` (all
/// projections at once) and over one of `events` (each projection alone,
/// then all at once), each beside the read-and-decode baseline.
pub async fn bench_rebuild(dir: &Path, events: u64, options: RunnerOptions) -> Result<BenchReport, BenchError> {
    if events == 0 {
        return Err(setup("--events must be at least 1"));
    }
    let sizes: Vec<u64> = if events >= 4 { vec![events / 4, events] } else { vec![events] };
    let exe = std::env::current_exe().map_err(|e| setup(format!("cannot find this program's executable: {e}")))?;
    let start = Utc::now() - chrono::Duration::days(365);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut engine_peak: f64 = 0.0;
    let views_path = dir.join("rebuild-views");
    for &size in &sizes {
        // Each size gets its own log, generated from the same seed (the
        // smaller one is the beginning of the larger one).
        let store_path = dir.join(format!("rebuild-events-{size}.db"));
        remove_db(&store_path);
        let began = Instant::now();
        let (referrals, open) = write_events(&store_path, Workload::new(SEED, PARTNERS, start), size).await?;
        notes.push(format!(
            "set-up: {size} events ({referrals} referrals, {open} still open at the end, {PARTNERS} partners) \
             written in {:.1} s",
            began.elapsed().as_secs_f64()
        ));
        let base = phase_in_child(&exe, &store_path, &views_path, BASELINE_PHASE, size, options).await?;
        let baseline = size as f64 / base.seconds.max(f64::MIN_POSITIVE);

        let mut measured: Vec<(String, String)> = Vec::new();
        if size == events {
            for projection in all_projections() {
                measured.push((projection.name().to_string(), projection.name().to_string()));
            }
        }
        measured.push((format!("all {} at once", all_projections().len()), ALL_PHASE.to_string()));
        for (label, phase) in measured {
            let rebuilt = phase_in_child(&exe, &store_path, &views_path, &phase, size, options).await?;
            engine_peak = engine_peak.max(rebuilt.peak_rss_mb);
            let value = size as f64 / rebuilt.seconds.max(f64::MIN_POSITIVE);
            if rebuilt.each.len() > 1 {
                let each: Vec<String> = rebuilt.each.iter().map(|(n, s)| format!("{n} {s:.1} s")).collect();
                notes.push(format!("{size} events, all at once: each active at the head after {}", each.join(", ")));
            }
            rows.push(BenchRow {
                writers: 1,
                value,
                baseline,
                ratio: value / baseline.max(f64::MIN_POSITIVE),
                label: Some(label),
                events: Some(size),
                seconds: Some(rebuilt.seconds),
                peak_rss_mb: Some(rebuilt.peak_rss_mb),
                baseline_peak_rss_mb: Some(base.peak_rss_mb),
                ..Default::default()
            });
        }
        remove_db(&store_path);
    }
    let flat: Vec<String> = rows
        .iter()
        .filter(|r| r.label.as_deref().is_some_and(|l| l.starts_with("all")))
        .map(|r| format!("{:.0} MB at {} events", r.peak_rss_mb.unwrap_or(0.0), r.events.unwrap_or(0)))
        .collect();
    notes.push(format!("peak RSS rebuilding all at once: {}", flat.join(", ")));
    notes.push(format!(
        "each phase ran in a process of its own ({} {PHASE_COMMAND}) that opened the store and a new view \
         database from disk; peak RSS is that process's VmHWM",
        exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    notes.push(format!(
        "runner options: rebuild_batch_size {}, buffer {}, group_buffer {}; one projection alone has a feeder of its \
         own, all at once share one (Projector::rebuild_together: the log read and decoded once); one applier per \
         projection, each writing its own file (views/<projection>.db) and committing every {} s while it \
         rebuilds (or once it holds its share of {} events or {} MiB of their payloads: all of it alone, a quarter \
         each when four rebuild)",
        options.rebuild_batch_size,
        options.buffer,
        options.group_buffer,
        CATCH_UP_COMMIT_TIME.as_secs_f64(),
        CATCH_UP_HELD_EVENTS,
        CATCH_UP_HELD_BYTES >> 20
    ));
    let headline_seconds = rows.last().and_then(|r| r.seconds).unwrap_or(0.0);
    let mut report = BenchReport::new("rebuild", "events/s", BASELINE, headline_seconds, rows);
    report.layout = Layout::Rebuild;
    report.value_description = Some(format!(
        "events/s rebuilding all four projections (referrals, timeline, history, deadlines) at once, blue/green \
         from position 0 through one shared feed: the {events} events in the log divided by the wall time from the \
         rebuild_together call until every new version is active at the log's head"
    ));
    report.target = Some("≥ 150,000 events/s; peak RSS < 300 MB and flat as the log grows".into());
    report.peak_rss_mb = engine_peak;
    report.notes = notes;
    Ok(report)
}

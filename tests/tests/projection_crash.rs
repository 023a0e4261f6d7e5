//! Kills an engine that is projecting its own workload with SIGKILL at random
//! moments, again and again on the same data directory, then checks that the
//! views it leaves behind are exactly what a rebuild from the log gives:
//! nothing applied twice, nothing missed, whatever batch a kill interrupted.
//!
//! The engine is `projecting-engine` (see `tests/src/bin`): several tasks
//! drive referral lifecycles through the command handler while the runner
//! applies batches to the four projections; some runs use tiny batches, some
//! start a blue/green rebuild that the kill may cut short. After the last
//! kill this test
//!
//! * lets a projector of its own resume every projection and catch up with
//!   the log (and finish any rebuild a run left behind);
//! * dumps every table of each projection's active version, rebuilds every
//!   projection from position 0 and dumps again: the dumps must be equal;
//! * checks the views against the log itself (one referrals row per referral
//!   stream holding the folded state, one timeline row per referral event,
//!   history counts, deals and reasons equal to the events' counts, deadlines
//!   exactly for the referrals still New, `events_applied` equal to the
//!   number of events projected), and every acknowledged command's position;
//! * checks that each run resumed from a checkpoint no earlier than the
//!   previous run's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use referral_domain::codec::{self, DomainEvent};
use referral_domain::eventlog::{AllStart, Direction, EventStore, RecordedEvent};
use referral_domain::referral::{evolve, ReferralEvent, ReferralState, Status};
use referral_infra::store::SqliteEventStore;
use referral_projections::runner::projected_streams;
use referral_projections::{
    all_projections, db, deadlines, history, referrals, timeline, ProjectionStatus, Projector, RunnerOptions, Version,
    ViewDb, ViewError,
};
use rusqlite::types::Value;

/// How many times the engine is started and killed (`PROJECTION_CRASH_KILLS`
/// overrides it, for longer runs by hand).
const KILLS: usize = 15;
/// Batch sizes the runs cycle through: the default, and small ones so that
/// catching up after a restart takes many transactions.
const BATCH_SIZES: [usize; 3] = [2_000, 5, 64];
/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(40);

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Complete lines of the child's stdout, as they arrive. A line the kill cut
/// short has no newline and is dropped.
fn lines(pipe: impl Read + Send + 'static) -> (mpsc::Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut pipe = BufReader::new(pipe);
        loop {
            let mut line = Vec::new();
            match pipe.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.last() == Some(&b'\n') => {
                    line.pop();
                    if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => return,
            }
        }
    });
    (rx, reader)
}

/// How one run of the engine is set up and when it is killed.
struct Plan {
    run: usize,
    seed: u64,
    batch_size: usize,
    rebuild: Option<&'static str>,
    /// Killed this long after it said `ready`, or (`after_ready` false)
    /// after it printed its checkpoints, that is while it starts the
    /// projections, catches up and registers the profiles.
    kill_after: Duration,
    after_ready: bool,
    /// How many `checkpoint` lines it prints.
    projections: usize,
}

/// Runs the engine, kills it with SIGKILL as planned and returns its lines.
fn run_and_kill(dir: &Path, plan: &Plan) -> Vec<String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_projecting-engine"));
    command.arg(dir).arg(plan.run.to_string()).arg(plan.seed.to_string()).arg(plan.batch_size.to_string());
    if let Some(name) = plan.rebuild {
        command.arg(name);
    }
    let mut child: Child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start projecting-engine");
    let (rx, reader) = lines(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let waited_for = |seen: &[String]| match plan.after_ready {
        true => seen.last().is_some_and(|l| l == "ready"),
        false => seen.iter().filter(|l| l.starts_with("checkpoint ")).count() == plan.projections,
    };
    while !waited_for(&seen) {
        match rx.recv_timeout(WAIT.saturating_sub(started.elapsed())) {
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("reap projecting-engine");
                let stderr = stderr.join().expect("stderr reader");
                panic!("run {}: projecting-engine ended before it was killed ({status}):\n{stderr}", plan.run);
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("run {}: projecting-engine did not start within {WAIT:?}: {seen:?}", plan.run);
            }
        }
    }
    std::thread::sleep(plan.kill_after);
    let exited_early = child.try_wait().expect("poll projecting-engine");
    if exited_early.is_none() {
        child.kill().expect("SIGKILL projecting-engine");
    }
    let status = child.wait().expect("reap projecting-engine");
    reader.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    if let Some(status) = exited_early {
        panic!("run {}: projecting-engine exited by itself with {status}:\n{stderr}", plan.run);
    }
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "projecting-engine should die of SIGKILL: {status}\n{stderr}");
    }
    seen.extend(rx.try_iter());
    seen
}

/// One `ack` line: a command the engine acknowledged.
#[derive(Debug)]
struct Ack {
    command: String,
    stream: String,
    revision: Option<u64>,
    commit: Option<u64>,
    events: u64,
}

fn parse_ack(line: &str) -> Ack {
    let f: Vec<&str> = line.split(' ').collect();
    assert!(f.len() == 6 && f[0] == "ack", "unexpected line from projecting-engine: {line:?}");
    let number = |s: &str| s.parse::<u64>().unwrap_or_else(|e| panic!("bad number {s:?} in {line:?}: {e}"));
    let optional = |s: &str| (s != "-").then(|| number(s));
    Ack {
        command: f[1].to_string(),
        stream: f[2].to_string(),
        revision: optional(f[3]),
        commit: optional(f[4]),
        events: number(f[5]),
    }
}

/// The checkpoints a run resumed from, by projection (`checkpoint` lines).
fn checkpoints(lines: &[String]) -> BTreeMap<String, Option<u64>> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("checkpoint "))
        .map(|rest| {
            let (name, at) = rest.split_once(' ').unwrap_or_else(|| panic!("bad checkpoint line {rest:?}"));
            (name.to_string(), (at != "-").then(|| at.parse::<u64>().expect("checkpoint commit")))
        })
        .collect()
}

/// Every row of every table of one projection version, by base table name,
/// sorted by all columns.
type Dump = BTreeMap<&'static str, Vec<Vec<Value>>>;

fn dump(views: &ViewDb, name: &'static str) -> (u32, Dump) {
    let projection = all_projections().into_iter().find(|p| p.name() == name).expect("projection");
    views
        .read(name, |tx| {
            let version = db::active_version(tx, name)?.ok_or(ViewError::NotReady(name))?;
            let mut out = Dump::new();
            for base in projection.tables() {
                let table = Version(version).table(base);
                let columns = tx.prepare(&format!("SELECT * FROM {table}"))?.column_count();
                let order: Vec<String> = (1..=columns).map(|i| i.to_string()).collect();
                let mut stmt = tx.prepare(&format!("SELECT * FROM {table} ORDER BY {}", order.join(", ")))?;
                let rows = stmt
                    .query_map([], |row| (0..columns).map(|i| row.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>())?
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert(base, rows);
            }
            Ok((version, out))
        })
        .unwrap_or_else(|e| panic!("dump {name}: {e}"))
}

/// Says how two dumps of one projection differ (a few rows of each side).
fn difference(before: &Dump, after: &Dump) -> String {
    let mut text = String::new();
    for (table, rows) in before {
        let other = &after[table];
        if rows == other {
            continue;
        }
        let only_before: Vec<_> = rows.iter().filter(|r| !other.contains(r)).take(5).collect();
        let only_after: Vec<_> = other.iter().filter(|r| !rows.contains(r)).take(5).collect();
        text.push_str(&format!(
            "\n{table}: {} rows before, {} after the rebuild\n  only before: {only_before:?}\n  only after: {only_after:?}",
            rows.len(),
            other.len()
        ));
    }
    text
}

/// Waits until every projection has one version, active, caught up with the
/// log, without a failure, and (if given) the version expected of it.
async fn settle(projector: &Projector, expected: &BTreeMap<String, u32>) -> Vec<ProjectionStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = projector.status().await.expect("status");
        for p in &status {
            for v in &p.versions {
                assert!(v.failure.is_none(), "projection {} version {} failed: {:?}", p.name, v.version, v.failure);
            }
        }
        let settled = status.iter().all(|p| {
            let one = p.versions.len() == 1 && p.versions[0].active && p.versions[0].lag_events == 0;
            let caught_up = p.versions[0].checkpoint == p.head;
            let version = expected.get(&p.name).is_none_or(|v| *v == p.versions[0].version);
            one && caught_up && version
        });
        if settled {
            return status;
        }
        assert!(Instant::now() < deadline, "the projections did not settle within {WAIT:?}: {status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the log says the views must hold.
#[derive(Debug, Default)]
struct FromLog {
    /// Referral id → folded state, last revision, last commit position.
    referrals: BTreeMap<String, (referral_domain::referral::Referral, u64, u64)>,
    /// (referral, revision, commit) of every referral event.
    timeline: BTreeSet<(String, u64, u64)>,
    received: i64,
    accepted: i64,
    declined: i64,
    expired: i64,
    won: i64,
    lost: i64,
    contacts: i64,
    updates: i64,
    won_minor_units: i64,
}

fn fold(log: &[RecordedEvent]) -> FromLog {
    let mut out = FromLog::default();
    let mut states: BTreeMap<String, ReferralState> = BTreeMap::new();
    for recorded in log {
        let event = match codec::decode(recorded).unwrap_or_else(|e| panic!("decode {recorded:?}: {e}")) {
            DomainEvent::Referral(event) => event,
            DomainEvent::Partner(_) => continue,
        };
        let id = event.referral().to_string();
        match &event {
            ReferralEvent::Received(_) => out.received += 1,
            ReferralEvent::Accepted(_) => out.accepted += 1,
            ReferralEvent::Declined(_) => out.declined += 1,
            ReferralEvent::Expired(_) => out.expired += 1,
            ReferralEvent::Won(w) => {
                out.won += 1;
                out.won_minor_units += w.final_value.minor_units;
            }
            ReferralEvent::Lost(_) => out.lost += 1,
            ReferralEvent::ContactAdded(_) => out.contacts += 1,
            ReferralEvent::EngagementUpdated(_) => out.updates += 1,
        }
        let state = evolve(states.remove(&id).unwrap_or(ReferralState(None)), &event);
        let referral =
            state.0.clone().unwrap_or_else(|| panic!("{} folds referral {id} into nothing", recorded.event_type));
        out.referrals.insert(id.clone(), (referral, recorded.revision.0, recorded.position.commit));
        out.timeline.insert((id.clone(), recorded.revision.0, recorded.position.commit));
        states.insert(id, state);
    }
    out
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::New => "new",
        Status::Active => "active",
        Status::Declined => "declined",
        Status::Expired => "expired",
        Status::Won => "won",
        Status::Lost => "lost",
    }
}

/// Checks the active views against the log.
fn check_against_log(views: &ViewDb, expected: &FromLog) {
    (|| -> Result<(), ViewError> {
        // A connection to the projection's file, and the table `base` of its active version.
        let table = |name: &'static str, base: &str| -> Result<(rusqlite::Connection, String), ViewError> {
            let conn = views.connect(name)?;
            let version = db::active_version(&conn, name)?.ok_or(ViewError::NotReady(name))?;
            Ok((conn, Version(version).table(base)))
        };

        // One referrals row per referral stream, holding the folded state.
        let (tx, t) = table(referrals::NAME, "referrals")?;
        let mut stmt = tx.prepare(&format!("SELECT referral, revision, position_commit, status, state FROM {t}"))?;
        let rows: BTreeMap<String, (u64, u64, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))))?
            .collect::<Result<_, _>>()?;
        assert_eq!(
            rows.keys().collect::<Vec<_>>(),
            expected.referrals.keys().collect::<Vec<_>>(),
            "the referrals view must have one row per referral stream"
        );
        for (id, (referral, revision, commit)) in &expected.referrals {
            let (row_revision, row_commit, status, state) = &rows[id];
            assert_eq!((row_revision, row_commit), (revision, commit), "revision and position of {id}");
            assert_eq!(status, status_name(referral.status), "status of {id}");
            let state: serde_json::Value = serde_json::from_str(state).expect("stored state is JSON");
            assert_eq!(state, serde_json::to_value(referral).expect("state to JSON"), "state of {id}");
        }

        // One timeline row per referral event.
        let (tx, t) = table(timeline::NAME, "timeline")?;
        let mut stmt = tx.prepare(&format!("SELECT referral, revision, position_commit FROM {t}"))?;
        let entries: BTreeSet<(String, u64, u64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        assert_eq!(entries.len(), expected.timeline.len(), "timeline rows");
        assert!(entries == expected.timeline, "the timeline differs from the log's referral events");

        // History: counts, reasons and deals as the events say.
        let (tx, t) = table(history::NAME, "history_stats")?;
        for kind in ["all", "region", "size_band"] {
            let sums: [i64; 6] = tx.query_row(
                &format!(
                    "SELECT TOTAL(received), TOTAL(accepted), TOTAL(declined), TOTAL(expired), TOTAL(won),
                                TOTAL(lost) FROM {t} WHERE kind = ?1"
                ),
                [kind],
                |r| Ok([r.get::<_, f64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?].map(|x| x as i64)),
            )?;
            let e = expected;
            assert_eq!(
                sums,
                [e.received, e.accepted, e.declined, e.expired, e.won, e.lost],
                "history counts (received, accepted, declined, expired, won, lost) of kind {kind:?}"
            );
        }
        let t = table(history::NAME, "history_referrals")?.1;
        let tracked: i64 = tx.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))?;
        assert_eq!(tracked, expected.received, "history_referrals rows");
        let t = table(history::NAME, "history_reasons")?.1;
        for (outcome, count) in [("declined", expected.declined), ("lost", expected.lost)] {
            let n: i64 =
                tx.query_row(&format!("SELECT COALESCE(SUM(count), 0) FROM {t} WHERE outcome = ?1"), [outcome], |r| {
                    r.get(0)
                })?;
            assert_eq!(n, count, "{outcome} reasons");
        }
        let t = table(history::NAME, "history_deals")?.1;
        let (deals, units): (i64, i64) =
            tx.query_row(&format!("SELECT COUNT(*), COALESCE(SUM(minor_units), 0) FROM {t}"), [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        assert_eq!((deals, units), (expected.won, expected.won_minor_units), "won deals and their values");

        // Deadlines: exactly the referrals still New.
        let (tx, t) = table(deadlines::NAME, "deadlines")?;
        let mut stmt = tx.prepare(&format!("SELECT referral FROM {t}"))?;
        let due: BTreeSet<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let new: BTreeSet<String> = expected
            .referrals
            .iter()
            .filter(|(_, (r, _, _))| r.status == Status::New)
            .map(|(id, _)| id.clone())
            .collect();
        assert!(due == new, "deadlines: {} rows, {} referrals still New", due.len(), new.len());
        Ok(())
    })()
    .expect("read the views");
}

/// Every projection's active version has applied each projected event once.
fn check_applied(status: &[ProjectionStatus], log: &[RecordedEvent], when: &str) {
    for p in status {
        let v = p.active().expect("active version");
        assert_eq!(v.events_applied, log.len() as u64, "{when}: events applied by {} version {}", p.name, v.version);
    }
}

#[test]
fn views_survive_sigkill_and_equal_a_rebuild() {
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("projection crash test seed {seed} (set CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temporary directory");
    let names: Vec<&'static str> = all_projections().iter().map(|p| p.name()).collect();
    let kills = std::env::var("PROJECTION_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(KILLS);

    let started = Instant::now();
    let mut lines = Vec::new();
    let mut resumed: Option<BTreeMap<String, Option<u64>>> = None;
    // The last position the previous run acknowledged, and how often a
    // projection resumed behind it (it was still applying when killed).
    let mut last_acked: Option<u64> = None;
    let mut resumed_behind = 0;
    for run in 0..kills {
        let plan = Plan {
            run,
            seed: rng.gen(),
            batch_size: BATCH_SIZES[run % BATCH_SIZES.len()],
            // Now and then a run starts a rebuild, which a kill may interrupt.
            rebuild: (run % 4 == 2).then(|| names[rng.gen_range(0..names.len())]),
            kill_after: Duration::from_millis(rng.gen_range(100..=500)),
            // Some kills land while the engine starts and catches up.
            after_ready: run % 3 != 1,
            projections: names.len(),
        };
        let output = run_and_kill(dir.path(), &plan);
        // A run resumes each projection no earlier than the previous one did.
        let now = checkpoints(&output);
        assert_eq!(now.len(), names.len(), "run {run} printed no checkpoints: {output:?}");
        if let Some(before) = &resumed {
            for (name, at) in &now {
                assert!(at >= &before[name], "run {run} resumed {name} at {at:?}, before {:?}", before[name]);
            }
        }
        resumed_behind += now.values().filter(|at| **at < last_acked).count();
        let acked = output.iter().filter(|l| l.starts_with("ack ")).filter_map(|l| parse_ack(l).commit).max();
        last_acked = acked.max(last_acked);
        resumed = Some(now);
        lines.extend(output);
    }
    let resumed = resumed.expect("runs");
    assert!(resumed.values().all(Option::is_some), "the last run found no checkpoints: {resumed:?}");
    let acks: Vec<Ack> = lines.iter().filter(|l| l.starts_with("ack ")).map(|l| parse_ack(l)).collect();
    let killed_after = started.elapsed();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).expect("reopen the store"));
        let views = ViewDb::open(&dir.path().join("views")).expect("reopen the views");
        let projector = Projector::open(store.clone(), views.clone(), all_projections(), RunnerOptions::default())
            .await
            .expect("projector");
        projector.start().await.expect("start the projections");

        let log = store
            .read_all(Direction::Forwards, AllStart::Start, &projected_streams(), usize::MAX)
            .await
            .expect("read the log");
        let head = log.last().expect("the engine wrote events").position;
        // Caught up, by the registry (a failure ends the wait at once) and by
        // the checkpoints the projector publishes for read-your-writes.
        let status = settle(&projector, &BTreeMap::new()).await;
        for name in &names {
            let reached = projector.wait_for(name, head, WAIT).await;
            assert!(reached.is_ok(), "{name} is at {reached:?}, the log ends at {head:?}");
        }
        check_applied(&status, &log, "after the kills");
        let before: BTreeMap<&str, (u32, Dump)> = names.iter().map(|n| (*n, dump(&views, n))).collect();

        let mut rebuilt = BTreeMap::new();
        for name in &names {
            let version = projector.rebuild(name).await.unwrap_or_else(|e| panic!("rebuild {name}: {e}"));
            assert!(version > before[name].0, "{name}: rebuild version {version}");
            rebuilt.insert(name.to_string(), version);
        }
        let status = settle(&projector, &rebuilt).await;
        check_applied(&status, &log, "after the rebuild");
        for name in &names {
            let (old, before) = &before[name];
            let (new, after) = dump(&views, name);
            assert_eq!(new, rebuilt[*name]);
            assert!(
                before == &after,
                "{name}: version {old}, built across the kills, differs from version {new}, rebuilt from the log:{}",
                difference(before, &after)
            );
        }

        let expected = fold(&log);
        check_against_log(&views, &expected);

        // Every acknowledged command is in the log where it was acknowledged.
        let at: BTreeMap<(&str, u64), u64> =
            log.iter().map(|e| ((e.stream.as_str(), e.revision.0), e.position.commit)).collect();
        for ack in acks.iter().filter(|a| a.events > 0) {
            let revision = ack.revision.expect("revision of a write");
            let commit = at.get(&(ack.stream.as_str(), revision));
            assert_eq!(commit, ack.commit.as_ref(), "acknowledged {ack:?}");
        }
        projector.shutdown().await;

        // Not vacuous: the runs did real work of every kind.
        let e = &expected;
        let rebuilds = lines.iter().filter(|l| l.starts_with("rebuild ")).count();
        let refusals = lines.iter().filter(|l| l.starts_with("refused ")).count();
        let unfinished = lines.iter().filter(|l| l.starts_with("unfinished-rebuild ")).count();
        let commands: BTreeMap<&str, usize> = acks.iter().fold(BTreeMap::new(), |mut m, a| {
            *m.entry(a.command.as_str()).or_default() += 1;
            m
        });
        eprintln!(
            "{kills} kills in {killed_after:?}; {} acknowledged commands {commands:?}, {refusals} refusals, {rebuilds} \
             rebuilds started by the engine ({unfinished} resumed after a kill), {resumed_behind} resumptions behind the previous run's last \
             acknowledged write; {} events projected, {} referrals: {} received, {} accepted, {} declined, \
             {} expired, {} won, {} lost, {} contacts, {} engagement updates; total {:?}",
            acks.len(),
            log.len(),
            e.referrals.len(),
            e.received,
            e.accepted,
            e.declined,
            e.expired,
            e.won,
            e.lost,
            e.contacts,
            e.updates,
            started.elapsed()
        );
        assert!(e.received >= 50, "only {} referrals were received", e.received);
        for (what, n) in [
            ("accepted", e.accepted),
            ("declined", e.declined),
            ("won", e.won),
            ("lost", e.lost),
            ("contacts", e.contacts),
            ("engagement updates", e.updates),
        ] {
            assert!(n > 0, "no {what} in {} events", log.len());
        }
    });
}

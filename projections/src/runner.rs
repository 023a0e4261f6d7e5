//! The projection runner: keeps every projection up to date with the log,
//! rebuilds them blue/green, and reports on them.
//!
//! Each projection version has a worker made of two halves joined by a
//! bounded channel:
//!
//! ```text
//! subscription to $all ──► feeder (async: read, decode) ──► applier (blocking thread)
//!   from the checkpoint                                     folds batches into changes held
//!                                                           in memory (reads, never writes);
//!                                                           then one write transaction:
//!                                                           changes + checkpoint together
//! ```
//!
//! Versions that start together from the same checkpoint (every version
//! when `serve` starts after a clean shutdown; the versions that
//! `rebuild_together` creates) share one feeder: the log is read and decoded
//! once and each event handed to every applier. The feeder waits for the
//! slowest applier, the others running up to `group_buffer` events ahead. A
//! version that stops (a failure, a transient error) leaves the group and
//! resumes with a feeder of its own.
//!
//! * Live, every batch is committed at once. Catching up (or rebuilding),
//!   the applier commits every 2 s (or sooner, once it holds its share of
//!   196,608 events or of 128 MiB of their payloads), so a row that several
//!   events change is written once. Each projection has a file of its own with one writer
//!   connection, so different projections commit side by side; only the
//!   versions of one projection (a live one and its rebuild) take turns.
//! * The applier skips anything at or before its checkpoint, so a
//!   redelivered event changes nothing.
//! * An event a projection cannot apply stops that projection; the event's
//!   position and the error are stored, the events before it are committed,
//!   and nothing after it is applied until `retry`.
//! * A rebuild creates the next version's tables and fills them from position
//!   0 while the current version keeps answering queries, without secondary
//!   indexes. Once the new version has caught up (and is at least as far as
//!   the current one) its indexes are built, and one transaction makes it
//!   active and drops the old tables; the old worker notices at its next
//!   commit and stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use referral_domain::codec::CodecError;
use referral_domain::eventlog::{
    AllFilter, AllStart, Direction, EventStore, Position, StoreError, Subscription, SubscriptionMessage,
    SubscriptionStart,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::db::{self, ViewDb};
use crate::projection::{create_indexes, drop_tables, Applier, BatchError, ProjectedEvent, Projection, Version};
use crate::ViewError;

/// Tuning of the runner.
#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    /// Most events applied at once, and (live) in one transaction. A batch
    /// takes the feeder's hand-offs whole, so it may pass this by fewer than
    /// `FEED_CHUNK` (64) events.
    pub batch_size: usize,
    /// Most events applied at once while a version is being rebuilt (it
    /// commits every `CATCH_UP_COMMIT_TIME`, or sooner once it holds its
    /// share of `CATCH_UP_HELD_EVENTS` or `CATCH_UP_HELD_BYTES`).
    pub rebuild_batch_size: usize,
    /// Decoded events buffered between the feeder and the applier (in
    /// hand-offs of up to `FEED_CHUNK` events, rounded up to whole ones).
    pub buffer: usize,
    /// Decoded events buffered for each member of a group that shares a
    /// feed. The feed waits for its slowest member, so this is how far the
    /// others may run ahead of it (the events are shared, not copied).
    pub group_buffer: usize,
}

impl Default for RunnerOptions {
    /// Measured rebuilding all four projections together over 250,000
    /// events (single runs, which vary by a third on the 2-core machine): a
    /// group buffer of 1,024 took 31 s; 8,192 took 18.6-21.6 s in four runs
    /// at 190-210 MB peak; 16,384 23 s at 239 MB; 32,768 17 s at 267 MB.
    fn default() -> Self {
        RunnerOptions { batch_size: 2_000, rebuild_batch_size: 1_000, buffer: 1_024, group_buffer: 8_192 }
    }
}

/// What a projection version is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Applying the events written before it started.
    CatchingUp,
    /// Caught up; applying events as they are written.
    Live,
    /// A next version being built from position 0.
    Rebuilding,
    /// Stopped on an event it could not apply; see the failure.
    Failed,
    /// Not running in this process.
    Stopped,
    /// Active, but built with another schema than this build's projection:
    /// it answers queries as of its checkpoint and applies nothing more
    /// until the version this build starts for it is swapped in.
    Outdated,
}

/// Why an active version does not move on by itself (see [`Projector::halted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// Stopped on the event at `at`; resumes there when retried.
    Failed { checkpoint: Option<Position>, at: Position, error: String },
    /// Built with schema `schema`, not this build's `current`: frozen at its
    /// checkpoint while the version replacing it is built.
    Outdated { checkpoint: Option<Position>, schema: u32, current: u32 },
}

impl RunState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::CatchingUp => "catching up",
            RunState::Live => "live",
            RunState::Rebuilding => "rebuilding",
            RunState::Failed => "failed",
            RunState::Stopped => "stopped",
            RunState::Outdated => "outdated",
        }
    }
}

/// One version of a projection, as `status` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionStatus {
    pub version: u32,
    /// The projection code's schema this version was built with.
    pub schema: u32,
    /// Whether this version answers queries.
    pub active: bool,
    pub state: RunState,
    pub checkpoint: Option<Position>,
    pub events_applied: u64,
    /// When the store recorded the last event applied.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Events in the log after the checkpoint.
    pub lag_events: u64,
    /// How much older the checkpoint's event is than the newest event.
    pub lag_seconds: f64,
    /// Events applied per second since this worker started (0 when not running).
    pub events_per_second: f64,
    /// Fraction of the log (by position) behind the checkpoint, 0–1.
    pub progress: f64,
    /// Estimated seconds until caught up, while catching up or rebuilding.
    pub eta_seconds: Option<f64>,
    /// The event position it stopped at and why.
    pub failure: Option<(Position, String)>,
}

/// A projection, as `status` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionStatus {
    pub name: String,
    pub schema: u32,
    /// The newest event in the log that projections read.
    pub head: Option<Position>,
    /// The active version first, then a rebuild in progress if any.
    pub versions: Vec<VersionStatus>,
}

impl ProjectionStatus {
    pub fn active(&self) -> Option<&VersionStatus> {
        self.versions.iter().find(|v| v.active)
    }

    pub fn rebuilding(&self) -> Option<&VersionStatus> {
        self.versions.iter().find(|v| !v.active)
    }
}

#[derive(Debug, Clone)]
struct Runtime {
    state: RunState,
    started: Instant,
    applied: u64,
}

struct Shared {
    store: Arc<dyn EventStore>,
    db: ViewDb,
    projections: Vec<Arc<dyn Projection>>,
    filter: AllFilter,
    options: RunnerOptions,
    runtime: Mutex<HashMap<(&'static str, u32), Runtime>>,
    /// The active version's checkpoint, per projection, for read-your-writes.
    checkpoints: HashMap<&'static str, watch::Sender<Option<Position>>>,
    retry: HashMap<&'static str, Arc<Notify>>,
    shutdown: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// An active version built with another schema, and the version replacing it.
struct Replacing {
    outdated: db::VersionRecord,
    building: u32,
}

/// Runs the projections. Cheap to clone.
#[derive(Clone)]
pub struct Projector {
    shared: Arc<Shared>,
}

/// The streams projections read: referrals and partners (partner events move
/// checkpoints forward even where a view ignores them, so that waiting for a
/// profile command's position ends).
pub fn projected_streams() -> AllFilter {
    AllFilter::streams_starting_with(&["referral-", "partner-"])
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ViewError> + Send + 'static,
) -> Result<T, ViewError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ViewError::Storage(format!("view task failed: {e}")))?
}

impl Projector {
    /// Prepares the registry: a projection seen for the first time gets
    /// version 1, empty. Starts nothing; see [`Projector::start`].
    pub async fn open(
        store: Arc<dyn EventStore>,
        db: ViewDb,
        projections: Vec<Arc<dyn Projection>>,
        options: RunnerOptions,
    ) -> Result<Projector, ViewError> {
        let mut checkpoints = HashMap::new();
        let mut retry = HashMap::new();
        for p in &projections {
            let (db, p2) = (db.clone(), p.clone());
            let checkpoint = blocking(move || {
                let p = p2;
                db.write(p.name(), |tx| -> Result<Option<Position>, ViewError> {
                    match db::active_version(tx, p.name())? {
                        Some(v) => Ok(db::version(tx, p.name(), v)?.and_then(|r| r.checkpoint)),
                        None => {
                            db::insert_version(tx, p.name(), 1, p.schema(), true)?;
                            p.create(tx, Version(1))?;
                            create_indexes(tx, p.as_ref(), Version(1))?;
                            Ok(None)
                        }
                    }
                })
            })
            .await?;
            checkpoints.insert(p.name(), watch::channel(checkpoint).0);
            retry.insert(p.name(), Arc::new(Notify::new()));
        }
        let shared = Shared {
            store,
            db,
            projections,
            filter: projected_streams(),
            options,
            runtime: Mutex::new(HashMap::new()),
            checkpoints,
            retry,
            shutdown: watch::channel(false).0,
            workers: Mutex::new(Vec::new()),
        };
        Ok(Projector { shared: Arc::new(shared) })
    }

    pub fn db(&self) -> &ViewDb {
        &self.shared.db
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.shared.projections.iter().map(|p| p.name()).collect()
    }

    fn projection(&self, name: &str) -> Result<Arc<dyn Projection>, ViewError> {
        self.shared
            .projections
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .ok_or_else(|| ViewError::UnknownProjection { name: name.to_string(), known: self.names().join(", ") })
    }

    /// Starts a worker for every version in the registry: the active ones,
    /// and any rebuild an earlier run left unfinished. Versions whose
    /// checkpoints are equal (as they are after a clean shutdown) read the
    /// log through one shared feed. A projection whose code changed its
    /// schema is rebuilt (see [`Projector::versions_to_run`]).
    pub async fn start(&self) -> Result<(), ViewError> {
        let mut by_checkpoint: Vec<(Option<Position>, Vec<Member>)> = Vec::new();
        for p in self.shared.projections.clone() {
            for record in self.versions_to_run(&p).await? {
                let version = Version(record.version);
                if record.failure.is_some() {
                    // It waits for a retry; no feed to share.
                    self.spawn_worker(p.clone(), version, None);
                    continue;
                }
                let member = Member { projection: p.clone(), version, checkpoint: record.checkpoint };
                match by_checkpoint.iter_mut().find(|(at, _)| *at == record.checkpoint) {
                    Some((_, members)) => members.push(member),
                    None => by_checkpoint.push((record.checkpoint, vec![member])),
                }
            }
        }
        for (_, members) in by_checkpoint {
            self.start_group(members);
        }
        Ok(())
    }

    /// Starts workers for the versions of `name` only, as [`Projector::start`]
    /// does for every projection. For tools that work on one projection in
    /// their own process (e.g. finishing a rebuild offline).
    pub async fn start_one(&self, name: &str) -> Result<(), ViewError> {
        let projection = self.projection(name)?;
        for record in self.versions_to_run(&projection).await? {
            self.spawn_worker(projection.clone(), Version(record.version), None);
        }
        Ok(())
    }

    /// The versions of `p` to run workers for. A version built with another
    /// schema than this build's `p.schema()` is never run: this build's code
    /// would write rows of one shape into tables of another. Such an active
    /// version keeps answering queries as of its checkpoint while a version
    /// with this build's schema is built from position 0 and swapped in, as
    /// any rebuild is; such an unfinished rebuild is abandoned (and, if the
    /// active version is current, not replaced).
    async fn versions_to_run(&self, p: &Arc<dyn Projection>) -> Result<Vec<db::VersionRecord>, ViewError> {
        let (db, projection) = (self.shared.db.clone(), p.clone());
        let (records, replacing) = blocking(move || {
            db.write(projection.name(), |tx| -> Result<(Vec<db::VersionRecord>, Option<Replacing>), ViewError> {
                let (name, schema) = (projection.name(), projection.schema());
                let mut records = db::versions(tx, name)?;
                drop_rebuilds_of_other_schemas(tx, projection.as_ref(), &records)?;
                records.retain(|r| r.active || r.schema == schema);
                let Some(outdated) = records.iter().find(|r| r.active && r.schema != schema).cloned() else {
                    return Ok((records, None));
                };
                records.retain(|r| !r.active);
                if records.is_empty() {
                    let next = create_next_version(tx, projection.as_ref())?;
                    records = db::version(tx, name, next)?.into_iter().collect();
                }
                let building = records[0].version;
                Ok((records, Some(Replacing { outdated, building })))
            })
        })
        .await?;
        if let Some(Replacing { outdated, building }) = replacing {
            tracing::warn!(
                projection = p.name(),
                version = outdated.version,
                built_with_schema = outdated.schema,
                schema = p.schema(),
                rebuilding_as = building,
                "a projection version built with another schema answers queries as of its checkpoint until \
                 the version rebuilt with this build's schema replaces it"
            );
        }
        Ok(records)
    }

    fn spawn_worker(&self, projection: Arc<dyn Projection>, version: Version, feed: Option<mpsc::Receiver<Feed>>) {
        let shared = self.shared.clone();
        let handle = tokio::spawn(worker(shared, projection, version, feed));
        self.shared.workers.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
    }

    /// Starts workers for `members` that read the log through one feed: one
    /// subscription from the earliest of their checkpoints, each event read
    /// and decoded once and handed to every member, which skips what it has
    /// already applied. A member that stops for any reason (a failure, a
    /// transient error) carries on with a feed of its own.
    fn start_group(&self, members: Vec<Member>) {
        if members.len() < 2 {
            for member in members {
                self.spawn_worker(member.projection, member.version, None);
            }
            return;
        }
        let from = members.iter().map(|m| m.checkpoint).min().flatten();
        let mut senders = Vec::with_capacity(members.len());
        for member in members {
            let (tx, rx) = mpsc::channel(chunks_for(self.shared.options.group_buffer));
            senders.push(tx);
            self.spawn_worker(member.projection, member.version, Some(rx));
        }
        let start = from.map(SubscriptionStart::After).unwrap_or(SubscriptionStart::Start);
        let feeder = tokio::spawn(shared_feed(self.shared.clone(), start, senders));
        self.shared.workers.lock().unwrap_or_else(|p| p.into_inner()).push(feeder);
    }

    /// Starts a blue/green rebuild of `name` and returns the version being built.
    /// Refused while a rebuild of `name` is already running.
    pub async fn rebuild(&self, name: &str) -> Result<u32, ViewError> {
        let versions = self.rebuild_together(&[name]).await?;
        Ok(versions[0])
    }

    /// Starts blue/green rebuilds of every projection in `names` at once,
    /// reading the log through one shared feed, and returns the versions
    /// being built, in the order of `names`. Refused, with nothing started,
    /// when a name is unknown, repeated, or already being rebuilt.
    pub async fn rebuild_together(&self, names: &[&str]) -> Result<Vec<u32>, ViewError> {
        let mut projections: Vec<Arc<dyn Projection>> = Vec::with_capacity(names.len());
        for name in names {
            let projection = self.projection(name)?;
            if projections.iter().any(|p| p.name() == projection.name()) {
                return Err(ViewError::InvalidArgument { field: "names", reason: format!("{name} is named twice") });
            }
            projections.push(projection);
        }
        let (db, ps) = (self.shared.db.clone(), projections.clone());
        let versions = blocking(move || {
            // Every file's writer is held (taken in name order, as nothing
            // else takes two) until all are checked, so two rebuilds asked
            // for at once cannot both start.
            let mut by_name: Vec<&Arc<dyn Projection>> = ps.iter().collect();
            by_name.sort_by_key(|p| p.name());
            let files = by_name.iter().map(|p| db.file(p.name())).collect::<Result<Vec<_>, _>>()?;
            let open = files.iter().map(|f| f.begin()).collect::<Result<Vec<_>, _>>()?;
            for (p, tx) in by_name.iter().zip(&open) {
                let versions = db::versions(tx.conn(), p.name())?;
                drop_rebuilds_of_other_schemas(tx.conn(), p.as_ref(), &versions)?;
                if let Some(building) = versions.iter().find(|v| !v.active && v.schema == p.schema()) {
                    return Err(ViewError::RebuildInProgress { name: p.name().to_string(), version: building.version });
                }
            }
            let mut next = HashMap::new();
            for (p, tx) in by_name.iter().zip(&open) {
                next.insert(p.name(), create_next_version(tx.conn(), p.as_ref())?);
            }
            // Files commit one by one: should a later commit fail, the
            // versions already committed are resumed at the next start.
            for tx in open {
                tx.commit()?;
            }
            Ok(ps.iter().map(|p| next[p.name()]).collect::<Vec<u32>>())
        })
        .await?;
        let members = projections
            .into_iter()
            .zip(&versions)
            .map(|(projection, &version)| Member { projection, version: Version(version), checkpoint: None })
            .collect();
        self.start_group(members);
        Ok(versions)
    }

    /// Abandons the rebuild of `name` in progress, failed or not: its worker
    /// stops, its tables are dropped and it leaves the registry, so the
    /// active version is the only one again. Returns the abandoned version,
    /// or `None` when no rebuild was in progress (or it has just been
    /// swapped in).
    pub async fn abandon(&self, name: &str) -> Result<Option<u32>, ViewError> {
        let projection = self.projection(name)?;
        let (db, p) = (self.shared.db.clone(), projection.clone());
        let abandoned = blocking(move || {
            db.write(p.name(), |tx| -> Result<Option<u32>, ViewError> {
                let Some(building) = db::versions(tx, p.name())?.into_iter().find(|v| !v.active) else {
                    return Ok(None);
                };
                drop_tables(tx, p.as_ref(), Version(building.version))?;
                db::abandon_version(tx, p.name(), building.version)?;
                Ok(Some(building.version))
            })
        })
        .await?;
        // A failed worker waits for a retry: wake it, so it finds its
        // version gone and stops. A running one stops at its next commit.
        if let Some(notify) = self.shared.retry.get(projection.name()) {
            notify.notify_waiters();
        }
        Ok(abandoned)
    }

    /// Clears the failure of `name`'s versions so their workers resume from
    /// the event that failed. Returns whether any version had failed.
    pub async fn retry(&self, name: &str) -> Result<bool, ViewError> {
        let projection = self.projection(name)?;
        let db = self.shared.db.clone();
        let cleared = blocking(move || {
            db.write(projection.name(), |tx| -> Result<bool, ViewError> {
                let mut cleared = false;
                for v in db::versions(tx, projection.name())? {
                    if v.failure.is_some() {
                        db::save_failure(tx, projection.name(), v.version, None)?;
                        cleared = true;
                    }
                }
                Ok(cleared)
            })
        })
        .await?;
        if let Some(notify) = self.shared.retry.get(name) {
            notify.notify_waiters();
        }
        Ok(cleared)
    }

    /// Why the active version of `name` will not move on by itself, if it
    /// will not: it stopped on an event, or it was built with another schema
    /// and answers as of its checkpoint until its replacement is swapped in.
    /// Read-your-writes waits ask this first rather than wait in vain.
    pub async fn halted(&self, name: &str) -> Result<Option<Halt>, ViewError> {
        let projection = self.projection(name)?;
        let schema = projection.schema();
        let db = self.shared.db.clone();
        let active = blocking(move || {
            db.read(projection.name(), |tx| Ok(db::versions(tx, projection.name())?))
                .map(|versions| versions.into_iter().find(|v| v.active))
        })
        .await?;
        let Some(active) = active else { return Ok(None) };
        Ok(match active.failure {
            Some((at, error)) => Some(Halt::Failed { checkpoint: active.checkpoint, at, error }),
            None if active.schema != schema => {
                Some(Halt::Outdated { checkpoint: active.checkpoint, schema: active.schema, current: schema })
            }
            None => None,
        })
    }

    /// Waits until the active version of `name` has applied the event at
    /// `min` (or a later one). Returns the checkpoint reached, or `Err` with
    /// the checkpoint it is at when `timeout` runs out.
    pub async fn wait_for(&self, name: &str, min: Position, timeout: Duration) -> Result<(), Option<Position>> {
        let Some(sender) = self.shared.checkpoints.get(name) else { return Err(None) };
        let mut rx = sender.subscribe();
        let reached = |cp: &Option<Position>| cp.is_some_and(|cp| cp.commit >= min.commit);
        let waited = tokio::time::timeout(timeout, async { rx.wait_for(reached).await.is_ok() }).await;
        match waited {
            Ok(true) => Ok(()),
            _ => Err(*rx.borrow()),
        }
    }

    /// The checkpoint of the active version of `name`, as this process knows it.
    pub fn checkpoint(&self, name: &str) -> Option<Position> {
        self.shared.checkpoints.get(name).and_then(|s| *s.borrow())
    }

    /// Every projection's versions, checkpoints, lag and failures.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, ViewError> {
        let head = self
            .shared
            .store
            .read_all(Direction::Backwards, AllStart::End, &self.shared.filter, 1)
            .await
            .map_err(|e| ViewError::Store(e.to_string()))?
            .pop();
        let (head_position, head_at) = (head.as_ref().map(|e| e.position), head.map(|e| e.created));
        let mut out = Vec::new();
        for p in &self.shared.projections {
            let (db, name) = (self.shared.db.clone(), p.name());
            let records = blocking(move || db.read(name, |tx| Ok(db::versions(tx, name)?))).await?;
            let runtime = self.shared.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let versions = records
                .into_iter()
                .map(|r| {
                    let rt = runtime.get(&(p.name(), r.version));
                    let behind = |cp: Option<Position>| match (head_position, cp) {
                        (Some(h), Some(c)) => h.commit.saturating_sub(c.commit),
                        (Some(h), None) => h.commit + 1,
                        (None, _) => 0,
                    };
                    let lag_events = behind(r.checkpoint);
                    let lag_seconds = match (lag_events, head_at, r.last_event_at) {
                        (0, _, _) => 0.0,
                        (_, Some(h), Some(l)) => (h - l).num_milliseconds().max(0) as f64 / 1000.0,
                        (_, Some(h), None) => (Utc::now() - h).num_milliseconds().max(0) as f64 / 1000.0,
                        _ => 0.0,
                    };
                    let progress = match (head_position, r.checkpoint) {
                        (Some(h), Some(c)) if h.commit > 0 => (c.commit as f64 / h.commit as f64).min(1.0),
                        (Some(_), None) => 0.0,
                        _ => 1.0,
                    };
                    let state = match (&r.failure, rt) {
                        _ if r.active && r.schema != p.schema() => RunState::Outdated,
                        (Some(_), _) => RunState::Failed,
                        (None, Some(rt)) => rt.state,
                        (None, None) => RunState::Stopped,
                    };
                    let (rate, eta) = match rt {
                        Some(rt) if state != RunState::Failed => {
                            let elapsed = rt.started.elapsed().as_secs_f64();
                            let rate = if elapsed > 0.0 { rt.applied as f64 / elapsed } else { 0.0 };
                            let eta = (lag_events > 0 && progress > 0.0 && state != RunState::Live)
                                .then(|| elapsed * (1.0 - progress) / progress);
                            (rate, eta)
                        }
                        _ => (0.0, None),
                    };
                    VersionStatus {
                        version: r.version,
                        schema: r.schema,
                        active: r.active,
                        state,
                        checkpoint: r.checkpoint,
                        events_applied: r.events_applied,
                        last_event_at: r.last_event_at,
                        lag_events,
                        lag_seconds,
                        events_per_second: rate,
                        progress,
                        eta_seconds: eta,
                        failure: r.failure,
                    }
                })
                .collect();
            out.push(ProjectionStatus {
                name: p.name().to_string(),
                schema: p.schema(),
                head: head_position,
                versions,
            });
        }
        Ok(out)
    }

    /// Stops every worker after its current batch.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let workers = std::mem::take(&mut *self.shared.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in workers {
            let _ = w.await;
        }
    }
}

/// What the feeder hands the applier.
#[derive(Clone)]
enum Feed {
    /// Consecutive events, in log order: up to [`FEED_CHUNK`] while the log
    /// is read ahead of its head, often one when live.
    Events(Arc<[Arc<ProjectedEvent>]>),
    CaughtUp,
    Undecodable(Position, CodecError),
    Failed(StoreError),
}

/// Why an applier returned.
enum Ended {
    /// The feeder stopped (shutdown, or the channel closed).
    Closed,
    /// Another version replaced this one.
    Superseded,
    /// Stopped on an event; the failure is recorded.
    Failed,
    /// The projection refused the event at this position while other
    /// events were held with it; replay up to it one batch at a time.
    Refused(Position),
    /// The store or the view database failed; try again after a pause.
    Transient(String),
}

impl Shared {
    fn set_state(&self, name: &'static str, version: Version, state: RunState) {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime.entry((name, version.0)).and_modify(|r| r.state = state).or_insert(Runtime {
            state,
            started: Instant::now(),
            applied: 0,
        });
    }

    /// Each catching-up applier's share of [`CATCH_UP_HELD_EVENTS`] and
    /// [`CATCH_UP_HELD_BYTES`].
    fn held_share(&self) -> HeldShare {
        let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        let catching_up =
            runtime.values().filter(|r| matches!(r.state, RunState::CatchingUp | RunState::Rebuilding)).count();
        HeldShare::of(catching_up)
    }

    fn count(&self, name: &'static str, version: Version, applied: u64) {
        if let Some(r) = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&(name, version.0)) {
            r.applied += applied;
        }
    }

    fn forget(&self, name: &'static str, version: Version) {
        self.runtime.lock().unwrap_or_else(|p| p.into_inner()).remove(&(name, version.0));
    }

    fn publish(&self, name: &'static str, checkpoint: Option<Position>) {
        if let Some(sender) = self.checkpoints.get(name) {
            sender.send_replace(checkpoint);
        }
    }
}

/// A member of a group that shares a feed. See [`Projector::start_group`].
struct Member {
    projection: Arc<dyn Projection>,
    version: Version,
    /// Where the registry said it stood when the group formed; its worker
    /// reads the registry again before it applies anything.
    checkpoint: Option<Position>,
}

/// Runs one projection version until it is superseded or the projector shuts
/// down. `group_feed`, when given, is the version's share of a group's feed,
/// used for its first run; every later run subscribes on its own.
async fn worker(
    shared: Arc<Shared>,
    projection: Arc<dyn Projection>,
    version: Version,
    mut group_feed: Option<mpsc::Receiver<Feed>>,
) {
    let name = projection.name();
    let mut shutdown = shared.shutdown.subscribe();
    let retry = shared.retry[name].clone();
    let mut pause = Duration::from_millis(50);
    // Set after an event was refused inside a transaction that also held
    // other events: replay up to it one batch per transaction.
    let mut careful_until = None;
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        // A group's feed serves the first run only; dropped unused, the
        // group goes on without this version.
        let given_feed = group_feed.take();
        // Created before the registry is read: a `retry` that clears the
        // failure after the read still wakes the wait below.
        let notified = retry.notified();
        let db = shared.db.clone();
        let record = match blocking(move || db.read(name, |tx| Ok(db::version(tx, name, version.0)?))).await {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(projection = name, version = version.0, error = %e, "cannot read the registry");
                back_off(&mut shutdown, &mut pause).await;
                continue;
            }
        };
        if record.failure.is_some() {
            shared.set_state(name, version, RunState::Failed);
            tokio::select! {
                _ = notified => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let rebuilding = !record.active;
        shared.set_state(name, version, if rebuilding { RunState::Rebuilding } else { RunState::CatchingUp });
        let (rx, feeder) = match given_feed {
            Some(rx) => (rx, None),
            None => {
                let start = record.checkpoint.map(SubscriptionStart::After).unwrap_or(SubscriptionStart::Start);
                let subscription = match shared.store.subscribe_all(start, shared.filter.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(projection = name, version = version.0, error = %e, "cannot subscribe to the log");
                        back_off(&mut shutdown, &mut pause).await;
                        continue;
                    }
                };
                let (tx, rx) = mpsc::channel(chunks_for(shared.options.buffer));
                (rx, Some(tokio::spawn(feed(subscription, vec![tx], shared.shutdown.subscribe()))))
            }
        };
        let applier = {
            let (shared, projection) = (shared.clone(), projection.clone());
            tokio::task::spawn_blocking(move || {
                apply_loop(&shared, projection.as_ref(), version, rebuilding, careful_until, rx)
            })
        };
        let ended = applier.await.unwrap_or_else(|e| Ended::Transient(format!("applier panicked: {e}")));
        if let Some(feeder) = feeder {
            feeder.abort();
        }
        match ended {
            Ended::Closed => continue,
            Ended::Superseded => break,
            Ended::Failed => {
                pause = Duration::from_millis(50);
                careful_until = None;
                continue;
            }
            Ended::Refused(position) => {
                careful_until = Some(position);
                continue;
            }
            Ended::Transient(error) => {
                tracing::warn!(projection = name, version = version.0, %error, "projection paused; retrying");
                back_off(&mut shutdown, &mut pause).await;
            }
        }
    }
    shared.forget(name, version);
}

/// Waits `pause` (or until shutdown), then doubles it, up to 5 s.
async fn back_off(shutdown: &mut watch::Receiver<bool>, pause: &mut Duration) {
    tokio::select! {
        _ = tokio::time::sleep(*pause) => {}
        _ = shutdown.changed() => {}
    }
    *pause = (*pause * 2).min(Duration::from_secs(5));
}

/// Reads the log from `start` for a group of versions (see
/// [`Projector::start_group`]): a subscription that cannot be opened is
/// reported to every member as a store failure.
async fn shared_feed(shared: Arc<Shared>, start: SubscriptionStart, senders: Vec<mpsc::Sender<Feed>>) {
    let shutdown = shared.shutdown.subscribe();
    match shared.store.subscribe_all(start, shared.filter.clone()).await {
        Ok(subscription) => feed(subscription, senders, shutdown).await,
        Err(e) => {
            for tx in senders {
                let _ = tx.send(Feed::Failed(e.clone())).await;
            }
        }
    }
}

/// The most events the feeder hands over at once. Catching up, one
/// hand-off per event cost a channel send and often a thread wake-up for
/// each event and each applier (some 4 % of a rebuild's CPU); live, the
/// feeder hands over whatever it has as soon as the log has nothing more,
/// so chunks add no wait.
const FEED_CHUNK: usize = 64;

/// Channel capacity, in chunks, for a buffer of `events` events.
fn chunks_for(events: usize) -> usize {
    events.div_ceil(FEED_CHUNK).max(2)
}

/// Reads `subscription`, decodes each event once and hands it to every
/// sender still listening, in chunks of the events the subscription had
/// ready; returns when no sender is listening, at shutdown, or after an
/// event that cannot be decoded or a store failure.
async fn feed(
    mut subscription: Box<dyn Subscription>,
    mut senders: Vec<mpsc::Sender<Feed>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut chunk: Vec<Arc<ProjectedEvent>> = Vec::with_capacity(FEED_CHUNK);
    while !senders.is_empty() {
        if *shutdown.borrow_and_update() {
            return;
        }
        let message = {
            let mut next = subscription.next();
            // What the subscription has without waiting joins the chunk;
            // before waiting for more, the chunk is handed over. The same
            // `next` is then awaited, so nothing it started is dropped.
            let ready = if chunk.len() < FEED_CHUNK {
                std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(next.as_mut(), cx))).await
            } else {
                std::task::Poll::Pending
            };
            match ready {
                std::task::Poll::Ready(message) => message,
                std::task::Poll::Pending => {
                    if !chunk.is_empty() {
                        senders = hand_over(senders, Feed::Events(chunk.drain(..).collect())).await;
                        if senders.is_empty() {
                            return;
                        }
                    }
                    tokio::select! {
                        m = &mut next => m,
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let item = match message {
            Ok(SubscriptionMessage::Event(recorded)) => {
                let position = recorded.position;
                match ProjectedEvent::decode(recorded) {
                    Ok(event) => {
                        chunk.push(Arc::new(event));
                        continue;
                    }
                    Err(e) => Feed::Undecodable(position, e),
                }
            }
            Ok(SubscriptionMessage::CaughtUp) => Feed::CaughtUp,
            Err(e) => Feed::Failed(e),
        };
        // The events before it go first.
        if !chunk.is_empty() {
            senders = hand_over(senders, Feed::Events(chunk.drain(..).collect())).await;
        }
        let last = matches!(item, Feed::Undecodable(..) | Feed::Failed(_));
        senders = hand_over(senders, item).await;
        if last {
            return;
        }
    }
}

/// Sends `item` to every sender; returns those still listening.
async fn hand_over(senders: Vec<mpsc::Sender<Feed>>, item: Feed) -> Vec<mpsc::Sender<Feed>> {
    let mut listening = Vec::with_capacity(senders.len());
    for tx in senders {
        if tx.send(item.clone()).await.is_ok() {
            listening.push(tx);
        }
    }
    listening
}

/// How long a catching-up applier waits for its batch to fill before it
/// commits what it has, so a slow log still moves the checkpoint.
const BATCH_FILL_TIME: Duration = Duration::from_millis(200);

/// How long a catching-up (or rebuilding) applier holds applied events
/// before it commits them. Its applier keeps their changes in memory, so
/// fewer, larger commits write each row fewer times; a live version commits
/// every batch at once. The referrals view changes rows all over its table,
/// and each commit writes every page it touched (to the WAL, then again at
/// the checkpoint), so the window sets how often a page is written.
/// Measured over 250,000 events, each projection in its own file: referrals
/// alone wrote 1.17 GB in 16.9 s at 250 ms, 0.58 GB in 8.9 s at 1 s (146 MB
/// peak), 0.42 GB in 7.9 s at 2 s; all four together 2.0 GB in 20.0 s at
/// 250 ms (202 MB), 1.37 GB in 17.1 s at 1 s (232 MB), 1.12 GB in 16.1 s at
/// 2 s (291 MB). 2 s became affordable once each SQLite connection kept a
/// page cache of its own (see `.cargo/config.toml`), which took some 80 MB
/// off a rebuild's peak.
pub const CATCH_UP_COMMIT_TIME: Duration = Duration::from_secs(2);

/// The most events the catching-up appliers of this process hold, shared
/// equally among them: one commits once it holds its share, whatever the
/// time, since what it holds is in memory. Rebuilding all four over
/// 1,000,000 events, with every connection's page cache its own: 46.7 s on
/// average (43.2-50.7, four runs) at 174-195 MB peak with 98,304 and 1 s
/// commits; 40.7 s (37.5-43.3) at 242-259 MB with 196,608 and 2 s commits.
/// A projection rebuilt alone gets the whole budget.
pub const CATCH_UP_HELD_EVENTS: u64 = 196_608;

/// The most bytes of event payload the catching-up appliers of this
/// process hold, shared like [`CATCH_UP_HELD_EVENTS`]. What an applier keeps
/// grows with the payloads it applied (a timeline row carries its event's
/// JSON, a referral row its RFI), so a log of large events commits sooner
/// rather than holding 196,608 of them. `bench rebuild`'s events average
/// 374 bytes (73 MB for the whole event budget), so there the event count
/// decides; of events of 10 KB, each of four appliers would hold some
/// 3,300. Both limits are checked after each batch, so an applier may pass
/// its share by the batch it has just applied (at most `batch_size` events).
pub const CATCH_UP_HELD_BYTES: u64 = 128 << 20;

/// One catching-up applier's share of what may be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeldShare {
    events: u64,
    bytes: u64,
}

impl HeldShare {
    /// The share of each of `catching_up` appliers.
    fn of(catching_up: usize) -> HeldShare {
        let n = catching_up.max(1) as u64;
        HeldShare { events: CATCH_UP_HELD_EVENTS / n, bytes: CATCH_UP_HELD_BYTES / n }
    }
}

/// Moves `first`, and what follows it in the channel, into `batch` until it
/// holds `limit` events; while catching up it waits until `fill_until` for
/// more. Returns the item that stops the projection, if one came.
fn gather(
    rx: &mut mpsc::Receiver<Feed>,
    first: Feed,
    batch: &mut Vec<Arc<ProjectedEvent>>,
    limit: usize,
    caught_up: &mut bool,
    fill_until: Option<tokio::time::Instant>,
) -> Option<Feed> {
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match item {
            Feed::Events(events) => batch.extend(events.iter().cloned()),
            Feed::CaughtUp => *caught_up = true,
            other => return Some(other),
        }
        if batch.len() < limit {
            // Catching up, a batch waits (briefly) to be full: the events are
            // already in the log. Live, it takes what has arrived.
            next = match (rx.try_recv(), fill_until) {
                (Ok(item), _) => Some(item),
                (Err(_), Some(until)) if !*caught_up => {
                    let runtime = tokio::runtime::Handle::current();
                    runtime.block_on(tokio::time::timeout_at(until, rx.recv())).ok().flatten()
                }
                (Err(_), _) => None,
            };
        }
    }
    None
}

/// Events applied but not committed yet.
struct Held {
    since: Instant,
    checkpoint: Position,
    last_event_at: DateTime<Utc>,
    applied: u64,
    /// The payload bytes of the events applied.
    bytes: u64,
}

impl Held {
    /// Whether this holds a whole share (of events or of bytes).
    fn fills(&self, share: HeldShare) -> bool {
        self.applied >= share.events || self.bytes >= share.bytes
    }
}

/// Why held events were not committed.
enum Abandoned {
    Superseded,
    Storage(String),
}

impl From<rusqlite::Error> for Abandoned {
    fn from(e: rusqlite::Error) -> Self {
        Abandoned::Storage(e.to_string())
    }
}

/// Flushes the applier, saves the checkpoint of the last held event and
/// commits, in one write transaction. `committed` is the checkpoint this
/// worker last committed: if the registry says otherwise, another writer
/// moved it and nothing is written.
fn flush_and_commit(
    db: &ViewDb,
    name: &str,
    version: Version,
    applier: &mut dyn Applier,
    committed: Option<Position>,
    held: &Held,
) -> Result<(), Abandoned> {
    let file = db.file(name)?;
    let open = file.begin()?;
    let record = db::version(open.conn(), name, version.0)?.ok_or(Abandoned::Superseded)?;
    if record.checkpoint != committed {
        return Err(Abandoned::Storage(format!(
            "the checkpoint moved from {committed:?} to {:?} under this worker",
            record.checkpoint
        )));
    }
    applier.flush(open.conn()).map_err(|e| Abandoned::Storage(e.to_string()))?;
    db::save_checkpoint(open.conn(), name, version.0, held.checkpoint, held.applied, held.last_event_at)?;
    open.commit()?;
    Ok(())
}

fn apply_loop(
    shared: &Shared,
    projection: &dyn Projection,
    version: Version,
    mut rebuilding: bool,
    careful_until: Option<Position>,
    mut rx: mpsc::Receiver<Feed>,
) -> Ended {
    let name = projection.name();
    // For the applier's reads; writes go through the database's writer.
    let conn = match shared.db.connect(name) {
        Ok(c) => c,
        Err(e) => return Ended::Transient(e.to_string()),
    };
    // This worker is its version's only writer: the checkpoint is read once.
    let mut committed = match shared.db.read(name, |tx| Ok(db::version(tx, name, version.0)?)) {
        Ok(Some(record)) => record.checkpoint,
        Ok(None) => return Ended::Superseded,
        Err(e) => return Ended::Transient(e.to_string()),
    };
    let runtime = tokio::runtime::Handle::current();
    let mut applier = projection.applier(version);
    let mut held: Option<Held> = None;
    let mut caught_up = false;
    loop {
        // Wait for events; with events held, only until they are due.
        let (first, closed) = match &held {
            None => match rx.blocking_recv() {
                Some(item) => (Some(item), false),
                None => return Ended::Closed,
            },
            Some(h) => {
                let due = tokio::time::Instant::from_std(h.since + CATCH_UP_COMMIT_TIME);
                match runtime.block_on(tokio::time::timeout_at(due, rx.recv())) {
                    Ok(Some(item)) => (Some(item), false),
                    Ok(None) => (None, true),
                    Err(_) => (None, false),
                }
            }
        };
        let limit = if rebuilding { shared.options.rebuild_batch_size } else { shared.options.batch_size };
        let mut batch: Vec<Arc<ProjectedEvent>> = Vec::new();
        let mut stop = None;
        if let Some(first) = first {
            let fill_until = held.is_none().then(|| tokio::time::Instant::now() + BATCH_FILL_TIME);
            stop = gather(&mut rx, first, &mut batch, limit, &mut caught_up, fill_until);
        }
        if careful_until.is_some_and(|p| batch.first().is_some_and(|e| e.position <= p)) {
            // Replaying towards an event the projection refused: one batch
            // per transaction, so the events before it are kept.
            applier.reset();
            match commit(&shared.db, projection, version, &batch) {
                Ok(outcome) => {
                    committed = outcome.checkpoint;
                    shared.count(name, version, outcome.applied);
                    if !rebuilding {
                        shared.publish(name, outcome.checkpoint);
                    }
                }
                Err(CommitError::Superseded) => return Ended::Superseded,
                Err(CommitError::Failed { position, error }) => {
                    tracing::error!(projection = name, version = version.0, %position, %error, "projection stopped");
                    return Ended::Failed;
                }
                Err(CommitError::Storage(e)) => return Ended::Transient(e),
            }
        } else {
            let newest = held.as_ref().map(|h| h.checkpoint).or(committed);
            let skip = batch.partition_point(|e| newest.is_some_and(|c| e.position <= c));
            let fresh = &batch[skip..];
            if let Some(last) = fresh.last() {
                if let Err(BatchError { index, .. }) = applier.apply(&conn, fresh) {
                    // What was held is lost with the applier's memory; the
                    // worker replays from the committed checkpoint.
                    applier.reset();
                    return Ended::Refused(fresh[index].position);
                }
                let h = held.get_or_insert(Held {
                    since: Instant::now(),
                    checkpoint: last.position,
                    last_event_at: last.recorded_at,
                    applied: 0,
                    bytes: 0,
                });
                h.checkpoint = last.position;
                h.last_event_at = last.recorded_at;
                h.applied += fresh.len() as u64;
                h.bytes += fresh.iter().map(|e| e.data.len() as u64).sum::<u64>();
            }
        }
        let due = held.as_ref().is_some_and(|h| {
            caught_up
                || stop.is_some()
                || closed
                || h.since.elapsed() >= CATCH_UP_COMMIT_TIME
                || h.fills(shared.held_share())
        });
        if let Some(h) = held.take_if(|_| due) {
            match flush_and_commit(&shared.db, name, version, applier.as_mut(), committed, &h) {
                Ok(()) => {
                    committed = Some(h.checkpoint);
                    shared.count(name, version, h.applied);
                    if !rebuilding {
                        shared.publish(name, committed);
                    }
                }
                Err(Abandoned::Superseded) => return Ended::Superseded,
                Err(Abandoned::Storage(e)) => {
                    applier.reset();
                    return Ended::Transient(e);
                }
            }
        }
        if closed {
            return Ended::Closed;
        }
        match stop {
            Some(Feed::Undecodable(position, error)) => {
                let error = error.to_string();
                tracing::error!(projection = name, version = version.0, %position, %error, "projection stopped");
                return match record_failure(&shared.db, name, version, position, &error) {
                    Ok(()) => Ended::Failed,
                    Err(e) => Ended::Transient(e),
                };
            }
            Some(Feed::Failed(e)) => return Ended::Transient(e.to_string()),
            _ => {}
        }
        if caught_up && held.is_none() {
            if !rebuilding {
                shared.set_state(name, version, RunState::Live);
            } else if rx.is_empty() {
                if let Err(e) = shared.db.write(name, |tx| create_indexes(tx, projection, version)) {
                    return Ended::Transient(e.to_string());
                }
                match swap_in(&shared.db, projection, version) {
                    Ok(Some(checkpoint)) => {
                        tracing::info!(projection = name, version = version.0, "rebuild finished; now active");
                        rebuilding = false;
                        shared.set_state(name, version, RunState::Live);
                        shared.publish(name, checkpoint);
                    }
                    Ok(None) => {}
                    Err(CommitError::Superseded) => return Ended::Superseded,
                    Err(CommitError::Storage(e)) => return Ended::Transient(e),
                    Err(CommitError::Failed { .. }) => return Ended::Failed,
                }
            }
        }
    }
}

/// Why a batch did not commit.
#[derive(Debug)]
pub enum CommitError {
    /// The version is no longer in the registry (a rebuild replaced it).
    Superseded,
    /// The projection refused the event at `position`; the failure is recorded
    /// and the events before it are committed.
    Failed {
        position: Position,
        error: String,
    },
    Storage(String),
}

impl From<rusqlite::Error> for CommitError {
    fn from(e: rusqlite::Error) -> Self {
        CommitError::Storage(e.to_string())
    }
}

enum TxAbort {
    Superseded,
    Batch(BatchError, usize),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for TxAbort {
    fn from(e: rusqlite::Error) -> Self {
        TxAbort::Sql(e)
    }
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Events applied (the batch minus those at or before the checkpoint).
    pub applied: u64,
    pub checkpoint: Option<Position>,
}

/// Applies `events` (in log order) to `version` of `projection` in one
/// transaction with its checkpoint. Events at or before the stored checkpoint
/// are skipped. When the projection refuses an event, the events before it
/// are committed, the failure is recorded, and `Failed` says where.
pub fn commit(
    db: &ViewDb,
    projection: &dyn Projection,
    version: Version,
    events: &[Arc<ProjectedEvent>],
) -> Result<Committed, CommitError> {
    let name = projection.name();
    let attempt = db.write(name, |tx| -> Result<Committed, TxAbort> {
        let record = db::version(tx, name, version.0)?.ok_or(TxAbort::Superseded)?;
        let skip = events.partition_point(|e| record.checkpoint.is_some_and(|c| e.position <= c));
        let fresh = &events[skip..];
        let Some(last) = fresh.last() else {
            return Ok(Committed { applied: 0, checkpoint: record.checkpoint });
        };
        projection.apply_batch(tx, version, fresh).map_err(|e| TxAbort::Batch(e, skip))?;
        db::save_checkpoint(tx, name, version.0, last.position, fresh.len() as u64, last.recorded_at)?;
        Ok(Committed { applied: fresh.len() as u64, checkpoint: Some(last.position) })
    });
    match attempt {
        Ok(done) => Ok(done),
        Err(TxAbort::Superseded) => Err(CommitError::Superseded),
        Err(TxAbort::Sql(e)) => Err(e.into()),
        Err(TxAbort::Batch(BatchError { index, error }, skip)) => {
            let failing = skip + index;
            if failing > skip {
                // The events before the failing one are fine on their own:
                // keep them, so the checkpoint stops right before the failure.
                commit(db, projection, version, &events[..failing])?;
            }
            let position = events[failing].position;
            let error = format!(
                "{} at revision {} of {}: {error}",
                events[failing].event_type, events[failing].revision, events[failing].stream
            );
            record_failure(db, name, version, position, &error).map_err(CommitError::Storage)?;
            Err(CommitError::Failed { position, error })
        }
    }
}

fn record_failure(db: &ViewDb, name: &str, version: Version, position: Position, error: &str) -> Result<(), String> {
    db.write(name, |tx| db::save_failure(tx, name, version.0, Some((position, error)))).map_err(|e| e.to_string())
}

/// Registers the next version of `p` (to be rebuilt, with this build's
/// schema) and creates its empty tables.
fn create_next_version(tx: &rusqlite::Connection, p: &dyn Projection) -> Result<u32, ViewError> {
    let next = db::next_version(tx, p.name())?;
    db::insert_version(tx, p.name(), next, p.schema(), false)?;
    drop_tables(tx, p, Version(next))?;
    p.create(tx, Version(next))?;
    Ok(next)
}

/// Abandons the rebuilds in `versions` built with another schema than this
/// build's: another build left them, no worker here runs them, and this
/// build's code must not carry them on.
fn drop_rebuilds_of_other_schemas(
    tx: &rusqlite::Connection,
    p: &dyn Projection,
    versions: &[db::VersionRecord],
) -> Result<(), ViewError> {
    for stale in versions.iter().filter(|v| !v.active && v.schema != p.schema()) {
        drop_tables(tx, p, Version(stale.version))?;
        db::abandon_version(tx, p.name(), stale.version)?;
    }
    Ok(())
}

/// Makes `version` the active one if it is at least as far as the current
/// active version, dropping the old one's tables. `Ok(None)` means not yet.
fn swap_in(
    db: &ViewDb,
    projection: &dyn Projection,
    version: Version,
) -> Result<Option<Option<Position>>, CommitError> {
    let name = projection.name();
    db.write(name, |tx| -> Result<Option<Option<Position>>, CommitError> {
        let me = db::version(tx, name, version.0)?.ok_or(CommitError::Superseded)?;
        if me.failure.is_some() {
            return Err(CommitError::Failed { position: Position::START, error: "failed".into() });
        }
        if let Some(current) = db::active_version(tx, name)? {
            if current != version.0 {
                let old = db::version(tx, name, current)?.ok_or(CommitError::Superseded)?;
                if old.checkpoint.map(|c| c.commit) > me.checkpoint.map(|c| c.commit) {
                    return Ok(None);
                }
                drop_tables(tx, projection, Version(current))?;
                db::delete_version(tx, name, current)?;
            }
        }
        create_indexes(tx, projection, version)?;
        db::activate(tx, name, version.0)?;
        Ok(Some(me.checkpoint))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(applied: u64, bytes: u64) -> Held {
        Held {
            since: Instant::now(),
            checkpoint: Position::START,
            last_event_at: DateTime::<Utc>::MIN_UTC,
            applied,
            bytes,
        }
    }

    #[test]
    fn appliers_catching_up_together_share_what_may_be_held_equally() {
        let whole = HeldShare { events: CATCH_UP_HELD_EVENTS, bytes: CATCH_UP_HELD_BYTES };
        assert_eq!(HeldShare::of(0), whole);
        assert_eq!(HeldShare::of(1), whole);
        assert_eq!(HeldShare::of(4), HeldShare { events: CATCH_UP_HELD_EVENTS / 4, bytes: CATCH_UP_HELD_BYTES / 4 });
    }

    #[test]
    fn small_events_fill_a_share_by_their_count_and_large_ones_by_their_bytes() {
        let share = HeldShare::of(4);
        // Events of bench rebuild's average size: the count decides.
        assert!(!held(share.events - 1, (share.events - 1) * 374).fills(share));
        assert!(held(share.events, share.events * 374).fills(share));
        // Events of 10 KB: the bytes decide, long before the count would.
        let fit = share.bytes / 10_240;
        assert!(fit * 4 < share.events, "{fit} events of 10 KB fit in a share of {share:?}");
        assert!(!held(fit, fit * 10_240).fills(share));
        assert!(held(fit + 1, (fit + 1) * 10_240).fills(share));
    }
}

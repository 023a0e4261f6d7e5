//! The projection runner against a real `SqliteEventStore` in a temporary
//! directory, fed by the real `CommandHandler`: live projection and
//! read-your-writes, restarts that resume from the checkpoint, blue/green
//! rebuilds, and projections that stop on an event they cannot apply.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Duration as Days;
use futures::StreamExt;
use referral_commands::{Actor, CommandContext, CommandHandler, ManualClock, RfiTarget, Role, SubmitRfi};
use referral_domain::codec::{self, DomainEvent, EventMetadata, CURRENT_SCHEMA_VERSION};
use referral_domain::eventlog::{
    AllFilter, AllStart, AppendResult, DeleteResult, Direction, EventData, EventStore, ExpectedRevision, Position,
    RecordedEvent, StoreError, StreamName, StreamRevision, StreamStart, Subscription, SubscriptionMessage,
    SubscriptionStart,
};
use referral_domain::ids::{CommandId, PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::profile::{LocationInput, PartnerAction, PartnerCommand, ProfileInput};
use referral_domain::referral::{
    AcceptReferral, Consent, CustomerInput, Engagement, MoneyInput, ReferralAccepted, ReferralAction, ReferralCommand,
    ReferralEvent, ReferralExpired, RequirementsInput, Source, Status,
};
use referral_domain::values::{ContactInput, Money, ReasonCode, SizeBand};
use referral_infra::store::SqliteEventStore;
use referral_projections::history::HistoryProjection;
use referral_projections::referrals::{List, ListFilter, ReferralsProjection};
use referral_projections::runner::projected_streams;
use referral_projections::{
    all_projections, db, Halt, Projection, Projector, RunState, RunnerOptions, Version, VersionStatus, ViewDb,
    ViewError, Views,
};
use referral_tests::test_epoch;
use tokio::sync::watch;
use uuid::Uuid;

const A: &str = "contoso";
const B: &str = "northwind";
const NAMES: [&str; 4] = ["referrals", "timeline", "history", "deadlines"];
/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// A store whose rebuild subscriptions can be held at a gate
// ---------------------------------------------------------------------------

/// Wraps the real store. While armed, a subscription from the start of the
/// log (which only a rebuild makes once the live workers are running)
/// delivers `allow` messages and then waits until the gate opens, so that a
/// test can look at a rebuild half-way, for as long as it likes.
struct GatedStore {
    inner: Arc<dyn EventStore>,
    armed: AtomicBool,
    allow: usize,
    open: watch::Sender<bool>,
    /// Subscriptions opened so far.
    subscriptions: AtomicUsize,
}

impl GatedStore {
    fn new(inner: Arc<dyn EventStore>, allow: usize) -> Arc<GatedStore> {
        Arc::new(GatedStore {
            inner,
            armed: AtomicBool::new(false),
            allow,
            open: watch::channel(false).0,
            subscriptions: AtomicUsize::new(0),
        })
    }

    fn arm(&self) {
        self.open.send_replace(false);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.armed.store(false, Ordering::SeqCst);
        self.open.send_replace(true);
    }

    fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::SeqCst)
    }
}

struct GatedSubscription {
    inner: Box<dyn Subscription>,
    left: usize,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl Subscription for GatedSubscription {
    async fn next(&mut self) -> Result<SubscriptionMessage, StoreError> {
        if self.left == 0 {
            // An error means the gate is gone: nothing holds the rebuild any more.
            let _ = self.open.wait_for(|open| *open).await;
        } else {
            self.left -= 1;
        }
        self.inner.next().await
    }
}

#[async_trait]
impl EventStore for GatedStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        direction: Direction,
        from: StreamStart,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, direction, from, max_count).await
    }

    async fn read_all(
        &self,
        direction: Direction,
        from: AllStart,
        filter: &AllFilter,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(direction, from, filter, max_count).await
    }

    async fn subscribe_all(
        &self,
        start: SubscriptionStart,
        filter: AllFilter,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        let inner = self.inner.subscribe_all(start, filter).await?;
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        if start == SubscriptionStart::Start && self.armed.load(Ordering::SeqCst) {
            return Ok(Box::new(GatedSubscription { inner, left: self.allow, open: self.open.subscribe() }));
        }
        Ok(inner)
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<DeleteResult, StoreError> {
        self.inner.delete_stream(stream, expected).await
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult, StoreError> {
        self.inner.tombstone_stream(stream, expected).await
    }

    async fn head_position(&self) -> Result<Option<Position>, StoreError> {
        self.inner.head_position().await
    }
}

// ---------------------------------------------------------------------------
// The write side
// ---------------------------------------------------------------------------

fn open_store(dir: &Path) -> Arc<dyn EventStore> {
    Arc::new(SqliteEventStore::open(&dir.join("events.db")).expect("open the event store"))
}

fn handler(store: Arc<dyn EventStore>) -> CommandHandler {
    CommandHandler::new(store, Arc::new(ManualClock::new(test_epoch())))
}

fn ctx(role: Role, partner: Option<&str>) -> CommandContext {
    let actor = Actor { role, partner: partner.map(|p| PartnerId::parse(p).unwrap()), name: "test".into() };
    CommandContext::new(CommandId::parse(&Uuid::new_v4().to_string()).unwrap(), actor)
}

/// Registers an `emea` profile for `partner`; the position it was written at.
async fn register(h: &CommandHandler, partner: &str) -> Position {
    let command = PartnerCommand {
        partner: PartnerId::parse(partner).unwrap(),
        action: PartnerAction::RegisterProfile(ProfileInput {
            region: "emea".into(),
            company_name: format!("{partner} GmbH"),
            description: String::new(),
            locations: vec![LocationInput { id: "berlin".into(), name: "Berlin".into(), contacts: vec![] }],
            expertise: Default::default(),
            target_sizes: vec![],
        }),
    };
    h.execute_partner(&ctx(Role::Intake, None), command).await.expect("register").position.expect("written")
}

/// Sends RFI `rfi` to `partners` in `emea`: each referral and its position.
async fn submit(h: &CommandHandler, rfi: &str, partners: &[&str]) -> Vec<(ReferralId, Position)> {
    let command = SubmitRfi {
        rfi: RfiId::parse(rfi).unwrap(),
        targets: partners
            .iter()
            .map(|p| RfiTarget {
                partner: PartnerId::parse(p).unwrap(),
                region: RegionId::parse("emea").unwrap(),
                location: None,
            })
            .collect(),
        customer: CustomerInput {
            company_name: "Fabrikam AG".into(),
            industry: "manufacturing".into(),
            size_band: Some(SizeBand::S51To250),
            country: "DE".into(),
            contact: ContactInput::new("Jonas Weber", "jonas@fabrikam.example", ""),
        },
        requirements: RequirementsInput {
            description: "Move our ERP to the cloud.".into(),
            products: vec!["erp".into()],
            services: vec![],
            keywords: vec!["cloud".into()],
        },
        consent: Consent { contact: true, share_details: true },
        direct_contact_requested: false,
        source: Source::PartnerSearch,
        received_at: None,
    };
    let submitted = h.submit_rfi(&ctx(Role::Intake, None), command).await.expect("submit RFI");
    submitted.into_iter().map(|s| (s.referral, s.written.position.expect("written"))).collect()
}

async fn act(h: &CommandHandler, partner: &str, referral: ReferralId, action: ReferralAction) -> Position {
    let command = ReferralCommand { referral, action };
    let written = h.execute_referral(&ctx(Role::Partner, Some(partner)), command).await.expect("command");
    written.position.expect("written")
}

async fn accept(h: &CommandHandler, partner: &str, referral: ReferralId) -> Position {
    let today = test_epoch().date_naive();
    let action = ReferralAction::Accept(AcceptReferral {
        engagement_name: "ERP migration".into(),
        estimated_value: MoneyInput { currency_code: "EUR".into(), units: 50_000, nanos: 0 },
        estimated_purchase_date: Some(today + Days::days(30)),
        notes: "Finance first.".into(),
        ..AcceptReferral::default()
    });
    act(h, partner, referral, action).await
}

async fn decline(h: &CommandHandler, partner: &str, referral: ReferralId) -> Position {
    let action = ReferralAction::Decline { reason: Some(ReasonCode::TimelineTooShort), notes: String::new() };
    act(h, partner, referral, action).await
}

/// What a batch of commands wrote.
#[derive(Debug, Default)]
struct Written {
    /// Referrals of A and of B, in RFI order.
    ours: Vec<ReferralId>,
    theirs: Vec<ReferralId>,
    last: Option<Position>,
}

/// `rfis` RFIs to both partners (numbered from `first`), concurrently.
async fn submit_many(h: &CommandHandler, first: usize, rfis: usize) -> Written {
    let results: Vec<Vec<(ReferralId, Position)>> = futures::stream::iter(first..first + rfis)
        .map(|i| {
            let h = h.clone();
            async move { submit(&h, &format!("rfi-{i}"), &[A, B]).await }
        })
        .buffered(32)
        .collect()
        .await;
    let mut out = Written::default();
    for r in results {
        out.ours.push(r[0].0);
        out.theirs.push(r[1].0);
        out.last = out.last.max(Some(r[0].1)).max(Some(r[1].1));
    }
    out
}

/// A store at `dir` with profiles for A and B and `rfis` RFIs to both.
async fn two_partners(dir: &Path, rfis: usize) -> (Arc<dyn EventStore>, CommandHandler, Written) {
    let store = open_store(dir);
    let h = handler(store.clone());
    register(&h, A).await;
    register(&h, B).await;
    let written = submit_many(&h, 0, rfis).await;
    (store, h, written)
}

/// Runs the commands `f` makes for `ids`, 32 at a time; the last position.
async fn each<F, Fut>(ids: &[ReferralId], f: F) -> Position
where
    F: Fn(ReferralId) -> Fut,
    Fut: Future<Output = Position>,
{
    let positions: Vec<Position> =
        futures::stream::iter(ids.iter().copied().map(f)).buffer_unordered(32).collect().await;
    positions.into_iter().max().expect("at least one command")
}

// ---------------------------------------------------------------------------
// The read side
// ---------------------------------------------------------------------------

fn small_batches() -> RunnerOptions {
    RunnerOptions { batch_size: 64, rebuild_batch_size: 64, buffer: 256, group_buffer: 256 }
}

async fn open_projector(store: Arc<dyn EventStore>, dir: &Path, options: RunnerOptions) -> Projector {
    let db = ViewDb::open(&dir.join("views")).expect("open views");
    Projector::open(store, db, all_projections(), options).await.expect("open projector")
}

async fn start_projector(store: Arc<dyn EventStore>, dir: &Path, options: RunnerOptions) -> Projector {
    let projector = open_projector(store, dir, options).await;
    projector.start().await.expect("start");
    projector
}

/// Waits until every projection has applied `position`.
async fn caught_up(projector: &Projector, position: Position) {
    for name in NAMES {
        if let Err(at) = projector.wait_for(name, position, PATIENCE).await {
            panic!("{name} did not reach {position} (it is at {at:?})");
        }
    }
}

/// Polls `check` until it returns `Some`, or fails the test after `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The versions `status` reports for `name`.
async fn versions(projector: &Projector, name: &str) -> Vec<VersionStatus> {
    let status = projector.status().await.expect("status");
    status.into_iter().find(|s| s.name == name).expect("a projection of that name").versions
}

/// Every event projections read, in log order.
async fn projected_log(store: &Arc<dyn EventStore>) -> Vec<RecordedEvent> {
    store.read_all(Direction::Forwards, AllStart::Start, &projected_streams(), 1_000_000).await.expect("read $all")
}

fn table_names(db: &ViewDb) -> Vec<String> {
    schema_names(db, "table")
}

/// The secondary indexes (not those SQLite makes for primary keys).
fn index_names(db: &ViewDb) -> Vec<String> {
    schema_names(db, "index").into_iter().filter(|n| !n.starts_with("sqlite_autoindex")).collect()
}

/// The names of the tables or indexes in every projection's file, once each.
fn schema_names(db: &ViewDb, kind: &str) -> Vec<String> {
    let mut names = Vec::new();
    for p in all_projections() {
        let conn = db.connect(p.name()).unwrap();
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = ?1").unwrap();
        names.extend(stmt.query_map([kind], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap));
    }
    names.sort();
    names.dedup();
    names
}

fn of(partner: &str) -> ListFilter {
    ListFilter { partner: Some(partner.into()), ..ListFilter::default() }
}

async fn status_of(views: &Views, id: ReferralId) -> Option<Status> {
    views.referral(id.to_string()).await.expect("query").map(|r| r.referral.status)
}

// ---------------------------------------------------------------------------
// (a) live projection
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_projection_reaches_the_position_a_command_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let h = handler(store.clone());
    let projector = start_projector(store.clone(), dir.path(), RunnerOptions::default()).await;
    let views = Views::new(projector.db().clone());

    // A profile command's position is reached too: partner events move checkpoints.
    let registered = register(&h, A).await;
    caught_up(&projector, registered).await;
    assert!(NAMES.iter().all(|n| projector.checkpoint(n) == Some(registered)));

    let (id, received) = submit(&h, "rfi-1", &[A]).await[0];
    projector.wait_for("referrals", received, PATIENCE).await.expect("referrals reach the RFI");
    assert_eq!(status_of(&views, id).await, Some(Status::New), "read your own write");
    let inbox = views.list(List::Inbox, of(A), 10, String::new()).await.unwrap();
    assert_eq!(inbox.rows.iter().map(|r| r.referral.id).collect::<Vec<_>>(), vec![id]);

    let accepted = accept(&h, A, id).await;
    caught_up(&projector, accepted).await;
    let row = views.referral(id.to_string()).await.unwrap().unwrap();
    assert_eq!((row.referral.status, row.revision.0, row.position), (Status::Active, 1, accepted));
    assert_eq!(views.timeline(id.to_string(), 10, String::new()).await.unwrap().rows.len(), 2);
    let history = views.history(A.into(), None).await.unwrap();
    assert_eq!((history.counts.received, history.counts.accepted), (1, 1));
    assert_eq!(views.due(test_epoch() + Days::days(30), 10).await.unwrap(), vec![], "answered: no deadline");

    // Waiting for a position nobody wrote ends with the checkpoint reached.
    let beyond = Position::at(accepted.commit + 1_000);
    assert_eq!(projector.wait_for("history", beyond, Duration::from_millis(50)).await, Err(Some(accepted)));
    assert_eq!(projector.wait_for("no-such-view", accepted, Duration::from_millis(50)).await, Err(None));

    let events = projected_log(&store).await.len() as u64;
    for name in NAMES {
        let v = eventually(&format!("{name} is live"), || async {
            let v = versions(&projector, name).await;
            (v.len() == 1 && v[0].state == RunState::Live).then(|| v[0].clone())
        })
        .await;
        assert!(v.active, "{name}");
        assert_eq!((v.version, v.checkpoint, v.events_applied, v.lag_events), (1, Some(accepted), events, 0), "{name}");
        assert_eq!(v.failure, None);
        assert_eq!(v.progress, 1.0);
    }
    projector.shutdown().await;
    let stopped = projector.status().await.unwrap();
    assert!(stopped.iter().all(|s| s.versions[0].state == RunState::Stopped), "{stopped:?}");
}

// ---------------------------------------------------------------------------
// (b) restarts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_checkpoint_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (first, checkpoint) = {
        let store = open_store(dir.path());
        let h = handler(store.clone());
        let projector = start_projector(store.clone(), dir.path(), small_batches()).await;
        register(&h, A).await;
        register(&h, B).await;
        let first = submit_many(&h, 0, 20).await;
        each(&first.ours[..8], |id| accept(&h, A, id)).await;
        let last = each(&first.theirs[..5], |id| decline(&h, B, id)).await;
        caught_up(&projector, last).await;
        let views = Views::new(projector.db().clone());
        let counts = views.history(A.into(), None).await.unwrap().counts;
        assert_eq!((counts.received, counts.accepted, counts.declined), (20, 8, 0));
        projector.shutdown().await;
        (first, last)
        // The projector, the handler and the store close here, as in a process that exits.
    };

    // While the projections are down, more commands are written.
    let store = open_store(dir.path());
    let h = handler(store.clone());
    let more = submit_many(&h, 100, 10).await;
    each(&more.ours[..3], |id| accept(&h, A, id)).await;
    each(&first.ours[8..12], |id| decline(&h, A, id)).await;
    let last = each(&more.theirs[..2], |id| decline(&h, B, id)).await;

    let projector = open_projector(store.clone(), dir.path(), small_batches()).await;
    for name in NAMES {
        assert_eq!(projector.checkpoint(name), Some(checkpoint), "{name} resumes where it stopped");
    }
    projector.start().await.unwrap();
    caught_up(&projector, last).await;

    let views = Views::new(projector.db().clone());
    let a = views.history(A.into(), None).await.unwrap().counts;
    assert_eq!((a.received, a.accepted, a.declined), (30, 11, 4), "each command counted once");
    let b = views.history(B.into(), None).await.unwrap().counts;
    assert_eq!((b.received, b.accepted, b.declined), (30, 0, 7));
    assert_eq!(views.list(List::Active, of(A), 500, String::new()).await.unwrap().rows.len(), 11);
    assert_eq!(views.list(List::Inbox, of(A), 500, String::new()).await.unwrap().rows.len(), 15);
    assert_eq!(views.list(List::Archive, of(B), 500, String::new()).await.unwrap().rows.len(), 7);
    let events = projected_log(&store).await;
    let applied = |v: Vec<VersionStatus>| v.iter().map(|v| v.events_applied).collect::<Vec<_>>();
    for name in NAMES {
        assert_eq!(applied(versions(&projector, name).await), vec![events.len() as u64], "{name}");
    }
    let referral_events = events.iter().filter(|e| e.stream.as_str().starts_with("referral-")).count();
    let timeline_rows: i64 = projector
        .db()
        .connect("timeline")
        .unwrap()
        .query_row("SELECT COUNT(*) FROM timeline_v1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(timeline_rows as usize, referral_events);
    projector.shutdown().await;

    // A restart with nothing new changes nothing.
    let projector = start_projector(store.clone(), dir.path(), small_batches()).await;
    caught_up(&projector, last).await;
    let views = Views::new(projector.db().clone());
    assert_eq!(views.history(A.into(), None).await.unwrap().counts, a);
    for name in NAMES {
        assert_eq!(applied(versions(&projector, name).await), vec![events.len() as u64], "{name}");
    }
    projector.shutdown().await;
}

// ---------------------------------------------------------------------------
// (c) blue/green rebuilds
// ---------------------------------------------------------------------------

/// A store with a few thousand events: 1,200 RFIs to both partners, 300
/// accepted and 200 declined by A.
async fn busy_store(dir: &Path) -> (Arc<dyn EventStore>, CommandHandler, Written, Position) {
    let store = open_store(dir);
    let h = handler(store.clone());
    register(&h, A).await;
    register(&h, B).await;
    let written = submit_many(&h, 0, 1_200).await;
    each(&written.ours[..300], |id| accept(&h, A, id)).await;
    let last = each(&written.ours[300..500], |id| decline(&h, A, id)).await;
    (store, h, written, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_is_blue_green_the_old_version_answers_until_the_new_one_has_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, written, last) = busy_store(dir.path()).await;
    let total = projected_log(&store).await.len() as u64;
    assert!(total > 2_500, "{total} events");
    const HELD_AT: usize = 700;
    let gate = GatedStore::new(store.clone(), HELD_AT);
    let projector = start_projector(gate.clone(), dir.path(), small_batches()).await;
    caught_up(&projector, last).await;
    let views = Views::new(projector.db().clone());

    let archive_before = views.list(List::Archive, of(A), 500, String::new()).await.unwrap();
    let accepted_before = views.referral(written.ours[7].to_string()).await.unwrap().expect("a row");
    let reasons_before = views.history(A.into(), None).await.unwrap().decline_reasons;
    assert_eq!(archive_before.rows.len(), 200);

    // Damage the current versions by hand, so that it shows which version answers.
    let missing = written.ours[600];
    {
        let history = projector.db().connect("history").unwrap();
        history.execute("UPDATE history_stats_v1 SET received = received + 1000 WHERE kind = 'all'", []).unwrap();
        let referrals = projector.db().connect("referrals").unwrap();
        referrals.execute("DELETE FROM referrals_v1 WHERE referral = ?1", [missing.to_string()]).unwrap();
    }
    let damaged = views.history(A.into(), None).await.unwrap().counts;
    assert_eq!((damaged.received, damaged.accepted, damaged.declined), (2_200, 300, 200));
    assert_eq!(status_of(&views, missing).await, None);

    gate.arm();
    assert_eq!(projector.rebuild("history").await, Ok(2));
    assert_eq!(projector.rebuild("referrals").await, Ok(2));
    // One rebuild at a time per projection.
    assert_eq!(
        projector.rebuild("history").await,
        Err(ViewError::RebuildInProgress { name: "history".into(), version: 2 })
    );
    assert_eq!(
        projector.rebuild("referrals").await,
        Err(ViewError::RebuildInProgress { name: "referrals".into(), version: 2 })
    );
    assert!(matches!(projector.rebuild("inbox").await, Err(ViewError::UnknownProjection { .. })));
    assert!(matches!(projector.retry("inbox").await, Err(ViewError::UnknownProjection { .. })));
    // Rebuilding several at once is refused as a whole when one of them is
    // already rebuilding: those before it and after it start nothing either.
    assert_eq!(
        projector.rebuild_together(&["timeline", "referrals", "deadlines"]).await,
        Err(ViewError::RebuildInProgress { name: "referrals".into(), version: 2 })
    );
    for name in ["timeline", "deadlines"] {
        assert_eq!(versions(&projector, name).await.len(), 1, "{name}");
    }

    // The new versions stop at the gate, part of the way through the log.
    let held = projected_log(&store).await[HELD_AT - 1].position;
    for name in ["history", "referrals"] {
        let v = eventually(&format!("{name} v2 has applied {HELD_AT} events"), || async {
            let v = versions(&projector, name).await;
            (v.len() == 2 && v[1].events_applied == HELD_AT as u64).then_some(v)
        })
        .await;
        let (old, new) = (&v[0], &v[1]);
        assert_eq!(
            (old.version, old.active, old.state, old.checkpoint),
            (1, true, RunState::Live, Some(last)),
            "{name}"
        );
        assert_eq!((new.version, new.active, new.state), (2, false, RunState::Rebuilding), "{name}");
        assert_eq!(new.checkpoint, Some(held), "{name}");
        assert!(new.lag_events > 0 && new.progress < 1.0, "{name}: {new:?}");
        let conn = projector.db().connect(name).unwrap();
        assert_eq!(db::active_version(&conn, name).unwrap(), Some(1), "{name}");
    }
    // Meanwhile queries answer from the old versions, which stay live.
    let during = views.history(A.into(), None).await.unwrap().counts;
    assert_eq!(during, damaged);
    assert_eq!(status_of(&views, missing).await, None);
    let late = written.ours[1_000];
    let accepted_late = accept(&h, A, late).await;
    caught_up(&projector, accepted_late).await;
    assert_eq!(status_of(&views, late).await, Some(Status::Active));
    assert_eq!(views.history(A.into(), None).await.unwrap().counts.accepted, 301);
    let tables = table_names(projector.db());
    for table in ["history_stats_v1", "history_stats_v2", "referrals_v1", "referrals_v2"] {
        assert!(tables.contains(&table.to_string()), "{table} in {tables:?}");
    }
    // The versions being built load their rows without secondary indexes;
    // the live ones have theirs.
    let indexes = index_names(projector.db());
    assert!(indexes.contains(&"referrals_v1_by_partner".to_string()), "{indexes:?}");
    assert!(!indexes.iter().any(|i| i.contains("_v2_")), "{indexes:?}");

    // Open the gate: the new versions catch up and take over.
    gate.release();
    for name in ["history", "referrals"] {
        let v = eventually(&format!("{name} v2 replaces v1"), || async {
            let v = versions(&projector, name).await;
            (v.len() == 1 && v[0].version == 2).then_some(v)
        })
        .await;
        assert!(v[0].active, "{name}: {v:?}");
        assert_eq!(v[0].checkpoint, Some(accepted_late), "{name}");
        assert_eq!(v[0].events_applied, total + 1, "{name}");
        let conn = projector.db().connect(name).unwrap();
        assert_eq!(db::active_version(&conn, name).unwrap(), Some(2));
        assert_eq!(db::versions(&conn, name).unwrap().len(), 1);
    }
    let tables = table_names(projector.db());
    let left: Vec<&String> = tables
        .iter()
        .filter(|t| (t.starts_with("history_") || t.starts_with("referrals_")) && t.ends_with("_v1"))
        .collect();
    assert!(left.is_empty(), "old tables dropped: {left:?}");
    for table in ["history_referrals_v2", "history_stats_v2", "history_reasons_v2", "history_deals_v2", "referrals_v2"]
    {
        assert!(tables.contains(&table.to_string()), "{table} in {tables:?}");
    }
    assert!(tables.contains(&"timeline_v1".to_string()) && tables.contains(&"deadlines_v1".to_string()));
    // Swapped in with every secondary index the projections declare.
    let indexes = index_names(projector.db());
    for p in [&HistoryProjection as &dyn Projection, &ReferralsProjection] {
        for statement in p.indexes(Version(2)) {
            let name = statement.split_whitespace().nth(5).unwrap();
            assert!(indexes.contains(&name.to_string()), "{name} in {indexes:?}");
        }
    }
    let not_rebuilt = |i: &String| i.starts_with("deadlines") || i.starts_with("timeline");
    assert!(!indexes.iter().any(|i| i.contains("_v1_") && !not_rebuilt(i)), "{indexes:?}");

    // The new versions hold the log's truth, including the event written mid-rebuild.
    let rebuilt = views.history(A.into(), None).await.unwrap().counts;
    assert_eq!((rebuilt.received, rebuilt.accepted, rebuilt.declined), (1_200, 301, 200));
    assert_eq!(status_of(&views, missing).await, Some(Status::New));
    assert_eq!(status_of(&views, late).await, Some(Status::Active));
    assert_eq!(views.list(List::Active, of(A), 500, String::new()).await.unwrap().rows.len(), 301);
    // What was not damaged reads the same from the new versions.
    assert_eq!(views.list(List::Archive, of(A), 500, String::new()).await.unwrap(), archive_before);
    assert_eq!(views.referral(written.ours[7].to_string()).await.unwrap(), Some(accepted_before));
    assert_eq!(views.history(A.into(), None).await.unwrap().decline_reasons, reasons_before);

    // And they are the live ones now: read-your-writes goes on.
    let v = eventually("history v2 is live", || async {
        let v = versions(&projector, "history").await;
        (v[0].state == RunState::Live).then_some(v)
    })
    .await;
    assert_eq!(v[0].version, 2);
    let declined_late = decline(&h, A, written.ours[1_001]).await;
    caught_up(&projector, declined_late).await;
    assert_eq!(views.history(A.into(), None).await.unwrap().counts.declined, 201);
    assert_eq!(status_of(&views, written.ours[1_001]).await, Some(Status::Declined));
    // A later rebuild gets the next number.
    assert_eq!(projector.rebuild("history").await, Ok(3));
    projector.shutdown().await;
}

/// Every table of every projection's active version, row by row, under
/// its base name.
fn active_tables(db: &ViewDb) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for p in all_projections() {
        let conn = db.connect(p.name()).unwrap();
        let version = Version(db::active_version(&conn, p.name()).unwrap().expect("an active version"));
        for base in p.tables() {
            let table = version.table(base);
            let mut statement = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
            let columns = statement.column_count();
            let mut rows: Vec<String> = statement
                .query_map([], |row| {
                    let values: Vec<String> = (0..columns)
                        .map(|i| format!("{:?}", row.get::<_, rusqlite::types::Value>(i).unwrap()))
                        .collect();
                    Ok(values.join("|"))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            rows.sort();
            out.push((base.to_string(), rows));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_rebuilt_together_read_the_log_once_and_equal_the_versions_they_replace() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, written, last) = busy_store(dir.path()).await;
    let counting = GatedStore::new(store.clone(), usize::MAX);
    let projector = start_projector(counting.clone(), dir.path(), small_batches()).await;
    caught_up(&projector, last).await;
    // Started together from the same checkpoint, the four share one feed.
    assert_eq!(counting.subscriptions(), 1);
    let before = active_tables(projector.db());
    let filled: Vec<&str> = before.iter().filter(|(_, rows)| !rows.is_empty()).map(|(t, _)| t.as_str()).collect();
    for table in ["referrals", "timeline", "history_referrals", "history_stats", "history_reasons", "deadlines"] {
        assert!(filled.contains(&table), "{table} has rows: {filled:?}");
    }

    // A refused request starts nothing.
    let all = ["referrals", "timeline", "history", "deadlines"];
    assert!(matches!(
        projector.rebuild_together(&["timeline", "inbox"]).await,
        Err(ViewError::UnknownProjection { .. })
    ));
    assert!(matches!(
        projector.rebuild_together(&["timeline", "history", "timeline"]).await,
        Err(ViewError::InvalidArgument { field: "names", .. })
    ));
    for name in all {
        assert_eq!(versions(&projector, name).await.len(), 1, "{name}");
    }

    assert_eq!(projector.rebuild_together(&all).await, Ok(vec![2, 2, 2, 2]));
    eventually("the rebuilds subscribe", || async { (counting.subscriptions() > 1).then_some(()) }).await;
    assert_eq!(
        projector.rebuild_together(&["deadlines", "history"]).await,
        Err(ViewError::RebuildInProgress { name: "deadlines".into(), version: 2 })
    );
    for name in all {
        eventually(&format!("{name} v2 replaces v1"), || async {
            let v = versions(&projector, name).await;
            (v.len() == 1 && v[0].version == 2 && v[0].active && v[0].checkpoint == Some(last)).then_some(())
        })
        .await;
    }
    assert_eq!(active_tables(projector.db()), before);

    // The rebuilt versions are live: a new event reaches all four.
    let accepted = accept(&h, A, written.ours[1_100]).await;
    caught_up(&projector, accepted).await;
    for name in all {
        assert_eq!(projector.checkpoint(name), Some(accepted), "{name}");
    }
    assert_eq!(counting.subscriptions(), 2, "the four rebuilds read the log through one subscription");
    projector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_projection_keeps_its_tables_checkpoint_and_registry_in_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, written, _) = busy_store(dir.path()).await;
    let projector = start_projector(store, dir.path(), small_batches()).await;
    let accepted = accept(&h, A, written.ours[600]).await;
    caught_up(&projector, accepted).await;
    let mut files: Vec<String> = std::fs::read_dir(projector.db().dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".db"))
        .collect();
    files.sort();
    assert_eq!(files, ["deadlines.db", "history.db", "referrals.db", "timeline.db"]);
    for p in all_projections() {
        let conn = rusqlite::Connection::open(projector.db().path_of(p.name())).unwrap();
        let registered: Vec<(String, u32, Option<i64>)> = conn
            .prepare("SELECT name, version, checkpoint_commit FROM projection_versions")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(registered, [(p.name().to_string(), 1, Some(accepted.commit as i64))], "{}", p.name());
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%\\_v1' ESCAPE '\\'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        tables.sort();
        let mut own: Vec<String> = p.tables().iter().map(|t| Version(1).table(t)).collect();
        own.sort();
        assert_eq!(tables, own, "{}", p.name());
    }
    projector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_interrupted_by_a_restart_resumes_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, written) = two_partners(dir.path(), 300).await;
    let last = each(&written.ours[..100], |id| accept(&h, A, id)).await;
    let total = projected_log(&store).await.len() as u64;
    const HELD_AT: usize = 250;

    let gate = GatedStore::new(store.clone(), HELD_AT);
    let projector = start_projector(gate.clone(), dir.path(), small_batches()).await;
    caught_up(&projector, last).await;
    let views = Views::new(projector.db().clone());
    let before = views.timeline(written.ours[5].to_string(), 50, String::new()).await.unwrap();
    gate.arm();
    assert_eq!(projector.rebuild("timeline").await, Ok(2));
    let held = projected_log(&store).await[HELD_AT - 1].position;
    eventually("timeline v2 reaches the gate", || async {
        let v = versions(&projector, "timeline").await;
        (v.len() == 2 && v[1].checkpoint == Some(held)).then_some(())
    })
    .await;
    projector.shutdown().await;
    drop(projector);

    // Restarted (without the gate), the registry still holds the half-built version.
    let projector = open_projector(store.clone(), dir.path(), small_batches()).await;
    let v = versions(&projector, "timeline").await;
    assert_eq!(v.len(), 2);
    assert_eq!((v[0].version, v[0].active), (1, true));
    assert_eq!((v[1].version, v[1].active, v[1].state, v[1].checkpoint), (2, false, RunState::Stopped, Some(held)));
    assert_eq!(projector.checkpoint("timeline"), Some(last), "queries still see version 1");
    projector.start().await.unwrap();
    let v = eventually("timeline v2 replaces v1 after the restart", || async {
        let v = versions(&projector, "timeline").await;
        (v.len() == 1 && v[0].version == 2).then_some(v)
    })
    .await;
    assert_eq!((v[0].active, v[0].checkpoint, v[0].events_applied), (true, Some(last), total));
    let views = Views::new(projector.db().clone());
    let after = views.timeline(written.ours[5].to_string(), 50, String::new()).await.unwrap();
    assert_eq!(after, before);
    assert!(!table_names(projector.db()).contains(&"timeline_v1".to_string()));
    projector.shutdown().await;
}

// ---------------------------------------------------------------------------
// (d) projections that fail on an event
// ---------------------------------------------------------------------------

fn metadata() -> Vec<u8> {
    serde_json::to_vec(&EventMetadata {
        correlation_id: "by-hand".into(),
        causation_id: "by-hand".into(),
        command_id: "by-hand".into(),
        actor: "operator/test".into(),
        schema_version: CURRENT_SCHEMA_VERSION,
        occurred_at: test_epoch(),
    })
    .unwrap()
}

/// Waits until `name` reports a failure again; its position and message.
async fn failed(projector: &Projector, name: &str) -> (VersionStatus, Position, String) {
    eventually(&format!("{name} fails"), || async {
        let v = versions(projector, name).await;
        let v = v.into_iter().next().expect("a version");
        let (at, message) = v.failure.clone()?;
        Some((v, at, message))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_event_stops_the_projections_at_its_position_and_retry_never_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let h = handler(store.clone());
    let projector = start_projector(store.clone(), dir.path(), small_batches()).await;
    let views = Views::new(projector.db().clone());
    register(&h, A).await;
    let (first, _) = submit(&h, "rfi-1", &[A]).await[0];
    let before = accept(&h, A, first).await;
    caught_up(&projector, before).await;
    let applied_before = projected_log(&store).await.len() as u64;

    // An event of a known type whose payload is not one.
    let (broken, broken_at) = submit(&h, "rfi-2", &[A]).await[0];
    let bad = EventData {
        id: Uuid::new_v4(),
        event_type: "ReferralAccepted".into(),
        data: br#"{"referral": 42}"#.to_vec(),
        metadata: metadata(),
    };
    let bad_at =
        store.append(&broken.stream(), ExpectedRevision::Exact(StreamRevision(0)), vec![bad]).await.unwrap().position;
    let (after, after_at) = submit(&h, "rfi-3", &[A]).await[0];

    // Every projection reads referral events, so every one stops there.
    for name in NAMES {
        let (v, at, message) = failed(&projector, name).await;
        assert_eq!(at, bad_at, "{name}");
        assert!(message.contains("ReferralAccepted") && message.contains("could not be decoded"), "{name}: {message}");
        assert_eq!(v.state, RunState::Failed, "{name}");
        assert_eq!(v.checkpoint, Some(broken_at), "{name}: right before it");
        assert!(before < broken_at && broken_at < bad_at);
        assert_eq!(v.events_applied, applied_before + 1, "{name}: the RFI before it, nothing after");
        assert_eq!(projector.wait_for(name, after_at, Duration::from_millis(50)).await, Err(v.checkpoint));
    }
    // Queries still answer with what was applied.
    assert_eq!(status_of(&views, first).await, Some(Status::Active));
    assert_eq!(status_of(&views, broken).await, Some(Status::New));
    assert_eq!(status_of(&views, after).await, None);

    // Retried with nothing fixed, it fails on the same event again.
    for name in NAMES {
        let checkpoint = versions(&projector, name).await[0].checkpoint;
        assert_eq!(projector.retry(name).await, Ok(true), "{name}");
        let (v, at, _) = failed(&projector, name).await;
        assert_eq!((at, v.checkpoint, v.events_applied), (bad_at, checkpoint, applied_before + 1), "{name}");
    }
    assert_eq!(status_of(&views, after).await, None, "nothing after the failure is applied");
    projector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_one_projection_cannot_apply_stops_only_that_projection() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let h = handler(store.clone());
    let projector = start_projector(store.clone(), dir.path(), small_batches()).await;
    let views = Views::new(projector.db().clone());
    register(&h, A).await;
    let (first, before) = submit(&h, "rfi-1", &[A]).await[0];
    caught_up(&projector, before).await;

    // A well-formed acceptance of a referral that was never received: the
    // timeline and deadlines can take it, referrals and history cannot.
    let ghost = ReferralId(Uuid::new_v4());
    let event = DomainEvent::Referral(ReferralEvent::Accepted(ReferralAccepted {
        referral: ghost,
        engagement: Engagement {
            name: "Ghost".into(),
            estimated_value: Money::parse_decimal("EUR", "1000").unwrap(),
            estimated_purchase_date: test_epoch().date_naive(),
            notes: "Never received.".into(),
            crm_id: None,
            campaign_id: None,
        },
        accepted_at: test_epoch(),
    }));
    let metadata: EventMetadata = serde_json::from_slice(&metadata()).unwrap();
    let data = codec::encode(Uuid::new_v4(), &event, &metadata);
    let ghost_at = store.append(&ghost.stream(), ExpectedRevision::NoStream, vec![data]).await.unwrap().position;
    let (second, _) = submit(&h, "rfi-2", &[A]).await[0];
    let last = accept(&h, A, second).await;

    for name in ["referrals", "history"] {
        let (v, at, message) = failed(&projector, name).await;
        assert_eq!((at, v.state, v.checkpoint), (ghost_at, RunState::Failed, Some(before)), "{name}");
        assert!(message.contains(&format!("referral-{ghost}")), "{name} names the stream: {message}");
        assert!(message.contains("no ReferralReceived before it"), "{name}: {message}");
        // So a read-your-writes wait need not wait in vain.
        assert_eq!(
            projector.halted(name).await,
            Ok(Some(Halt::Failed { checkpoint: Some(before), at: ghost_at, error: message })),
            "{name}"
        );
    }
    for name in ["timeline", "deadlines"] {
        projector.wait_for(name, last, PATIENCE).await.expect("unaffected projections carry on");
        assert_eq!(projector.halted(name).await, Ok(None), "{name}");
        let v = versions(&projector, name).await;
        assert_eq!((v[0].failure.as_ref(), v[0].checkpoint), (None, Some(last)), "{name}");
    }
    assert_eq!(views.timeline(second.to_string(), 10, String::new()).await.unwrap().rows.len(), 2);
    assert_eq!(views.timeline(ghost.to_string(), 10, String::new()).await.unwrap().rows.len(), 1);
    assert_eq!(status_of(&views, first).await, Some(Status::New));
    assert_eq!(status_of(&views, second).await, None, "referrals stopped before the ghost");
    assert_eq!(views.history(A.into(), None).await.unwrap().counts.received, 1);

    assert_eq!(projector.retry("timeline").await, Ok(false), "nothing to retry");
    assert_eq!(projector.retry("referrals").await, Ok(true));
    let (v, at, _) = failed(&projector, "referrals").await;
    assert_eq!((at, v.checkpoint), (ghost_at, Some(before)), "never skipped");

    // The failure survives a restart: the projection stays stopped on it.
    projector.shutdown().await;
    let projector = start_projector(store.clone(), dir.path(), small_batches()).await;
    for name in ["referrals", "history"] {
        let (v, at, _) = failed(&projector, name).await;
        assert_eq!((at, v.state, v.checkpoint), (ghost_at, RunState::Failed, Some(before)), "{name}");
    }
    projector.wait_for("timeline", last, PATIENCE).await.expect("timeline is at the head");
    assert_eq!(projector.retry("history").await, Ok(true));
    let (v, at, _) = failed(&projector, "history").await;
    assert_eq!((at, v.checkpoint), (ghost_at, Some(before)));
    projector.shutdown().await;
}

/// Catching up, an applier holds many batches' changes before it commits.
/// When it meets an event it cannot apply, what it held is dropped with its
/// transaction; the worker replays from the checkpoint one batch at a time,
/// so everything before the event is still committed and the failure is
/// recorded at the event, as when live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_can_be_abandoned_while_it_runs_or_after_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, written, last) = busy_store(dir.path()).await;
    const HELD_AT: usize = 500;
    let gate = GatedStore::new(store.clone(), HELD_AT);
    let projector = start_projector(gate.clone(), dir.path(), small_batches()).await;
    caught_up(&projector, last).await;
    assert!(matches!(projector.abandon("inbox").await, Err(ViewError::UnknownProjection { .. })));
    assert_eq!(projector.abandon("timeline").await, Ok(None), "no rebuild to abandon");

    // A rebuild held part of the way through the log is abandoned.
    gate.arm();
    assert_eq!(projector.rebuild("timeline").await, Ok(2));
    eventually("timeline v2 is held", || async {
        let v = versions(&projector, "timeline").await;
        (v.len() == 2 && v[1].events_applied == HELD_AT as u64).then_some(())
    })
    .await;
    assert_eq!(projector.abandon("timeline").await, Ok(Some(2)));
    gate.release();
    let v = versions(&projector, "timeline").await;
    assert_eq!(v.iter().map(|v| (v.version, v.active)).collect::<Vec<_>>(), [(1, true)]);
    assert!(!table_names(projector.db()).contains(&"timeline_v2".to_string()));
    // The active version goes on, and a new rebuild starts and finishes.
    let accepted = accept(&h, A, written.ours[1_100]).await;
    caught_up(&projector, accepted).await;
    // The abandoned number is not used again.
    assert_eq!(projector.rebuild("timeline").await, Ok(3));
    eventually("timeline v3 replaces v1", || async {
        let v = versions(&projector, "timeline").await;
        (v.len() == 1 && v[0].version == 3 && v[0].checkpoint == Some(accepted)).then_some(())
    })
    .await;

    // A rebuild stopped on an event it cannot apply is abandoned too.
    let ghost = ReferralId(Uuid::new_v4());
    let event =
        DomainEvent::Referral(ReferralEvent::Expired(ReferralExpired { referral: ghost, expired_at: test_epoch() }));
    let metadata: EventMetadata = serde_json::from_slice(&metadata()).unwrap();
    let data = codec::encode(Uuid::new_v4(), &event, &metadata);
    let ghost_at = store.append(&ghost.stream(), ExpectedRevision::NoStream, vec![data]).await.unwrap().position;
    let (v1, at, _) = failed(&projector, "referrals").await;
    assert_eq!((v1.version, at), (1, ghost_at));
    assert_eq!(projector.rebuild("referrals").await, Ok(2));
    eventually("referrals v2 fails too", || async {
        let v = versions(&projector, "referrals").await;
        (v.len() == 2 && v[1].failure.as_ref().is_some_and(|(p, _)| *p == ghost_at)).then_some(())
    })
    .await;
    assert_eq!(projector.abandon("referrals").await, Ok(Some(2)));
    let v = versions(&projector, "referrals").await;
    assert_eq!(v.iter().map(|v| (v.version, v.active)).collect::<Vec<_>>(), [(1, true)]);
    assert!(!table_names(projector.db()).contains(&"referrals_v2".to_string()));
    projector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_refused_while_catching_up_keeps_everything_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, written) = two_partners(dir.path(), 150).await;
    let ghost = ReferralId(Uuid::new_v4());
    let event = DomainEvent::Referral(ReferralEvent::Expired(referral_domain::referral::ReferralExpired {
        referral: ghost,
        expired_at: test_epoch(),
    }));
    let metadata: EventMetadata = serde_json::from_slice(&metadata()).unwrap();
    let data = codec::encode(Uuid::new_v4(), &event, &metadata);
    let ghost_at = store.append(&ghost.stream(), ExpectedRevision::NoStream, vec![data]).await.unwrap().position;
    let after = submit_many(&h, 150, 10).await;
    let before = written.last.expect("written");
    let projected_before = projected_log(&store).await.iter().filter(|e| e.position < ghost_at).count() as u64;

    // Started only now, the projector catches up over all of it.
    let projector = start_projector(store.clone(), dir.path(), small_batches()).await;
    let views = Views::new(projector.db().clone());
    for name in ["referrals", "history"] {
        let (v, at, message) = failed(&projector, name).await;
        assert_eq!((at, v.checkpoint, v.events_applied), (ghost_at, Some(before), projected_before), "{name}");
        assert!(message.contains(&format!("referral-{ghost}")), "{name}: {message}");
    }
    assert_eq!(views.history(A.into(), None).await.unwrap().counts.received, 150);
    assert_eq!(status_of(&views, written.ours[149]).await, Some(Status::New));
    assert_eq!(status_of(&views, after.ours[0]).await, None, "nothing after the failure");
    projector.wait_for("timeline", after.last.expect("after"), PATIENCE).await.expect("timeline carries on");
    projector.shutdown().await;
}

/// A retry wakes the stopped worker however soon it follows the failure.
/// Retried the moment each failure shows, again and again, every projection
/// must fail again every time. (A retry that came between the worker reading
/// the registry and starting to wait for a retry used to be lost: the worker
/// slept on with the failure cleared, reported as failed with no failure.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_retry_is_taken_up_however_soon_it_follows_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let h = handler(store.clone());
    let projector = start_projector(store.clone(), dir.path(), small_batches()).await;
    register(&h, A).await;
    let (broken, _) = submit(&h, "rfi-1", &[A]).await[0];
    let bad =
        EventData { id: Uuid::new_v4(), event_type: "ReferralWon".into(), data: b"{}".to_vec(), metadata: metadata() };
    let bad_at = store.append(&broken.stream(), ExpectedRevision::Any, vec![bad]).await.unwrap().position;
    for name in NAMES {
        failed(&projector, name).await;
    }
    for round in 0..250 {
        for name in NAMES {
            assert_eq!(projector.retry(name).await, Ok(true), "{name}, round {round}");
        }
        for name in NAMES {
            // Polled without pause, so that the next retry follows the failure closely.
            let deadline = Instant::now() + PATIENCE;
            loop {
                let v = versions(&projector, name).await;
                if let Some((at, _)) = &v[0].failure {
                    assert_eq!(*at, bad_at);
                    break;
                }
                assert!(Instant::now() < deadline, "{name} did not fail again after retry {round}: {v:?}");
                tokio::task::yield_now().await;
            }
        }
    }
    projector.shutdown().await;
}

// ---------------------------------------------------------------------------
// (f) a build whose projection has another schema
// ---------------------------------------------------------------------------

/// A projection as another build has it: the same code under another schema
/// number.
struct WithSchema(Arc<dyn Projection>, u32);

impl Projection for WithSchema {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn schema(&self) -> u32 {
        self.1
    }
    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }
    fn create(&self, conn: &rusqlite::Connection, version: Version) -> rusqlite::Result<()> {
        self.0.create(conn, version)
    }
    fn indexes(&self, version: Version) -> Vec<String> {
        self.0.indexes(version)
    }
    fn applier(&self, version: Version) -> Box<dyn referral_projections::Applier> {
        self.0.applier(version)
    }
}

/// The timeline's schema in this build.
fn timeline_schema() -> u32 {
    all_projections().iter().find(|p| p.name() == "timeline").expect("a timeline projection").schema()
}

/// Every projection as this build has it, with `timeline` at `schema`.
fn timeline_at_schema(schema: u32) -> Vec<Arc<dyn Projection>> {
    all_projections()
        .into_iter()
        .map(|p| if p.name() == "timeline" { Arc::new(WithSchema(p, schema)) as Arc<dyn Projection> } else { p })
        .collect()
}

async fn projector_with(store: Arc<dyn EventStore>, dir: &Path, projections: Vec<Arc<dyn Projection>>) -> Projector {
    let db = ViewDb::open(&dir.join("views")).expect("open views");
    Projector::open(store, db, projections, small_batches()).await.expect("open projector")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_whose_schema_changed_is_rebuilt_at_start_while_the_old_version_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, written) = two_partners(dir.path(), 200).await;
    let first = each(&written.ours[..50], |id| accept(&h, A, id)).await;
    let total_before = projected_log(&store).await.len() as u64;
    let s = timeline_schema();

    // Built by this build; then stopped.
    let projector = start_projector(store.clone(), dir.path(), small_batches()).await;
    caught_up(&projector, first).await;
    let views = Views::new(projector.db().clone());
    let before = views.timeline(written.ours[60].to_string(), 50, String::new()).await.unwrap();
    projector.shutdown().await;
    drop(projector);
    let later = accept(&h, A, written.ours[60]).await;

    // The same build again: nothing to replace, nothing rebuilt.
    let projector = projector_with(store.clone(), dir.path(), timeline_at_schema(s)).await;
    projector.start().await.unwrap();
    caught_up(&projector, later).await;
    let v = versions(&projector, "timeline").await;
    assert_eq!((v.len(), v[0].version, v[0].schema, v[0].state), (1, 1, s, RunState::Live));
    projector.shutdown().await;
    drop(projector);

    // A gated rebuild shows the old version answering while the new one is built.
    let gate = GatedStore::new(store.clone(), 20);
    gate.arm();
    let next = accept(&h, A, written.ours[61]).await;
    let projector = projector_with(gate.clone(), dir.path(), timeline_at_schema(s + 1)).await;
    let v = versions(&projector, "timeline").await;
    assert_eq!((v.len(), v[0].version, v[0].schema, v[0].state), (1, 1, s, RunState::Outdated));
    projector.start().await.unwrap();
    let v = eventually("timeline v2 is being built", || async {
        let v = versions(&projector, "timeline").await;
        (v.len() == 2 && v[1].events_applied > 0).then_some(v)
    })
    .await;
    assert_eq!((v[0].version, v[0].active, v[0].state), (1, true, RunState::Outdated));
    assert_eq!((v[1].version, v[1].active, v[1].schema, v[1].state), (2, false, s + 1, RunState::Rebuilding));
    // The outdated version applies nothing more; it answers as of its checkpoint.
    assert_eq!(projector.checkpoint("timeline"), Some(later));
    assert_eq!(
        projector.halted("timeline").await,
        Ok(Some(Halt::Outdated { checkpoint: Some(later), schema: s, current: s + 1 }))
    );
    assert_eq!(projector.halted("referrals").await, Ok(None));
    let views = Views::new(projector.db().clone());
    let during = views.timeline(written.ours[60].to_string(), 50, String::new()).await.unwrap();
    assert_eq!(during.rows.len(), before.rows.len() + 1, "the old version, with the accept made before it stopped");
    // The other projections were not touched.
    for name in ["referrals", "history", "deadlines"] {
        let v = versions(&projector, name).await;
        assert_eq!((v.len(), v[0].version), (1, 1), "{name}");
    }
    assert_eq!(
        projector.rebuild("timeline").await,
        Err(ViewError::RebuildInProgress { name: "timeline".into(), version: 2 })
    );

    gate.release();
    let v = eventually("timeline v2 replaces v1", || async {
        let v = versions(&projector, "timeline").await;
        (v.len() == 1 && v[0].version == 2 && v[0].state == RunState::Live && v[0].checkpoint == Some(next))
            .then_some(v)
    })
    .await;
    assert_eq!((v[0].schema, v[0].events_applied), (s + 1, total_before + 2));
    assert!(!table_names(projector.db()).contains(&"timeline_v1".to_string()));
    let after = views.timeline(written.ours[61].to_string(), 50, String::new()).await.unwrap();
    assert_eq!(after.rows.len(), before.rows.len() + 1, "the accept written while the old version was frozen");
    projector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_left_by_a_build_with_another_schema_is_replaced_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, written) = two_partners(dir.path(), 100).await;
    let last = written.last.unwrap();
    let total = projected_log(&store).await.len() as u64;
    let s = timeline_schema();

    // This build starts a rebuild (held at a gate) and stops half-way.
    let gate = GatedStore::new(store.clone(), 30);
    let projector = projector_with(gate.clone(), dir.path(), timeline_at_schema(s)).await;
    projector.start().await.unwrap();
    caught_up(&projector, last).await;
    gate.arm();
    assert_eq!(projector.rebuild("timeline").await, Ok(2));
    eventually("timeline v2 reaches the gate", || async {
        let v = versions(&projector, "timeline").await;
        (v.len() == 2 && v[1].checkpoint.is_some()).then_some(())
    })
    .await;
    projector.shutdown().await;
    drop(projector);

    // A build with the next schema abandons version 2 and builds version 3.
    let projector = projector_with(store.clone(), dir.path(), timeline_at_schema(s + 1)).await;
    projector.start().await.unwrap();
    let v = eventually("timeline v3 replaces v1", || async {
        let v = versions(&projector, "timeline").await;
        (v.len() == 1 && v[0].version == 3 && v[0].checkpoint == Some(last)).then_some(v)
    })
    .await;
    assert_eq!((v[0].schema, v[0].events_applied, v[0].state), (s + 1, total, RunState::Live));
    let tables = table_names(projector.db());
    assert!(!tables.iter().any(|t| t == "timeline_v1" || t == "timeline_v2"), "{tables:?}");
    projector.shutdown().await;
    drop(projector);

    // Offline (rebuild without start), a rebuild left by another build does
    // not block this build's: it is replaced.
    let gate = GatedStore::new(store.clone(), 30);
    let projector = projector_with(gate.clone(), dir.path(), timeline_at_schema(s + 1)).await;
    gate.arm();
    assert_eq!(projector.rebuild("timeline").await, Ok(4));
    projector.shutdown().await;
    drop(projector);
    gate.release();
    let projector = projector_with(store.clone(), dir.path(), timeline_at_schema(s + 2)).await;
    assert_eq!(projector.rebuild("timeline").await, Ok(5));
    let v = versions(&projector, "timeline").await;
    assert_eq!(v.iter().map(|v| (v.version, v.schema)).collect::<Vec<_>>(), vec![(3, s + 1), (5, s + 2)]);
    projector.shutdown().await;
}

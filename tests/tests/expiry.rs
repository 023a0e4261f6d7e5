//! Expiry with a driven clock: the scheduler, the deadlines view and the
//! domain together. Referrals still New expire at exactly 14 days (or the
//! configured period), answered ones never do, and several schedulers on one
//! store write one `ReferralExpired` between them.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use referral_commands::{Actor, CommandHandler, DueReferrals, ExpiryPass, ExpiryScheduler, ManualClock, Role};
use referral_domain::clock::ExpiryPolicy;
use referral_domain::eventlog::{Direction, EventStore, Position, StreamName, StreamStart};
use referral_domain::ids::{PartnerId, ReferralId};
use referral_domain::referral::{ReferralEvent, Status};
use referral_infra::grpc::commands_service::CommandsService;
use referral_infra::grpc::pb::referral_commands_server::ReferralCommands;
use referral_infra::server::ViewDeadlines;
use referral_infra::store::SqliteEventStore;
use referral_projections::{all_projections, Projector, RunnerOptions, ViewDb, Views};
use referral_tests::{accept_request, profile_request, rfi_request, test_epoch};
use tonic::Request;

const PARTNER: &str = "contoso";

/// One event store, its views, and an engine instance's handler on them.
struct Engine {
    _dir: tempfile::TempDir,
    store: Arc<dyn EventStore>,
    clock: Arc<ManualClock>,
    projector: Projector,
    views: Views,
    intake: Actor,
    partner: Actor,
}

impl Engine {
    async fn start() -> Engine {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).expect("open store"));
        let db = ViewDb::open(&dir.path().join("views")).expect("open views");
        let projector = Projector::open(store.clone(), db.clone(), all_projections(), RunnerOptions::default())
            .await
            .expect("projector");
        projector.start().await.expect("start projections");
        Engine {
            _dir: dir,
            store,
            clock: Arc::new(ManualClock::new(test_epoch())),
            projector,
            views: Views::new(db),
            intake: Actor { role: Role::Intake, partner: None, name: "intake".into() },
            partner: Actor {
                role: Role::Partner,
                partner: Some(PartnerId::parse(PARTNER).expect("partner id")),
                name: "contoso".into(),
            },
        }
    }

    fn handler(&self, expiry: ExpiryPolicy) -> CommandHandler {
        CommandHandler::new(self.store.clone(), self.clock.clone()).with_expiry(expiry)
    }

    fn scheduler(&self, expiry: ExpiryPolicy) -> ExpiryScheduler {
        ExpiryScheduler::new(self.handler(expiry), Arc::new(ViewDeadlines(self.views.clone())))
    }

    /// Submits an RFI to the partner (registering its profile first) and
    /// waits until the deadlines view has it. Returns the referral id.
    async fn referral(&self, rfi: &str, expiry: ExpiryPolicy) -> String {
        let service = CommandsService::new(self.handler(expiry));
        let _ =
            service.register_partner_profile(as_actor(profile_request("profile", PARTNER, "emea"), &self.intake)).await;
        let submitted = service
            .submit_rfi(as_actor(rfi_request(&format!("{rfi}-submit"), rfi, &[PARTNER]), &self.intake))
            .await
            .expect("submit RFI")
            .into_inner();
        let referral = &submitted.referrals[0];
        let position = referral.result.as_ref().and_then(|r| r.position).expect("position");
        self.caught_up(Position { commit: position.commit, prepare: position.prepare }).await;
        referral.referral_id.clone()
    }

    async fn caught_up(&self, position: Position) {
        self.projector
            .wait_for(referral_projections::deadlines::NAME, position, StdDuration::from_secs(10))
            .await
            .expect("the deadlines view catches up");
    }

    async fn accept(&self, id: &str) {
        let service = CommandsService::new(self.handler(ExpiryPolicy::default()));
        let written = service
            .accept_referral(as_actor(accept_request(&format!("accept-{id}"), id), &self.partner))
            .await
            .expect("accept")
            .into_inner();
        let p = written.position.expect("position");
        self.caught_up(Position { commit: p.commit, prepare: p.prepare }).await;
    }

    /// The referral's events, as types.
    async fn events(&self, id: &str) -> Vec<String> {
        let stream = StreamName::new(format!("referral-{id}")).expect("stream name");
        let events = self.store.read_stream(&stream, Direction::Forwards, StreamStart::Start, 100).await.expect("read");
        events.into_iter().map(|e| e.event_type).collect()
    }

    async fn status(&self, id: &str) -> Status {
        let referral = ReferralId::parse(id).expect("referral id");
        let (r, _) = self.handler(ExpiryPolicy::default()).get_referral(&self.partner, referral).await.expect("get");
        r.status
    }

    fn at(&self, at: DateTime<Utc>) {
        self.clock.set(at);
    }
}

fn as_actor<T>(message: T, actor: &Actor) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(actor.clone());
    request
}

const EXPIRED: &str = ReferralEvent::TYPES[3];

#[tokio::test]
async fn a_new_referral_stays_new_until_14_days_and_expires_at_14_days() {
    let engine = Engine::start().await;
    let id = engine.referral("rfi-expiry-1", ExpiryPolicy::default()).await;
    let scheduler = engine.scheduler(ExpiryPolicy::default());

    engine.at(test_epoch() + Duration::days(14) - Duration::seconds(1));
    assert_eq!(scheduler.run_once().await.expect("pass"), ExpiryPass::default());
    assert_eq!(engine.status(&id).await, Status::New);

    engine.at(test_epoch() + Duration::days(14));
    assert_eq!(scheduler.run_once().await.expect("pass"), ExpiryPass { expired: 1, skipped: 0, failed: 0 });
    assert_eq!(engine.status(&id).await, Status::Expired);
    assert_eq!(engine.events(&id).await.iter().filter(|t| *t == EXPIRED).count(), 1);

    // The next pass finds nothing once the view has seen the expiry.
    let stream = StreamName::new(format!("referral-{id}")).expect("stream name");
    let last = engine.store.read_stream(&stream, Direction::Backwards, StreamStart::End, 1).await.expect("read");
    engine.caught_up(last[0].position).await;
    assert_eq!(scheduler.run_once().await.expect("pass"), ExpiryPass::default());
}

#[tokio::test]
async fn the_expiry_period_is_configurable() {
    let engine = Engine::start().await;
    let two_days = ExpiryPolicy::new(Duration::days(2)).expect("policy");
    let id = engine.referral("rfi-expiry-2", two_days).await;
    let scheduler = engine.scheduler(two_days);

    engine.at(test_epoch() + Duration::days(2) - Duration::seconds(1));
    assert_eq!(scheduler.run_once().await.expect("pass").expired, 0);
    engine.at(test_epoch() + Duration::days(2));
    assert_eq!(scheduler.run_once().await.expect("pass").expired, 1);
    assert_eq!(engine.status(&id).await, Status::Expired);
}

#[tokio::test]
async fn an_accepted_referral_never_expires() {
    let engine = Engine::start().await;
    let id = engine.referral("rfi-expiry-3", ExpiryPolicy::default()).await;
    engine.at(test_epoch() + Duration::hours(3));
    engine.accept(&id).await;

    let scheduler = engine.scheduler(ExpiryPolicy::default());
    for days in [14, 15, 60, 400] {
        engine.at(test_epoch() + Duration::days(days));
        assert_eq!(scheduler.run_once().await.expect("pass"), ExpiryPass::default(), "day {days}");
    }
    assert_eq!(engine.status(&id).await, Status::Active);
    assert!(!engine.events(&id).await.iter().any(|t| t == EXPIRED));
}

/// A source of deadlines that still lists a referral after it was answered,
/// as a lagging view would.
struct Stale(Vec<ReferralId>);

#[async_trait]
impl DueReferrals for Stale {
    async fn due(&self, _now: DateTime<Utc>, _limit: u32) -> Result<Vec<ReferralId>, String> {
        Ok(self.0.clone())
    }
}

#[tokio::test]
async fn a_stale_deadline_cannot_expire_an_answered_referral() {
    let engine = Engine::start().await;
    let id = engine.referral("rfi-expiry-4", ExpiryPolicy::default()).await;
    engine.accept(&id).await;
    engine.at(test_epoch() + Duration::days(20));
    let stale = Stale(vec![ReferralId::parse(&id).expect("id")]);
    let scheduler = ExpiryScheduler::new(engine.handler(ExpiryPolicy::default()), Arc::new(stale));
    assert_eq!(scheduler.run_once().await.expect("pass"), ExpiryPass { expired: 0, skipped: 1, failed: 0 });
    assert_eq!(engine.status(&id).await, Status::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_on_one_store_write_one_expired_event_per_referral() {
    let engine = Engine::start().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(engine.referral(&format!("rfi-expiry-race-{i}"), ExpiryPolicy::default()).await);
    }
    engine.at(test_epoch() + Duration::days(14));
    // Two engine instances: their own handlers (and stream caches), one store.
    let (one, two) = (engine.scheduler(ExpiryPolicy::default()), engine.scheduler(ExpiryPolicy::default()));
    let (a, b) = tokio::join!(one.run_once(), two.run_once());
    let (a, b) = (a.expect("pass one"), b.expect("pass two"));
    assert_eq!(a.failed + b.failed, 0, "{a:?} {b:?}");
    // Each referral was handled by both; the second answer is the first's
    // (same command id) or a refusal because it is already closed.
    assert_eq!(a.expired + a.skipped, ids.len());
    assert_eq!(b.expired + b.skipped, ids.len());
    for id in &ids {
        let expired = engine.events(id).await.iter().filter(|t| *t == EXPIRED).count();
        assert_eq!(expired, 1, "referral {id}");
        assert_eq!(engine.status(id).await, Status::Expired);
    }
}

#[tokio::test]
async fn the_expired_event_is_written_by_the_scheduler_at_the_clock_time() {
    let engine = Engine::start().await;
    let id = engine.referral("rfi-expiry-5", ExpiryPolicy::default()).await;
    let due = test_epoch() + Duration::days(14) + Duration::minutes(7);
    engine.at(due);
    engine.scheduler(ExpiryPolicy::default()).run_once().await.expect("pass");
    let stream = StreamName::new(format!("referral-{id}")).expect("stream name");
    let last = engine.store.read_stream(&stream, Direction::Backwards, StreamStart::End, 1).await.expect("read");
    let metadata = referral_domain::codec::decode_metadata(&last[0]).expect("metadata");
    assert_eq!(metadata.actor, "system/expiry-scheduler");
    assert_eq!(metadata.command_id, format!("expire-{id}"));
    match referral_domain::codec::decode(&last[0]).expect("decode") {
        referral_domain::codec::DomainEvent::Referral(ReferralEvent::Expired(e)) => assert_eq!(e.expired_at, due),
        other => panic!("expected ReferralExpired, got {other:?}"),
    }
}

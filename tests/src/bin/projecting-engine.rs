//! A referral engine with its projections running, driven by its own
//! workload until it is killed, for the projection crash test.
//!
//! Usage: `projecting-engine <data directory> <run> <seed> <batch size> [<projection to rebuild>]`
//!
//! It opens the event store (`events.db`) and the views (`views/`) in the
//! data directory, prints the checkpoint each projection resumes from, starts
//! the projections (and, if asked, a rebuild of one of them), registers the
//! partners' profiles (with fixed request ids, so a later run replays them),
//! runs the expiry scheduler on the deadlines view, and then lets several
//! tasks drive referral lifecycles through the real command handler: RFIs to
//! one to three partners, then accept / decline / add contact / update
//! engagement / won / lost, or nothing (some referrals get a short expiry
//! period, so the scheduler expires them). Ids carry the run number, so every
//! run starts new lifecycles; those a kill interrupted stay as they are.
//!
//! Lines on stdout, each written at once:
//!
//! * `checkpoint <projection> <commit>|-` before the projections start, and
//!   `unfinished-rebuild <projection> <version> <commit>|-` for a rebuild an
//!   earlier run left behind (it resumes too);
//! * `rebuild <projection> <version>` or `rebuild <projection> busy`;
//! * `ready` once the profiles are registered and the workload starts;
//! * `ack <command> <stream> <revision>|- <commit>|- <events written>` per acknowledged command;
//! * `refused <command> <referral> <code>` per refusal the domain may give
//!   (a referral that expired before its answer, say).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Datelike, Duration, Utc};
use referral_commands::{Actor, CommandHandler, ExpiryScheduler, Role, SystemClock};
use referral_domain::clock::ExpiryPolicy;
use referral_domain::eventlog::EventStore;
use referral_domain::ids::PartnerId;
use referral_infra::grpc::commands_service::CommandsService;
use referral_infra::grpc::pb;
use referral_infra::grpc::pb::referral_commands_server::ReferralCommands;
use referral_infra::server::ViewDeadlines;
use referral_infra::store::SqliteEventStore;
use referral_projections::{all_projections, Projector, RunnerOptions, ViewDb, ViewError, Views};
use referral_tests::{accept_request, date, money, profile_request, rfi_request};
use tonic::{Code, Request, Status};

/// Concurrent workload tasks.
const TASKS: u64 = 6;
const PARTNERS: &[&str] = &["alpha-it", "bravo-cloud", "charlie-systems", "delta-data", "echo-ops"];
const REGIONS: &[&str] = &["emea", "amer"];
/// How long referrals of "short" RFIs live before the scheduler expires them.
const SHORT_EXPIRY: i64 = 150;

/// splitmix64: small, deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Writes one line at once, so that a kill cannot split or interleave lines
/// (a trailing partial line is ignored by the test anyway).
fn say(line: String) {
    let mut out = std::io::stdout().lock();
    if out.write_all(format!("{line}\n").as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

fn fail(message: String) -> ! {
    eprintln!("projecting-engine: {message}");
    std::process::exit(2);
}

fn as_actor<T>(message: T, actor: &Actor) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(actor.clone());
    request
}

fn ack(command: &str, result: &pb::CommandResult) {
    let revision = result.stream_revision.map_or("-".to_string(), |r| r.to_string());
    let commit = result.position.as_ref().map_or("-".to_string(), |p| p.commit.to_string());
    say(format!("ack {command} {} {revision} {commit} {}", result.stream, result.events_written));
}

struct Engine {
    run: u64,
    /// Referrals with the default expiry period.
    normal: CommandsService,
    /// Referrals that expire after `SHORT_EXPIRY` milliseconds.
    short: CommandsService,
    intake: Actor,
}

fn partner_actor(partner: &str) -> Actor {
    Actor {
        role: Role::Partner,
        partner: Some(PartnerId::parse(partner).expect("partner id")),
        name: format!("{partner}-crm"),
    }
}

/// A refusal a lifecycle may meet without anything being wrong (the referral
/// expired, or is expiring, before the partner answered it) is reported; any
/// other failure ends the process.
fn refused(command: &str, referral: &str, status: &Status) {
    if status.code() != Code::FailedPrecondition {
        fail(format!("{command} on referral {referral} failed: {status:?}"));
    }
    say(format!("refused {command} {referral} {:?}", status.code()));
}

/// An RFI with varied features, so the history has something to break down.
fn rfi(rng: &mut Rng, request_id: &str, rfi_id: &str) -> pb::SubmitRfiRequest {
    let count = 1 + rng.below(3) as usize;
    let mut partners: Vec<&str> = PARTNERS.to_vec();
    let mut targets = Vec::new();
    for _ in 0..count {
        let partner = partners.remove(rng.below(partners.len() as u64) as usize);
        targets.push(partner);
    }
    let mut request = rfi_request(request_id, rfi_id, &targets);
    for target in &mut request.targets {
        target.region = rng.pick(REGIONS).to_string();
    }
    let customer = request.customer.as_mut().expect("customer");
    customer.industry = rng.pick(&["manufacturing", "retail", "health", "finance", ""]).to_string();
    customer.size_band = 1 + rng.below(8) as i32;
    let requirements = request.requirements.as_mut().expect("requirements");
    requirements.products = vec![rng.pick(&["erp", "crm", "analytics", "security"]).to_string()];
    requirements.services = vec![rng.pick(&["migration", "implementation", "support"]).to_string()];
    requirements.keywords = match rng.below(3) {
        0 => vec![],
        1 => vec!["cloud".into()],
        _ => vec!["cloud".into(), rng.pick(&["ai", "sap", "edge"]).to_string()],
    };
    request.source = 1 + rng.below(4) as i32;
    request
}

/// One referral's life after it was received.
async fn live(engine: &Engine, rng: &mut Rng, referral: &pb::SubmittedReferral, short: bool) {
    let service = if short { &engine.short } else { &engine.normal };
    let id = referral.referral_id.as_str();
    let actor = partner_actor(&referral.partner_id);
    let rid = |what: &str| format!("{what}-{id}");
    let dice = rng.below(100);
    // Most short-lived referrals are left for the scheduler to expire.
    if dice < 15 || (short && dice < 80) {
        return;
    }
    if dice < 35 {
        let reason = 1 + rng.below(8) as i32;
        let notes = if reason == 8 { "Outside our focus this quarter.".to_string() } else { String::new() };
        let request = pb::DeclineReferralRequest { request_id: rid("decline"), referral_id: id.into(), reason, notes };
        match service.decline_referral(as_actor(request, &actor)).await {
            Ok(r) => ack("decline", r.get_ref()),
            Err(status) => refused("decline", id, &status),
        }
        return;
    }
    let mut accept = accept_request(&rid("accept"), id);
    accept.estimated_purchase_date = Some(date(2099, 1 + rng.below(12) as i32, 1 + rng.below(28) as i32));
    accept.estimated_value =
        Some(money(rng.pick::<&str>(&["EUR", "USD", "GBP"]), 1_000 + rng.below(500_000) as i64, 0));
    match service.accept_referral(as_actor(accept, &actor)).await {
        Ok(r) => ack("accept", r.get_ref()),
        Err(status) => {
            refused("accept", id, &status);
            return;
        }
    }
    for step in 0..rng.below(4) {
        let result = if rng.below(2) == 0 {
            let request = pb::AddContactRequest {
                request_id: rid(&format!("contact{step}")),
                referral_id: id.into(),
                contact: Some(pb::Contact {
                    name: format!("Contact {step}"),
                    email: format!("contact{step}@{}.example", referral.partner_id),
                    phone: String::new(),
                }),
            };
            service.add_contact(as_actor(request, &actor)).await.map(|r| ("contact", r))
        } else {
            let request = pb::UpdateEngagementRequest {
                request_id: rid(&format!("update{step}")),
                referral_id: id.into(),
                engagement_name: Some(format!("Engagement, phase {step}")),
                estimated_value: Some(money("EUR", 2_000 + rng.below(900_000) as i64, 0)),
                estimated_purchase_date: None,
                notes: (rng.below(2) == 0).then(|| format!("Notes after step {step}.")),
                crm_id: Some(format!("CRM-{}", rng.below(1_000))),
                campaign_id: None,
            };
            service.update_engagement(as_actor(request, &actor)).await.map(|r| ("update", r))
        };
        match result {
            Ok((what, r)) => ack(what, r.get_ref()),
            Err(status) => fail(format!("a step on active referral {id} failed: {status:?}")),
        }
    }
    let end = rng.below(10);
    let result = if end < 4 {
        let request = pb::MarkWonRequest {
            request_id: rid("won"),
            referral_id: id.into(),
            final_value: Some(money(rng.pick::<&str>(&["EUR", "USD"]), 500 + rng.below(1_000_000) as i64, 0)),
            closed_on: {
                let today = Utc::now().date_naive();
                Some(date(today.year(), today.month() as i32, today.day() as i32))
            },
        };
        service.mark_won(as_actor(request, &actor)).await.map(|r| ("won", r))
    } else if end < 7 {
        let reason = 1 + rng.below(8) as i32;
        let notes = if reason == 8 { "Budget moved to next year.".to_string() } else { String::new() };
        let request = pb::MarkLostRequest { request_id: rid("lost"), referral_id: id.into(), reason, notes };
        service.mark_lost(as_actor(request, &actor)).await.map(|r| ("lost", r))
    } else {
        return;
    };
    match result {
        Ok((what, r)) => ack(what, r.get_ref()),
        Err(status) => fail(format!("closing active referral {id} failed: {status:?}")),
    }
}

async fn workload(engine: Arc<Engine>, task: u64, mut rng: Rng) {
    for n in 0.. {
        let rfi_id = format!("rfi-r{}-t{task}-{n}", engine.run);
        let short = rng.below(5) == 0;
        let request = rfi(&mut rng, &format!("submit-{rfi_id}"), &rfi_id);
        let service = if short { &engine.short } else { &engine.normal };
        let submitted = match service.submit_rfi(as_actor(request, &engine.intake)).await {
            Ok(r) => r.into_inner(),
            Err(status) => fail(format!("submitting {rfi_id} failed: {status:?}")),
        };
        for referral in &submitted.referrals {
            ack("receive", referral.result.as_ref().expect("result"));
        }
        for referral in &submitted.referrals {
            live(&engine, &mut rng, referral, short).await;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: projecting-engine <data directory> <run> <seed> <batch size> [<projection to rebuild>]");
        return ExitCode::from(64);
    }
    let dir = PathBuf::from(&args[0]);
    let number = |i: usize| args[i].parse::<u64>().unwrap_or_else(|e| fail(format!("bad number {:?}: {e}", args[i])));
    let (run, seed, batch_size) = (number(1), number(2), number(3) as usize);

    let store: Arc<dyn EventStore> = match SqliteEventStore::open(&dir.join("events.db")) {
        Ok(store) => Arc::new(store),
        Err(e) => fail(format!("cannot open the event store: {e}")),
    };
    let db = ViewDb::open(&dir.join("views")).unwrap_or_else(|e| fail(format!("cannot open the views: {e}")));
    let options = RunnerOptions { batch_size, rebuild_batch_size: batch_size, ..RunnerOptions::default() };
    let projector = Projector::open(store.clone(), db.clone(), all_projections(), options)
        .await
        .unwrap_or_else(|e| fail(format!("cannot open the projector: {e}")));
    for name in projector.names() {
        let at = projector.checkpoint(name).map_or("-".to_string(), |p| p.commit.to_string());
        say(format!("checkpoint {name} {at}"));
    }
    let status = projector.status().await.unwrap_or_else(|e| fail(format!("cannot read the projections' status: {e}")));
    for p in &status {
        if let Some(v) = p.rebuilding() {
            let at = v.checkpoint.map_or("-".to_string(), |p| p.commit.to_string());
            say(format!("unfinished-rebuild {} {} {at}", p.name, v.version));
        }
    }
    projector.start().await.unwrap_or_else(|e| fail(format!("cannot start the projections: {e}")));
    if let Some(name) = args.get(4) {
        match projector.rebuild(name).await {
            Ok(version) => say(format!("rebuild {name} {version}")),
            Err(ViewError::RebuildInProgress { .. }) => say(format!("rebuild {name} busy")),
            Err(e) => fail(format!("cannot rebuild {name}: {e}")),
        }
    }

    let clock = Arc::new(SystemClock);
    let handler = CommandHandler::new(store.clone(), clock.clone());
    let short_expiry = ExpiryPolicy::new(Duration::milliseconds(SHORT_EXPIRY)).expect("expiry policy");
    let engine = Arc::new(Engine {
        run,
        normal: CommandsService::new(handler.clone()),
        short: CommandsService::new(CommandHandler::new(store.clone(), clock).with_expiry(short_expiry)),
        intake: Actor { role: Role::Intake, partner: None, name: "intake".into() },
    });
    for partner in PARTNERS {
        for region in REGIONS {
            let request = profile_request(&format!("profile-{partner}-{region}"), partner, region);
            match engine.normal.register_partner_profile(as_actor(request, &engine.intake)).await {
                Ok(r) => ack("profile", r.get_ref()),
                Err(status) => fail(format!("registering {partner}/{region} failed: {status:?}")),
            }
        }
    }

    let (_keep_running, stop) = tokio::sync::watch::channel(false);
    let scheduler = ExpiryScheduler::new(handler, Arc::new(ViewDeadlines(Views::new(db))))
        .with_interval(StdDuration::from_millis(100));
    let scheduler = tokio::spawn(scheduler.run(stop));

    say("ready".to_string());
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let rng = Rng(seed ^ (run << 48) ^ (task << 40));
        tasks.push(tokio::spawn(workload(engine.clone(), task, rng)));
    }
    for task in tasks {
        if let Err(e) = task.await {
            fail(format!("a workload task failed: {e}"));
        }
    }
    let _ = scheduler.await;
    ExitCode::SUCCESS
}

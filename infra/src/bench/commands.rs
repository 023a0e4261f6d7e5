//! `bench commands`: full commands/s (load, decide, append).
//!
//! Each worker drives referrals through their lifecycle: submit an RFI, accept
//! the referral, add a contact, edit the engagement, mark it won; then again
//! with a new RFI. Every step is one command. In-process, the calls go
//! straight to the gRPC service implementation (conversion, auth checks and
//! the command handler, no network); with `--grpc` they go through a server
//! on a loopback port. The baseline is the same run over a store that
//! commits every append in its own transaction (group commit off).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate, Utc};
use referral_commands::{Actor, CommandHandler, Role, SystemClock};
use referral_domain::eventlog::EventStore;
use referral_domain::ids::PartnerId;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::driver::{drive, median, runs_note, Measured, Worker};
use super::{BenchError, BenchReport, BenchRow, WRITER_COUNTS};
use crate::grpc::auth::{self, BearerToken, CommandsClient, TokenStore};
use crate::grpc::commands_service::CommandsService;
use crate::grpc::pb;
use crate::grpc::pb::referral_commands_server::ReferralCommands;
use crate::server::{self, ServerParts};
use crate::store::{SqliteEventStore, SqliteOptions};

const PARTNER: &str = "bench-partner";
const REGION: &str = "emea";
const BASELINE: &str = "the same commands over the embedded store with group commit off: one transaction and one fsync per append, same SQLite settings";

/// One command of the lifecycle.
enum Call {
    Submit(pb::SubmitRfiRequest),
    Accept(pb::AcceptReferralRequest),
    AddContact(pb::AddContactRequest),
    Update(pb::UpdateEngagementRequest),
    Won(pb::MarkWonRequest),
}

/// Where the commands go: the service in this process, or a gRPC server.
#[async_trait]
trait Target: Send + Sync + 'static {
    /// Runs one call; a submit answers the new referral's id.
    async fn call(&self, call: Call) -> Result<Option<String>, Status>;
}

struct InProcess {
    service: CommandsService,
    intake: Actor,
    partner: Actor,
}

fn as_actor<T>(message: T, actor: &Actor) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(actor.clone());
    request
}

#[async_trait]
impl Target for InProcess {
    async fn call(&self, call: Call) -> Result<Option<String>, Status> {
        let s = &self.service;
        match call {
            Call::Submit(r) => {
                let response = s.submit_rfi(as_actor(r, &self.intake)).await?.into_inner();
                Ok(response.referrals.into_iter().next().map(|r| r.referral_id))
            }
            Call::Accept(r) => s.accept_referral(as_actor(r, &self.partner)).await.map(|_| None),
            Call::AddContact(r) => s.add_contact(as_actor(r, &self.partner)).await.map(|_| None),
            Call::Update(r) => s.update_engagement(as_actor(r, &self.partner)).await.map(|_| None),
            Call::Won(r) => s.mark_won(as_actor(r, &self.partner)).await.map(|_| None),
        }
    }
}

/// Clients over several connections: one HTTP/2 connection is served by
/// one server task, so a single one would serialise the load.
struct OverGrpc {
    connections: Vec<(CommandsClient, CommandsClient)>,
    next: std::sync::atomic::AtomicUsize,
}

/// Loopback connections the gRPC load is spread over.
const CONNECTIONS: usize = 8;

fn client(channel: Channel, token: &str) -> Result<CommandsClient, BenchError> {
    Ok(BearerToken::new(token).map_err(BenchError::Setup)?.client(channel))
}

#[async_trait]
impl Target for OverGrpc {
    async fn call(&self, call: Call) -> Result<Option<String>, Status> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.connections.len();
        let (mut intake, mut partner) = self.connections[n].clone();
        match call {
            Call::Submit(r) => {
                let response = intake.submit_rfi(r).await?.into_inner();
                Ok(response.referrals.into_iter().next().map(|r| r.referral_id))
            }
            Call::Accept(r) => partner.accept_referral(r).await.map(|_| None),
            Call::AddContact(r) => partner.add_contact(r).await.map(|_| None),
            Call::Update(r) => partner.update_engagement(r).await.map(|_| None),
            Call::Won(r) => partner.mark_won(r).await.map(|_| None),
        }
    }
}

fn date(d: NaiveDate) -> pb::google::r#type::Date {
    pb::google::r#type::Date { year: d.year(), month: d.month() as i32, day: d.day() as i32 }
}

fn money(units: i64) -> pb::google::r#type::Money {
    pb::google::r#type::Money { currency_code: "EUR".into(), units, nanos: 0 }
}

fn contact(name: &str, email: &str) -> pb::Contact {
    pb::Contact { name: name.into(), email: email.into(), phone: "+49 30 1234567".into() }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One worker's walk through referral lifecycles.
struct LifecycleWorker {
    target: Arc<dyn Target>,
    name: String,
    iteration: u64,
    step: u8,
    referral: String,
}

impl LifecycleWorker {
    fn next_call(&self) -> Call {
        let today = Utc::now().date_naive();
        let referral_id = self.referral.clone();
        match self.step {
            0 => Call::Submit(pb::SubmitRfiRequest {
                request_id: request_id(),
                rfi_id: format!("{}-{}", self.name, self.iteration),
                targets: vec![pb::RfiTarget {
                    partner_id: PARTNER.into(),
                    region: REGION.into(),
                    location: String::new(),
                }],
                customer: Some(pb::Customer {
                    company_name: "Fabrikam AG".into(),
                    industry: "manufacturing".into(),
                    size_band: pb::SizeBand::SizeBand51250 as i32,
                    country: "DE".into(),
                    contact: Some(contact("Jonas Weber", "jonas.weber@fabrikam.example")),
                }),
                requirements: Some(pb::Requirements {
                    description: "Move our ERP to the cloud within a year.".into(),
                    products: vec!["erp".into()],
                    services: vec!["migration".into()],
                    keywords: vec!["cloud".into()],
                }),
                consent: Some(pb::Consent { contact: true, share_details: true }),
                direct_contact_requested: true,
                source: pb::Source::PartnerSearch as i32,
                received_at: None,
            }),
            1 => Call::Accept(pb::AcceptReferralRequest {
                request_id: request_id(),
                referral_id,
                engagement_name: "Fabrikam ERP migration".into(),
                estimated_value: Some(money(125_000)),
                estimated_purchase_date: Some(date(today + chrono::Days::new(60))),
                notes: "Finance first, then logistics.".into(),
                crm_id: "CRM-1".into(),
                campaign_id: String::new(),
                contacts: vec![],
            }),
            2 => Call::AddContact(pb::AddContactRequest {
                request_id: request_id(),
                referral_id,
                contact: Some(contact("Ines Berg", "ines.berg@fabrikam.example")),
            }),
            3 => Call::Update(pb::UpdateEngagementRequest {
                request_id: request_id(),
                referral_id,
                engagement_name: None,
                estimated_value: Some(money(140_000)),
                estimated_purchase_date: None,
                notes: Some("Workshop booked.".into()),
                crm_id: None,
                campaign_id: None,
            }),
            _ => Call::Won(pb::MarkWonRequest {
                request_id: request_id(),
                referral_id,
                final_value: Some(money(138_000)),
                closed_on: Some(date(today)),
            }),
        }
    }
}

#[async_trait]
impl Worker for LifecycleWorker {
    async fn step(&mut self) -> Result<(), String> {
        let answer =
            self.target.call(self.next_call()).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        if let Some(referral) = answer {
            self.referral = referral;
        }
        self.step += 1;
        if self.step == 5 {
            self.step = 0;
            self.iteration += 1;
        }
        Ok(())
    }
}

fn profile_request() -> pb::RegisterPartnerProfileRequest {
    pb::RegisterPartnerProfileRequest {
        request_id: request_id(),
        partner_id: PARTNER.into(),
        region: REGION.into(),
        company_name: "Bench Partner GmbH".into(),
        description: "Cloud migrations.".into(),
        locations: vec![pb::Location {
            id: "berlin".into(),
            name: "Berlin".into(),
            contacts: vec![contact("Ines Berg", "ines@bench-partner.example")],
        }],
        expertise: Some(pb::Expertise {
            industries: vec!["manufacturing".into()],
            products: vec!["erp".into()],
            services: vec!["migration".into()],
            solutions: vec![],
        }),
        target_sizes: vec![],
    }
}

fn actors() -> Result<(Actor, Actor), BenchError> {
    let partner = PartnerId::parse(PARTNER).map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok((
        Actor { role: Role::Intake, partner: None, name: "bench-intake".into() },
        Actor { role: Role::Partner, partner: Some(partner), name: "bench-partner".into() },
    ))
}

/// A running target over a fresh store in `dir`.
struct Setup {
    target: Arc<dyn Target>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), server::ServeError>>>,
}

async fn set_up(dir: &Path, options: SqliteOptions, grpc: bool) -> Result<Setup, BenchError> {
    let setup = |e: String| BenchError::Setup(e);
    std::fs::create_dir_all(dir).map_err(|e| setup(e.to_string()))?;
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteEventStore::open_with(&dir.join(server::EVENTS_DB), options).map_err(|e| setup(e.to_string()))?);
    let (intake, partner) = actors()?;
    let in_process = InProcess {
        service: CommandsService::new(CommandHandler::new(store.clone(), Arc::new(SystemClock))),
        intake: intake.clone(),
        partner: partner.clone(),
    };
    in_process
        .service
        .register_partner_profile(as_actor(profile_request(), &intake))
        .await
        .map_err(|s| setup(s.message().into()))?;
    if !grpc {
        return Ok(Setup { target: Arc::new(in_process), stop: None, server: None });
    }
    let intake_token = auth::add_token(dir, Role::Intake, None, "bench-intake").map_err(|e| setup(e.to_string()))?;
    let partner_token =
        auth::add_token(dir, Role::Partner, Some(PARTNER), "bench-partner").map_err(|e| setup(e.to_string()))?;
    let tokens = Arc::new(TokenStore::open(dir).map_err(|e| setup(e.to_string()))?);
    let listener = server::bind("127.0.0.1:0".parse().map_err(|e| setup(format!("{e}")))?)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| setup(e.to_string()))?;
    // The write path alone: no projections or scheduler competing for the cores.
    let parts =
        ServerParts { store, clock: Arc::new(SystemClock), tokens, expiry: Default::default(), read_side: None };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(parts, listener, async {
        let _ = stopped.await;
    }));
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| setup(e.to_string()))?
            .connect()
            .await
            .map_err(|e| setup(e.to_string()))?;
        connections.push((client(channel.clone(), &intake_token)?, client(channel, &partner_token)?));
    }
    let target = OverGrpc { connections, next: std::sync::atomic::AtomicUsize::new(0) };
    Ok(Setup { target: Arc::new(target), stop: Some(stop), server: Some(server) })
}

impl Setup {
    async fn tear_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            if let Ok(Err(e)) = server.await {
                tracing::warn!(error = %e, "bench server stopped with an error");
            }
        }
    }
}

async fn measure(
    target: &Arc<dyn Target>,
    writers: usize,
    round: &str,
    duration: Duration,
) -> Result<Measured, BenchError> {
    let workers = (0..writers)
        .map(|w| {
            Box::new(LifecycleWorker {
                target: target.clone(),
                name: format!("r{round}-w{w}"),
                iteration: 0,
                step: 0,
                referral: String::new(),
            }) as Box<dyn Worker>
        })
        .collect();
    drive(workers, duration).await
}

/// Measures commands/s at 1, 16 and 64 concurrent writers, each beside the
/// group-commit-off baseline.
pub async fn bench_commands(
    dir: &Path,
    duration: Duration,
    grpc: bool,
    repeat: usize,
) -> Result<BenchReport, BenchError> {
    let engine = set_up(&dir.join("commands-engine"), SqliteOptions::default(), grpc).await?;
    let baseline =
        set_up(&dir.join("commands-baseline"), SqliteOptions { max_batch: 1, ..Default::default() }, grpc).await?;
    let (mut rows, mut notes) = (Vec::new(), Vec::new());
    for (round, writers) in WRITER_COUNTS.into_iter().enumerate() {
        let (mut engine_runs, mut baseline_runs) = (Vec::new(), Vec::new());
        for run in 0..repeat.max(1) {
            engine_runs.push(measure(&engine.target, writers, &format!("{round}-{run}"), duration).await?);
            baseline_runs.push(measure(&baseline.target, writers, &format!("{round}-{run}"), duration).await?);
        }
        if engine_runs.len() > 1 {
            notes.push(runs_note(writers, &engine_runs, &baseline_runs));
        }
        let (e, b) = (median(engine_runs), median(baseline_runs));
        rows.push(BenchRow {
            writers,
            value: e.per_second,
            baseline: b.per_second,
            ratio: e.per_second / b.per_second.max(f64::MIN_POSITIVE),
            p50_us: e.p50_us,
            p99_us: e.p99_us,
            baseline_p50_us: b.p50_us,
            baseline_p99_us: b.p99_us,
            ..Default::default()
        });
    }
    engine.tear_down().await;
    baseline.tear_down().await;
    let scenario = if grpc { "commands --grpc" } else { "commands" };
    let unit = if grpc { "commands/s over gRPC loopback" } else { "commands/s in-process" };
    let mut report = BenchReport::new(scenario, unit, BASELINE, duration.as_secs_f64(), rows);
    report.notes = notes;
    Ok(report)
}

//! `bench lag`: how long after a command is acknowledged its effect shows
//! in the views.
//!
//! In one process: a `SqliteEventStore`, a `CommandHandler` over it, and a
//! `Projector` running all four projections live (as the server runs them).
//! Commands arrive at a fixed rate (open loop: a command is issued every
//! 1/rate seconds whether or not earlier ones have finished), as a partner
//! programme's traffic mixes them: RFIs submitted (some to two or three
//! partners), referrals accepted (some with a contact), declined, given
//! contacts, edited, won and lost.
//!
//! For each command: the acknowledgement latency (the handler's call, which
//! returns once the events are durable), then the lag from that
//! acknowledgement until the `referrals` projection's checkpoint reaches the
//! position the command returned (`Projector::wait_for`): from then on
//! `Views` shows the change. The baseline is the acknowledgement latency
//! itself, measured on the same commands.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use referral_commands::{Actor, CommandContext, CommandHandler, RfiTarget, Role, SubmitRfi, SystemClock};
use referral_domain::eventlog::{EventStore, Position};
use referral_domain::ids::{CommandId, PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::profile::{ExpertiseInput, LocationInput, PartnerAction, PartnerCommand, ProfileInput};
use referral_domain::referral::{
    AcceptReferral, Consent, CustomerInput, MoneyInput, ReferralAction, ReferralCommand, RequirementsInput, Source,
    UpdateEngagement,
};
use referral_domain::values::{ContactInput, ReasonCode, SizeBand};
use referral_projections::{all_projections, referrals, Projector, RunnerOptions, ViewDb};
use tokio::task::JoinSet;

use super::{percentile, BenchError, BenchReport, BenchRow, Layout, PhasePeaks};
use crate::store::SqliteEventStore;

const BASELINE: &str = "the acknowledgement latency of the same commands (CommandHandler call until the append is \
                        durable), same run";
const SEED: u64 = 0x5eed_0003;
const PARTNERS: usize = 50;
const REGIONS: [&str; 3] = ["emea", "dach", "na-east"];
/// Longest a command's row may take to show before the run fails.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

const KINDS: [&str; 7] = ["submit RFI", "accept", "decline", "add contact", "edit engagement", "mark won", "mark lost"];

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

fn partner_id(p: usize) -> PartnerId {
    PartnerId::parse(&format!("lag-partner-{p}")).expect("a valid partner id")
}

fn region(p: usize) -> &'static str {
    REGIONS[p % REGIONS.len()]
}

/// A referral the driver knows about.
struct Live {
    id: ReferralId,
    partner: usize,
    contacts: u32,
    edits: u32,
}

/// One command to issue.
enum Command {
    Submit(Vec<usize>),
    Accept(Live),
    Decline(Live),
    AddContact(Live),
    Update(Live),
    Won(Live),
    Lost(Live),
}

impl Command {
    fn kind(&self) -> usize {
        match self {
            Command::Submit(_) => 0,
            Command::Accept(_) => 1,
            Command::Decline(_) => 2,
            Command::AddContact(_) => 3,
            Command::Update(_) => 4,
            Command::Won(_) => 5,
            Command::Lost(_) => 6,
        }
    }
}

/// Referrals waiting for their next command, by state; those with a
/// command in flight are in neither.
struct Pools {
    rng: StdRng,
    new: Vec<Live>,
    active: Vec<Live>,
}

impl Pools {
    fn take(rng: &mut StdRng, pool: &mut Vec<Live>) -> Option<Live> {
        (!pool.is_empty()).then(|| pool.swap_remove(rng.gen_range(0..pool.len())))
    }

    /// The next command: 30 % RFIs, 18 % accepts, 5 % declines, 12 % new
    /// contacts, 20 % edits, 9 % wins, 6 % losses (an RFI when no referral
    /// is in the state the drawn command needs).
    fn next(&mut self) -> Command {
        let draw = self.rng.gen::<f64>();
        let rng = &mut self.rng;
        let chosen = if draw < 0.30 {
            None
        } else if draw < 0.48 {
            Self::take(rng, &mut self.new).map(Command::Accept)
        } else if draw < 0.53 {
            Self::take(rng, &mut self.new).map(Command::Decline)
        } else if draw < 0.65 {
            Self::take(rng, &mut self.active).map(Command::AddContact)
        } else if draw < 0.85 {
            Self::take(rng, &mut self.active).map(Command::Update)
        } else if draw < 0.94 {
            Self::take(rng, &mut self.active).map(Command::Won)
        } else {
            Self::take(rng, &mut self.active).map(Command::Lost)
        };
        chosen.unwrap_or_else(|| {
            let first = rng.gen_range(0..PARTNERS);
            let mut targets = vec![first];
            if rng.gen_bool(0.15) {
                for _ in 0..rng.gen_range(1..=2) {
                    let other = rng.gen_range(0..PARTNERS);
                    if !targets.contains(&other) {
                        targets.push(other);
                    }
                }
            }
            Command::Submit(targets)
        })
    }
}

fn context(actor: Actor) -> CommandContext {
    CommandContext::new(CommandId::parse(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a command id"), actor)
}

fn partner_actor(p: usize) -> Actor {
    Actor { role: Role::Partner, partner: Some(partner_id(p)), name: format!("user-{}", p % 4) }
}

fn eur(units: i64) -> MoneyInput {
    MoneyInput { currency_code: "EUR".into(), units, nanos: 0 }
}

/// Runs one command; answers the position it wrote and, for an RFI, the new referrals.
async fn execute(handler: &CommandHandler, command: &mut Command, rfi: u64) -> Result<(Position, Vec<Live>), String> {
    let today = Utc::now().date_naive();
    let referral_command = |live: &Live, action: ReferralAction| ReferralCommand { referral: live.id, action };
    let written = match command {
        Command::Submit(targets) => {
            let request = SubmitRfi {
                rfi: RfiId::parse(&format!("lag-rfi-{rfi}")).map_err(|e| e.to_string())?,
                targets: targets
                    .iter()
                    .map(|&p| RfiTarget {
                        partner: partner_id(p),
                        region: RegionId::parse(region(p)).expect("a valid region"),
                        location: None,
                    })
                    .collect(),
                customer: CustomerInput {
                    company_name: format!("Customer {rfi} GmbH"),
                    industry: "manufacturing".into(),
                    size_band: Some(SizeBand::ALL[(rfi % 8) as usize]),
                    country: "DE".into(),
                    contact: ContactInput::new(
                        "Jonas Weber",
                        &format!("jonas.{rfi}@customer.example"),
                        "+49 30 1234567",
                    ),
                },
                requirements: RequirementsInput {
                    description: "Move the ERP to the cloud within a year; finance first, then logistics.".into(),
                    products: vec!["erp".into()],
                    services: vec!["migration".into()],
                    keywords: vec!["cloud".into(), "finance".into()],
                },
                consent: Consent { contact: true, share_details: true },
                direct_contact_requested: rfi.is_multiple_of(3),
                source: Source::PartnerSearch,
                received_at: None,
            };
            let submitted = handler
                .submit_rfi(&context(Actor { role: Role::Intake, partner: None, name: "intake".into() }), request)
                .await
                .map_err(|e| format!("submit RFI: {e}"))?;
            let position = submitted.iter().filter_map(|s| s.written.position).max();
            let live = submitted
                .iter()
                .filter_map(|s| {
                    let p = targets.iter().copied().find(|&p| partner_id(p) == s.partner)?;
                    Some(Live { id: s.referral, partner: p, contacts: 0, edits: 0 })
                })
                .collect();
            return position.map(|p| (p, live)).ok_or_else(|| "submit RFI wrote nothing".to_string());
        }
        Command::Accept(live) => {
            let contacts = if live.id.0.as_bytes()[0] % 3 == 0 {
                live.contacts += 1;
                vec![ContactInput::new("Ines Berg", "ines.1@partner.example", "")]
            } else {
                vec![]
            };
            let action = ReferralAction::Accept(AcceptReferral {
                engagement_name: "ERP migration".into(),
                estimated_value: eur(125_000),
                estimated_purchase_date: Some(today + chrono::Days::new(60)),
                notes: "Finance first, then logistics.".into(),
                crm_id: "CRM-1".into(),
                campaign_id: String::new(),
                contacts,
            });
            handler.execute_referral(&context(partner_actor(live.partner)), referral_command(live, action)).await
        }
        Command::Decline(live) => {
            let action = ReferralAction::Decline { reason: Some(ReasonCode::TimelineTooShort), notes: String::new() };
            handler.execute_referral(&context(partner_actor(live.partner)), referral_command(live, action)).await
        }
        Command::AddContact(live) => {
            live.contacts += 1;
            let email = format!("colleague.{}@partner.example", live.contacts + 1);
            let action = ReferralAction::AddContact(ContactInput::new("Max Mustermann", &email, "+49 89 7654321"));
            handler.execute_referral(&context(partner_actor(live.partner)), referral_command(live, action)).await
        }
        Command::Update(live) => {
            live.edits += 1;
            let action = ReferralAction::UpdateEngagement(UpdateEngagement {
                estimated_value: Some(eur(125_000 + 1_000 * i64::from(live.edits))),
                notes: Some(format!("Update {}: workshop held.", live.edits)),
                ..Default::default()
            });
            handler.execute_referral(&context(partner_actor(live.partner)), referral_command(live, action)).await
        }
        Command::Won(live) => {
            let action = ReferralAction::MarkWon { final_value: eur(131_000), closed_on: Some(today) };
            handler.execute_referral(&context(partner_actor(live.partner)), referral_command(live, action)).await
        }
        Command::Lost(live) => {
            let action =
                ReferralAction::MarkLost { reason: Some(ReasonCode::CustomerChoseAnotherVendor), notes: String::new() };
            handler.execute_referral(&context(partner_actor(live.partner)), referral_command(live, action)).await
        }
    };
    let kind = KINDS[command.kind()];
    let written = written.map_err(|e| format!("{kind}: {e}"))?;
    written.position.map(|p| (p, Vec::new())).ok_or_else(|| format!("{kind} wrote nothing"))
}

/// One measured command.
struct Sample {
    kind: usize,
    ack_us: u64,
    lag_us: u64,
}

/// Issues `command`, waits for its row to show, and puts the referral back
/// in the pool its state now belongs to.
async fn issue(
    handler: CommandHandler,
    projector: Projector,
    pools: Arc<Mutex<Pools>>,
    mut command: Command,
    rfi: u64,
) -> Result<Sample, String> {
    let sent = Instant::now();
    let (position, created) = execute(&handler, &mut command, rfi).await?;
    let acknowledged = Instant::now();
    let visible = projector.wait_for(referrals::NAME, position, VISIBLE_WITHIN).await;
    let shown = Instant::now();
    if let Err(at) = visible {
        return Err(format!(
            "{} at {position} was not in the view after {} s (the referrals projection is at {at:?})",
            KINDS[command.kind()],
            VISIBLE_WITHIN.as_secs()
        ));
    }
    let kind = command.kind();
    {
        let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.new.extend(created);
        match command {
            Command::Accept(live) | Command::AddContact(live) | Command::Update(live) => pools.active.push(live),
            _ => {}
        }
    }
    Ok(Sample {
        kind,
        ack_us: (acknowledged - sent).as_micros() as u64,
        lag_us: (shown - acknowledged).as_micros() as u64,
    })
}

async fn register_partners(handler: &CommandHandler) -> Result<Position, BenchError> {
    let operator = Actor { role: Role::Operator, partner: None, name: "bench-operator".into() };
    let mut last = Position::START;
    for p in 0..PARTNERS {
        let input = ProfileInput {
            region: region(p).into(),
            company_name: format!("Lag Partner {p}"),
            description: "Cloud migrations for manufacturing.".into(),
            locations: vec![LocationInput {
                id: "hq".into(),
                name: "Headquarters".into(),
                contacts: vec![ContactInput::new("Desk", &format!("desk@lag-partner-{p}.example"), "")],
            }],
            expertise: ExpertiseInput {
                industries: vec!["manufacturing".into()],
                products: vec!["erp".into()],
                services: vec!["migration".into()],
                solutions: vec![],
            },
            target_sizes: vec![],
        };
        let command = PartnerCommand { partner: partner_id(p), action: PartnerAction::RegisterProfile(input) };
        let written = handler.execute_partner(&context(operator.clone()), command).await.map_err(setup)?;
        last = last.max(written.position.unwrap_or(last));
    }
    Ok(last)
}

fn summary(samples: &[&Sample], seconds: f64, label: String, in_flight: usize) -> BenchRow {
    let mut lag: Vec<u64> = samples.iter().map(|s| s.lag_us).collect();
    let mut ack: Vec<u64> = samples.iter().map(|s| s.ack_us).collect();
    lag.sort_unstable();
    ack.sort_unstable();
    let value = percentile(&lag, 0.99) as f64 / 1000.0;
    let baseline = percentile(&ack, 0.99) as f64 / 1000.0;
    BenchRow {
        writers: in_flight,
        value,
        baseline,
        ratio: value / baseline.max(0.001),
        p50_us: percentile(&lag, 0.50),
        p99_us: percentile(&lag, 0.99),
        baseline_p50_us: percentile(&ack, 0.50),
        baseline_p99_us: percentile(&ack, 0.99),
        label: Some(label),
        per_second: Some(samples.len() as f64 / seconds.max(f64::MIN_POSITIVE)),
        ..Default::default()
    }
}

/// Drives `rate` commands/s for `duration` (after a second of warm-up) and
/// measures how long each takes to show in the views.
pub async fn bench_lag(dir: &Path, rate: f64, duration: Duration) -> Result<BenchReport, BenchError> {
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(setup("--rate must be a positive number of commands per second"));
    }
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteEventStore::open(&dir.join(crate::server::EVENTS_DB)).map_err(setup)?);
    let handler = CommandHandler::new(store.clone(), Arc::new(SystemClock));
    let db = ViewDb::open(&dir.join("lag-views")).map_err(setup)?;
    let projector =
        Projector::open(store.clone(), db, all_projections(), RunnerOptions::default()).await.map_err(setup)?;
    projector.start().await.map_err(setup)?;
    let registered = register_partners(&handler).await?;
    projector
        .wait_for(referrals::NAME, registered, VISIBLE_WITHIN)
        .await
        .map_err(|at| setup(format!("the projections did not catch up with the partner profiles (at {at:?})")))?;

    let mut peaks = PhasePeaks::new();
    peaks.start();
    let pools = Arc::new(Mutex::new(Pools { rng: StdRng::seed_from_u64(SEED), new: Vec::new(), active: Vec::new() }));
    let warm_up = if duration >= Duration::from_secs(4) { Duration::from_secs(1) } else { Duration::ZERO };
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks: JoinSet<(bool, Result<Sample, String>)> = JoinSet::new();
    let mut samples = Vec::new();
    let mut most_in_flight = 0;
    let mut failure = None;
    let started = Instant::now();
    let mut rfi = 0u64;
    while started.elapsed() < warm_up + duration && failure.is_none() {
        ticker.tick().await;
        let measured = started.elapsed() >= warm_up;
        let command = pools.lock().unwrap_or_else(|p| p.into_inner()).next();
        rfi += 1;
        let (handler, projector, pools) = (handler.clone(), projector.clone(), pools.clone());
        tasks.spawn(async move { (measured, issue(handler, projector, pools, command, rfi).await) });
        most_in_flight = most_in_flight.max(tasks.len());
        while let Some(done) = tasks.try_join_next() {
            match done {
                Ok((measured, Ok(sample))) => {
                    if measured {
                        samples.push(sample)
                    }
                }
                Ok((_, Err(e))) => failure = Some(e),
                Err(e) => failure = Some(e.to_string()),
            }
        }
    }
    let issuing = (started.elapsed().saturating_sub(warm_up)).as_secs_f64();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((measured, Ok(sample))) => {
                if measured {
                    samples.push(sample)
                }
            }
            Ok((_, Err(e))) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(e.to_string())),
        }
    }
    let rss = peaks.finish();
    let status = projector.status().await.map_err(|e| BenchError::Operation(e.to_string()))?;
    projector.shutdown().await;
    if let Some(e) = failure {
        return Err(BenchError::Operation(e));
    }
    for s in &status {
        for v in &s.versions {
            if let Some((at, why)) = &v.failure {
                return Err(BenchError::Operation(format!("projection {} failed at {at}: {why}", s.name)));
            }
        }
    }
    if samples.is_empty() {
        return Err(BenchError::Operation("no command finished".into()));
    }

    let mut rows = Vec::new();
    for (kind, name) in KINDS.iter().enumerate() {
        let of_kind: Vec<&Sample> = samples.iter().filter(|s| s.kind == kind).collect();
        if !of_kind.is_empty() {
            rows.push(summary(&of_kind, issuing, (*name).to_string(), most_in_flight));
        }
    }
    let all: Vec<&Sample> = samples.iter().collect();
    rows.push(summary(&all, issuing, format!("all commands at {rate:.0}/s"), most_in_flight));
    let mut end_to_end: Vec<u64> = samples.iter().map(|s| s.ack_us + s.lag_us).collect();
    end_to_end.sort_unstable();
    let mut notes = vec![
        format!(
            "{} commands measured over {issuing:.1} s after {:.0} s of warm-up ({:.0}/s achieved, at most {most_in_flight} \
             in flight); all four projections live",
            samples.len(),
            warm_up.as_secs_f64(),
            samples.len() as f64 / issuing.max(f64::MIN_POSITIVE)
        ),
        format!(
            "command sent to row in the view: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&end_to_end, 0.5) as f64 / 1000.0,
            percentile(&end_to_end, 0.99) as f64 / 1000.0
        ),
    ];
    let mut report =
        BenchReport::new("lag", "ms p99 from acknowledgement to row in view", BASELINE, duration.as_secs_f64(), rows);
    report.layout = Layout::Latency;
    report.value_description = Some(format!(
        "p99 of the time from a command's acknowledgement (CommandHandler, in-process, {rate:.0} commands/s open \
         loop, realistic mix) until the referrals projection's checkpoint reaches the position the command returned \
         (Projector::wait_for); ratio = lag p99 / acknowledgement p99"
    ));
    report.target = Some("p99 < 50 ms at 1,000 commands/s".into());
    report.peak_rss_mb = rss;
    report.process_peak_rss_mb = Some(peaks.process());
    notes.extend(peaks.caveat());
    report.notes = notes;
    drop(projector);
    drop(handler);
    drop(store);
    Ok(report)
}

//! `bench queries`: how long a partner waits for a page of its inbox.
//!
//! Set-up: the `referrals` projection's tables are filled with the
//! referrals of [`super::workload`] received over the last 45 days, each
//! with the events of its life up to now (so the inbox holds what is
//! still unanswered: recent arrivals and those left to expire; most are in
//! the active list or the archive). The rows are written through the
//! projection itself (`runner::commit` with generated `ProjectedEvent`s in
//! large batches), not through the event store.
//!
//! Measured: pages of 50 rows of `List::Inbox` for one partner through
//! `Views::list` (a blocking task, a pooled read transaction, the active
//! version's table, rows decoded into referrals, a page token), with
//! partners drawn as often as they receive referrals (a few large, a long
//! tail of small ones):
//!
//! * first pages, newest first; first pages, most urgent first; first pages
//!   of one of the partner's regions; walks through up to five pages
//!   following the page tokens;
//! * a mix of all of these: from one client; from eight at once, each
//!   asking again as soon as it has its page (the most pages/s the server
//!   gives, and how long a page takes when it is saturated: a queue of
//!   eight on two cores); and from eight clients sharing 1,000 pages/s
//!   (`--rate`; a third or less of what the two cores serve flat out), the
//!   headline: the latency of a busy server that keeps up, counted
//!   from when each page was due where it had to wait for its client's
//!   previous one.
//!
//! Baseline: the very same SQL statement the view runs (same table, same
//! filters, same keyset condition and `LIMIT 51`, a page plus one to know
//! whether another follows) on a plain connection per client, in a
//! dedicated thread, reading the columns without decoding anything.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use referral_domain::eventlog::{EventStore, Position};
use referral_projections::projection::Version;
use referral_projections::referrals::{self, List, ListFilter, Order, ReferralsProjection};
use referral_projections::{db, runner, ProjectedEvent, Projector, RunnerOptions, ViewDb, Views};
use rusqlite::OptionalExtension;

use super::driver::{drive, drive_at_rate, Schedule, Worker};
use super::workload::{Workload, REGIONS};
use super::{percentile, BenchError, BenchReport, BenchRow, Layout, PhasePeaks};
use crate::store::InMemoryEventStore;

const BASELINE: &str = "the same SQL statement on the same table (same filters, keyset condition and LIMIT 51) on a \
                        plain connection per client in its own thread, columns read without decoding; same run";
const SEED: u64 = 0x5eed_0002;
/// Partners the referrals are spread over.
const PARTNERS: usize = 1_000;
/// Days of referrals in the views: a busy programme, so that the largest
/// partners have inboxes of dozens of pages.
const DAYS: i64 = 45;
/// Events per transaction while filling the views.
const FILL_BATCH: usize = 20_000;
const PAGE: u32 = 50;

/// A row of the plan: which walk, how many clients, and their shared rate
/// (`None`: each as fast as it can).
type Plan = (Kind, usize, Option<f64>);

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Who asks for which pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Newest,
    MostUrgent,
    Region,
    Paging,
    Mixed,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Newest => "inbox page 1, newest first",
            Kind::MostUrgent => "inbox page 1, most urgent first",
            Kind::Region => "inbox page 1, one region",
            Kind::Paging => "inbox pages 1-5 by page token",
            Kind::Mixed => "inbox, mixed",
        }
    }
}

/// The partners and regions queries are drawn from.
struct Partners {
    workload: Workload,
}

/// What to read next: a new first page, or the page after the last one.
enum Next {
    First(ListFilter),
    Following,
}

/// One client's sequence of page reads; the engine's and the baseline's
/// clients with the same seed make the same choices.
struct Walk {
    rng: StdRng,
    kind: Kind,
    partners: Arc<Partners>,
    pages: u32,
}

impl Walk {
    fn new(kind: Kind, partners: Arc<Partners>, client: u64) -> Walk {
        Walk { rng: StdRng::seed_from_u64(SEED ^ ((client + 1) * 7919)), kind, partners, pages: 0 }
    }

    fn next(&mut self, more: bool) -> Next {
        let (follow, max_pages) = match self.kind {
            Kind::Paging => (true, 5),
            Kind::Mixed => (self.rng.gen_bool(0.35), 10),
            _ => (false, 1),
        };
        if more && follow && self.pages < max_pages {
            self.pages += 1;
            return Next::Following;
        }
        self.pages = 1;
        let w = &self.partners.workload;
        let spec = &w.partners[w.pick_partner(self.rng.gen::<f64>())];
        let region = match self.kind {
            Kind::Region => true,
            Kind::Mixed => self.rng.gen_bool(0.3),
            _ => false,
        }
        .then(|| REGIONS[spec.regions[self.rng.gen_range(0..spec.regions.len())].0].0.to_string());
        let order = match self.kind {
            Kind::Newest => Order::Newest,
            Kind::MostUrgent => Order::MostUrgent,
            _ if self.rng.gen_bool(0.65) => Order::Newest,
            _ => Order::MostUrgent,
        };
        Next::First(ListFilter { partner: Some(spec.id.to_string()), region, order, ..Default::default() })
    }
}

struct EngineClient {
    views: Views,
    walk: Walk,
    filter: ListFilter,
    token: String,
}

#[async_trait]
impl Worker for EngineClient {
    async fn step(&mut self) -> Result<(), String> {
        if let Next::First(filter) = self.walk.next(!self.token.is_empty()) {
            self.filter = filter;
            self.token.clear();
        }
        let page = self
            .views
            .list(List::Inbox, self.filter.clone(), PAGE, std::mem::take(&mut self.token))
            .await
            .map_err(|e| e.to_string())?;
        std::hint::black_box(&page.rows);
        self.token = page.next_page_token;
        Ok(())
    }
}

/// The view's own statement for an inbox page (see `referrals::list`).
fn statement(table: &str, region: bool, after: bool, order: Order) -> String {
    let (compare, direction) = match order {
        Order::Newest => ("<", "DESC"),
        Order::MostUrgent => (">", "ASC"),
    };
    let mut sql = format!(
        "SELECT state, revision, position_commit, position_prepare, sort_at, referral FROM {table} \
         WHERE list = ? AND partner = ?"
    );
    if region {
        sql.push_str(" AND region = ?");
    }
    if after {
        sql.push_str(&format!(" AND (sort_at, referral) {compare} (?, ?)"));
    }
    sql.push_str(&format!(" ORDER BY sort_at {direction}, referral {direction} LIMIT ?"));
    sql
}

/// A baseline client: the same walk, plain SQL, until `deadline`; as fast as
/// it can, or on `schedule` (latency then counted from the moment due).
fn baseline_client(
    db: ViewDb,
    table: String,
    mut walk: Walk,
    deadline: Instant,
    mut schedule: Option<Schedule>,
) -> Result<(Vec<u64>, u64), String> {
    let conn = db.connect(referrals::NAME).map_err(|e| e.to_string())?;
    let mut latencies = Vec::with_capacity(16_384);
    let mut filter = ListFilter::default();
    let mut cursor: Option<(i64, String)> = None;
    while Instant::now() < deadline {
        // As in `drive_at_rate`: behind schedule, a page has waited since it
        // was due; otherwise the clock starts when the client wakes.
        let began = match schedule.as_mut().map(Schedule::take) {
            Some(due) if due >= deadline => break,
            Some(due) if Instant::now() >= due => due,
            Some(due) => {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                Instant::now()
            }
            None => Instant::now(),
        };
        if let Next::First(f) = walk.next(cursor.is_some()) {
            filter = f;
            cursor = None;
        }
        let sql = statement(&table, filter.region.is_some(), cursor.is_some(), filter.order);
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| e.to_string())?;
        let mut args: Vec<rusqlite::types::Value> =
            vec!["inbox".to_string().into(), filter.partner.clone().unwrap_or_default().into()];
        if let Some(region) = &filter.region {
            args.push(region.clone().into());
        }
        if let Some((sort_at, id)) = cursor.take() {
            args.push(sort_at.into());
            args.push(id.into());
        }
        args.push(i64::from(PAGE + 1).into());
        let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(|e| e.to_string())?;
        let mut read = 0u32;
        let mut last = None;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            if read == PAGE {
                cursor = last.take();
                break;
            }
            read += 1;
            let state = row.get_ref(0).map_err(|e| e.to_string())?.as_str().map_err(|e| e.to_string())?;
            std::hint::black_box(state);
            last = Some((row.get::<_, i64>(4).map_err(|e| e.to_string())?, row.get(5).map_err(|e| e.to_string())?));
        }
        latencies.push(began.elapsed().as_micros() as u64);
    }
    let count = latencies.len() as u64;
    Ok((latencies, count))
}

/// Runs `clients` baseline clients for `duration`, as fast as they can or
/// sharing `rate` pages/s.
async fn baseline(
    db: &ViewDb,
    table: &str,
    partners: &Arc<Partners>,
    (kind, clients, rate): Plan,
    duration: Duration,
) -> Result<(f64, u64, u64), BenchError> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (db, table, walk) = (db.clone(), table.to_string(), Walk::new(kind, partners.clone(), c as u64));
            let schedule = rate.map(|rate| Schedule::new(started, rate, clients, c));
            tokio::task::spawn_blocking(move || baseline_client(db, table, walk, deadline, schedule))
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let (latencies, _) =
            task.await.map_err(|e| BenchError::Operation(e.to_string()))?.map_err(BenchError::Operation)?;
        all.extend(latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((all.len() as f64 / elapsed, percentile(&all, 0.50), percentile(&all, 0.99)))
}

/// Fills the `referrals` view with `referrals` referrals; returns the partners.
fn fill(db: &ViewDb, referrals: u64) -> Result<Partners, BenchError> {
    let until = Utc::now();
    let from = until - chrono::Duration::days(DAYS);
    let mut workload = Workload::new(SEED, PARTNERS, from);
    let projection = ReferralsProjection;
    let span = (until - from).num_microseconds().unwrap_or(i64::MAX);
    let mut batch: Vec<Arc<ProjectedEvent>> = Vec::with_capacity(FILL_BATCH + 16);
    let mut position = 0u64;
    for i in 0..referrals {
        let at = from + chrono::Duration::microseconds((span as f64 * (i as f64 + 0.5) / referrals as f64) as i64);
        for g in workload.whole_referral(at, until) {
            position += 1;
            batch.push(Arc::new(ProjectedEvent {
                position: Position::at(position),
                stream: g.stream.as_str().to_string(),
                revision: g.revision,
                event_type: g.event.event_type().to_string(),
                recorded_at: g.at,
                metadata: g.metadata,
                event: g.event,
                // The referrals projection reads the decoded event only.
                data: Vec::new(),
            }));
        }
        if batch.len() >= FILL_BATCH || i + 1 == referrals {
            runner::commit(db, &projection, Version(1), &batch)
                .map_err(|e| setup(format!("filling the view failed: {e:?}")))?;
            batch.clear();
        }
    }
    Ok(Partners { workload })
}

/// Fills the views with `referrals` referrals and measures inbox pages; the
/// headline's eight clients share `rate` pages/s.
pub async fn bench_queries(
    dir: &Path,
    referrals: u64,
    rate: f64,
    duration: Duration,
) -> Result<BenchReport, BenchError> {
    if referrals == 0 {
        return Err(setup("--referrals must be at least 1"));
    }
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(setup("--rate must be a positive number of pages per second"));
    }
    let path = dir.join("queries-views");
    let db = ViewDb::open(&path).map_err(setup)?;
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let projector = Projector::open(store, db.clone(), vec![Arc::new(ReferralsProjection)], RunnerOptions::default())
        .await
        .map_err(setup)?;
    let began = Instant::now();
    let filler = db.clone();
    let partners = tokio::task::spawn_blocking(move || fill(&filler, referrals)).await.map_err(setup)??;
    let fill_seconds = began.elapsed().as_secs_f64();
    let partners = Arc::new(partners);
    let reader = db.clone();
    let (table, lists, largest) = tokio::task::spawn_blocking(move || {
        reader.read(referrals::NAME, |tx| {
            let version = db::active_version(tx, referrals::NAME)?.unwrap_or(1);
            let table = Version(version).table("referrals");
            let mut lists = Vec::new();
            let mut stmt = tx.prepare(&format!("SELECT list, COUNT(*) FROM {table} GROUP BY list ORDER BY list"))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                lists.push(format!("{} {}", row.get::<_, String>(0)?, row.get::<_, i64>(1)?));
            }
            let largest: i64 = tx
                .query_row(
                    &format!(
                        "SELECT COUNT(*) AS n FROM {table} WHERE list = 'inbox' GROUP BY partner ORDER BY n DESC \
                         LIMIT 1"
                    ),
                    [],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0);
            Ok((table, lists, largest))
        })
    })
    .await
    .map_err(setup)?
    .map_err(setup)?;
    let mut notes = vec![
        format!(
            "set-up: {referrals} referrals of the last {DAYS} days over {PARTNERS} partners written through the \
             referrals projection in {fill_seconds:.1} s; rows per list: {}; largest inbox {largest} rows",
            lists.join(", ")
        ),
        "clients ask for partners as often as those receive referrals (a few large, a long tail)".to_string(),
    ];
    let views = Views::new(db.clone());
    let mut peaks = PhasePeaks::new();
    peaks.start();
    let plan: [Plan; 7] = [
        (Kind::Newest, 1, None),
        (Kind::MostUrgent, 1, None),
        (Kind::Region, 1, None),
        (Kind::Paging, 1, None),
        (Kind::Mixed, 1, None),
        (Kind::Mixed, 8, None),
        (Kind::Mixed, 8, Some(rate)),
    ];
    let mut rows = Vec::new();
    for (kind, clients, rate) in plan {
        let workers = (0..clients)
            .map(|c| {
                Box::new(EngineClient {
                    views: views.clone(),
                    walk: Walk::new(kind, partners.clone(), c as u64),
                    filter: ListFilter::default(),
                    token: String::new(),
                }) as Box<dyn Worker>
            })
            .collect();
        let engine = match rate {
            Some(rate) => drive_at_rate(workers, duration, rate).await?,
            None => drive(workers, duration).await?,
        };
        let (base_rate, base_p50, base_p99) = baseline(&db, &table, &partners, (kind, clients, rate), duration).await?;
        let pace = rate.map(|r| format!(", {r:.0} pages/s")).unwrap_or_default();
        let value = engine.p99_us as f64 / 1000.0;
        let base = base_p99 as f64 / 1000.0;
        rows.push(BenchRow {
            writers: clients,
            value,
            baseline: base,
            ratio: value / base.max(0.001),
            p50_us: engine.p50_us,
            p99_us: engine.p99_us,
            baseline_p50_us: base_p50,
            baseline_p99_us: base_p99,
            label: Some(format!("{}, {clients} client{}{pace}", kind.label(), if clients == 1 { "" } else { "s" })),
            per_second: Some(engine.per_second),
            ..Default::default()
        });
        notes.push(format!("{}, {clients} client(s){pace}: baseline {base_rate:.0} pages/s", kind.label()));
    }
    projector.shutdown().await;
    let mut report =
        BenchReport::new("queries", "ms p99 per inbox page of 50 rows", BASELINE, duration.as_secs_f64(), rows);
    report.layout = Layout::Latency;
    report.value_description = Some(format!(
        "p99 latency of Views::list(List::Inbox, ...) for one partner, 50 rows a page, mixed queries (newest or most \
         urgent first, 30 % filtered to one region, 35 % following the page token) from 8 clients sharing \
         {rate:.0} pages/s, a page that waited for its client's previous one timed from when it was due; ratio = engine p99 / baseline p99"
    ));
    report.target = Some("p99 < 5 ms".into());
    report.peak_rss_mb = peaks.finish();
    report.process_peak_rss_mb = Some(peaks.process());
    notes.extend(peaks.caveat());
    report.notes = notes;
    drop(views);
    drop(db);
    let _ = std::fs::remove_dir_all(&path);
    Ok(report)
}

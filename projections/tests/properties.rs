//! Random valid histories (several partners and referrals, every move decided
//! by the domain at an advancing clock, interleaved in one global log),
//! projected two ways: incrementally, in random batches, with restarts and
//! redeliveries; and from scratch in one batch. Both must hold the same rows,
//! and those rows must say what the domain's own fold says.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::Duration;
use proptest::prelude::*;
use referral_domain::ids::{PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::referral::{Outcome, Referral, ReferralEvent, Status, UpdateEngagement};
use referral_domain::values::{ReasonCode, SizeBand, MAX_REFERRAL_CONTACTS};
use referral_projections::db::{self, ViewDb};
use referral_projections::history::{self, Counts};
use referral_projections::referrals::{self, List, ListFilter};
use referral_projections::runner::{self, Committed};
use referral_projections::{deadlines, timeline, ProjectedEvent, Projection, Version};
use rusqlite::types::Value;
use rusqlite::Connection;
use support::*;

const PARTNERS: [&str; 3] = ["contoso", "fabrikam", "northwind"];
const REGIONS: [&str; 2] = ["emea", "apac"];
const LOCATIONS: [[&str; 2]; 2] = [["berlin", "paris"], ["tokyo", "sydney"]];
const INDUSTRIES: [&str; 3] = ["manufacturing", "retail", "healthcare"];
const PRODUCTS: [&str; 4] = ["erp", "crm", "analytics", "security"];
const SERVICES: [&str; 2] = ["migration", "training"];
const KEYWORDS: [&str; 4] = ["cloud", "ai", "on-premises", "compliance"];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];

/// One referral of the history: who it goes to and what the RFI says.
#[derive(Debug, Clone)]
struct ReferralSpec {
    partner: usize,
    region: usize,
    location: Option<usize>,
    industry: Option<usize>,
    size: usize,
    products: u8,
    services: u8,
    keywords: u8,
    direct_contact: bool,
}

/// A step of the history: time passes, then referral `referral` makes the
/// move `choice` picks among those its state allows (`pick` fills details).
#[derive(Debug, Clone)]
struct Move {
    referral: usize,
    minutes: i64,
    choice: u8,
    pick: u8,
}

/// A step of the incremental build.
#[derive(Debug, Clone)]
struct Batch {
    size: usize,
    /// 0: drop the connection; 1: drop the connection and the `ViewDb`.
    restart: u8,
    /// 0: first re-send a range already committed; 1: start this batch a
    /// few events before the checkpoint.
    redeliver: u8,
    seed: u16,
}

fn referral_spec(partners: usize) -> impl Strategy<Value = ReferralSpec> {
    (
        0..partners,
        0..REGIONS.len(),
        prop::option::of(0usize..2),
        prop::option::weighted(0.8, 0..INDUSTRIES.len()),
        0..SizeBand::ALL.len(),
        (any::<u8>(), any::<u8>(), any::<u8>()),
        any::<bool>(),
    )
        .prop_map(|(partner, region, location, industry, size, (products, services, keywords), direct_contact)| {
            ReferralSpec { partner, region, location, industry, size, products, services, keywords, direct_contact }
        })
}

fn minutes() -> impl Strategy<Value = i64> {
    prop_oneof![2 => Just(0i64), 3 => 1i64..180, 2 => 0i64..(3 * 24 * 60)]
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    prop::collection::vec(
        (any::<usize>(), minutes(), any::<u8>(), any::<u8>()).prop_map(|(referral, minutes, choice, pick)| Move {
            referral,
            minutes,
            choice,
            pick,
        }),
        20..160,
    )
}

fn batches() -> impl Strategy<Value = Vec<Batch>> {
    prop::collection::vec(
        (1usize..50, 0u8..8, 0u8..4, any::<u16>()).prop_map(|(size, restart, redeliver, seed)| Batch {
            size,
            restart,
            redeliver,
            seed,
        }),
        1..16,
    )
}

fn scenario() -> impl Strategy<Value = (usize, Vec<ReferralSpec>, Vec<Move>, Vec<Batch>)> {
    (2usize..=3).prop_flat_map(|partners| {
        (Just(partners), prop::collection::vec(referral_spec(partners), 3..24), moves(), batches())
    })
}

fn pick<T: Clone>(mask: u8, from: &[T]) -> Vec<T> {
    from.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, v)| v.clone()).collect()
}

fn rfi(index: usize, spec: &ReferralSpec) -> Rfi {
    let strings = |mask: u8, from: &[&str]| pick(mask, from).into_iter().map(String::from).collect();
    Rfi {
        rfi: format!("rfi-{index}"),
        partner: PARTNERS[spec.partner].into(),
        region: REGIONS[spec.region].into(),
        location: spec.location.map(|l| LOCATIONS[spec.region][l].to_string()),
        industry: spec.industry.map(|i| INDUSTRIES[i].to_string()),
        size: SizeBand::ALL[spec.size],
        products: strings(spec.products, &PRODUCTS),
        services: strings(spec.services, &SERVICES),
        keywords: strings(spec.keywords, &KEYWORDS),
        direct_contact: spec.direct_contact,
        received_at: None,
    }
}

fn referral_id(index: usize, spec: &ReferralSpec) -> ReferralId {
    ReferralId::for_rfi(
        &RfiId::parse(&format!("rfi-{index}")).unwrap(),
        &PartnerId::parse(PARTNERS[spec.partner]).unwrap(),
        &RegionId::parse(REGIONS[spec.region]).unwrap(),
    )
}

/// Drives the referrals through random allowed moves, interleaved, with the
/// domain deciding every one of them.
fn history_of(partners: usize, specs: &[ReferralSpec], moves: &[Move]) -> Log {
    let mut log = Log::new(t0());
    for partner in &PARTNERS[..partners] {
        for (r, region) in REGIONS.iter().enumerate() {
            log.register(partner, region, &LOCATIONS[r]);
        }
    }
    for m in moves {
        log.advance(Duration::minutes(m.minutes));
        // The move goes to the first referral from the one it names that is
        // not closed yet (closed ones take no more moves).
        let open = (0..specs.len()).map(|i| (m.referral + i) % specs.len()).find(|&i| {
            let id = referral_id(i, &specs[i]);
            log.referrals.get(&id).is_none_or(|r| !r.status.is_closed())
        });
        let Some(index) = open else { break };
        let id = referral_id(index, &specs[index]);
        let Some(current) = log.referrals.get(&id).cloned() else {
            log.receive(&rfi(index, &specs[index]));
            continue;
        };
        let pick = m.pick as usize;
        match current.status {
            Status::New if log.now >= current.expires_at => {
                log.expire(id);
            }
            Status::New => match m.choice % 10 {
                0..=3 => {
                    let people: Vec<String> = (0..pick % 3).map(|i| format!("team{i}@partner.example")).collect();
                    let people: Vec<&str> = people.iter().map(String::as_str).collect();
                    log.accept_with(id, eur(1_000 + pick as i64 * 10), &people);
                }
                4..=6 => {
                    log.decline(id, ReasonCode::ALL[pick % ReasonCode::ALL.len()]);
                }
                7 => {
                    // The partner never answers: the engine expires it.
                    let due = current.expires_at + Duration::minutes(m.minutes);
                    log.at(due.max(log.now));
                    log.expire(id);
                }
                _ => {}
            },
            Status::Active => match m.choice % 10 {
                0..=2 if current.contacts.len() < MAX_REFERRAL_CONTACTS => {
                    let email = format!("extra{}@partner.example", current.contacts.len());
                    log.add_contact(id, &email);
                }
                0..=5 => {
                    let today = log.now.date_naive();
                    let update = match pick % 5 {
                        0 => UpdateEngagement { name: Some(format!("Deal v{pick}")), ..Default::default() },
                        1 => UpdateEngagement { notes: Some(format!("Notes v{pick}")), ..Default::default() },
                        2 => UpdateEngagement { estimated_value: Some(eur(2_000 + pick as i64)), ..Default::default() },
                        3 => UpdateEngagement {
                            estimated_purchase_date: Some(today + Duration::days(60 + pick as i64)),
                            ..Default::default()
                        },
                        _ => UpdateEngagement {
                            crm_id: Some(if pick.is_multiple_of(2) { String::new() } else { format!("CRM-{pick}") }),
                            ..Default::default()
                        },
                    };
                    log.update(id, update);
                }
                6..=7 => {
                    let closed_on =
                        if pick.is_multiple_of(2) { log.now.date_naive() } else { current.received_at.date_naive() };
                    let value = money(CURRENCIES[pick % CURRENCIES.len()], 5_000 + pick as i64 * 100);
                    log.won(id, value, closed_on);
                }
                _ => {
                    log.lost(id, ReasonCode::ALL[pick % ReasonCode::ALL.len()]);
                }
            },
            // Closed is terminal: nothing more happens to it.
            _ => {}
        }
    }
    log
}

/// The rows of every table of `version` of `projection`.
fn snapshot(conn: &Connection, projection: &dyn Projection, version: u32) -> Vec<(String, Vec<Vec<Value>>)> {
    projection.tables().iter().map(|base| (base.to_string(), table_rows(conn, &Version(version).table(base)))).collect()
}

/// Builds version 1 of `projection` incrementally, as `plan` says, in the
/// view database at `path`.
fn build_incrementally(
    path: &std::path::Path,
    projection: &dyn Projection,
    events: &[Arc<ProjectedEvent>],
    plan: &[Batch],
) -> Result<(), TestCaseError> {
    let v1 = Version(1);
    let mut db = Some(ViewDb::open(path).expect("open"));
    let mut conn = Some(db.as_ref().unwrap().connect(projection.name()).expect("connect"));
    register_version(conn.as_ref().unwrap(), projection, 1, true);
    let mut done = 0usize;
    for batch in plan.iter().cycle() {
        if done == events.len() {
            break;
        }
        // A restart: the connection goes, sometimes the whole handle too;
        // everything comes back from the file.
        match batch.restart {
            0 => conn = None,
            1 => {
                conn = None;
                db = None;
            }
            _ => {}
        }
        let db = db.get_or_insert_with(|| ViewDb::open(path).expect("reopen"));
        let conn = conn.get_or_insert_with(|| db.connect(projection.name()).expect("reconnect"));
        let checkpoint = (done > 0).then(|| events[done - 1].position);
        if batch.redeliver == 0 && done > 0 {
            // A range already committed, sent again: nothing changes.
            let from = batch.seed as usize % done;
            let to = from + 1 + (batch.seed as usize / 7) % (done - from);
            let before = snapshot(conn, projection, 1);
            let again = runner::commit(db, projection, v1, &events[from..to]).expect("redelivery");
            prop_assert_eq!(again, Committed { applied: 0, checkpoint });
            prop_assert_eq!(&snapshot(conn, projection, 1), &before, "a redelivered range changed the view");
        }
        let end = (done + batch.size).min(events.len());
        let start = if batch.redeliver == 1 { done.saturating_sub(1 + batch.seed as usize % 5) } else { done };
        let committed = runner::commit(db, projection, v1, &events[start..end]).expect("commit");
        prop_assert_eq!(
            committed,
            Committed { applied: (end - done) as u64, checkpoint: Some(events[end - 1].position) }
        );
        done = end;
    }
    Ok(())
}

/// What history should say for a partner (in one region or all), from the
/// domain's own state of each referral.
#[derive(Debug, Default, PartialEq)]
struct ExpectedHistory {
    counts: Counts,
    declined: BTreeMap<String, u64>,
    lost: BTreeMap<String, u64>,
    response_seconds: Vec<i64>,
    deals: BTreeMap<String, (u64, i64)>,
    by_feature: BTreeMap<(String, String), Counts>,
}

fn features(r: &Referral) -> BTreeSet<(String, String)> {
    let mut f = BTreeSet::new();
    f.insert(("region".to_string(), r.region.as_str().to_string()));
    if let Some(industry) = &r.customer.industry {
        f.insert(("industry".into(), industry.clone()));
    }
    f.insert(("size_band".into(), r.customer.size_band.as_str().into()));
    for (kind, values) in [
        ("product", &r.requirements.products),
        ("service", &r.requirements.services),
        ("keyword", &r.requirements.keywords),
    ] {
        for v in values {
            f.insert((kind.into(), v.clone()));
        }
    }
    f
}

fn expected_history<'a>(referrals: impl Iterator<Item = &'a Referral>) -> ExpectedHistory {
    let mut out = ExpectedHistory::default();
    for r in referrals {
        let mut c = Counts { received: 1, ..Counts::default() };
        if let Some(accepted) = r.accepted_at {
            c.accepted = 1;
            out.response_seconds.push((accepted - r.received_at).num_seconds());
        }
        match &r.outcome {
            Some(Outcome::Declined { reason, at }) => {
                c.declined = 1;
                *out.declined.entry(reason.code.as_str().into()).or_default() += 1;
                out.response_seconds.push((*at - r.received_at).num_seconds());
            }
            Some(Outcome::Expired { .. }) => c.expired = 1,
            Some(Outcome::Won { final_value, .. }) => {
                c.won = 1;
                let deal = out.deals.entry(final_value.currency.code().to_string()).or_default();
                deal.0 += 1;
                deal.1 += final_value.minor_units;
            }
            Some(Outcome::Lost { reason, .. }) => {
                c.lost = 1;
                *out.lost.entry(reason.code.as_str().into()).or_default() += 1;
            }
            None => {}
        }
        add(&mut out.counts, &c);
        for feature in features(r) {
            add(out.by_feature.entry(feature).or_default(), &c);
        }
    }
    out.response_seconds.sort();
    out
}

fn add(to: &mut Counts, c: &Counts) {
    to.received += c.received;
    to.accepted += c.accepted;
    to.declined += c.declined;
    to.expired += c.expired;
    to.won += c.won;
    to.lost += c.lost;
}

/// The nearest-rank percentile of sorted values.
fn nearest_rank(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// The views of version 1 say what the domain says.
fn check_against_model(conn: &Connection, log: &Log, partners: usize) -> Result<(), TestCaseError> {
    let v = Version(1);
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM referrals_v1", [], |r| r.get(0)).unwrap();
    prop_assert_eq!(count as usize, log.referrals.len(), "one row per referral");

    // referrals: each row is the domain's fold, at the stream's last revision.
    for (id, model) in &log.referrals {
        let row = referrals::get(conn, v, &id.to_string()).unwrap().expect("a row for every referral");
        prop_assert_eq!(&row.referral, model);
        let stream = &log.streams[id];
        prop_assert_eq!(row.revision.0 as usize, stream.len() - 1);
        let last = log.events.iter().rev().find(|e| e.stream == id.stream().as_str()).unwrap();
        prop_assert_eq!(row.position, last.position);
    }
    // The three lists partition each partner's referrals.
    for partner in &PARTNERS[..partners] {
        for (which, statuses) in [
            (List::Inbox, vec![Status::New]),
            (List::Active, vec![Status::Active]),
            (List::Archive, vec![Status::Declined, Status::Expired, Status::Won, Status::Lost]),
        ] {
            let filter = ListFilter { partner: Some(partner.to_string()), ..ListFilter::default() };
            let page = referrals::list(conn, v, which, &filter, 500, "").unwrap();
            prop_assert_eq!(&page.next_page_token, "");
            let listed: BTreeSet<ReferralId> = page.rows.iter().map(|r| r.referral.id).collect();
            let expected: BTreeSet<ReferralId> = log
                .referrals
                .values()
                .filter(|r| r.partner.as_str() == *partner && statuses.contains(&r.status))
                .map(|r| r.id)
                .collect();
            prop_assert_eq!(listed.len(), page.rows.len(), "a referral listed twice");
            prop_assert_eq!(listed, expected, "{:?} of {}", which, partner);
        }
    }

    // timeline: every event of every referral, in revision order.
    let total: i64 = conn.query_row("SELECT COUNT(*) FROM timeline_v1", [], |r| r.get(0)).unwrap();
    prop_assert_eq!(total as usize, log.streams.values().map(Vec::len).sum::<usize>());
    for (id, stream) in &log.streams {
        let page = timeline::page(conn, v, &id.to_string(), 500, "").unwrap();
        let types: Vec<&str> = page.rows.iter().map(|e| e.event_type.as_str()).collect();
        let expected: Vec<&str> = stream.iter().map(ReferralEvent::event_type).collect();
        prop_assert_eq!(types, expected);
        for (i, entry) in page.rows.iter().enumerate() {
            prop_assert_eq!(entry.revision.0 as usize, i);
        }
    }

    // history: counts, reasons, response times, deals and features.
    for partner in &PARTNERS[..partners] {
        for region in [None, Some("emea"), Some("apac")] {
            let expected = expected_history(
                log.referrals
                    .values()
                    .filter(|r| r.partner.as_str() == *partner && region.is_none_or(|g| r.region.as_str() == g)),
            );
            let h = history::partner_history(conn, v, partner, region.map(String::from)).unwrap();
            let what = format!("history of {partner} in {region:?}");
            prop_assert_eq!(h.counts, expected.counts, "{}", what);
            let reasons = |list: &[history::ReasonCount]| -> BTreeMap<String, u64> {
                list.iter().map(|r| (r.reason.clone(), r.count)).collect()
            };
            prop_assert_eq!(reasons(&h.decline_reasons), expected.declined.clone(), "{}", what);
            prop_assert_eq!(reasons(&h.loss_reasons), expected.lost.clone(), "{}", what);
            let rt = h.response_times;
            prop_assert_eq!(rt.responded as usize, expected.response_seconds.len(), "{}", what);
            prop_assert_eq!(rt.median_seconds, nearest_rank(&expected.response_seconds, 50), "{}", what);
            prop_assert_eq!(rt.p90_seconds, nearest_rank(&expected.response_seconds, 90), "{}", what);
            let deals: BTreeMap<String, (u64, i64)> =
                h.deal_totals.iter().map(|d| (d.currency.clone(), (d.deals, d.minor_units))).collect();
            prop_assert_eq!(deals, expected.deals.clone(), "{}", what);
            let by_feature: BTreeMap<(String, String), Counts> =
                h.by_feature.iter().map(|f| ((f.kind.clone(), f.value.clone()), f.counts)).collect();
            prop_assert_eq!(by_feature, expected.by_feature.clone(), "{}", what);
        }
    }

    // deadlines: exactly the referrals still New, due once their time is up.
    let new: BTreeMap<String, _> =
        log.referrals.values().filter(|r| r.status == Status::New).map(|r| (r.id.to_string(), r.expires_at)).collect();
    let all_due = deadlines::due(conn, v, log.now + Duration::days(365), 10_000).unwrap();
    let listed: BTreeMap<String, _> = all_due.iter().map(|d| (d.referral.clone(), d.expires_at)).collect();
    prop_assert_eq!(&listed, &new);
    let due_now: BTreeSet<String> =
        deadlines::due(conn, v, log.now, 10_000).unwrap().into_iter().map(|d| d.referral).collect();
    let expected: BTreeSet<String> =
        new.iter().filter(|(_, expires)| **expires <= log.now).map(|(id, _)| id.clone()).collect();
    prop_assert_eq!(due_now, expected);
    Ok(())
}

fn run(partners: usize, specs: &[ReferralSpec], moves: &[Move], plan: &[Batch]) -> Result<(), TestCaseError> {
    let log = history_of(partners, specs, moves);
    let events = &log.events;
    prop_assert!(!log.referrals.is_empty());
    let dir = scratch_dir();
    let path = dir.path().join("views");
    for projection in referral_projections::all_projections() {
        let p = projection.as_ref();
        build_incrementally(&path, p, events, plan)?;

        // Version 2, from scratch in one batch, next to version 1.
        let db = ViewDb::open(&path).unwrap();
        let conn = db.connect(p.name()).unwrap();
        register_version(&conn, p, 2, false);
        let all = runner::commit(&db, p, Version(2), events).unwrap();
        prop_assert_eq!(all, Committed { applied: events.len() as u64, checkpoint: Some(log.last_position()) });

        let (one, two) = (snapshot(&conn, p, 1), snapshot(&conn, p, 2));
        prop_assert_eq!(one, two, "{}: incremental and one-batch builds differ", p.name());
        for version in [1, 2] {
            let record = db::version(&conn, p.name(), version).unwrap().unwrap();
            prop_assert_eq!(record.checkpoint, Some(log.last_position()));
            prop_assert_eq!(record.events_applied, events.len() as u64, "{} v{}: applied once each", p.name(), version);
            prop_assert_eq!(record.failure, None);
        }
    }
    let conn = all_views(&ViewDb::open(&path).unwrap());
    check_against_model(&conn, &log, partners)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn incremental_builds_with_restarts_and_redeliveries_equal_a_build_from_scratch(
        (partners, specs, moves, plan) in scenario(),
    ) {
        run(partners, &specs, &moves, &plan)?;
    }
}

/// A fixed history big enough to cross every batch boundary, as a plain test
/// that is quick to run and to read when the property fails.
#[test]
fn a_fixed_history_projects_the_same_in_batches_of_one_and_all_at_once() {
    let specs: Vec<ReferralSpec> = (0..6)
        .map(|i| ReferralSpec {
            partner: i % 2,
            region: i % 2,
            location: Some(i % 2),
            industry: Some(i % 3),
            size: i,
            products: 0b0101,
            services: 0b01,
            keywords: 0b0011,
            direct_contact: i % 2 == 0,
        })
        .collect();
    let moves: Vec<Move> =
        (0..60).map(|i| Move { referral: i * 7, minutes: 37, choice: (i * 3) as u8, pick: (i * 5) as u8 }).collect();
    let plan = vec![
        Batch { size: 1, restart: 1, redeliver: 0, seed: 3 },
        Batch { size: 1, restart: 7, redeliver: 1, seed: 2 },
    ];
    run(2, &specs, &moves, &plan).unwrap();
}

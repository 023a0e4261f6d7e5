//! The queries, through `Views`, over small histories written by the domain
//! deciders: which referrals each list holds and in what order, the filters,
//! keyset paging, timelines, history figures and expiry deadlines.

mod support;

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use referral_domain::ids::ReferralId;
use referral_domain::referral::{Outcome, ReferralEvent, Status, UpdateEngagement};
use referral_domain::values::{ReasonCode, SizeBand};
use referral_projections::history::{Counts, Deal, DealTotal, ReasonCount, ResponseTimes};
use referral_projections::referrals::{List, ListFilter, Order, Page, ReferralRow};
use referral_projections::{runner, Version, ViewDb, ViewError, Views};
use support::*;

const A: &str = "contoso";
const B: &str = "northwind";

/// The views of `log`, in a fresh database in `dir`.
fn views_of(dir: &tempfile::TempDir, log: &Log) -> (ViewDb, Views) {
    let db = build_views(&dir.path().join("views"), &log.events);
    (db.clone(), Views::new(db))
}

/// Applies `events` (the log's tail) to every projection's version 1.
fn apply(db: &ViewDb, events: &[std::sync::Arc<referral_projections::ProjectedEvent>]) {
    for p in referral_projections::all_projections() {
        runner::commit(db, p.as_ref(), Version(1), events).unwrap();
    }
}

fn of(partner: &str) -> ListFilter {
    ListFilter { partner: Some(partner.into()), ..ListFilter::default() }
}

fn ids(page: &Page<ReferralRow>) -> Vec<ReferralId> {
    page.rows.iter().map(|r| r.referral.id).collect()
}

async fn list(views: &Views, which: List, filter: &ListFilter) -> Vec<ReferralId> {
    let page = views.list(which, filter.clone(), 500, String::new()).await.unwrap();
    assert_eq!(page.next_page_token, "", "everything fits one page");
    ids(&page)
}

/// Every page of a list, `size` rows at a time.
async fn all_pages(views: &Views, which: List, filter: &ListFilter, size: u32) -> Vec<ReferralId> {
    let mut out = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = views.list(which, filter.clone(), size, token).await.unwrap();
        assert!(page.rows.len() <= size as usize);
        out.extend(ids(&page));
        pages += 1;
        assert!(pages < 1_000, "paging does not end");
        if page.next_page_token.is_empty() {
            return out;
        }
        assert_eq!(page.rows.len(), size as usize, "only the last page is short");
        token = page.next_page_token;
    }
}

#[track_caller]
fn assert_bad_token(result: Result<Page<ReferralRow>, ViewError>) {
    match result {
        Err(ViewError::InvalidArgument { field: "page_token", .. }) => {}
        other => panic!("expected InvalidArgument on page_token, got {other:?}"),
    }
}

/// Contoso with profiles in emea (berlin, paris) and apac (tokyo);
/// northwind in emea (berlin).
fn partners(log: &mut Log) {
    log.register(A, "emea", &["berlin", "paris"]);
    log.register(A, "apac", &["tokyo"]);
    log.register(B, "emea", &["berlin"]);
}

fn rfi_at(rfi: &str, partner: &str, region: &str, location: Option<&str>) -> Rfi {
    Rfi { location: location.map(String::from), ..Rfi::new(rfi, partner, region) }
}

#[tokio::test]
async fn the_inbox_holds_new_referrals_newest_or_most_urgent_first_filtered_by_partner_region_and_location() {
    let mut log = Log::new(t0());
    partners(&mut log);
    let r1 = log.receive(&rfi_at("rfi-1", A, "emea", Some("berlin")));
    log.advance(Duration::hours(1));
    let r2 = log.receive(&rfi_at("rfi-2", A, "emea", Some("paris")));
    log.advance(Duration::hours(1));
    let r3 = log.receive(&Rfi { direct_contact: true, ..rfi_at("rfi-3", A, "apac", Some("tokyo")) });
    log.advance(Duration::hours(1));
    let n1 = log.receive(&rfi_at("rfi-4", B, "emea", Some("berlin")));
    log.advance(Duration::hours(1));
    let r4 = log.receive(&rfi_at("rfi-5", A, "emea", None));
    log.advance(Duration::hours(1));
    let accepted = log.receive(&rfi_at("rfi-6", A, "emea", Some("berlin")));
    let declined = log.receive(&rfi_at("rfi-7", A, "emea", Some("berlin")));
    log.advance(Duration::hours(1));
    log.accept(accepted);
    log.decline(declined, ReasonCode::TimelineTooShort);

    let dir = scratch_dir();
    let (_db, views) = views_of(&dir, &log);

    assert_eq!(list(&views, List::Inbox, &of(A)).await, vec![r4, r3, r2, r1], "newest first");
    let urgent = ListFilter { order: Order::MostUrgent, ..of(A) };
    assert_eq!(list(&views, List::Inbox, &urgent).await, vec![r1, r2, r3, r4], "earliest deadline first");
    let emea = ListFilter { region: Some("emea".into()), ..of(A) };
    assert_eq!(list(&views, List::Inbox, &emea).await, vec![r4, r2, r1]);
    let berlin = ListFilter { location: Some("berlin".into()), ..emea.clone() };
    assert_eq!(list(&views, List::Inbox, &berlin).await, vec![r1]);
    let tokyo = ListFilter { region: Some("apac".into()), location: Some("tokyo".into()), ..of(A) };
    assert_eq!(list(&views, List::Inbox, &tokyo).await, vec![r3]);
    let nowhere = ListFilter { region: Some("latam".into()), ..of(A) };
    assert_eq!(list(&views, List::Inbox, &nowhere).await, Vec::<ReferralId>::new());

    // Another partner's referrals never show; without a partner, all do.
    assert_eq!(list(&views, List::Inbox, &of(B)).await, vec![n1]);
    assert_eq!(list(&views, List::Inbox, &ListFilter::default()).await, vec![r4, n1, r3, r2, r1]);
    assert_eq!(list(&views, List::Inbox, &of("tailspin")).await, Vec::<ReferralId>::new());

    // Each row is the referral as the domain folds it.
    let page = views.list(List::Inbox, of(A), 1, String::new()).await.unwrap();
    let row = &page.rows[0];
    assert_eq!(&row.referral, log.referral(r4));
    assert_eq!(row.referral.status, Status::New);
    assert_eq!(row.referral.expires_at, row.referral.received_at + Duration::days(14));
    assert_eq!(
        (row.revision.0, row.position),
        (0, log.events.iter().find(|e| e.stream == r4.stream().as_str()).unwrap().position)
    );
    let r3_row = views.referral(r3.to_string()).await.unwrap().expect("detail of r3");
    assert!(r3_row.referral.direct_contact_requested);
    assert_eq!(r3_row.referral.location.as_ref().map(|l| l.as_str()), Some("tokyo"));
}

#[tokio::test]
async fn a_referral_row_never_goes_back_to_an_earlier_event_even_handed_one_again() {
    let mut log = Log::new(t0());
    partners(&mut log);
    let id = log.receive(&rfi_at("rfi-1", A, "emea", Some("berlin")));
    log.advance(Duration::hours(1));
    log.accept(id);
    let dir = support::scratch_dir();
    let (db, views) = views_of(&dir, &log);
    let before = views.referral(id.to_string()).await.unwrap().expect("a row");
    assert_eq!(before.referral.status, Status::Active);

    // The stream's first event once more, straight to the projection (the
    // runner would skip it, being at or before the checkpoint).
    let first = log.events.iter().find(|e| e.stream == id.stream().as_str() && e.revision.0 == 0).unwrap().clone();
    let projection = referral_projections::referrals::ReferralsProjection;
    db.write(referral_projections::referrals::NAME, |tx| {
        use referral_projections::Projection;
        projection
            .apply_batch(tx, Version(1), &[first])
            .map_err(|e| rusqlite::Error::InvalidParameterName(format!("{e:?}")))
    })
    .unwrap();
    assert_eq!(views.referral(id.to_string()).await.unwrap(), Some(before));
}

#[tokio::test]
async fn the_active_list_holds_accepted_engagements_by_accepted_at_and_loses_them_when_closed() {
    let mut log = Log::new(t0());
    partners(&mut log);
    let first = log.receive(&rfi_at("rfi-1", A, "emea", Some("berlin")));
    let second = log.receive(&rfi_at("rfi-2", A, "apac", None));
    let third = log.receive(&rfi_at("rfi-3", A, "emea", None));
    let theirs = log.receive(&rfi_at("rfi-4", B, "emea", None));
    log.advance(Duration::hours(2));
    log.accept_with(second, money("USD", 42_000), &["ana@contoso.example", "ben@contoso.example"]);
    log.advance(Duration::hours(1));
    log.accept(first);
    log.accept(theirs);
    log.advance(Duration::hours(1));
    log.accept(third);
    log.advance(Duration::hours(1));
    // Editing an engagement changes its details, not its place in the list.
    log.update(second, UpdateEngagement { notes: Some("Budget approved.".into()), ..Default::default() });
    log.add_contact(second, "cleo@contoso.example");

    let dir = scratch_dir();
    let (db, views) = views_of(&dir, &log);
    assert_eq!(list(&views, List::Active, &of(A)).await, vec![third, first, second]);
    let urgent = ListFilter { order: Order::MostUrgent, ..of(A) };
    assert_eq!(list(&views, List::Active, &urgent).await, vec![second, first, third]);
    assert_eq!(list(&views, List::Active, &ListFilter { region: Some("apac".into()), ..of(A) }).await, vec![second]);
    assert_eq!(list(&views, List::Active, &of(B)).await, vec![theirs]);
    assert_eq!(list(&views, List::Inbox, &of(A)).await, Vec::<ReferralId>::new());

    let row = views.referral(second.to_string()).await.unwrap().unwrap();
    let engagement = row.referral.engagement.as_ref().expect("an engagement");
    assert_eq!(engagement.estimated_value.to_string(), "42000.00 USD");
    assert_eq!(engagement.notes, "Budget approved.");
    assert_eq!(engagement.crm_id.as_deref(), Some("CRM-1"));
    let emails: Vec<&str> = row.referral.contacts.iter().map(|c| c.email.as_str()).collect();
    assert_eq!(emails, ["ana@contoso.example", "ben@contoso.example", "cleo@contoso.example"]);
    assert_eq!(row.referral.accepted_at, Some(t0() + Duration::hours(2)));
    assert_eq!(row.referral.last_changed_at, log.now);
    assert_eq!(row.revision.0, 5, "received, accepted, two contacts, update, contact");

    // Won and lost engagements leave the active list for the archive.
    let before = log.events.len();
    log.advance(Duration::days(1));
    log.won(first, eur(9_000), log.now.date_naive());
    log.lost(third, ReasonCode::CustomerChoseAnotherVendor);
    apply(&db, &log.events[before..]);
    assert_eq!(list(&views, List::Active, &of(A)).await, vec![second]);
    assert_eq!(list(&views, List::Archive, &of(A)).await.into_iter().collect::<BTreeSet<_>>(), [first, third].into());
}

#[tokio::test]
async fn the_archive_lists_every_outcome_newest_first_filtered_by_outcome_and_date() {
    let mut log = Log::new(t0());
    partners(&mut log);
    let declined = log.receive(&rfi_at("rfi-1", A, "emea", None));
    let expired = log.receive(&rfi_at("rfi-2", A, "emea", None));
    let won = log.receive(&rfi_at("rfi-3", A, "apac", None));
    let lost = log.receive(&rfi_at("rfi-4", A, "emea", None));
    let still_new = log.receive(&rfi_at("rfi-5", A, "emea", None));
    let theirs = log.receive(&rfi_at("rfi-6", B, "emea", None));
    log.advance(Duration::hours(3));
    let declined_at = log.now;
    log.decline(declined, ReasonCode::Other);
    log.decline(theirs, ReasonCode::TimelineTooShort);
    log.advance(Duration::hours(1));
    log.accept(won);
    log.accept(lost);
    log.advance(Duration::days(2));
    let won_at = log.now;
    log.won(won, money("JPY", 1_500_000), log.now.date_naive() - Duration::days(1));
    log.advance(Duration::days(3));
    let lost_at = log.now;
    log.lost(lost, ReasonCode::BudgetNotAdequate);
    log.at(log.referral(expired).expires_at);
    let expired_at = log.now;
    log.expire(expired);
    log.expire(still_new);

    let dir = scratch_dir();
    let (_db, views) = views_of(&dir, &log);
    // still_new expired at the same instant as `expired`: ties go by id, descending.
    let mut same_instant = vec![expired, still_new];
    same_instant.sort_by_key(|id| std::cmp::Reverse(id.to_string()));
    let newest: Vec<ReferralId> = same_instant.iter().copied().chain([lost, won, declined]).collect();
    assert_eq!(list(&views, List::Archive, &of(A)).await, newest);
    let oldest: Vec<ReferralId> = newest.iter().rev().copied().collect();
    assert_eq!(list(&views, List::Archive, &ListFilter { order: Order::MostUrgent, ..of(A) }).await, oldest);
    assert_eq!(list(&views, List::Archive, &of(B)).await, vec![theirs]);

    let outcomes = |outcomes: Vec<Status>| ListFilter { outcomes, ..of(A) };
    assert_eq!(list(&views, List::Archive, &outcomes(vec![Status::Won])).await, vec![won]);
    assert_eq!(
        list(&views, List::Archive, &outcomes(vec![Status::Lost, Status::Declined])).await,
        vec![lost, declined]
    );
    assert_eq!(list(&views, List::Archive, &outcomes(vec![Status::Expired])).await, same_instant);
    assert_eq!(list(&views, List::Archive, &outcomes(vec![Status::Active])).await, Vec::<ReferralId>::new());

    // `from` is inclusive, `to` exclusive, on the closing instant.
    let between = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| ListFilter { from, to, ..of(A) };
    assert_eq!(list(&views, List::Archive, &between(Some(won_at), Some(lost_at))).await, vec![won]);
    assert_eq!(
        list(&views, List::Archive, &between(Some(won_at), Some(lost_at + Duration::microseconds(1)))).await,
        vec![lost, won]
    );
    assert_eq!(list(&views, List::Archive, &between(None, Some(won_at))).await, vec![declined]);
    assert_eq!(list(&views, List::Archive, &between(Some(expired_at), None)).await, same_instant);
    assert_eq!(
        list(&views, List::Archive, &between(Some(declined_at + Duration::seconds(1)), Some(expired_at))).await,
        vec![lost, won]
    );
    let won_in_range = ListFilter { outcomes: vec![Status::Won, Status::Lost], ..between(Some(won_at), None) };
    assert_eq!(list(&views, List::Archive, &won_in_range).await, vec![lost, won]);

    // The outcome's details are in the row.
    let row = views.referral(won.to_string()).await.unwrap().unwrap();
    match row.referral.outcome {
        Some(Outcome::Won { final_value, closed_on, at }) => {
            assert_eq!(final_value.to_string(), "1500000 JPY");
            assert_eq!(closed_on, won_at.date_naive() - Duration::days(1));
            assert_eq!(at, won_at);
        }
        other => panic!("expected a won outcome, got {other:?}"),
    }
    let row = views.referral(declined.to_string()).await.unwrap().unwrap();
    match row.referral.outcome {
        Some(Outcome::Declined { reason, at }) => {
            assert_eq!(
                (reason.code, reason.notes.as_deref(), at),
                (ReasonCode::Other, Some("no capacity"), declined_at)
            );
        }
        other => panic!("expected a declined outcome, got {other:?}"),
    }
}

/// 120 New referrals for contoso and 40 for northwind, received three to a
/// minute so that many share their sort key.
fn crowded_inbox() -> (Log, Vec<ReferralId>) {
    let mut log = Log::new(t0());
    partners(&mut log);
    let mut ours = Vec::new();
    for i in 0..160 {
        if i > 0 && i % 4 == 0 {
            log.advance(Duration::minutes(1));
        }
        let (partner, region) = if i % 4 == 3 { (B, "emea") } else { (A, if i % 2 == 0 { "emea" } else { "apac" }) };
        let id = log.receive(&rfi_at(&format!("rfi-{i}"), partner, region, None));
        if partner == A {
            ours.push(id);
        }
    }
    (log, ours)
}

/// `ids` sorted as the inbox sorts them: received-at, then id.
fn inbox_order(log: &Log, ids: &[ReferralId], newest: bool) -> Vec<ReferralId> {
    let mut sorted = ids.to_vec();
    sorted.sort_by_key(|id| (log.referral(*id).received_at, id.to_string()));
    if newest {
        sorted.reverse();
    }
    sorted
}

#[tokio::test]
async fn paging_through_a_long_list_misses_and_repeats_nothing() {
    let (log, ours) = crowded_inbox();
    assert_eq!(ours.len(), 120);
    let dir = scratch_dir();
    let (_db, views) = views_of(&dir, &log);

    for (order, newest) in [(Order::Newest, true), (Order::MostUrgent, false)] {
        let filter = ListFilter { order, ..of(A) };
        let expected = inbox_order(&log, &ours, newest);
        for size in [1, 7, 50, 119, 120, 121] {
            assert_eq!(all_pages(&views, List::Inbox, &filter, size).await, expected, "{order:?}, pages of {size}");
        }
        let emea = ListFilter { region: Some("emea".into()), ..filter.clone() };
        let in_emea: Vec<ReferralId> =
            expected.iter().copied().filter(|id| log.referral(*id).region.as_str() == "emea").collect();
        assert_eq!(in_emea.len(), 80);
        assert_eq!(all_pages(&views, List::Inbox, &emea, 8).await, in_emea);
    }

    // No page size means 50; a larger one than the cap is capped, not refused.
    let first = views.list(List::Inbox, of(A), 0, String::new()).await.unwrap();
    assert_eq!(first.rows.len(), 50);
    assert!(!first.next_page_token.is_empty());
    let huge = views.list(List::Inbox, ListFilter::default(), 100_000, String::new()).await.unwrap();
    assert_eq!((huge.rows.len(), huge.next_page_token.as_str()), (160, ""));

    // A token belongs to its query: other filters, order, list or partner refuse it.
    let token = views.list(List::Inbox, of(A), 10, String::new()).await.unwrap().next_page_token;
    for other in [
        ListFilter { region: Some("emea".into()), ..of(A) },
        ListFilter { order: Order::MostUrgent, ..of(A) },
        ListFilter { location: Some("berlin".into()), ..of(A) },
        ListFilter { from: Some(t0()), ..of(A) },
        of(B),
        ListFilter::default(),
    ] {
        assert_bad_token(views.list(List::Inbox, other, 10, token.clone()).await);
    }
    assert_bad_token(views.list(List::Archive, of(A), 10, token.clone()).await);
    for garbage in ["not-a-token", "zz", "0", "7c7c7c"] {
        assert_bad_token(views.list(List::Inbox, of(A), 10, garbage.to_string()).await);
    }
    // Its own query accepts it, with any page size.
    let second = views.list(List::Inbox, of(A), 25, token).await.unwrap();
    assert_eq!(ids(&second), inbox_order(&log, &ours, true)[10..35].to_vec());
}

#[tokio::test]
async fn keyset_paging_stays_consistent_while_the_list_changes() {
    let (mut log, ours) = crowded_inbox();
    let dir = scratch_dir();
    let (db, views) = views_of(&dir, &log);
    let expected = inbox_order(&log, &ours, true);

    let page = views.list(List::Inbox, of(A), 30, String::new()).await.unwrap();
    assert_eq!(ids(&page), expected[..30].to_vec());
    // Between pages: a newer referral arrives and two not yet seen are answered.
    let before = log.events.len();
    log.advance(Duration::minutes(5));
    let newcomer = log.receive(&rfi_at("rfi-late", A, "emea", None));
    let (gone_a, gone_b) = (expected[40], expected[95]);
    log.accept(gone_a);
    log.decline(gone_b, ReasonCode::NotARealCustomer);
    apply(&db, &log.events[before..]);

    let mut rest = Vec::new();
    let mut token = page.next_page_token;
    while !token.is_empty() {
        let page = views.list(List::Inbox, of(A), 30, token).await.unwrap();
        rest.extend(ids(&page));
        token = page.next_page_token;
    }
    // Rows after the cursor come once each, without the answered ones; the
    // newcomer sorts before the cursor and shows on a fresh first page.
    let remaining: Vec<ReferralId> =
        expected[30..].iter().copied().filter(|id| ![gone_a, gone_b].contains(id)).collect();
    assert_eq!(rest, remaining);
    assert_eq!(list(&views, List::Inbox, &of(A)).await.first(), Some(&newcomer));
}

#[tokio::test]
async fn a_timeline_lists_every_event_of_its_referral_oldest_first_in_pages() {
    let mut log = Log::new(t0());
    partners(&mut log);
    let id = log.receive(&rfi_at("rfi-1", A, "emea", None));
    let other = log.receive(&rfi_at("rfi-2", A, "emea", None));
    log.advance(Duration::hours(1));
    log.accept_with(id, eur(5_000), &["ana@contoso.example", "ben@contoso.example"]);
    log.decline(other, ReasonCode::TimelineTooShort);
    for i in 0..5 {
        log.advance(Duration::minutes(10));
        log.add_contact(id, &format!("p{i}@contoso.example"));
    }
    for i in 0..4 {
        log.advance(Duration::minutes(10));
        log.update(id, UpdateEngagement { name: Some(format!("Deal v{i}")), ..Default::default() });
    }
    log.advance(Duration::days(1));
    log.won(id, eur(6_000), log.now.date_naive());
    let stream = log.streams[&id].clone();
    assert_eq!(stream.len(), 14);

    let dir = scratch_dir();
    let (_db, views) = views_of(&dir, &log);
    let mut entries = Vec::new();
    let mut token = String::new();
    let mut sizes = Vec::new();
    loop {
        let page = views.timeline(id.to_string(), 5, token).await.unwrap();
        sizes.push(page.rows.len());
        entries.extend(page.rows);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sizes, [5, 5, 4]);
    let revisions: Vec<u64> = entries.iter().map(|e| e.revision.0).collect();
    assert_eq!(revisions, (0..14).collect::<Vec<_>>());
    let types: Vec<&str> = entries.iter().map(|e| e.event_type.as_str()).collect();
    let expected: Vec<&str> = stream.iter().map(ReferralEvent::event_type).collect();
    assert_eq!(types, expected);
    assert!(entries.iter().all(|e| e.referral == id.to_string()));
    assert!(entries.windows(2).all(|w| w[0].position < w[1].position && w[0].occurred_at <= w[1].occurred_at));

    // Who did it, when, and under which command: the accept's contacts share its command.
    assert_eq!((entries[0].actor.as_str(), entries[0].occurred_at), ("intake/marketplace", t0()));
    assert_eq!(entries[1].actor, "partner:contoso/alice");
    assert_eq!(entries[1].command_id, entries[2].command_id);
    assert_eq!(entries[2].command_id, entries[3].command_id);
    assert_ne!(entries[3].command_id, entries[4].command_id);
    assert_eq!(entries[13].occurred_at, log.now);
    let data: serde_json::Value = serde_json::from_str(&entries[13].data).unwrap();
    assert_eq!(data["referral"], id.to_string());
    assert_eq!(data["final_value"]["amount"], "6000.00");
    let recorded = log.events.iter().find(|e| e.stream == id.stream().as_str() && e.revision.0 == 13).unwrap();
    assert_eq!((entries[13].position, entries[13].recorded_at), (recorded.position, recorded.recorded_at));

    // The other referral's timeline is its own; a token of one timeline is
    // refused for another; an unknown referral has an empty timeline.
    let theirs = views.timeline(other.to_string(), 50, String::new()).await.unwrap();
    let types: Vec<&str> = theirs.rows.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["ReferralReceived", "ReferralDeclined"]);
    let token = views.timeline(id.to_string(), 5, String::new()).await.unwrap().next_page_token;
    match views.timeline(other.to_string(), 5, token).await {
        Err(ViewError::InvalidArgument { field: "page_token", .. }) => {}
        other => panic!("expected InvalidArgument on page_token, got {other:?}"),
    }
    let unknown = views.timeline(uuid::Uuid::new_v4().to_string(), 5, String::new()).await.unwrap();
    assert_eq!((unknown.rows.len(), unknown.next_page_token.as_str()), (0, ""));
}

/// How each of contoso's twelve referrals goes (see the table in the test).
struct Case {
    region: &'static str,
    industry: Option<&'static str>,
    size: SizeBand,
    products: &'static [&'static str],
    /// Seconds from receipt to the answer; `None` lets it expire.
    answer_after: Option<i64>,
    answer: Answer,
}

enum Answer {
    Accept(Then),
    Decline(ReasonCode),
    /// Never answered: it expires.
    Never,
}

enum Then {
    Won(&'static str, i64),
    Lost(ReasonCode),
    Open,
}

#[tokio::test]
async fn history_counts_reasons_response_times_features_and_deals() {
    use Answer::*;
    use SizeBand::{S1To9 as SMALL, S251To1000 as LARGE, S51To250 as MID};
    use Then::*;
    #[rustfmt::skip]
    let cases = [
        //    region  industry                size   products          answer after  answer
        Case { region: "emea", industry: Some("manufacturing"), size: MID, products: &["erp"], answer_after: Some(60), answer: Accept(Won("EUR", 1_000_050)) },
        Case { region: "emea", industry: Some("manufacturing"), size: MID, products: &["erp", "crm"], answer_after: Some(120), answer: Accept(Won("EUR", 500_000)) },
        Case { region: "emea", industry: Some("manufacturing"), size: LARGE, products: &["crm"], answer_after: Some(180), answer: Accept(Lost(ReasonCode::CustomerChoseAnotherVendor)) },
        Case { region: "emea", industry: Some("retail"), size: MID, products: &["erp"], answer_after: Some(240), answer: Accept(Open) },
        Case { region: "apac", industry: Some("retail"), size: SMALL, products: &["erp"], answer_after: Some(300), answer: Accept(Won("JPY", 1_200_000)) },
        Case { region: "apac", industry: Some("manufacturing"), size: MID, products: &["crm"], answer_after: Some(600), answer: Accept(Lost(ReasonCode::BudgetNotAdequate)) },
        Case { region: "emea", industry: Some("manufacturing"), size: MID, products: &["erp"], answer_after: Some(900), answer: Decline(ReasonCode::TimelineTooShort) },
        Case { region: "emea", industry: Some("retail"), size: SMALL, products: &["crm"], answer_after: Some(1_200), answer: Decline(ReasonCode::TimelineTooShort) },
        Case { region: "apac", industry: None, size: MID, products: &["erp"], answer_after: Some(3_600), answer: Decline(ReasonCode::Other) },
        Case { region: "emea", industry: Some("manufacturing"), size: LARGE, products: &["erp"], answer_after: Some(7_200), answer: Decline(ReasonCode::BudgetNotAdequate) },
        Case { region: "emea", industry: Some("manufacturing"), size: MID, products: &["erp"], answer_after: None, answer: Never },
        Case { region: "apac", industry: Some("retail"), size: MID, products: &["crm"], answer_after: None, answer: Never },
    ];
    let mut log = Log::new(t0());
    partners(&mut log);
    log.register(B, "apac", &["tokyo"]);
    // Receipts a minute apart, answers when their delay is up, all in time order.
    let mut steps: Vec<(DateTime<Utc>, bool, usize)> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let received = t0() + Duration::minutes(i as i64);
        steps.push((received, false, i));
        if let Some(after) = case.answer_after {
            steps.push((received + Duration::seconds(after), true, i));
        }
    }
    steps.sort();
    let mut ids = vec![None; cases.len()];
    for (at, answer, i) in steps {
        log.at(at);
        let case = &cases[i];
        if !answer {
            let rfi = Rfi {
                industry: case.industry.map(String::from),
                size: case.size,
                products: case.products.iter().map(|p| p.to_string()).collect(),
                keywords: vec!["cloud".into()],
                ..Rfi::new(&format!("rfi-{i}"), A, case.region)
            };
            ids[i] = Some(log.receive(&rfi));
            continue;
        }
        let id = ids[i].expect("received before it is answered");
        match &case.answer {
            Accept(_) => {
                log.accept(id);
            }
            Decline(reason) => {
                log.decline(id, *reason);
            }
            Never => unreachable!("expiring cases have no answer time"),
        }
    }
    let ids: Vec<ReferralId> = ids.into_iter().map(|id| id.expect("received")).collect();
    // Northwind's referral, answered at once, is none of contoso's business.
    let theirs = log.receive(&Rfi::new("rfi-theirs", B, "apac"));
    log.decline(theirs, ReasonCode::AbuseSpamPhishing);
    log.advance(Duration::days(1));
    let mut reported = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        log.advance(Duration::hours(1));
        match case.answer {
            Accept(Won(currency, minor)) => {
                let units = if currency == "JPY" { minor } else { minor / 100 };
                let nanos = if currency == "JPY" { 0 } else { (minor % 100) as i32 * 10_000_000 };
                let value = referral_domain::referral::MoneyInput { currency_code: currency.into(), units, nanos };
                log.won(ids[i], value, log.now.date_naive());
                reported.push((i, currency, minor, log.now));
            }
            Accept(Lost(reason)) => {
                log.lost(ids[i], reason);
            }
            _ => {}
        }
    }
    log.at(log.referral(ids[11]).expires_at);
    log.expire(ids[10]);
    log.expire(ids[11]);

    let dir = scratch_dir();
    let (_db, views) = views_of(&dir, &log);
    let c =
        |received, accepted, declined, expired, won, lost| Counts { received, accepted, declined, expired, won, lost };
    let reasons = |list: &[(&str, u64)]| -> Vec<ReasonCount> {
        list.iter().map(|(reason, count)| ReasonCount { reason: reason.to_string(), count: *count }).collect()
    };
    let total = |currency: &str, deals, minor_units| DealTotal { currency: currency.into(), deals, minor_units };

    let all = views.history(A.into(), None).await.unwrap();
    assert_eq!((all.partner.as_str(), all.region.as_deref()), (A, None));
    assert_eq!(all.counts, c(12, 6, 4, 2, 3, 2));
    assert_eq!(all.counts.acceptance_rate(), Some(0.5));
    assert_eq!(all.counts.win_rate(), Some(0.6));
    assert_eq!(
        all.decline_reasons,
        reasons(&[("timeline_too_short", 2), ("budget_not_adequate", 1), ("other", 1)]),
        "most frequent first, then by name"
    );
    assert_eq!(all.loss_reasons, reasons(&[("budget_not_adequate", 1), ("customer_chose_another_vendor", 1)]));
    // Ten answers: 60, 120, 180, 240, 300, 600, 900, 1200, 3600, 7200 seconds.
    // Nearest rank: the median is the 5th, p90 the 9th.
    assert_eq!(
        all.response_times,
        ResponseTimes { responded: 10, median_seconds: Some(300), p90_seconds: Some(3_600) }
    );
    assert_eq!(all.deal_totals, vec![total("EUR", 2, 1_500_050), total("JPY", 1, 1_200_000)]);
    let recent: Vec<(String, String, i64, DateTime<Utc>)> = all
        .recent_deals
        .iter()
        .map(|d: &Deal| (d.referral.clone(), d.currency.clone(), d.minor_units, d.reported_at))
        .collect();
    let expected_recent: Vec<(String, String, i64, DateTime<Utc>)> = reported
        .iter()
        .rev()
        .map(|(i, currency, minor, at)| (ids[*i].to_string(), currency.to_string(), *minor, *at))
        .collect();
    assert_eq!(recent, expected_recent, "latest report first");
    assert_eq!(all.recent_deals[0].closed_on, all.recent_deals[0].reported_at.date_naive());

    let feature =
        |kind: &str, value: &str| all.by_feature.iter().find(|f| f.kind == kind && f.value == value).map(|f| f.counts);
    assert_eq!(feature("industry", "manufacturing"), Some(c(7, 4, 2, 1, 2, 2)));
    assert_eq!(feature("industry", "retail"), Some(c(4, 2, 1, 1, 1, 0)));
    assert_eq!(feature("size_band", "51-250"), Some(c(8, 4, 2, 2, 2, 1)));
    assert_eq!(feature("size_band", "1-9"), Some(c(2, 1, 1, 0, 1, 0)));
    assert_eq!(feature("size_band", "251-1000"), Some(c(2, 1, 1, 0, 0, 1)));
    assert_eq!(feature("product", "erp"), Some(c(8, 4, 3, 1, 3, 0)));
    assert_eq!(feature("product", "crm"), Some(c(5, 3, 1, 1, 1, 2)));
    assert_eq!(feature("keyword", "cloud"), Some(all.counts));
    assert_eq!(feature("region", "emea"), Some(c(8, 4, 3, 1, 2, 1)));
    assert_eq!(feature("region", "apac"), Some(c(4, 2, 1, 1, 1, 1)));
    assert_eq!(feature("industry", "healthcare"), None);
    assert_eq!(feature("all", ""), None, "the overall counts are not a feature");
    assert_eq!(feature("product", "erp").unwrap().acceptance_rate(), Some(0.5));
    assert_eq!(feature("product", "crm").unwrap().win_rate(), Some(1.0 / 3.0));
    let order: Vec<(&str, &str)> = all.by_feature.iter().map(|f| (f.kind.as_str(), f.value.as_str())).collect();
    assert_eq!(
        order,
        [
            ("industry", "manufacturing"),
            ("industry", "retail"),
            ("keyword", "cloud"),
            ("product", "erp"),
            ("product", "crm"),
            ("region", "emea"),
            ("region", "apac"),
            ("size_band", "51-250"),
            ("size_band", "1-9"),
            ("size_band", "251-1000"),
        ],
        "by kind, then most received first"
    );

    // Per profile (region).
    let emea = views.history(A.into(), Some("emea".into())).await.unwrap();
    assert_eq!(emea.region.as_deref(), Some("emea"));
    assert_eq!(emea.counts, c(8, 4, 3, 1, 2, 1));
    assert_eq!(emea.decline_reasons, reasons(&[("timeline_too_short", 2), ("budget_not_adequate", 1)]));
    assert_eq!(emea.loss_reasons, reasons(&[("customer_chose_another_vendor", 1)]));
    // 60, 120, 180, 240, 900, 1200, 7200: ranks 4 and 7.
    assert_eq!(
        emea.response_times,
        ResponseTimes { responded: 7, median_seconds: Some(240), p90_seconds: Some(7_200) }
    );
    assert_eq!(emea.deal_totals, vec![total("EUR", 2, 1_500_050)]);
    assert!(emea.recent_deals.iter().all(|d| d.region == "emea"));
    assert!(emea.by_feature.iter().all(|f| f.kind != "region" || f.value == "emea"));

    let apac = views.history(A.into(), Some("apac".into())).await.unwrap();
    assert_eq!(apac.counts, c(4, 2, 1, 1, 1, 1));
    // 300, 600, 3600: ranks 2 and 3.
    assert_eq!(
        apac.response_times,
        ResponseTimes { responded: 3, median_seconds: Some(600), p90_seconds: Some(3_600) }
    );
    assert_eq!(apac.deal_totals, vec![total("JPY", 1, 1_200_000)]);
    assert_eq!(apac.decline_reasons, reasons(&[("other", 1)]));

    // Another partner's figures are its own; a partner without referrals has none.
    let b = views.history(B.into(), None).await.unwrap();
    assert_eq!(b.counts, c(1, 0, 1, 0, 0, 0));
    assert_eq!(b.decline_reasons, reasons(&[("abuse_spam_phishing", 1)]));
    assert_eq!(b.response_times, ResponseTimes { responded: 1, median_seconds: Some(0), p90_seconds: Some(0) });
    let nobody = views.history("tailspin".into(), None).await.unwrap();
    assert_eq!(nobody.counts, Counts::default());
    assert_eq!(nobody.response_times, ResponseTimes::default());
    assert!(nobody.by_feature.is_empty() && nobody.deal_totals.is_empty() && nobody.recent_deals.is_empty());
    assert_eq!(nobody.counts.acceptance_rate(), None);
}

#[tokio::test]
async fn deadlines_fall_due_at_expires_at_and_leave_when_the_referral_is_answered_or_expired() {
    let mut log = Log::new(t0());
    partners(&mut log);
    let first = log.receive(&rfi_at("rfi-1", A, "emea", None));
    log.advance(Duration::hours(1));
    let second = log.receive(&rfi_at("rfi-2", B, "emea", None));
    let accepted = log.receive(&rfi_at("rfi-3", A, "emea", None));
    let declined = log.receive(&rfi_at("rfi-4", A, "apac", None));
    log.advance(Duration::hours(1));
    let third = log.receive(&rfi_at("rfi-5", A, "emea", None));
    log.advance(Duration::hours(1));
    log.accept(accepted);
    log.decline(declined, ReasonCode::TimelineTooShort);

    let dir = scratch_dir();
    let (db, views) = views_of(&dir, &log);
    let expiries: std::collections::BTreeMap<ReferralId, DateTime<Utc>> =
        log.referrals.iter().map(|(id, r)| (*id, r.expires_at)).collect();
    let expires = |id: ReferralId| expiries[&id];
    let due = |at: DateTime<Utc>, limit: u32| {
        let views = views.clone();
        async move { views.due(at, limit).await.unwrap().into_iter().map(|d| d.referral).collect::<Vec<_>>() }
    };
    let s = |id: ReferralId| id.to_string();

    assert_eq!(expires(first), t0() + Duration::days(14));
    assert_eq!(due(expires(first) - Duration::seconds(1), 100).await, Vec::<String>::new());
    assert_eq!(due(expires(first), 100).await, vec![s(first)]);
    assert_eq!(due(expires(second), 100).await, vec![s(first), s(second)]);
    assert_eq!(due(expires(third) + Duration::days(30), 100).await, vec![s(first), s(second), s(third)]);
    assert_eq!(due(expires(third), 1).await, vec![s(first)], "earliest first, up to the limit");

    let deadline = views.due(expires(third), 10).await.unwrap();
    let second_deadline = deadline.iter().find(|d| d.referral == s(second)).unwrap();
    assert_eq!((second_deadline.partner.as_str(), second_deadline.expires_at), (B, expires(second)));

    // Expiring, accepting or declining takes a referral out for good.
    let before = log.events.len();
    log.at(expires(first));
    log.expire(first);
    log.accept(second);
    apply(&db, &log.events[before..]);
    assert_eq!(due(expires(third) + Duration::days(30), 100).await, vec![s(third)]);
    let before = log.events.len();
    log.advance(Duration::minutes(1));
    log.decline(third, ReasonCode::CustomerDidNotRespond);
    apply(&db, &log.events[before..]);
    assert_eq!(due(expires(third) + Duration::days(30), 100).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_referral_detail_carries_its_revision_and_position_and_unknown_ones_are_none() {
    let mut log = Log::new(t0());
    partners(&mut log);
    let id = log.receive(&rfi_at("rfi-1", A, "emea", Some("berlin")));
    log.advance(Duration::hours(5));
    log.accept(id);
    let dir = scratch_dir();
    let (_db, views) = views_of(&dir, &log);
    let row = views.referral(id.to_string()).await.unwrap().unwrap();
    assert_eq!(&row.referral, log.referral(id));
    assert_eq!((row.revision.0, row.position), (1, log.last_position()));
    assert_eq!(views.referral(uuid::Uuid::new_v4().to_string()).await.unwrap(), None);
    assert_eq!(views.referral("not a uuid".into()).await.unwrap(), None);
}

#[tokio::test]
async fn queries_before_any_version_is_registered_say_the_view_is_not_ready() {
    let dir = scratch_dir();
    let views = Views::new(ViewDb::open(&dir.path().join("views")).unwrap());
    assert_eq!(
        views.list(List::Inbox, ListFilter::default(), 10, String::new()).await.unwrap_err(),
        ViewError::NotReady("referrals")
    );
    assert_eq!(views.timeline("x".into(), 10, String::new()).await.unwrap_err(), ViewError::NotReady("timeline"));
    assert_eq!(views.history(A.into(), None).await.unwrap_err(), ViewError::NotReady("history"));
    assert_eq!(views.due(t0(), 10).await.unwrap_err(), ViewError::NotReady("deadlines"));
}

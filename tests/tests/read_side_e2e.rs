//! The read side over gRPC: the views after real commands, scoped to the
//! caller; read-your-writes with `min_position`; the projection admin; the
//! expiry scheduler inside `serve`.

use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use referral_commands::Role;
use referral_domain::eventlog::{EventData, ExpectedRevision, StreamName};
use referral_infra::grpc::auth::{AdminClient, QueriesClient};
use referral_infra::grpc::pb;
use referral_tests::{accept_request, date, money, profile_request, rfi_request, Client, EventBackend, TestServer};
use tonic::Code;
use tonic_types::StatusExt;

const A: &str = "contoso";
const B: &str = "northwind";

struct World {
    server: TestServer,
    intake: Client,
    a: Client,
    a_views: QueriesClient,
    b_views: QueriesClient,
    analyst_views: QueriesClient,
    intake_views: QueriesClient,
    operator: AdminClient,
}

impl World {
    async fn start(backend: EventBackend) -> World {
        let server = TestServer::start_on(backend).await;
        let intake_token = server.token(Role::Intake, None);
        let a_token = server.token(Role::Partner, Some(A));
        let b_token = server.token(Role::Partner, Some(B));
        let intake = server.client(&intake_token).await;
        for partner in [A, B] {
            intake
                .clone()
                .register_partner_profile(profile_request(&rid(), partner, "emea"))
                .await
                .expect("register profile");
        }
        World {
            a: server.client(&a_token).await,
            a_views: server.queries(&a_token).await,
            b_views: server.queries(&b_token).await,
            analyst_views: server.queries(&server.token(Role::Analyst, None)).await,
            intake_views: server.queries(&intake_token).await,
            operator: server.admin(&server.token(Role::Operator, None)).await,
            intake,
            server,
        }
    }

    /// Submits an RFI to A and B; returns (A's referral, B's referral, position).
    async fn submit(&self, rfi: &str) -> (String, String, pb::LogPosition) {
        let response =
            self.intake.clone().submit_rfi(rfi_request(&rid(), rfi, &[A, B])).await.expect("submit").into_inner();
        let position = response.referrals.iter().filter_map(|r| r.result.as_ref()?.position).max_by_key(|p| p.commit);
        (
            response.referrals[0].referral_id.clone(),
            response.referrals[1].referral_id.clone(),
            position.expect("position"),
        )
    }
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn list(min: Option<pb::LogPosition>) -> pb::ListReferralsRequest {
    pb::ListReferralsRequest { min_position: min, ..Default::default() }
}

fn ids(response: &pb::ListReferralsResponse) -> Vec<String> {
    response.referrals.iter().map(|r| r.referral_id.clone()).collect()
}

fn position(result: &pb::CommandResult) -> pb::LogPosition {
    result.position.expect("a command that wrote has a position")
}

/// Runs each scenario on both event stores: `embedded::<name>` on the
/// embedded store, `esdb::<name>` through the EventStoreDB adapter against the
/// project's EventStoreDB-compatible node.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::EventBackend::Embedded).await
                }
            )*
        }

        mod esdb {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::EventBackend::EsdbNode).await
                }
            )*
        }
    };
}

on_every_backend! {
    a_referral_moves_from_inbox_to_active_to_archive_for_its_partner_only,
    every_query_hides_or_refuses_another_partners_referrals,
    pages_follow_tokens_and_a_token_for_other_filters_is_refused,
    a_query_waits_for_its_minimum_position_and_says_so_when_it_is_not_reached,
    operators_see_projections_and_rebuild_them_while_queries_answer,
    serve_expires_an_unanswered_referral_after_14_days,
}

async fn a_referral_moves_from_inbox_to_active_to_archive_for_its_partner_only(backend: EventBackend) {
    let w = World::start(backend).await;
    let (a_id, b_id, submitted) = w.submit("rfi-views-1").await;

    let inbox = w.a_views.clone().list_inbox(list(Some(submitted))).await.expect("inbox").into_inner();
    assert_eq!(ids(&inbox), vec![a_id.clone()]);
    let r = &inbox.referrals[0];
    assert_eq!((r.partner_id.as_str(), r.status), (A, pb::Status::New as i32));
    assert_eq!(r.contact_alert, pb::ContactAlert::Hot as i32);
    assert_eq!(r.response_due_at.as_ref().map(|t| t.seconds), r.received_at.as_ref().map(|t| t.seconds + 24 * 3600));
    assert_eq!(
        ids(&w.b_views.clone().list_inbox(list(Some(submitted))).await.expect("inbox").into_inner()),
        vec![b_id]
    );

    let accepted = w.a.clone().accept_referral(accept_request(&rid(), &a_id)).await.expect("accept").into_inner();
    let after_accept = Some(position(&accepted));
    assert!(ids(&w.a_views.clone().list_inbox(list(after_accept)).await.expect("inbox").into_inner()).is_empty());
    let active = w.a_views.clone().list_active(list(after_accept)).await.expect("active").into_inner();
    assert_eq!(ids(&active), vec![a_id.clone()]);
    assert_eq!(active.referrals[0].engagement.as_ref().map(|e| e.name.as_str()), Some("Fabrikam ERP migration"));

    let won =
        w.a.clone()
            .mark_won(pb::MarkWonRequest {
                request_id: rid(),
                referral_id: a_id.clone(),
                final_value: Some(money("EUR", 142_000, 0)),
                closed_on: Some(date(2026, 11, 24)),
            })
            .await
            .expect("won")
            .into_inner();
    let after_won = Some(position(&won));
    assert!(ids(&w.a_views.clone().list_active(list(after_won)).await.expect("active").into_inner()).is_empty());
    let archive = w.a_views.clone().list_archive(list(after_won)).await.expect("archive").into_inner();
    assert_eq!(ids(&archive), vec![a_id.clone()]);
    assert_eq!(archive.referrals[0].substatus, pb::Substatus::Won as i32);
    let only_lost = pb::ListReferralsRequest { outcomes: vec![pb::Substatus::Lost as i32], ..list(after_won) };
    assert!(w.a_views.clone().list_archive(only_lost).await.expect("archive").into_inner().referrals.is_empty());
    // B's archive does not hold A's referral.
    assert!(w.b_views.clone().list_archive(list(after_won)).await.expect("archive").into_inner().referrals.is_empty());

    // The detail view agrees with the aggregate.
    let view = w
        .a_views
        .clone()
        .get_referral_view(pb::GetReferralViewRequest { referral_id: a_id.clone(), min_position: after_won })
        .await
        .expect("view")
        .into_inner();
    let aggregate =
        w.a.clone()
            .get_referral(pb::GetReferralRequest { referral_id: a_id.clone() })
            .await
            .expect("aggregate")
            .into_inner();
    assert_eq!(view, aggregate);

    // The timeline lists every event with who caused it.
    let timeline = w
        .a_views
        .clone()
        .get_timeline(pb::GetTimelineRequest {
            referral_id: a_id.clone(),
            min_position: after_won,
            ..Default::default()
        })
        .await
        .expect("timeline")
        .into_inner();
    let types: Vec<&str> = timeline.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["ReferralReceived", "ReferralAccepted", "ReferralWon"]);
    assert!(timeline.events[0].actor.starts_with("intake/"), "{}", timeline.events[0].actor);
    assert!(timeline.events[1].actor.starts_with("partner:contoso/"), "{}", timeline.events[1].actor);

    // History: one received, accepted and won, with the deal.
    let history = w
        .a_views
        .clone()
        .get_partner_history(pb::GetPartnerHistoryRequest { min_position: after_won, ..Default::default() })
        .await
        .expect("history")
        .into_inner();
    let counts = history.counts.expect("counts");
    assert_eq!((counts.received, counts.accepted, counts.won), (1, 1, 1));
    assert_eq!((counts.acceptance_rate, counts.win_rate), (Some(1.0), Some(1.0)));
    assert_eq!(history.deal_totals.len(), 1);
    assert_eq!(history.deal_totals[0].total.as_ref().map(|m| m.units), Some(142_000));
    assert!(history.by_feature.iter().any(|f| f.kind == "industry" && f.value == "manufacturing"));
}

async fn every_query_hides_or_refuses_another_partners_referrals(backend: EventBackend) {
    let w = World::start(backend).await;
    let (a_id, _b_id, at) = w.submit("rfi-views-2").await;
    let at = Some(at);

    // Lists: B never sees A's referral, and cannot ask for A's lists.
    for list_call in 0..3 {
        let mut b = w.b_views.clone();
        let response = match list_call {
            0 => b.list_inbox(list(at)).await,
            1 => b.list_active(list(at)).await,
            _ => b.list_archive(list(at)).await,
        }
        .expect("own list")
        .into_inner();
        assert!(!ids(&response).contains(&a_id), "list {list_call}");
        let asking_for_a = pb::ListReferralsRequest { partner_id: A.into(), ..list(at) };
        let refused = match list_call {
            0 => b.list_inbox(asking_for_a).await,
            1 => b.list_active(asking_for_a).await,
            _ => b.list_archive(asking_for_a).await,
        }
        .expect_err("another partner's list");
        assert_eq!(refused.code(), Code::PermissionDenied, "list {list_call}: {refused:?}");
    }
    // Detail and timeline of A's referral: refused to B.
    let view = w
        .b_views
        .clone()
        .get_referral_view(pb::GetReferralViewRequest { referral_id: a_id.clone(), min_position: at })
        .await
        .expect_err("another partner's referral");
    assert_eq!(view.code(), Code::PermissionDenied, "{view:?}");
    let timeline = w
        .b_views
        .clone()
        .get_timeline(pb::GetTimelineRequest { referral_id: a_id.clone(), min_position: at, ..Default::default() })
        .await
        .expect_err("another partner's timeline");
    assert_eq!(timeline.code(), Code::PermissionDenied, "{timeline:?}");
    assert!(!timeline.message().contains("Fabrikam"), "{}", timeline.message());
    // History of A: refused to B.
    let history = w
        .b_views
        .clone()
        .get_partner_history(pb::GetPartnerHistoryRequest { partner_id: A.into(), ..Default::default() })
        .await
        .expect_err("another partner's history");
    assert_eq!(history.code(), Code::PermissionDenied, "{history:?}");

    // Analysts and intake see every partner's.
    let all = w.analyst_views.clone().list_inbox(list(at)).await.expect("analyst inbox").into_inner();
    assert_eq!(all.referrals.len(), 2);
    let only_a = pb::ListReferralsRequest { partner_id: A.into(), ..list(at) };
    assert_eq!(ids(&w.intake_views.clone().list_inbox(only_a).await.expect("intake").into_inner()), vec![a_id.clone()]);
    w.analyst_views
        .clone()
        .get_partner_history(pb::GetPartnerHistoryRequest { partner_id: A.into(), ..Default::default() })
        .await
        .expect("analyst reads A's history");
}

async fn pages_follow_tokens_and_a_token_for_other_filters_is_refused(backend: EventBackend) {
    let w = World::start(backend).await;
    let mut last = None;
    let mut mine = Vec::new();
    for i in 0..7 {
        let (a_id, _, at) = w.submit(&format!("rfi-views-page-{i}")).await;
        w.server.clock.advance(Duration::minutes(1));
        mine.push(a_id);
        last = Some(at);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = w
            .a_views
            .clone()
            .list_inbox(pb::ListReferralsRequest { page_size: 3, page_token: token.clone(), ..list(last) })
            .await
            .expect("page")
            .into_inner();
        assert!(page.referrals.len() <= 3);
        seen.extend(ids(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        let other_filters = pb::ListReferralsRequest {
            page_token: token.clone(),
            order: pb::ListOrder::MostUrgent as i32,
            ..list(None)
        };
        let refused = w.a_views.clone().list_inbox(other_filters).await.expect_err("token with other order");
        assert_eq!(refused.code(), Code::InvalidArgument);
        let fields: Vec<String> = refused
            .get_details_bad_request()
            .expect("bad request")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["page_token"]);
    }
    mine.reverse(); // newest first
    assert_eq!(seen, mine);
}

async fn a_query_waits_for_its_minimum_position_and_says_so_when_it_is_not_reached(backend: EventBackend) {
    let w = World::start(backend).await;
    let (_, _, at) = w.submit("rfi-views-3").await;
    let beyond = pb::LogPosition { commit: at.commit + 1_000, prepare: at.prepare + 1_000 };
    let started = Instant::now();
    let refused = w.a_views.clone().list_inbox(list(Some(beyond))).await.expect_err("never reached");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("has not reached position"), "{}", refused.message());
    assert!(started.elapsed() < StdDuration::from_secs(30));
}

/// A view stopped on an event it could not apply will not reach a later
/// position until an operator retries it: a query that asks for one is told
/// so at once instead of waiting in vain, and answers without the minimum.
#[tokio::test]
async fn a_query_for_a_position_a_stopped_view_cannot_reach_is_refused_at_once() {
    let w = World::start(EventBackend::Embedded).await;
    let (a_id, _, at) = w.submit("rfi-views-stopped").await;
    let a_token = w.server.token(Role::Partner, Some(A));
    let data_dir = w.server.stop_keeping_data().await;

    // An event no projection can decode, written behind the server's back.
    let store = referral_infra::server::open_embedded_store(data_dir.path()).expect("open the store");
    let stream = StreamName::new(format!("referral-{}", uuid::Uuid::new_v4())).expect("stream name");
    let broken = EventData {
        id: uuid::Uuid::new_v4(),
        event_type: "ReferralAccepted".into(),
        data: br#"{"referral": 42}"#.to_vec(),
        metadata: b"{}".to_vec(),
    };
    let broken_at = store.append(&stream, ExpectedRevision::NoStream, vec![broken]).await.expect("append").position;
    drop(store);

    let server = TestServer::start_in(EventBackend::Embedded, data_dir).await;
    let views = server.queries(&a_token).await;
    let beyond = pb::LogPosition { commit: broken_at.commit, prepare: broken_at.prepare };
    // Asked while the projections may still be on their way to the event:
    // the wait ends when they stop on it, not when the 5 s run out.
    let started = Instant::now();
    let refused = views.clone().list_inbox(list(Some(beyond))).await.expect_err("a stopped view");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(started.elapsed() < StdDuration::from_secs(4), "refused once stopped: {:?}", started.elapsed());
    let message = refused.message();
    assert!(message.contains(&format!("stopped at position {broken_at}")), "{message}");
    assert!(message.contains("projections retry referrals"), "{message}");
    let asked = Instant::now();
    let again = views.clone().list_inbox(list(Some(beyond))).await.expect_err("still stopped");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(asked.elapsed() < StdDuration::from_secs(2), "refused without waiting for it: {:?}", asked.elapsed());

    // Without the minimum, or with one it has reached, it answers.
    assert_eq!(ids(&views.clone().list_inbox(list(Some(at))).await.expect("reached").into_inner()), vec![a_id.clone()]);
    assert_eq!(ids(&views.clone().list_inbox(list(None)).await.expect("as it is").into_inner()), vec![a_id]);
    server.stop().await;
}

async fn operators_see_projections_and_rebuild_them_while_queries_answer(backend: EventBackend) {
    let w = World::start(backend).await;
    let (a_id, _, at) = w.submit("rfi-views-4").await;
    w.a_views.clone().list_inbox(list(Some(at))).await.expect("caught up");

    let status = w.operator.clone().list_projections(pb::ListProjectionsRequest {}).await.expect("status").into_inner();
    let names: Vec<&str> = status.projections.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["referrals", "timeline", "history", "deadlines"]);
    for p in &status.projections {
        assert_eq!(p.versions.len(), 1, "{p:?}");
        assert_eq!(p.versions[0].state, pb::ProjectionState::Live as i32, "{p:?}");
        assert!(p.versions[0].active);
    }

    let rebuilt = w
        .operator
        .clone()
        .rebuild_projection(pb::RebuildProjectionRequest { name: "referrals".into(), together_with: vec![] })
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(rebuilt.version, 2);
    // Queries keep answering during and after the rebuild.
    let deadline = Instant::now() + StdDuration::from_secs(30);
    loop {
        let inbox = w.a_views.clone().list_inbox(list(Some(at))).await.expect("inbox during rebuild").into_inner();
        assert_eq!(ids(&inbox), vec![a_id.clone()]);
        let status =
            w.operator.clone().list_projections(pb::ListProjectionsRequest {}).await.expect("status").into_inner();
        let referrals = &status.projections[0];
        if referrals.versions.len() == 1 && referrals.versions[0].version == 2 && referrals.versions[0].active {
            break;
        }
        assert!(Instant::now() < deadline, "rebuild did not finish: {referrals:?}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }

    let unknown = w
        .operator
        .clone()
        .rebuild_projection(pb::RebuildProjectionRequest { name: "nope".into(), together_with: vec![] })
        .await
        .expect_err("unknown projection");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("referrals, timeline, history, deadlines"), "{}", unknown.message());
    let retry = w
        .operator
        .clone()
        .retry_projection(pb::RetryProjectionRequest { name: "history".into() })
        .await
        .expect("retry")
        .into_inner();
    assert!(!retry.was_failed);

    let abandoned = w
        .operator
        .clone()
        .abandon_rebuild(pb::AbandonRebuildRequest { name: "history".into() })
        .await
        .expect("abandon")
        .into_inner();
    assert_eq!((abandoned.abandoned, abandoned.version), (false, 0), "no rebuild in progress");

    // Not for partners.
    let partner_admin = w.server.admin(&w.server.token(Role::Partner, Some(A))).await;
    let refused = partner_admin.clone().list_projections(pb::ListProjectionsRequest {}).await.expect_err("partner");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = partner_admin
        .clone()
        .abandon_rebuild(pb::AbandonRebuildRequest { name: "history".into() })
        .await
        .expect_err("partner");
    assert_eq!(refused.code(), Code::PermissionDenied);
}

async fn serve_expires_an_unanswered_referral_after_14_days(backend: EventBackend) {
    let w = World::start(backend).await;
    let (a_id, b_id, _) = w.submit("rfi-views-5").await;
    let accepted = w.a.clone().accept_referral(accept_request(&rid(), &a_id)).await.expect("accept").into_inner();
    w.a_views.clone().list_active(list(Some(position(&accepted)))).await.expect("caught up");

    w.server.clock.advance(Duration::days(14));
    let deadline = Instant::now() + StdDuration::from_secs(30);
    let b_archive = loop {
        let archive = w.b_views.clone().list_archive(list(None)).await.expect("archive").into_inner();
        if !archive.referrals.is_empty() {
            break archive;
        }
        assert!(Instant::now() < deadline, "B's referral was not expired");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    };
    assert_eq!(ids(&b_archive), vec![b_id.clone()]);
    assert_eq!(b_archive.referrals[0].substatus, pb::Substatus::Expired as i32);
    // A accepted in time: still active.
    let a = w.a.clone().get_referral(pb::GetReferralRequest { referral_id: a_id }).await.expect("get").into_inner();
    assert_eq!(a.substatus, pb::Substatus::Accepted as i32);
}

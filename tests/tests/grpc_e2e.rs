//! The gRPC API end to end: a real server on a loopback port, real tonic
//! clients, every call over HTTP/2 with bearer tokens.

use std::fmt::Debug;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use referral_commands::Role;
use referral_domain::ids::{PartnerId, ReferralId, RegionId, RfiId};
use referral_infra::grpc::pb;
use referral_tests::{
    accept_request, date, money, profile_request, rfi_request, test_epoch, Client, EventBackend, TestServer,
};
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

const A: &str = "contoso";
const B: &str = "northwind";

/// A server with `emea` profiles for partners A and B and a client per caller.
struct World {
    server: TestServer,
    intake: Client,
    a: Client,
    b: Client,
}

impl World {
    async fn start(backend: EventBackend) -> World {
        let server = TestServer::start_on(backend).await;
        let intake = server.client(&server.token(Role::Intake, None)).await;
        let a = server.client(&server.token(Role::Partner, Some(A))).await;
        let b = server.client(&server.token(Role::Partner, Some(B))).await;
        for partner in [A, B] {
            intake
                .clone()
                .register_partner_profile(profile_request(&rid(), partner, "emea"))
                .await
                .expect("register profile");
        }
        World { server, intake, a, b }
    }

    async fn client(&self, role: Role, partner: Option<&str>) -> Client {
        self.server.client(&self.server.token(role, partner)).await
    }

    /// Sends an RFI to `partners` in `emea`; the referral ids in target order.
    async fn submit(&self, rfi: &str, partners: &[&str]) -> Vec<String> {
        let response =
            self.intake.clone().submit_rfi(rfi_request(&rid(), rfi, partners)).await.expect("submit RFI").into_inner();
        response.referrals.into_iter().map(|r| r.referral_id).collect()
    }

    async fn accepted(&self, client: &Client, id: &str) {
        client.clone().accept_referral(accept_request(&rid(), id)).await.expect("accept");
    }
}

async fn get(client: &Client, id: &str) -> pb::Referral {
    client
        .clone()
        .get_referral(pb::GetReferralRequest { referral_id: id.into() })
        .await
        .expect("get referral")
        .into_inner()
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 }
}

fn contact(name: &str, email: &str, phone: &str) -> pb::Contact {
    pb::Contact { name: name.into(), email: email.into(), phone: phone.into() }
}

fn decline_request(
    request_id: &str,
    referral_id: &str,
    reason: pb::ReasonCode,
    notes: &str,
) -> pb::DeclineReferralRequest {
    pb::DeclineReferralRequest {
        request_id: request_id.into(),
        referral_id: referral_id.into(),
        reason: reason as i32,
        notes: notes.into(),
    }
}

fn add_contact_request(request_id: &str, referral_id: &str, c: pb::Contact) -> pb::AddContactRequest {
    pb::AddContactRequest { request_id: request_id.into(), referral_id: referral_id.into(), contact: Some(c) }
}

fn won_request(request_id: &str, referral_id: &str) -> pb::MarkWonRequest {
    pb::MarkWonRequest {
        request_id: request_id.into(),
        referral_id: referral_id.into(),
        final_value: Some(money("EUR", 142_000, 0)),
        closed_on: Some(date(2026, 11, 24)),
    }
}

fn lost_request(request_id: &str, referral_id: &str) -> pb::MarkLostRequest {
    pb::MarkLostRequest {
        request_id: request_id.into(),
        referral_id: referral_id.into(),
        reason: pb::ReasonCode::CustomerChoseAnotherVendor as i32,
        notes: String::new(),
    }
}

fn notes_update(request_id: &str, referral_id: &str, notes: &str) -> pb::UpdateEngagementRequest {
    pb::UpdateEngagementRequest {
        request_id: request_id.into(),
        referral_id: referral_id.into(),
        notes: Some(notes.into()),
        ..Default::default()
    }
}

fn referral_stream(id: &str) -> String {
    format!("referral-{id}")
}

/// What a first (not replayed) command wrote.
#[track_caller]
fn assert_written(r: &pb::CommandResult, stream: &str, events: u32, revision: u64) {
    assert_eq!(r.stream, stream, "stream of {r:?}");
    assert_eq!(r.events_written, events, "events_written of {r:?}");
    assert_eq!(r.stream_revision, Some(revision), "stream_revision of {r:?}");
    assert!(r.position.is_some(), "a write has a log position: {r:?}");
    assert!(!r.replayed, "a first write is not a replay: {r:?}");
}

/// The refusal of a call: its code, and a message mentioning each of `needles`.
#[track_caller]
fn refused<T: Debug>(result: Result<Response<T>, Status>, code: Code, needles: &[&str]) -> Status {
    let status = match result {
        Ok(r) => panic!("expected {code:?}, got {:?}", r.into_inner()),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "code of a refusal saying {:?}", status.message());
    for needle in needles {
        assert!(status.message().contains(needle), "message {:?} does not mention {needle:?}", status.message());
    }
    status
}

/// An `INVALID_ARGUMENT` whose `google.rpc.BadRequest` detail names `field`
/// (or a part of it) with a description mentioning `needle`.
#[track_caller]
fn invalid_field<T: Debug>(result: Result<Response<T>, Status>, field: &str, needle: &str) -> Status {
    let status = refused(result, Code::InvalidArgument, &[field]);
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("INVALID_ARGUMENT {:?} carries no google.rpc.BadRequest detail", status.message()));
    let prefix = format!("{field}.");
    let violation = bad
        .field_violations
        .iter()
        .find(|v| v.field == field || v.field.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no violation for {field:?} in {:?}", bad.field_violations));
    assert!(
        violation.description.contains(needle),
        "violation of {field:?} says {:?}, not {needle:?}",
        violation.description
    );
    status
}

/// Runs each scenario on both event stores: `embedded::<name>` on the
/// embedded store, `esdb::<name>` through the EventStoreDB adapter against the
/// project's EventStoreDB-compatible node.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::EventBackend::Embedded).await
                }
            )*
        }

        mod esdb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::EventBackend::EsdbNode).await
                }
            )*
        }
    };
}

on_every_backend! {
    a_referral_goes_from_rfi_to_won_and_another_is_declined,
    a_retried_request_returns_the_original_result_and_writes_nothing,
    racing_accepts_and_declines_leave_exactly_one_decision,
    racing_copies_of_one_request_write_once_and_all_get_its_result,
    reusing_a_request_id_for_a_different_command_is_refused,
    calls_without_a_valid_token_are_unauthenticated,
    a_role_that_may_not_issue_a_command_is_denied,
    invalid_fields_are_named_in_a_bad_request_detail,
    an_unknown_referral_is_not_found,
    an_rfi_to_a_partner_that_cannot_take_it_is_refused_whole,
    registering_a_region_twice_already_exists,
    moves_not_allowed_in_the_current_state_fail_their_precondition,
    after_fourteen_days_a_new_referral_can_no_longer_be_answered,
    a_partner_cannot_touch_another_partners_referral,
    reusing_another_partners_request_id_is_still_denied,
    health_and_reflection_are_served,
}

async fn a_referral_goes_from_rfi_to_won_and_another_is_declined(backend: EventBackend) {
    let server = TestServer::start_on(backend).await;
    let intake = server.client(&server.token(Role::Intake, None)).await;
    let a = server.client(&server.token(Role::Partner, Some(A))).await;
    let b = server.client(&server.token(Role::Partner, Some(B))).await;

    let reg_a = intake.clone().register_partner_profile(profile_request(&rid(), A, "emea")).await.unwrap();
    assert_written(&reg_a.into_inner(), "partner-contoso", 1, 0);
    let reg_b = intake.clone().register_partner_profile(profile_request(&rid(), B, "emea")).await.unwrap();
    assert_written(&reg_b.into_inner(), "partner-northwind", 1, 0);

    let submitted = intake.clone().submit_rfi(rfi_request(&rid(), "rfi-1", &[A, B])).await.unwrap().into_inner();
    assert_eq!(submitted.referrals.len(), 2);
    for (s, partner) in submitted.referrals.iter().zip([A, B]) {
        let expected = ReferralId::for_rfi(
            &RfiId::parse("rfi-1").unwrap(),
            &PartnerId::parse(partner).unwrap(),
            &RegionId::parse("emea").unwrap(),
        );
        assert_eq!(s.referral_id, expected.to_string());
        assert_eq!((s.partner_id.as_str(), s.region.as_str()), (partner, "emea"));
        assert_written(s.result.as_ref().expect("result"), &referral_stream(&s.referral_id), 1, 0);
    }
    let ra = submitted.referrals[0].referral_id.clone();
    let rb = submitted.referrals[1].referral_id.clone();

    let new = get(&a, &ra).await;
    assert_eq!(new.referral_id, ra);
    assert_eq!((new.rfi_id.as_str(), new.partner_id.as_str(), new.region.as_str()), ("rfi-1", A, "emea"));
    assert_eq!((new.status(), new.substatus()), (pb::Status::New, pb::Substatus::Received));
    let customer = new.customer.as_ref().expect("customer");
    assert_eq!(customer.company_name, "Fabrikam AG");
    assert_eq!(customer.size_band(), pb::SizeBand::SizeBand51250);
    assert_eq!(customer.contact.as_ref().expect("customer contact").email, "jonas.weber@fabrikam.example");
    assert_eq!(new.requirements.as_ref().expect("requirements").keywords, vec!["cloud".to_string()]);
    assert_eq!(new.consent, Some(pb::Consent { contact: true, share_details: true }));
    assert!(new.direct_contact_requested);
    assert_eq!(new.source(), pb::Source::PartnerSearch);
    assert_eq!(new.received_at, Some(ts(test_epoch())));
    assert_eq!(new.response_due_at, Some(ts(test_epoch() + Duration::hours(24))));
    assert_eq!(new.expires_at, Some(ts(test_epoch() + Duration::days(14))));
    assert!(!new.overdue);
    assert_eq!(new.contact_alert(), pb::ContactAlert::Hot);
    assert_eq!((new.accepted_at, new.engagement, new.outcome), (None, None, None));
    assert_eq!(new.stream_revision, 0);

    // Accepting with a team member records the acceptance and the contact.
    server.clock.advance(Duration::hours(2));
    let accepted_at = test_epoch() + Duration::hours(2);
    let lena = contact("Lena Fischer", "lena@contoso.example", "+49 89 5550100");
    let mut accept = accept_request(&rid(), &ra);
    accept.campaign_id = "CAMP-7".into();
    accept.contacts = vec![lena.clone()];
    let accepted = a.clone().accept_referral(accept).await.unwrap().into_inner();
    assert_written(&accepted, &referral_stream(&ra), 2, 2);

    let tom = contact("Tom Becker", "tom@contoso.example", "");
    let added = a.clone().add_contact(add_contact_request(&rid(), &ra, tom.clone())).await.unwrap().into_inner();
    assert_written(&added, &referral_stream(&ra), 1, 3);

    let update = pb::UpdateEngagementRequest {
        request_id: rid(),
        referral_id: ra.clone(),
        estimated_value: Some(money("EUR", 150_000, 0)),
        notes: Some("Finance and HR in phase one.".into()),
        crm_id: Some(String::new()),
        ..Default::default()
    };
    let updated = a.clone().update_engagement(update).await.unwrap().into_inner();
    assert_written(&updated, &referral_stream(&ra), 1, 4);

    // An edit that changes nothing records nothing.
    let same = a
        .clone()
        .update_engagement(notes_update(&rid(), &ra, "Finance and HR in phase one."))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        same,
        pb::CommandResult {
            stream: referral_stream(&ra),
            events_written: 0,
            stream_revision: Some(4),
            position: None,
            replayed: false
        }
    );

    server.clock.advance(Duration::days(3));
    let closed_at = accepted_at + Duration::days(3);
    let mut won = won_request(&rid(), &ra);
    won.closed_on = Some(date(2026, 11, 27));
    let marked = a.clone().mark_won(won).await.unwrap().into_inner();
    assert_written(&marked, &referral_stream(&ra), 1, 5);
    assert!(marked.position.as_ref().unwrap().commit > accepted.position.as_ref().unwrap().commit);

    let done = get(&a, &ra).await;
    assert_eq!((done.status(), done.substatus()), (pb::Status::Closed, pb::Substatus::Won));
    assert_eq!(done.stream_revision, 5);
    assert_eq!(done.accepted_at, Some(ts(accepted_at)));
    assert_eq!(
        done.engagement,
        Some(pb::Engagement {
            name: "Fabrikam ERP migration".into(),
            estimated_value: Some(money("EUR", 150_000, 0)),
            estimated_purchase_date: Some(date(2026, 12, 31)),
            notes: "Finance and HR in phase one.".into(),
            crm_id: String::new(),
            campaign_id: "CAMP-7".into(),
        })
    );
    assert_eq!(done.contacts, vec![lena, tom]);
    assert_eq!(
        done.outcome,
        Some(pb::Outcome {
            closed_at: Some(ts(closed_at)),
            reason: pb::ReasonCode::Unspecified as i32,
            reason_notes: String::new(),
            final_value: Some(money("EUR", 142_000, 0)),
            closed_on: Some(date(2026, 11, 27)),
        })
    );
    assert_eq!(done.contact_alert(), pb::ContactAlert::None);
    assert!(!done.overdue);
    assert_eq!(done.last_changed_at, Some(ts(closed_at)));

    let declined = b
        .clone()
        .decline_referral(decline_request(&rid(), &rb, pb::ReasonCode::Other, "We do not do ERP at this size."))
        .await
        .unwrap()
        .into_inner();
    assert_written(&declined, &referral_stream(&rb), 1, 1);
    let closed = get(&b, &rb).await;
    assert_eq!((closed.status(), closed.substatus()), (pb::Status::Closed, pb::Substatus::Declined));
    assert_eq!(closed.stream_revision, 1);
    assert_eq!(closed.engagement, None);
    let outcome = closed.outcome.expect("outcome");
    assert_eq!(outcome.reason(), pb::ReasonCode::Other);
    assert_eq!(outcome.reason_notes, "We do not do ERP at this size.");
    assert_eq!(outcome.closed_at, Some(ts(closed_at)));
    assert_eq!(outcome.final_value, None);

    drop((intake, a, b));
    server.stop().await;
}

async fn a_retried_request_returns_the_original_result_and_writes_nothing(backend: EventBackend) {
    let server = TestServer::start_on(backend).await;
    let intake = server.client(&server.token(Role::Intake, None)).await;
    let a = server.client(&server.token(Role::Partner, Some(A))).await;
    let b = server.client(&server.token(Role::Partner, Some(B))).await;

    let register = profile_request("register-contoso", A, "emea");
    let first = intake.clone().register_partner_profile(register.clone()).await.unwrap().into_inner();
    let again = intake.clone().register_partner_profile(register.clone()).await.unwrap().into_inner();
    assert_eq!(again, pb::CommandResult { replayed: true, ..first.clone() });
    intake.clone().register_partner_profile(profile_request(&rid(), B, "emea")).await.unwrap();

    let rfi = rfi_request("submit-rfi-1", "rfi-1", &[A, B]);
    let first_rfi = intake.clone().submit_rfi(rfi.clone()).await.unwrap().into_inner();
    let again_rfi = intake.clone().submit_rfi(rfi.clone()).await.unwrap().into_inner();
    assert_eq!(again_rfi.referrals.len(), 2);
    for (f, g) in first_rfi.referrals.iter().zip(&again_rfi.referrals) {
        assert_eq!((&g.referral_id, &g.partner_id, &g.region), (&f.referral_id, &f.partner_id, &f.region));
        let original = f.result.clone().expect("result");
        assert_eq!(g.result, Some(pb::CommandResult { replayed: true, ..original }));
    }
    let ra = first_rfi.referrals[0].referral_id.clone();
    let rb = first_rfi.referrals[1].referral_id.clone();

    let accept = accept_request("accept-1", &ra);
    let accepted = a.clone().accept_referral(accept.clone()).await.unwrap().into_inner();
    assert_written(&accepted, &referral_stream(&ra), 1, 1);
    let before = get(&a, &ra).await;
    let retried = a.clone().accept_referral(accept.clone()).await.unwrap().into_inner();
    assert_eq!(retried, pb::CommandResult { replayed: true, ..accepted.clone() });
    assert_eq!(get(&a, &ra).await, before);

    // The stream moves on; a late retry still gets the original answer, not a refusal.
    a.clone().add_contact(add_contact_request(&rid(), &ra, contact("Tom", "tom@contoso.example", ""))).await.unwrap();
    let late = a.clone().accept_referral(accept).await.unwrap().into_inner();
    assert_eq!(late, pb::CommandResult { replayed: true, ..accepted });
    assert_eq!(get(&a, &ra).await.stream_revision, 2);

    // Retrying a command that closed the referral is not refused as "closed".
    let decline = decline_request("decline-1", &rb, pb::ReasonCode::TimelineTooShort, "");
    let declined = b.clone().decline_referral(decline.clone()).await.unwrap().into_inner();
    let retried = b.clone().decline_referral(decline).await.unwrap().into_inner();
    assert_eq!(retried, pb::CommandResult { replayed: true, ..declined });
    assert_eq!(get(&b, &rb).await.stream_revision, 1);

    // The profile stream too: the registration is not applied a second time.
    let again = intake.clone().register_partner_profile(register).await.unwrap().into_inner();
    assert_eq!(again, pb::CommandResult { replayed: true, ..first });
}

async fn racing_accepts_and_declines_leave_exactly_one_decision(backend: EventBackend) {
    let world = World::start(backend).await;
    let id = world.submit("rfi-race", &[A]).await.remove(0);

    const RACERS: usize = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::with_capacity(RACERS);
    for i in 0..RACERS {
        // One connection per racer, so the calls really arrive together.
        let mut client = world.client(Role::Partner, Some(A)).await;
        let barrier = barrier.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let accept = i % 2 == 0;
            let result = if accept {
                client.accept_referral(accept_request(&format!("accept-{i}"), &id)).await
            } else {
                let request = decline_request(&format!("decline-{i}"), &id, pb::ReasonCode::BudgetNotAdequate, "");
                client.decline_referral(request).await
            };
            (accept, result.map(Response::into_inner))
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (accept, result) = task.await.expect("racer");
        match result {
            Ok(written) => winners.push((accept, written)),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "loser refused with {:?}", status.message());
                assert!(status.message().contains(&id), "refusal names the referral: {:?}", status.message());
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one decision wins: {winners:?}");
    let (accept_won, written) = &winners[0];
    assert_written(written, &referral_stream(&id), 1, 1);

    let state = get(&world.a, &id).await;
    assert_eq!(state.stream_revision, 1, "one event after the receipt");
    if *accept_won {
        assert_eq!((state.status(), state.substatus()), (pb::Status::Active, pb::Substatus::Accepted));
    } else {
        assert_eq!((state.status(), state.substatus()), (pb::Status::Closed, pb::Substatus::Declined));
    }
}

async fn racing_copies_of_one_request_write_once_and_all_get_its_result(backend: EventBackend) {
    let world = World::start(backend).await;
    let id = world.submit("rfi-copies", &[A]).await.remove(0);

    const COPIES: usize = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(COPIES));
    let mut tasks = Vec::with_capacity(COPIES);
    for _ in 0..COPIES {
        let mut client = world.client(Role::Partner, Some(A)).await;
        let barrier = barrier.clone();
        let request = accept_request("one-accept", &id);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client.accept_referral(request).await.map(Response::into_inner)
        }));
    }
    let mut results = Vec::with_capacity(COPIES);
    for task in tasks {
        results.push(task.await.expect("copy").expect("every copy succeeds"));
    }
    for r in &results {
        assert_eq!((r.stream_revision, r.events_written), (Some(1), 1), "{r:?}");
        assert_eq!(r.position, results[0].position);
    }
    // Copies that raced past the load each appended the same event ids and
    // got the store's original answer, so they cannot all know they were
    // replays; a retry that arrives afterwards does.
    assert!(results.iter().any(|r| !r.replayed), "{results:?}");
    let mut client = world.client(Role::Partner, Some(A)).await;
    let late = client.accept_referral(accept_request("one-accept", &id)).await.expect("late retry").into_inner();
    assert!(late.replayed, "{late:?}");
    assert_eq!((late.stream_revision, late.position), (results[0].stream_revision, results[0].position));
    assert_eq!(get(&world.a, &id).await.stream_revision, 1);
}

async fn reusing_a_request_id_for_a_different_command_is_refused(backend: EventBackend) {
    let world = World::start(backend).await;
    let id = world.submit("rfi-reuse-kind", &[A]).await.remove(0);
    let mut client = world.client(Role::Partner, Some(A)).await;
    client.accept_referral(accept_request("reused-id", &id)).await.expect("accept");
    let decline =
        client.decline_referral(decline_request("reused-id", &id, pb::ReasonCode::TimelineTooShort, "")).await;
    refused(decline, Code::InvalidArgument, &["already used for a different command"]);
    assert_eq!(get(&world.a, &id).await.stream_revision, 1);
}

async fn calls_without_a_valid_token_are_unauthenticated(backend: EventBackend) {
    let world = World::start(backend).await;
    let id = world.submit("rfi-auth", &[A]).await.remove(0);
    let headers: [(Option<&str>, &str); 5] = [
        (None, "missing authorization metadata"),
        (Some("Bearer rfe_00000000000000000000000000000000"), "unknown token"),
        (Some("Bearer "), "unknown token"),
        (Some("Basic dXNlcjpwYXNz"), "must be 'Bearer <token>'"),
        (Some("rfe_00000000000000000000000000000000"), "must be 'Bearer <token>'"),
    ];
    for (header, says) in headers {
        let mut client = world.server.client_with_header(header.map(str::to_string)).await;
        let get = client.get_referral(pb::GetReferralRequest { referral_id: id.clone() }).await;
        refused(get, Code::Unauthenticated, &[says]);
        let accept = client.accept_referral(accept_request(&rid(), &id)).await;
        refused(accept, Code::Unauthenticated, &[says]);
        let submit = client.submit_rfi(rfi_request(&rid(), "rfi-unauth", &[A])).await;
        refused(submit, Code::Unauthenticated, &[says]);
    }
    assert_eq!(get(&world.a, &id).await.stream_revision, 0);
}

async fn a_role_that_may_not_issue_a_command_is_denied(backend: EventBackend) {
    let world = World::start(backend).await;
    let id = world.submit("rfi-roles", &[A]).await.remove(0);
    let analyst = world.client(Role::Analyst, None).await;

    let submit = analyst.clone().submit_rfi(rfi_request(&rid(), "rfi-analyst", &[A])).await;
    refused(submit, Code::PermissionDenied, &["submitting an RFI", "intake or operator", "analyst role"]);
    let submit = world.a.clone().submit_rfi(rfi_request(&rid(), "rfi-partner", &[A])).await;
    refused(submit, Code::PermissionDenied, &["submitting an RFI", "partner role"]);
    let register = world.a.clone().register_partner_profile(profile_request(&rid(), A, "apac")).await;
    refused(register, Code::PermissionDenied, &["registering a partner profile", "partner role"]);
    let accept = world.intake.clone().accept_referral(accept_request(&rid(), &id)).await;
    refused(accept, Code::PermissionDenied, &["accepting a referral", "partner or operator", "intake role"]);
    let decline = decline_request(&rid(), &id, pb::ReasonCode::NotARealCustomer, "");
    let decline = analyst.clone().decline_referral(decline).await;
    refused(decline, Code::PermissionDenied, &["declining a referral", "analyst role"]);

    // Reading is open to every role.
    assert_eq!(get(&analyst, &id).await.stream_revision, 0);
    assert_eq!(get(&world.intake, &id).await.stream_revision, 0);

    // An operator may act on any partner's referral.
    let operator = world.client(Role::Operator, None).await;
    let accepted = operator.clone().accept_referral(accept_request(&rid(), &id)).await.unwrap().into_inner();
    assert_written(&accepted, &referral_stream(&id), 1, 1);
}

async fn invalid_fields_are_named_in_a_bad_request_detail(backend: EventBackend) {
    let world = World::start(backend).await;
    let ids = world.submit("rfi-invalid", &[A, B]).await;
    let (id, active) = (ids[0].clone(), ids[1].clone());
    world.accepted(&world.b, &active).await;
    let a = || world.a.clone();
    let b = || world.b.clone();

    let mut r = accept_request("", &id);
    invalid_field(a().accept_referral(r.clone()).await, "request_id", "required");
    r.request_id = rid();

    let mut bad = r.clone();
    bad.estimated_value = Some(money("EURO", 100, 0));
    invalid_field(a().accept_referral(bad).await, "estimated_value", "ISO 4217");
    let mut bad = r.clone();
    bad.estimated_value = Some(money("EUR", 0, 0));
    invalid_field(a().accept_referral(bad).await, "estimated_value", "greater than zero");
    let mut bad = r.clone();
    bad.estimated_value = Some(money("EUR", -5, 0));
    invalid_field(a().accept_referral(bad).await, "estimated_value", "greater than zero");
    let mut bad = r.clone();
    bad.estimated_value = Some(money("JPY", 1000, 500_000_000));
    invalid_field(a().accept_referral(bad).await, "estimated_value", "decimal places");
    let mut bad = r.clone();
    bad.estimated_value = None;
    invalid_field(a().accept_referral(bad).await, "estimated_value", "required");
    let mut bad = r.clone();
    bad.estimated_purchase_date = Some(date(2026, 11, 23));
    invalid_field(a().accept_referral(bad).await, "estimated_purchase_date", "in the past");
    let mut bad = r.clone();
    bad.estimated_purchase_date = Some(date(2027, 2, 30));
    invalid_field(a().accept_referral(bad).await, "estimated_purchase_date", "not a calendar date");
    let mut bad = r.clone();
    bad.contacts = vec![contact("Lena", "lena-at-contoso", "")];
    invalid_field(a().accept_referral(bad).await, "contacts[0].email", "not an e-mail address");

    // Every wrong field is listed at once.
    let mut bad = r.clone();
    bad.estimated_value = Some(money("XXY", 1, 0));
    bad.estimated_purchase_date = Some(date(2020, 1, 1));
    bad.notes = String::new();
    let status = refused(a().accept_referral(bad).await, Code::InvalidArgument, &[]);
    let fields: Vec<String> =
        status.get_details_bad_request().expect("BadRequest").field_violations.into_iter().map(|v| v.field).collect();
    for field in ["estimated_value", "estimated_purchase_date", "notes"] {
        assert!(fields.iter().any(|f| f == field), "{field} missing from {fields:?}");
        assert!(status.message().contains(field), "{field} missing from {:?}", status.message());
    }

    let other = decline_request(&rid(), &id, pb::ReasonCode::Other, "");
    invalid_field(a().decline_referral(other).await, "notes", "other");
    let unspecified = decline_request(&rid(), &id, pb::ReasonCode::Unspecified, "");
    invalid_field(a().decline_referral(unspecified).await, "reason", "required");

    let bad_email = add_contact_request(&rid(), &active, contact("Tom", "tom@", ""));
    invalid_field(b().add_contact(bad_email).await, "contact.email", "not an e-mail address");
    let bad_phone = add_contact_request(&rid(), &active, contact("Tom", "tom@northwind.example", "call me"));
    invalid_field(b().add_contact(bad_phone).await, "contact.phone", "not a phone number");
    let no_contact = pb::AddContactRequest { request_id: rid(), referral_id: active.clone(), contact: None };
    invalid_field(b().add_contact(no_contact).await, "contact", "required");
    let nothing = pb::UpdateEngagementRequest { request_id: rid(), referral_id: active.clone(), ..Default::default() };
    let status = refused(b().update_engagement(nothing).await, Code::InvalidArgument, &["no field to change"]);
    assert!(status.get_details_bad_request().is_some(), "an empty edit carries a BadRequest detail");
    let mut future = won_request(&rid(), &active);
    future.closed_on = Some(date(2026, 11, 25));
    invalid_field(b().mark_won(future).await, "closed_on", "in the future");

    let bad_id = accept_request(&rid(), "not-a-uuid");
    invalid_field(a().accept_referral(bad_id).await, "referral_id", "not a UUID");
    let get_bad = a().get_referral(pb::GetReferralRequest { referral_id: "r-42".into() }).await;
    invalid_field(get_bad, "referral_id", "not a UUID");

    let intake = || world.intake.clone();
    invalid_field(intake().submit_rfi(rfi_request("", "rfi-x", &[A])).await, "request_id", "required");
    let mut rfi = rfi_request(&rid(), "rfi-x", &[A]);
    rfi.customer.as_mut().unwrap().contact.as_mut().unwrap().email = "jonas(at)fabrikam".into();
    invalid_field(intake().submit_rfi(rfi).await, "customer.contact.email", "not an e-mail address");
    let mut rfi = rfi_request(&rid(), "rfi-x", &[A]);
    rfi.consent = Some(pb::Consent { contact: true, share_details: false });
    invalid_field(intake().submit_rfi(rfi).await, "consent.share_details", "consent");
    let mut rfi = rfi_request(&rid(), "rfi-x", &[A]);
    rfi.received_at = Some(ts(test_epoch() + Duration::hours(1)));
    invalid_field(intake().submit_rfi(rfi).await, "received_at", "in the future");
    invalid_field(intake().submit_rfi(rfi_request(&rid(), "rfi-x", &[])).await, "targets", "at least one");
    invalid_field(intake().submit_rfi(rfi_request(&rid(), "rfi-x", &[A, A])).await, "targets[1]", "twice");
    let mut profile = profile_request(&rid(), "Not Valid!", "apac");
    invalid_field(intake().register_partner_profile(profile.clone()).await, "partner_id", "");
    profile.partner_id = A.into();
    profile.locations[0].contacts[0].email = "ines".into();
    invalid_field(intake().register_partner_profile(profile).await, "locations[0].contacts[0].email", "e-mail");

    // Refused requests wrote nothing.
    assert_eq!(get(&world.a, &id).await.stream_revision, 0);
    assert_eq!(get(&world.b, &active).await.stream_revision, 1);
}

async fn an_unknown_referral_is_not_found(backend: EventBackend) {
    let world = World::start(backend).await;
    let unknown = rid();
    let get = world.a.clone().get_referral(pb::GetReferralRequest { referral_id: unknown.clone() }).await;
    refused(get, Code::NotFound, &[&unknown, "does not exist"]);
    let accept = world.a.clone().accept_referral(accept_request(&rid(), &unknown)).await;
    refused(accept, Code::NotFound, &[&unknown, "does not exist"]);
    let decline = decline_request(&rid(), &unknown, pb::ReasonCode::BudgetNotAdequate, "");
    refused(world.a.clone().decline_referral(decline).await, Code::NotFound, &[&unknown]);
    let add = add_contact_request(&rid(), &unknown, contact("Tom", "tom@contoso.example", ""));
    refused(world.a.clone().add_contact(add).await, Code::NotFound, &[&unknown]);
    refused(world.a.clone().mark_won(won_request(&rid(), &unknown)).await, Code::NotFound, &[&unknown]);
}

async fn an_rfi_to_a_partner_that_cannot_take_it_is_refused_whole(backend: EventBackend) {
    let world = World::start(backend).await;
    let intake = || world.intake.clone();

    // A partner without any profile: refused as a precondition, and the valid
    // target gets no referral either.
    let rfi = rfi_request(&rid(), "rfi-ghost", &[A, "ghost"]);
    refused(
        intake().submit_rfi(rfi).await,
        Code::FailedPrecondition,
        &["targets[1]", "ghost", "no registered business profile"],
    );
    let would_be = ReferralId::for_rfi(
        &RfiId::parse("rfi-ghost").unwrap(),
        &PartnerId::parse(A).unwrap(),
        &RegionId::parse("emea").unwrap(),
    )
    .to_string();
    let get = world.a.clone().get_referral(pb::GetReferralRequest { referral_id: would_be.clone() }).await;
    refused(get, Code::NotFound, &[&would_be]);

    let mut rfi = rfi_request(&rid(), "rfi-apac", &[A]);
    rfi.targets[0].region = "apac".into();
    refused(intake().submit_rfi(rfi).await, Code::FailedPrecondition, &["contoso", "no profile for region apac"]);

    let mut rfi = rfi_request(&rid(), "rfi-munich", &[A]);
    rfi.targets[0].location = "munich".into();
    refused(intake().submit_rfi(rfi).await, Code::FailedPrecondition, &["location munich", "berlin"]);

    let pause = pb::SetPartnerProfileStatusRequest { request_id: rid(), partner_id: B.into(), region: "emea".into() };
    let paused = intake().pause_partner_profile(pause).await.unwrap().into_inner();
    assert_written(&paused, "partner-northwind", 1, 1);
    let rfi = rfi_request(&rid(), "rfi-paused", &[A, B]);
    refused(intake().submit_rfi(rfi.clone()).await, Code::FailedPrecondition, &["northwind", "paused"]);

    // Resumed, the same request goes through.
    let resume = pb::SetPartnerProfileStatusRequest { request_id: rid(), partner_id: B.into(), region: "emea".into() };
    intake().resume_partner_profile(resume).await.unwrap();
    let submitted = intake().submit_rfi(rfi).await.unwrap().into_inner();
    assert_eq!(submitted.referrals.len(), 2);

    // The same RFI under a new request id is a second submission of existing referrals.
    let again = rfi_request(&rid(), "rfi-paused", &[A]);
    refused(intake().submit_rfi(again).await, Code::AlreadyExists, &["already exists", "rfi-paused"]);
}

async fn registering_a_region_twice_already_exists(backend: EventBackend) {
    let world = World::start(backend).await;
    let again = world.intake.clone().register_partner_profile(profile_request(&rid(), A, "emea")).await;
    refused(again, Code::AlreadyExists, &["contoso", "already has a profile for region emea"]);
    // Another region is a profile of its own.
    let apac = world.intake.clone().register_partner_profile(profile_request(&rid(), A, "apac")).await.unwrap();
    assert_written(&apac.into_inner(), "partner-contoso", 1, 1);
}

async fn moves_not_allowed_in_the_current_state_fail_their_precondition(backend: EventBackend) {
    let world = World::start(backend).await;
    let ids = world.submit("rfi-states", &[A, B]).await;
    let (won, declined) = (ids[0].clone(), ids[1].clone());
    let a = || world.a.clone();
    let b = || world.b.clone();

    let add = add_contact_request(&rid(), &won, contact("Tom", "tom@contoso.example", ""));
    refused(a().add_contact(add).await, Code::FailedPrecondition, &[&won, "New (Received)", "adding a contact"]);
    refused(a().mark_won(won_request(&rid(), &won)).await, Code::FailedPrecondition, &["New (Received)"]);

    world.accepted(&world.a, &won).await;
    let twice = a().accept_referral(accept_request(&rid(), &won)).await;
    refused(twice, Code::FailedPrecondition, &[&won, "Active (Accepted)", "accepting it is not allowed"]);
    let decline = decline_request(&rid(), &won, pb::ReasonCode::BudgetNotAdequate, "");
    refused(a().decline_referral(decline).await, Code::FailedPrecondition, &["Active (Accepted)", "declining it"]);

    // The same contact twice is a conflict with what exists, not a state problem.
    let tom = contact("Tom", "tom@contoso.example", "");
    a().add_contact(add_contact_request(&rid(), &won, tom.clone())).await.unwrap();
    let dup = a().add_contact(add_contact_request(&rid(), &won, tom)).await;
    refused(dup, Code::AlreadyExists, &["tom@contoso.example", "already a contact"]);

    a().mark_won(won_request(&rid(), &won)).await.unwrap();
    let before = get(&world.a, &won).await;
    let closed = ["is closed (Won)", "no further changes are allowed"];
    refused(a().accept_referral(accept_request(&rid(), &won)).await, Code::FailedPrecondition, &closed);
    let decline = decline_request(&rid(), &won, pb::ReasonCode::BudgetNotAdequate, "");
    refused(a().decline_referral(decline).await, Code::FailedPrecondition, &closed);
    let add = add_contact_request(&rid(), &won, contact("Ana", "ana@contoso.example", ""));
    refused(a().add_contact(add).await, Code::FailedPrecondition, &closed);
    refused(a().update_engagement(notes_update(&rid(), &won, "More.")).await, Code::FailedPrecondition, &closed);
    refused(a().mark_won(won_request(&rid(), &won)).await, Code::FailedPrecondition, &closed);
    refused(a().mark_lost(lost_request(&rid(), &won)).await, Code::FailedPrecondition, &closed);
    assert_eq!(get(&world.a, &won).await, before);

    let decline = decline_request(&rid(), &declined, pb::ReasonCode::CustomerRequirementNotMet, "");
    b().decline_referral(decline).await.unwrap();
    let late = b().accept_referral(accept_request(&rid(), &declined)).await;
    refused(late, Code::FailedPrecondition, &[&declined, "is closed (Declined)"]);
    assert_eq!(get(&world.b, &declined).await.stream_revision, 1);
}

async fn after_fourteen_days_a_new_referral_can_no_longer_be_answered(backend: EventBackend) {
    let world = World::start(backend).await;
    let ids = world.submit("rfi-expiry", &[A, B]).await;
    let (late, in_time) = (ids[0].clone(), ids[1].clone());

    world.server.clock.advance(Duration::days(14) - Duration::minutes(1));
    let decline = decline_request(&rid(), &in_time, pb::ReasonCode::TimelineTooShort, "");
    world.b.clone().decline_referral(decline).await.expect("a minute before expiry a decline is still taken");

    world.server.clock.advance(Duration::minutes(1));
    let state = get(&world.a, &late).await;
    if state.status() == pb::Status::New {
        assert!(state.overdue);
        assert_eq!(state.contact_alert(), pb::ContactAlert::Aging);
    }
    // The server's expiry scheduler may expire it at any moment now: the
    // answer is refused either way, as too late or as closed (Expired).
    let too_late = |result: Result<Response<pb::CommandResult>, Status>, verb: &str| {
        let status = result.expect_err("an answer after 14 days is refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let message = status.message();
        assert!(message.contains(&late), "{message}");
        assert!(
            message.contains(&format!("{verb} it is no longer allowed")) || message.contains("closed (Expired)"),
            "{message}"
        );
    };
    too_late(world.a.clone().accept_referral(accept_request(&rid(), &late)).await, "accepting");
    let decline = decline_request(&rid(), &late, pb::ReasonCode::TimelineTooShort, "");
    too_late(world.a.clone().decline_referral(decline).await, "declining");
    let after = get(&world.a, &late).await;
    assert!(matches!(after.substatus(), pb::Substatus::Received | pb::Substatus::Expired), "{after:?}");
    assert!(after.stream_revision <= 1, "nothing but the expiry was written: {after:?}");
}

async fn a_partner_cannot_touch_another_partners_referral(backend: EventBackend) {
    let world = World::start(backend).await;
    let ids = world.submit("rfi-cross", &[A]).await;
    let id = ids[0].clone();
    let b = || world.b.clone();
    let theirs = ["belongs to another partner", "northwind"];

    let get_b = b().get_referral(pb::GetReferralRequest { referral_id: id.clone() }).await;
    refused(get_b, Code::PermissionDenied, &theirs);
    refused(b().accept_referral(accept_request(&rid(), &id)).await, Code::PermissionDenied, &theirs);
    let decline = decline_request(&rid(), &id, pb::ReasonCode::NotARealCustomer, "");
    refused(b().decline_referral(decline).await, Code::PermissionDenied, &theirs);
    assert_eq!(get(&world.a, &id).await.stream_revision, 0);

    world.accepted(&world.a, &id).await;
    let before = get(&world.a, &id).await;
    let add = add_contact_request(&rid(), &id, contact("Mallory", "mallory@northwind.example", ""));
    refused(b().add_contact(add).await, Code::PermissionDenied, &theirs);
    refused(b().update_engagement(notes_update(&rid(), &id, "Ours now.")).await, Code::PermissionDenied, &theirs);
    refused(b().mark_won(won_request(&rid(), &id)).await, Code::PermissionDenied, &theirs);
    refused(b().mark_lost(lost_request(&rid(), &id)).await, Code::PermissionDenied, &theirs);
    assert_eq!(get(&world.a, &id).await, before);
    assert_eq!((before.status(), before.stream_revision), (pb::Status::Active, 1));
}

async fn reusing_another_partners_request_id_is_still_denied(backend: EventBackend) {
    let world = World::start(backend).await;
    let id = world.submit("rfi-reuse", &[A]).await.remove(0);
    let accept = accept_request("contoso-accept-1", &id);
    world.a.clone().accept_referral(accept.clone()).await.unwrap();

    let state = get(&world.a, &id).await;

    let replay = world.b.clone().accept_referral(accept).await;
    refused(replay, Code::PermissionDenied, &["belongs to another partner"]);
    let decline = decline_request("contoso-accept-1", &id, pb::ReasonCode::NotARealCustomer, "");
    refused(world.b.clone().decline_referral(decline).await, Code::PermissionDenied, &["belongs to another partner"]);
    assert_eq!(get(&world.a, &id).await, state);
}

async fn health_and_reflection_are_served(backend: EventBackend) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = TestServer::start_on(backend).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "referrals.v1.ReferralCommands"] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await.expect("health check");
        assert_eq!(answer.into_inner().status(), ServingStatus::Serving, "health of {service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "referrals.v1.Nope".into() }).await;
    refused(unknown, Code::NotFound, &[]);

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let ask = |request| ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("referrals.v1.ReferralCommands".into())),
    ];
    let mut answers =
        reflection.server_reflection_info(futures::stream::iter(requests)).await.expect("reflection").into_inner();
    let listed = answers.message().await.expect("list answer").expect("a list answer");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in ["referrals.v1.ReferralCommands", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == name), "{name} not listed in {names:?}");
    }
    let file = answers.message().await.expect("file answer").expect("a file answer");
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        panic!("expected file descriptors, got {file:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

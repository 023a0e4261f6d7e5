//! Two engine instances on one event store: each caches the streams it
//! touched, so each sees the other's writes late. Their decisions must still
//! be the ones a fresh read would give.

use std::sync::Arc;
use std::time::Duration;

use referral_commands::{Actor, CommandHandler, ManualClock, Role};
use referral_domain::eventlog::EventStore;
use referral_domain::ids::PartnerId;
use referral_infra::grpc::commands_service::CommandsService;
use referral_infra::grpc::pb;
use referral_infra::grpc::pb::referral_commands_server::ReferralCommands;
use referral_infra::store::InMemoryEventStore;
use referral_tests::{accept_request, profile_request, rfi_request, test_epoch};
use tonic::{Code, Request};

const PARTNER: &str = "contoso";

struct Instances {
    one: CommandsService,
    two: CommandsService,
    intake: Actor,
    partner: Actor,
}

fn instances() -> Instances {
    instances_with(referral_commands::handler::DEFAULT_PROFILE_MAX_AGE)
}

/// Two instances that trust a cached partner profile for `profile_max_age`.
fn instances_with(profile_max_age: Duration) -> Instances {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let clock = Arc::new(ManualClock::new(test_epoch()));
    let instance = || {
        let handler = CommandHandler::new(store.clone(), clock.clone()).with_profile_max_age(profile_max_age);
        CommandsService::new(handler)
    };
    Instances {
        one: instance(),
        two: instance(),
        intake: Actor { role: Role::Intake, partner: None, name: "intake".into() },
        partner: Actor {
            role: Role::Partner,
            partner: Some(PartnerId::parse(PARTNER).expect("partner id")),
            name: "contoso".into(),
        },
    }
}

fn as_actor<T>(message: T, actor: &Actor) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(actor.clone());
    request
}

fn decline(request_id: &str, referral_id: &str) -> pb::DeclineReferralRequest {
    pb::DeclineReferralRequest {
        request_id: request_id.into(),
        referral_id: referral_id.into(),
        reason: pb::ReasonCode::TimelineTooShort as i32,
        notes: String::new(),
    }
}

/// Registers the profile through `one` and submits an RFI through it, so
/// `one` has the referral cached as New.
async fn new_referral(i: &Instances, rfi: &str) -> String {
    i.one.register_partner_profile(as_actor(profile_request("p-1", PARTNER, "emea"), &i.intake)).await.ok();
    let submitted = i
        .one
        .submit_rfi(as_actor(rfi_request(&format!("{rfi}-submit"), rfi, &[PARTNER]), &i.intake))
        .await
        .expect("submit")
        .into_inner();
    let id = submitted.referrals[0].referral_id.clone();
    let seen = i.one.get_referral(as_actor(pb::GetReferralRequest { referral_id: id.clone() }, &i.partner)).await;
    assert_eq!(seen.expect("get").into_inner().stream_revision, 0);
    id
}

#[tokio::test]
async fn a_decision_on_a_stale_cache_loses_to_the_write_it_did_not_see() {
    let i = instances();
    let id = new_referral(&i, "rfi-stale-1").await;
    i.two.decline_referral(as_actor(decline("d-1", &id), &i.partner)).await.expect("decline on two");

    let accept = i.one.accept_referral(as_actor(accept_request("a-1", &id), &i.partner)).await;
    let status = accept.expect_err("one's cache says New, the stream says Declined");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("closed (Declined)"), "{}", status.message());
}

#[tokio::test]
async fn a_refusal_on_a_stale_cache_is_rechecked_on_a_fresh_read() {
    let i = instances();
    let id = new_referral(&i, "rfi-stale-2").await;
    i.two.accept_referral(as_actor(accept_request("a-2", &id), &i.partner)).await.expect("accept on two");

    // One's cache says New, where adding a contact is refused; the stream says Active.
    let contact = pb::AddContactRequest {
        request_id: "c-2".into(),
        referral_id: id.clone(),
        contact: Some(pb::Contact { name: "Mia Schulz".into(), email: "mia@example.com".into(), phone: String::new() }),
    };
    let written = i.one.add_contact(as_actor(contact, &i.partner)).await.expect("allowed on a fresh read").into_inner();
    assert_eq!((written.stream_revision, written.events_written), (Some(2), 1));
}

#[tokio::test]
async fn a_retry_through_the_other_instance_writes_nothing() {
    let i = instances();
    let id = new_referral(&i, "rfi-stale-3").await;
    let first = i.two.accept_referral(as_actor(accept_request("a-3", &id), &i.partner)).await.expect("accept");
    let retry = i.one.accept_referral(as_actor(accept_request("a-3", &id), &i.partner)).await.expect("retry");
    let (first, retry) = (first.into_inner(), retry.into_inner());
    // One decided on its cached (New) state and re-appended the same event
    // ids; the store answered with the original result and wrote nothing.
    assert_eq!((retry.stream_revision, retry.position), (first.stream_revision, first.position));
    let now = i.two.get_referral(as_actor(pb::GetReferralRequest { referral_id: id.clone() }, &i.partner)).await;
    assert_eq!(now.expect("get").into_inner().stream_revision, 1);
}

fn profile_status(request_id: &str) -> pb::SetPartnerProfileStatusRequest {
    pb::SetPartnerProfileStatusRequest {
        request_id: request_id.into(),
        partner_id: PARTNER.into(),
        region: "emea".into(),
    }
}

async fn submit(service: &CommandsService, intake: &Actor, rfi: &str) -> Result<pb::SubmitRfiResponse, tonic::Status> {
    let request = rfi_request(&format!("{rfi}-submit"), rfi, &[PARTNER]);
    service.submit_rfi(as_actor(request, intake)).await.map(tonic::Response::into_inner)
}

fn assert_paused(refused: Result<pb::SubmitRfiResponse, tonic::Status>) {
    let status = refused.expect_err("the profile is paused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("paused"), "{}", status.message());
}

#[tokio::test]
async fn a_profile_paused_through_this_instance_refuses_its_next_rfi_at_once() {
    let i = instances();
    new_referral(&i, "rfi-profile-1").await;
    i.one.pause_partner_profile(as_actor(profile_status("pause-1"), &i.intake)).await.expect("pause");
    // One's cached profile was extended by its own pause.
    assert_paused(submit(&i.one, &i.intake, "rfi-profile-1b").await);
}

#[tokio::test]
async fn a_profile_paused_through_another_instance_is_seen_once_the_cached_copy_is_too_old() {
    let i = instances_with(Duration::from_millis(100));
    new_referral(&i, "rfi-profile-2").await;
    i.two.pause_partner_profile(as_actor(profile_status("pause-2"), &i.intake)).await.expect("pause on two");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_paused(submit(&i.one, &i.intake, "rfi-profile-2b").await);
}

#[tokio::test]
async fn with_no_profile_age_allowed_every_rfi_reads_the_profile() {
    let i = instances_with(Duration::ZERO);
    new_referral(&i, "rfi-profile-3").await;
    i.two.pause_partner_profile(as_actor(profile_status("pause-3"), &i.intake)).await.expect("pause on two");
    assert_paused(submit(&i.one, &i.intake, "rfi-profile-3b").await);
}

#[tokio::test]
async fn an_rfi_refused_on_a_cached_profile_is_rechecked_on_a_fresh_read() {
    let i = instances();
    new_referral(&i, "rfi-profile-4").await;
    i.one.pause_partner_profile(as_actor(profile_status("pause-4"), &i.intake)).await.expect("pause on one");
    i.two.resume_partner_profile(as_actor(profile_status("resume-4"), &i.intake)).await.expect("resume on two");
    // One's cache says paused; the stream says active.
    let submitted = submit(&i.one, &i.intake, "rfi-profile-4b").await.expect("allowed on a fresh read");
    assert_eq!(submitted.referrals.len(), 1);
}

#[tokio::test]
async fn a_one_target_rfi_retried_through_the_other_instance_writes_nothing() {
    let i = instances();
    let id = new_referral(&i, "rfi-retry-1").await;
    let first = submit(&i.one, &i.intake, "rfi-retry-1").await;
    let retry = submit(&i.two, &i.intake, "rfi-retry-1").await.expect("retry on two");
    let (first, retry) = (first.expect("retry on one"), retry);
    assert_eq!(retry.referrals[0].referral_id, id);
    let (f, r) =
        (first.referrals[0].result.clone().expect("result"), retry.referrals[0].result.clone().expect("result"));
    assert_eq!((r.stream_revision, r.position, r.events_written), (f.stream_revision, f.position, f.events_written));
    let now = i.two.get_referral(as_actor(pb::GetReferralRequest { referral_id: id }, &i.partner)).await;
    assert_eq!(now.expect("get").into_inner().stream_revision, 0);
}

#[tokio::test]
async fn a_one_target_rfi_sent_again_under_another_request_id_already_exists() {
    let i = instances();
    let id = new_referral(&i, "rfi-again-1").await;
    for service in [&i.one, &i.two] {
        let again = rfi_request("another-request", "rfi-again-1", &[PARTNER]);
        let status = service.submit_rfi(as_actor(again, &i.intake)).await.expect_err("the referral exists");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
    let now = i.one.get_referral(as_actor(pb::GetReferralRequest { referral_id: id }, &i.partner)).await;
    assert_eq!(now.expect("get").into_inner().stream_revision, 0);
}

//! Random command sequences against a referral and a partner profile: decide,
//! then evolve, as a command handler would, checking the invariants after
//! every step against a small model of the rules.

mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use referral_domain::clock::Now;
use referral_domain::error::DomainError;
use referral_domain::ids::RegionId;
use referral_domain::profile::{self, PartnerCommand, PartnerEvent, PartnerState, ProfileChanges};
use referral_domain::referral::{self, ReferralCommand, ReferralEvent, ReferralState, Status, UpdateEngagement};
use referral_domain::values::{ReasonCode, MAX_REFERRAL_CONTACTS};
use support::*;

/// How a decision came out, without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Invalid,
    NotFound,
    Exists,
    Closed,
    NotAllowed,
    Precondition,
}

fn kind<T>(result: &Result<T, DomainError>) -> Kind {
    match result {
        Ok(_) => Kind::Ok,
        Err(DomainError::Invalid(_)) => Kind::Invalid,
        Err(DomainError::ReferralNotFound(_) | DomainError::PartnerNotFound(_)) => Kind::NotFound,
        Err(DomainError::AlreadyExists(_)) => Kind::Exists,
        Err(DomainError::Closed { .. }) => Kind::Closed,
        Err(DomainError::NotAllowed { .. }) => Kind::NotAllowed,
        Err(DomainError::Precondition(_)) => Kind::Precondition,
    }
}

/// A recorded event with its stream revision.
struct Recorded<E> {
    revision: u64,
    event: E,
}

fn append<E>(stream: &mut Vec<Recorded<E>>, event: E) {
    let revision = stream.len() as u64;
    stream.push(Recorded { revision, event });
}

fn assert_contiguous<E>(stream: &[Recorded<E>], emitted: usize) {
    assert_eq!(stream.len(), emitted);
    for (i, r) in stream.iter().enumerate() {
        assert_eq!(r.revision, i as u64);
    }
}

// ---------------------------------------------------------------------------
// Referral
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Receive,
    Accept {
        valid: bool,
    },
    Decline {
        reason: Option<ReasonCode>,
        notes: bool,
    },
    Expire,
    AddContact {
        who: u8,
        valid: bool,
    },
    /// `None` names no field to change.
    Update {
        name: Option<u8>,
    },
    /// Close date this many days before today; negative is in the future.
    Won {
        days_ago: i64,
    },
    Lost {
        reason: Option<ReasonCode>,
        notes: bool,
    },
}

fn reason() -> impl Strategy<Value = Option<ReasonCode>> {
    prop_oneof![1 => Just(None), 8 => prop::sample::select(ReasonCode::ALL.to_vec()).prop_map(Some)]
}

fn step() -> impl Strategy<Value = Step> {
    let mostly = || prop::bool::weighted(0.85);
    prop_oneof![
        1 => Just(Step::Receive),
        2 => mostly().prop_map(|valid| Step::Accept { valid }),
        1 => (reason(), any::<bool>()).prop_map(|(reason, notes)| Step::Decline { reason, notes }),
        2 => Just(Step::Expire),
        5 => (0u8..24, mostly()).prop_map(|(who, valid)| Step::AddContact { who, valid }),
        4 => prop::option::weighted(0.85, 0u8..4).prop_map(|name| Step::Update { name }),
        1 => (-2i64..8).prop_map(|days_ago| Step::Won { days_ago }),
        1 => (reason(), any::<bool>()).prop_map(|(reason, notes)| Step::Lost { reason, notes }),
    ]
}

/// Minutes to let pass before a step: often none, sometimes days.
fn pause_minutes() -> impl Strategy<Value = i64> {
    prop_oneof![2 => Just(0i64), 2 => 1i64..120, 3 => 0i64..(3 * 24 * 60), 1 => 0i64..(10 * 24 * 60)]
}

fn notes_if(notes: bool) -> &'static str {
    if notes {
        "because"
    } else {
        ""
    }
}

fn email(who: u8) -> String {
    format!("p{who}@contoso.example")
}

fn command(step: &Step, now: Now) -> ReferralCommand {
    match step {
        Step::Receive => receive_with(|r| r.received_at = now.at()),
        Step::Accept { valid } => accept_with(|a| {
            a.estimated_purchase_date = Some(now.today() + Duration::days(30));
            if !valid {
                a.engagement_name = String::new();
            }
        }),
        Step::Decline { reason, notes } => decline(*reason, notes_if(*notes)),
        Step::Expire => expire(),
        Step::AddContact { who, valid } => {
            add_contact("Partner person", if *valid { email(*who) } else { "nope".into() }.as_str(), "")
        }
        Step::Update { name } => {
            update(UpdateEngagement { name: name.map(|n| format!("Deal {n}")), ..UpdateEngagement::default() })
        }
        Step::Won { days_ago } => mark_won(eur(1_000), Some(now.today() - Duration::days(*days_ago))),
        Step::Lost { reason, notes } => mark_lost(*reason, notes_if(*notes)),
    }
}

fn reason_ok(reason: &Option<ReasonCode>, notes: bool) -> bool {
    match reason {
        None => false,
        Some(ReasonCode::Other) => notes,
        Some(_) => true,
    }
}

/// What the rules say a step should come to.
fn expected(state: &ReferralState, step: &Step, now: Now) -> Kind {
    let Some(r) = &state.0 else {
        return if matches!(step, Step::Receive) { Kind::Ok } else { Kind::NotFound };
    };
    if matches!(step, Step::Receive) {
        return Kind::Exists;
    }
    if r.status.is_closed() {
        return Kind::Closed;
    }
    let new = r.status == Status::New;
    let due = now.at() >= r.expires_at;
    let answer = |valid: bool| match (new, due, valid) {
        (false, _, _) => Kind::NotAllowed,
        (true, true, _) => Kind::Precondition,
        (true, false, true) => Kind::Ok,
        (true, false, false) => Kind::Invalid,
    };
    let work = |valid: bool| match (new, valid) {
        (true, _) => Kind::NotAllowed,
        (false, true) => Kind::Ok,
        (false, false) => Kind::Invalid,
    };
    match step {
        Step::Receive => unreachable!("handled above"),
        Step::Accept { valid } => answer(*valid),
        Step::Decline { reason, notes } => answer(reason_ok(reason, *notes)),
        Step::Expire => match (new, due) {
            (false, _) => Kind::NotAllowed,
            (true, true) => Kind::Ok,
            (true, false) => Kind::Precondition,
        },
        Step::AddContact { who, valid } => {
            if new || !valid {
                work(*valid)
            } else if r.contacts.iter().any(|c| c.email == email(*who)) {
                Kind::Exists
            } else if r.contacts.len() >= MAX_REFERRAL_CONTACTS {
                Kind::Precondition
            } else {
                Kind::Ok
            }
        }
        Step::Update { name } => work(name.is_some()),
        Step::Won { days_ago } => {
            let closed_on = now.today() - Duration::days(*days_ago);
            work(*days_ago >= 0 && closed_on >= r.received_at.date_naive())
        }
        Step::Lost { reason, notes } => work(reason_ok(reason, *notes)),
    }
}

/// Whether the state the event was decided against allowed it.
fn allowed_from(state: &ReferralState, event: &ReferralEvent, now: Now) -> bool {
    let Some(r) = &state.0 else {
        return matches!(event, ReferralEvent::Received(_));
    };
    let before_expiry = now.at() < r.expires_at;
    match event {
        ReferralEvent::Received(_) => false,
        ReferralEvent::Accepted(_) | ReferralEvent::Declined(_) => r.status == Status::New && before_expiry,
        ReferralEvent::Expired(_) => r.status == Status::New && !before_expiry,
        ReferralEvent::ContactAdded(_) | ReferralEvent::Won(_) | ReferralEvent::Lost(_) => r.status == Status::Active,
        ReferralEvent::EngagementUpdated(e) => {
            r.status == Status::Active
                && (e.name.is_some()
                    || e.estimated_value.is_some()
                    || e.estimated_purchase_date.is_some()
                    || e.notes.is_some()
                    || e.crm_id.is_some()
                    || e.campaign_id.is_some())
        }
    }
}

fn status(state: &ReferralState) -> Option<Status> {
    state.0.as_ref().map(|r| r.status)
}

fn run_referral(receive_first: bool, steps: &[(i64, Step)]) -> Result<(), TestCaseError> {
    let mut now: DateTime<Utc> = now().at();
    let mut state = ReferralState::default();
    let mut stream: Vec<Recorded<ReferralEvent>> = Vec::new();
    let mut emitted = 0usize;
    let mut closed_as: Option<ReferralState> = None;
    let first = receive_first.then_some((0, Step::Receive));
    for (minutes, step) in first.iter().chain(steps) {
        now += Duration::minutes(*minutes);
        let at = Now(now);
        let before = state.clone();
        let want = expected(&state, step, at);
        let result = referral::decide(&state, command(step, at), at);
        prop_assert_eq!(&result, &referral::decide(&state, command(step, at), at), "decide is not deterministic");
        prop_assert_eq!(kind(&result), want, "{:?} from {:?} at {}: {:?}", step, status(&state), now, result);
        match result {
            Err(_) => prop_assert_eq!(&state, &before),
            Ok(events) => {
                prop_assert!(!status(&before).is_some_and(|s| s.is_closed()), "a closed referral changed");
                emitted += events.len();
                for event in events {
                    prop_assert!(
                        allowed_from(&state, &event, at),
                        "{:?} from {:?}",
                        event.event_type(),
                        status(&state)
                    );
                    let last = state.0.as_ref().map(|r| r.last_changed_at);
                    state = referral::evolve(state, &event);
                    let changed = state.0.as_ref().map(|r| r.last_changed_at);
                    prop_assert!(last <= changed, "last change went back in time");
                    append(&mut stream, event);
                }
            }
        }
        match &closed_as {
            Some(closed) => prop_assert_eq!(&state, closed, "a closed referral changed"),
            None if status(&state).is_some_and(|s| s.is_closed()) => closed_as = Some(state.clone()),
            None => {}
        }
    }
    assert_contiguous(&stream, emitted);
    let events: Vec<ReferralEvent> = stream.into_iter().map(|r| r.event).collect();
    prop_assert_eq!(fold(&events), state, "replaying the stream gives another state");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn referral_invariants_hold_for_any_command_sequence(
        receive_first in prop::bool::weighted(0.9),
        steps in prop::collection::vec((pause_minutes(), step()), 0..40),
    ) {
        run_referral(receive_first, &steps)?;
    }
}

// ---------------------------------------------------------------------------
// Partner profile
// ---------------------------------------------------------------------------

const REGIONS: [&str; 3] = ["emea", "apac", "latam"];

#[derive(Debug, Clone)]
enum ProfileStep {
    Register(usize),
    Pause(usize),
    Resume(usize),
    Rename(usize, u8),
}

fn profile_step() -> impl Strategy<Value = ProfileStep> {
    let region = || 0..REGIONS.len();
    prop_oneof![
        region().prop_map(ProfileStep::Register),
        region().prop_map(ProfileStep::Pause),
        region().prop_map(ProfileStep::Resume),
        (region(), 0u8..3).prop_map(|(r, n)| ProfileStep::Rename(r, n)),
    ]
}

fn profile_command(step: &ProfileStep) -> PartnerCommand {
    match step {
        ProfileStep::Register(r) => register(profile_input_for(REGIONS[*r])),
        ProfileStep::Pause(r) => pause(REGIONS[*r]),
        ProfileStep::Resume(r) => resume(REGIONS[*r]),
        ProfileStep::Rename(r, n) => update_profile(ProfileChanges {
            region: REGIONS[*r].into(),
            company_name: Some(format!("Contoso {n}")),
            ..ProfileChanges::default()
        }),
    }
}

/// Regions registered so far, and whether each is active.
type Model = BTreeMap<&'static str, bool>;

fn profile_expected(model: &Model, step: &ProfileStep) -> Kind {
    let known = |r: usize| model.get(REGIONS[r]).copied();
    match step {
        ProfileStep::Register(r) => match known(*r) {
            Some(_) => Kind::Exists,
            None => Kind::Ok,
        },
        ProfileStep::Pause(_) | ProfileStep::Resume(_) | ProfileStep::Rename(..) if model.is_empty() => Kind::NotFound,
        ProfileStep::Pause(r) => match known(*r) {
            Some(true) => Kind::Ok,
            _ => Kind::Precondition,
        },
        ProfileStep::Resume(r) => match known(*r) {
            Some(false) => Kind::Ok,
            _ => Kind::Precondition,
        },
        ProfileStep::Rename(r, _) => match known(*r) {
            Some(_) => Kind::Ok,
            None => Kind::Precondition,
        },
    }
}

fn run_profile(steps: &[ProfileStep]) -> Result<(), TestCaseError> {
    let at = now();
    let mut state = PartnerState::default();
    let mut model = Model::new();
    let mut stream: Vec<Recorded<PartnerEvent>> = Vec::new();
    let mut emitted = 0usize;
    for (n, step) in steps.iter().enumerate() {
        let before = state.clone();
        let result = profile::decide(&state, profile_command(step), at);
        prop_assert_eq!(kind(&result), profile_expected(&model, step), "{:?}: {:?}", step, result);
        match result {
            Err(_) => prop_assert_eq!(&state, &before),
            Ok(events) => {
                emitted += events.len();
                for event in events {
                    let region = |r: &RegionId| REGIONS.into_iter().find(|x| *x == r.as_str()).expect("a known region");
                    match &event {
                        PartnerEvent::ProfileRegistered(e) => {
                            prop_assert!(model.insert(region(&e.region), true).is_none(), "registered twice");
                        }
                        PartnerEvent::ProfilePaused(e) => {
                            prop_assert_eq!(
                                model.insert(region(&e.region), false),
                                Some(true),
                                "paused when not active"
                            );
                        }
                        PartnerEvent::ProfileResumed(e) => {
                            prop_assert_eq!(
                                model.insert(region(&e.region), true),
                                Some(false),
                                "resumed when not paused"
                            );
                        }
                        PartnerEvent::ProfileUpdated(e) => {
                            prop_assert!(model.contains_key(region(&e.region)), "updated an unknown region");
                            prop_assert!(e.company_name.is_some(), "an update that changes nothing was recorded");
                        }
                    }
                    state = profile::evolve(state, &event);
                    append(&mut stream, event);
                }
            }
        }
        for name in REGIONS {
            let region = RegionId::parse(name).unwrap();
            let receives = state.check_can_receive(&partner(), &region, None).is_ok();
            prop_assert_eq!(receives, model.get(name) == Some(&true), "region {} after step {}", name, n);
        }
    }
    assert_contiguous(&stream, emitted);
    let events: Vec<PartnerEvent> = stream.into_iter().map(|r| r.event).collect();
    prop_assert_eq!(fold(&events), state, "replaying the stream gives another state");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn profile_invariants_hold_for_any_command_sequence(
        steps in prop::collection::vec(profile_step(), 0..30),
    ) {
        run_profile(&steps)?;
    }
}

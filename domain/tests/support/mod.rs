//! Given/when/then for the deciders: given past events, when a command arrives
//! at a fixed time, then these events (or this refusal). Plus the fixtures the
//! rule tests share. Time is always a fixed `Now`, never the system clock.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::fmt::Debug;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use referral_domain::clock::{ExpiryPolicy, Now};
use referral_domain::error::{DomainError, FieldViolation};
use referral_domain::ids::{LocationId, PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::profile::{
    self, Expertise, ExpertiseInput, Location, LocationInput, PartnerAction, PartnerCommand, PartnerEvent,
    PartnerState, ProfileChanges, ProfileInput, ProfilePaused, ProfileRegistered, ProfileResumed, ProfileStatus,
    ProfileUpdated, RegionProfile,
};
use referral_domain::referral::{
    self, AcceptReferral, Consent, ContactAdded, Customer, CustomerInput, Engagement, MoneyInput, ReceiveReferral,
    Referral, ReferralAccepted, ReferralAction, ReferralCommand, ReferralDeclined, ReferralEvent, ReferralExpired,
    ReferralLost, ReferralReceived, ReferralState, ReferralWon, Requirements, RequirementsInput, Source, Status,
    UpdateEngagement,
};
use referral_domain::values::{Contact, ContactInput, Money, Reason, ReasonCode, SizeBand};

// ---------------------------------------------------------------------------
// given / when / then
// ---------------------------------------------------------------------------

/// A decider, named by its event type so that `given(events)` picks it.
pub trait Decider: Clone + Debug + PartialEq + Sized {
    type State: Clone + Debug + Default + PartialEq;
    type Command;
    fn decide(state: &Self::State, command: Self::Command, now: Now) -> Result<Vec<Self>, DomainError>;
    fn evolve(state: Self::State, event: &Self) -> Self::State;
}

impl Decider for ReferralEvent {
    type State = ReferralState;
    type Command = ReferralCommand;
    fn decide(state: &ReferralState, command: ReferralCommand, now: Now) -> Result<Vec<Self>, DomainError> {
        referral::decide(state, command, now)
    }
    fn evolve(state: ReferralState, event: &Self) -> ReferralState {
        referral::evolve(state, event)
    }
}

impl Decider for PartnerEvent {
    type State = PartnerState;
    type Command = PartnerCommand;
    fn decide(state: &PartnerState, command: PartnerCommand, now: Now) -> Result<Vec<Self>, DomainError> {
        profile::decide(state, command, now)
    }
    fn evolve(state: PartnerState, event: &Self) -> PartnerState {
        profile::evolve(state, event)
    }
}

pub fn fold<E: Decider>(events: &[E]) -> E::State {
    events.iter().fold(E::State::default(), E::evolve)
}

pub struct Given<E: Decider> {
    state: E::State,
}

pub fn given<E: Decider>(events: impl IntoIterator<Item = E>) -> Given<E> {
    let events: Vec<E> = events.into_iter().collect();
    Given { state: fold(&events) }
}

impl<E: Decider> Given<E> {
    pub fn state(&self) -> &E::State {
        &self.state
    }

    pub fn when(self, command: E::Command, now: Now) -> Then<E> {
        let result = E::decide(&self.state, command, now);
        Then { state: self.state, result }
    }
}

pub struct Then<E: Decider> {
    state: E::State,
    result: Result<Vec<E>, DomainError>,
}

impl<E: Decider> Then<E> {
    /// Asserts exactly these events and returns the state they lead to.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = E>) -> E::State {
        let expected: Vec<E> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                events.iter().fold(self.state, E::evolve)
            }
            Err(e) => panic!("expected {expected:#?}\nbut the command was refused: {e}"),
        }
    }

    /// The emitted events, for assertions on their key fields.
    #[track_caller]
    pub fn then_events(self) -> Vec<E> {
        match self.result {
            Ok(events) => events,
            Err(e) => panic!("expected events, but the command was refused: {e}"),
        }
    }

    /// Asserts exactly this refusal.
    #[track_caller]
    pub fn then_err(self, expected: DomainError) {
        assert_eq!(self.result, Err(expected));
    }

    /// Asserts a refusal the predicate accepts and returns it.
    #[track_caller]
    pub fn then_refused(self, check: impl FnOnce(&DomainError) -> bool) -> DomainError {
        match self.result {
            Err(e) if check(&e) => e,
            Err(e) => panic!("refused with an unexpected error: {e:?}"),
            Ok(events) => panic!("expected a refusal, got {events:#?}"),
        }
    }

    /// Asserts an `Invalid` refusal naming exactly these field paths, in order.
    #[track_caller]
    pub fn then_invalid(self, fields: &[&str]) -> Vec<FieldViolation> {
        match self.result {
            Err(DomainError::Invalid(violations)) => {
                let named: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                assert_eq!(named, fields, "violations: {violations:#?}");
                violations
            }
            other => panic!("expected Invalid({fields:?}), got {other:?}"),
        }
    }

    /// Asserts a `Precondition` refusal whose message contains `text`.
    #[track_caller]
    pub fn then_precondition(self, text: &str) -> String {
        match self.result {
            Err(DomainError::Precondition(message)) => {
                assert!(message.contains(text), "{message:?} does not contain {text:?}");
                message
            }
            other => panic!("expected Precondition({text:?}), got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// time
// ---------------------------------------------------------------------------

pub fn ts(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("a valid UTC time")
}

pub fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("a valid date")
}

/// The fixed present of every rule test.
pub fn now() -> Now {
    Now(ts(2026, 11, 24, 9, 0, 0))
}

pub fn at(t: DateTime<Utc>) -> Now {
    Now(t)
}

/// When the sample referral was received: four days before `now()`.
pub fn received_at() -> DateTime<Utc> {
    ts(2026, 11, 20, 9, 0, 0)
}

/// The sample referral's expiry under the default 14-day policy.
pub fn expires_at() -> DateTime<Utc> {
    received_at() + Duration::days(14)
}

// ---------------------------------------------------------------------------
// ids and values
// ---------------------------------------------------------------------------

pub fn partner() -> PartnerId {
    PartnerId::parse("contoso-consulting").unwrap()
}

pub fn region() -> RegionId {
    RegionId::parse("emea").unwrap()
}

pub fn location() -> LocationId {
    LocationId::parse("berlin").unwrap()
}

pub fn rfi() -> RfiId {
    RfiId::parse("rfi-1001").unwrap()
}

pub fn referral_id() -> ReferralId {
    ReferralId::for_rfi(&rfi(), &partner(), &region())
}

pub fn money_in(code: &str, units: i64, nanos: i32) -> MoneyInput {
    MoneyInput { currency_code: code.into(), units, nanos }
}

pub fn eur(units: i64) -> MoneyInput {
    money_in("EUR", units, 0)
}

pub fn money(code: &str, amount: &str) -> Money {
    Money::parse_decimal(code, amount).unwrap()
}

pub fn contact(name: &str, email: &str, phone: Option<&str>) -> Contact {
    Contact { name: name.into(), email: email.into(), phone: phone.map(Into::into) }
}

pub fn text(len: usize) -> String {
    "x".repeat(len)
}

// ---------------------------------------------------------------------------
// partner profiles
// ---------------------------------------------------------------------------

pub fn location_input(id: &str, name: &str) -> LocationInput {
    LocationInput {
        id: id.into(),
        name: name.into(),
        contacts: vec![ContactInput::new("Lea Inbox", &format!("{id}@contoso.example"), "+49 30 5550100")],
    }
}

pub fn profile_input() -> ProfileInput {
    ProfileInput {
        region: "emea".into(),
        company_name: "Contoso Consulting GmbH".into(),
        description: "ERP and CRM implementations for mid-sized manufacturers.".into(),
        locations: vec![location_input("berlin", "Berlin"), location_input("munich", "Munich")],
        expertise: ExpertiseInput {
            industries: vec!["Manufacturing".into()],
            products: vec!["Dynamics 365 Business Central".into()],
            services: vec!["Implementation".into()],
            solutions: vec!["erp".into()],
        },
        target_sizes: vec![],
    }
}

pub fn profile_input_for(region: &str) -> ProfileInput {
    ProfileInput { region: region.into(), ..profile_input() }
}

fn sample_location(id: &str, name: &str) -> Location {
    Location {
        id: LocationId::parse(id).unwrap(),
        name: name.into(),
        contacts: vec![contact("Lea Inbox", &format!("{id}@contoso.example"), Some("+49 30 5550100"))],
    }
}

/// The profile `profile_input()` registers.
pub fn region_profile() -> RegionProfile {
    RegionProfile {
        company_name: "Contoso Consulting GmbH".into(),
        description: Some("ERP and CRM implementations for mid-sized manufacturers.".into()),
        locations: vec![sample_location("berlin", "Berlin"), sample_location("munich", "Munich")],
        expertise: Expertise {
            industries: vec!["Manufacturing".into()],
            products: vec!["Dynamics 365 Business Central".into()],
            services: vec!["Implementation".into()],
            solutions: vec!["erp".into()],
        },
        target_sizes: SizeBand::ALL.to_vec(),
        status: ProfileStatus::Active,
    }
}

pub fn partner_cmd(action: PartnerAction) -> PartnerCommand {
    PartnerCommand { partner: partner(), action }
}

pub fn register(input: ProfileInput) -> PartnerCommand {
    partner_cmd(PartnerAction::RegisterProfile(input))
}

pub fn register_with(f: impl FnOnce(&mut ProfileInput)) -> PartnerCommand {
    let mut input = profile_input();
    f(&mut input);
    register(input)
}

pub fn update_profile(changes: ProfileChanges) -> PartnerCommand {
    partner_cmd(PartnerAction::UpdateProfile(changes))
}

pub fn changes() -> ProfileChanges {
    ProfileChanges { region: "emea".into(), ..ProfileChanges::default() }
}

pub fn pause(region: &str) -> PartnerCommand {
    partner_cmd(PartnerAction::PauseProfile { region: region.into() })
}

pub fn resume(region: &str) -> PartnerCommand {
    partner_cmd(PartnerAction::ResumeProfile { region: region.into() })
}

pub fn registered() -> PartnerEvent {
    registered_in("emea")
}

pub fn registered_in(region: &str) -> PartnerEvent {
    PartnerEvent::ProfileRegistered(ProfileRegistered {
        partner: partner(),
        region: RegionId::parse(region).unwrap(),
        profile: region_profile(),
        registered_at: now().at(),
    })
}

pub fn profile_updated() -> ProfileUpdated {
    ProfileUpdated {
        partner: partner(),
        region: region(),
        company_name: None,
        description: None,
        locations: None,
        expertise: None,
        target_sizes: None,
        updated_at: now().at(),
    }
}

pub fn paused() -> PartnerEvent {
    PartnerEvent::ProfilePaused(ProfilePaused { partner: partner(), region: region(), paused_at: now().at() })
}

pub fn resumed() -> PartnerEvent {
    PartnerEvent::ProfileResumed(ProfileResumed { partner: partner(), region: region(), resumed_at: now().at() })
}

/// A partner with one active profile for `emea` (Berlin, Munich).
pub fn active_partner() -> PartnerState {
    fold(&[registered()])
}

// ---------------------------------------------------------------------------
// referrals: commands
// ---------------------------------------------------------------------------

pub fn cmd(action: ReferralAction) -> ReferralCommand {
    ReferralCommand { referral: referral_id(), action }
}

pub fn customer_input() -> CustomerInput {
    CustomerInput {
        company_name: "Fabrikam Ltd".into(),
        industry: "Manufacturing".into(),
        size_band: Some(SizeBand::S251To1000),
        country: "DE".into(),
        contact: ContactInput::new("Dana Fabrikam", "dana@fabrikam.example", "+49 30 1234567"),
    }
}

pub fn receive_input() -> ReceiveReferral {
    ReceiveReferral {
        rfi: rfi(),
        partner: partner(),
        region: region(),
        location: Some(location()),
        customer: customer_input(),
        requirements: RequirementsInput {
            description: "Replace our on-premises ERP before the next fiscal year.".into(),
            products: vec!["Dynamics 365 Business Central".into()],
            services: vec!["Implementation".into()],
            keywords: vec!["erp".into(), "manufacturing".into()],
        },
        consent: Consent { contact: true, share_details: true },
        direct_contact_requested: false,
        source: Source::PartnerSearch,
        received_at: received_at(),
        expiry: ExpiryPolicy::default(),
        partner_state: active_partner(),
    }
}

pub fn receive(input: ReceiveReferral) -> ReferralCommand {
    cmd(ReferralAction::Receive(Box::new(input)))
}

pub fn receive_with(f: impl FnOnce(&mut ReceiveReferral)) -> ReferralCommand {
    let mut input = receive_input();
    f(&mut input);
    receive(input)
}

pub fn accept_input() -> AcceptReferral {
    AcceptReferral {
        engagement_name: "Fabrikam ERP rollout".into(),
        estimated_value: eur(12_500),
        estimated_purchase_date: Some(date(2027, 1, 31)),
        notes: "Needs finance and warehouse modules; 120 users.".into(),
        crm_id: "CRM-1".into(),
        campaign_id: String::new(),
        contacts: vec![],
    }
}

pub fn accept(input: AcceptReferral) -> ReferralCommand {
    cmd(ReferralAction::Accept(input))
}

pub fn accept_with(f: impl FnOnce(&mut AcceptReferral)) -> ReferralCommand {
    let mut input = accept_input();
    f(&mut input);
    accept(input)
}

pub fn decline(reason: Option<ReasonCode>, notes: &str) -> ReferralCommand {
    cmd(ReferralAction::Decline { reason, notes: notes.into() })
}

pub fn expire() -> ReferralCommand {
    cmd(ReferralAction::Expire)
}

pub fn add_contact(name: &str, email: &str, phone: &str) -> ReferralCommand {
    cmd(ReferralAction::AddContact(ContactInput::new(name, email, phone)))
}

pub fn update(change: UpdateEngagement) -> ReferralCommand {
    cmd(ReferralAction::UpdateEngagement(change))
}

pub fn mark_won(final_value: MoneyInput, closed_on: Option<NaiveDate>) -> ReferralCommand {
    cmd(ReferralAction::MarkWon { final_value, closed_on })
}

pub fn mark_lost(reason: Option<ReasonCode>, notes: &str) -> ReferralCommand {
    cmd(ReferralAction::MarkLost { reason, notes: notes.into() })
}

/// One well-formed command of every kind after receipt.
pub fn every_action() -> Vec<ReferralCommand> {
    vec![
        accept(accept_input()),
        decline(Some(ReasonCode::TimelineTooShort), ""),
        expire(),
        add_contact("Ana Partner", "ana@contoso.example", ""),
        update(UpdateEngagement { name: Some("Renamed".into()), ..UpdateEngagement::default() }),
        mark_won(eur(14_000), Some(now().today())),
        mark_lost(Some(ReasonCode::BudgetNotAdequate), ""),
    ]
}

// ---------------------------------------------------------------------------
// referrals: events
// ---------------------------------------------------------------------------

/// What `receive(receive_input())` records.
pub fn received() -> ReferralEvent {
    received_with(|_| {})
}

pub fn received_with(f: impl FnOnce(&mut ReferralReceived)) -> ReferralEvent {
    let mut e = ReferralReceived {
        referral: referral_id(),
        rfi: rfi(),
        partner: partner(),
        region: region(),
        location: Some(location()),
        customer: Customer {
            company_name: "Fabrikam Ltd".into(),
            industry: Some("Manufacturing".into()),
            size_band: SizeBand::S251To1000,
            country: Some("DE".into()),
            contact: contact("Dana Fabrikam", "dana@fabrikam.example", Some("+49 30 1234567")),
        },
        requirements: Requirements {
            description: "Replace our on-premises ERP before the next fiscal year.".into(),
            products: vec!["Dynamics 365 Business Central".into()],
            services: vec!["Implementation".into()],
            keywords: vec!["erp".into(), "manufacturing".into()],
        },
        consent: Consent { contact: true, share_details: true },
        direct_contact_requested: false,
        source: Source::PartnerSearch,
        received_at: received_at(),
        expires_at: expires_at(),
    };
    f(&mut e);
    ReferralEvent::Received(Box::new(e))
}

/// The engagement `accept(accept_input())` records.
pub fn engagement() -> Engagement {
    Engagement {
        name: "Fabrikam ERP rollout".into(),
        estimated_value: money("EUR", "12500"),
        estimated_purchase_date: date(2027, 1, 31),
        notes: "Needs finance and warehouse modules; 120 users.".into(),
        crm_id: Some("CRM-1".into()),
        campaign_id: None,
    }
}

pub fn accepted_at() -> DateTime<Utc> {
    ts(2026, 11, 21, 10, 0, 0)
}

pub fn accepted() -> ReferralEvent {
    ReferralEvent::Accepted(ReferralAccepted {
        referral: referral_id(),
        engagement: engagement(),
        accepted_at: accepted_at(),
    })
}

pub fn contact_added(name: &str, email: &str) -> ReferralEvent {
    ReferralEvent::ContactAdded(ContactAdded {
        referral: referral_id(),
        contact: contact(name, email, None),
        added_at: accepted_at(),
    })
}

pub fn declined() -> ReferralEvent {
    ReferralEvent::Declined(ReferralDeclined {
        referral: referral_id(),
        reason: Reason { code: ReasonCode::TimelineTooShort, notes: None },
        declined_at: ts(2026, 11, 21, 10, 0, 0),
    })
}

pub fn expired() -> ReferralEvent {
    ReferralEvent::Expired(ReferralExpired { referral: referral_id(), expired_at: expires_at() })
}

pub fn won() -> ReferralEvent {
    ReferralEvent::Won(ReferralWon {
        referral: referral_id(),
        final_value: money("EUR", "14000"),
        closed_on: date(2026, 11, 22),
        reported_at: ts(2026, 11, 22, 15, 0, 0),
    })
}

pub fn lost() -> ReferralEvent {
    ReferralEvent::Lost(ReferralLost {
        referral: referral_id(),
        reason: Reason { code: ReasonCode::CustomerChoseAnotherVendor, notes: None },
        reported_at: ts(2026, 11, 22, 15, 0, 0),
    })
}

/// A history that leaves the sample referral in `status`.
pub fn history(status: Status) -> Vec<ReferralEvent> {
    match status {
        Status::New => vec![received()],
        Status::Active => vec![received(), accepted()],
        Status::Declined => vec![received(), declined()],
        Status::Expired => vec![received(), expired()],
        Status::Won => vec![received(), accepted(), won()],
        Status::Lost => vec![received(), accepted(), lost()],
    }
}

pub const ALL_STATUSES: [Status; 6] =
    [Status::New, Status::Active, Status::Declined, Status::Expired, Status::Won, Status::Lost];

/// The referral a state holds; panics when there is none.
pub fn the_referral(state: ReferralState) -> Referral {
    state.0.expect("a referral")
}

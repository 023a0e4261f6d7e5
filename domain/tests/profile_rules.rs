//! The partner's business profile (DOMAIN.md "Business profile"), each rule
//! shown allowed and refused.

mod support;

use referral_domain::error::DomainError;
use referral_domain::ids::{LocationId, RegionId};
use referral_domain::profile::{
    Expertise, ExpertiseInput, LocationInput, PartnerEvent, PartnerState, ProfileStatus, ProfileUpdated,
};
use referral_domain::values::{ContactInput, SizeBand, MAX_LOCATIONS, MAX_LOCATION_CONTACTS};
use support::*;

fn no_profile() -> Given<PartnerEvent> {
    given::<PartnerEvent>([])
}

fn one_profile() -> Given<PartnerEvent> {
    given([registered()])
}

fn updated(f: impl FnOnce(&mut ProfileUpdated)) -> PartnerEvent {
    let mut e = profile_updated();
    f(&mut e);
    PartnerEvent::ProfileUpdated(e)
}

fn locations(n: usize) -> Vec<LocationInput> {
    (0..n).map(|i| location_input(&format!("loc-{i}"), &format!("Location {i}"))).collect()
}

fn status_of(state: &PartnerState, region: &str) -> ProfileStatus {
    state.regions[&RegionId::parse(region).unwrap()].status
}

fn registered_profile(events: &[PartnerEvent]) -> &referral_domain::profile::RegionProfile {
    match events {
        [PartnerEvent::ProfileRegistered(e)] => &e.profile,
        other => panic!("expected one ProfileRegistered, got {other:#?}"),
    }
}

// ---------------------------------------------------------------------------
// Register: one profile per region
// ---------------------------------------------------------------------------

#[test]
fn register_allowed_with_a_complete_profile() {
    let state = no_profile().when(register(profile_input()), now()).then([registered()]);
    assert_eq!(state.partner, Some(partner()));
    assert_eq!(state.regions.get(&region()), Some(&region_profile()));
    assert_eq!(status_of(&state, "emea"), ProfileStatus::Active);
}

#[test]
fn register_refused_when_region_already_registered() {
    one_profile().when(register(profile_input()), now()).then_refused(
        |e| matches!(e, DomainError::AlreadyExists(m) if m.contains("already has a profile for region emea")),
    );
}

#[test]
fn register_allowed_for_another_region() {
    let state = one_profile().when(register(profile_input_for("apac")), now()).then([registered_in("apac")]);
    assert_eq!(state.regions.len(), 2);
}

#[test]
fn register_refused_with_region_missing_or_malformed() {
    no_profile().when(register_with(|p| p.region = " ".into()), now()).then_invalid(&["region"]);
    no_profile().when(register_with(|p| p.region = "north america".into()), now()).then_invalid(&["region"]);
}

#[test]
fn register_allowed_with_company_name_at_its_limit() {
    let events = no_profile().when(register_with(|p| p.company_name = text(200)), now()).then_events();
    assert_eq!(registered_profile(&events).company_name, text(200));
}

#[test]
fn register_refused_with_company_name_missing_or_too_long() {
    no_profile().when(register_with(|p| p.company_name = String::new()), now()).then_invalid(&["company_name"]);
    no_profile().when(register_with(|p| p.company_name = text(201)), now()).then_invalid(&["company_name"]);
}

#[test]
fn register_allowed_with_description_up_to_2500_characters() {
    let events = no_profile().when(register_with(|p| p.description = "é".repeat(2_500)), now()).then_events();
    assert_eq!(registered_profile(&events).description.as_deref().map(|d| d.chars().count()), Some(2_500));
    let events = no_profile().when(register_with(|p| p.description = String::new()), now()).then_events();
    assert_eq!(registered_profile(&events).description, None);
}

#[test]
fn register_refused_with_description_over_2500_characters() {
    no_profile().when(register_with(|p| p.description = text(2_501)), now()).then_invalid(&["description"]);
}

#[test]
fn register_allowed_with_one_to_five_locations() {
    for n in [1, MAX_LOCATIONS] {
        let events = no_profile().when(register_with(|p| p.locations = locations(n)), now()).then_events();
        assert_eq!(registered_profile(&events).locations.len(), n);
    }
}

#[test]
fn register_refused_without_locations() {
    no_profile().when(register_with(|p| p.locations.clear()), now()).then_invalid(&["locations"]);
}

#[test]
fn register_refused_with_more_than_five_locations() {
    no_profile()
        .when(register_with(|p| p.locations = locations(MAX_LOCATIONS + 1)), now())
        .then_invalid(&["locations"]);
}

#[test]
fn register_refused_with_the_same_location_twice() {
    let command =
        register_with(|p| p.locations = vec![location_input("berlin", "Berlin"), location_input("berlin", "Berlin 2")]);
    no_profile().when(command, now()).then_invalid(&["locations[1].id"]);
}

#[test]
fn register_refused_with_location_id_or_name_malformed() {
    let command = register_with(|p| {
        p.locations = vec![
            LocationInput { id: "bad id".into(), ..location_input("x", "X") },
            LocationInput { name: " ".into(), ..location_input("munich", "Munich") },
        ]
    });
    no_profile().when(command, now()).then_invalid(&["locations[0].id", "locations[1].name"]);
}

#[test]
fn register_allowed_with_up_to_ten_contacts_per_location_or_none() {
    let mut berlin = location_input("berlin", "Berlin");
    berlin.contacts =
        (0..MAX_LOCATION_CONTACTS).map(|i| ContactInput::new("C", &format!("c{i}@contoso.example"), "")).collect();
    let munich = LocationInput { contacts: vec![], ..location_input("munich", "Munich") };
    let events = no_profile().when(register_with(|p| p.locations = vec![berlin, munich]), now()).then_events();
    let profile = registered_profile(&events);
    assert_eq!((profile.locations[0].contacts.len(), profile.locations[1].contacts.len()), (MAX_LOCATION_CONTACTS, 0));
}

#[test]
fn register_refused_with_more_than_ten_contacts_per_location() {
    let mut berlin = location_input("berlin", "Berlin");
    berlin.contacts =
        (0..=MAX_LOCATION_CONTACTS).map(|i| ContactInput::new("C", &format!("c{i}@contoso.example"), "")).collect();
    no_profile().when(register_with(|p| p.locations = vec![berlin]), now()).then_invalid(&["locations[0].contacts"]);
}

#[test]
fn register_refused_with_malformed_location_contacts() {
    let mut berlin = location_input("berlin", "Berlin");
    berlin.contacts =
        vec![ContactInput::new("C", "not-an-email", ""), ContactInput::new("D", "d@contoso.example", "phone")];
    no_profile()
        .when(register_with(|p| p.locations = vec![berlin]), now())
        .then_invalid(&["locations[0].contacts[0].email", "locations[0].contacts[1].phone"]);
}

#[test]
fn register_allowed_with_expertise_tags_deduplicated() {
    let command = register_with(|p| {
        p.expertise = ExpertiseInput {
            industries: (0..50).map(|i| format!("industry {i}")).collect(),
            products: vec!["Dynamics".into(), "dynamics".into()],
            services: vec![text(100)],
            solutions: vec![],
        }
    });
    let events = no_profile().when(command, now()).then_events();
    let expertise = &registered_profile(&events).expertise;
    assert_eq!(expertise.industries.len(), 50);
    assert_eq!(expertise.products, ["Dynamics"]);
}

#[test]
fn register_refused_with_expertise_tags_over_their_limits() {
    let command = register_with(|p| {
        p.expertise = ExpertiseInput {
            industries: (0..51).map(|i| format!("industry {i}")).collect(),
            products: vec![String::new()],
            services: vec![],
            solutions: vec![text(101)],
        }
    });
    no_profile().when(command, now()).then_invalid(&[
        "expertise.industries",
        "expertise.products",
        "expertise.solutions",
    ]);
}

#[test]
fn register_allowed_with_every_size_when_none_chosen() {
    let events = no_profile().when(register(profile_input()), now()).then_events();
    assert_eq!(registered_profile(&events).target_sizes, SizeBand::ALL);
}

#[test]
fn register_allowed_opting_out_of_sizes() {
    let command =
        register_with(|p| p.target_sizes = vec![SizeBand::S251To1000, SizeBand::S51To250, SizeBand::S51To250]);
    let events = no_profile().when(command, now()).then_events();
    assert_eq!(registered_profile(&events).target_sizes, [SizeBand::S51To250, SizeBand::S251To1000]);
}

#[test]
fn register_refused_listing_every_problem_at_once() {
    let command = register_with(|p| {
        p.region = String::new();
        p.company_name = String::new();
        p.description = text(2_501);
        p.locations.clear();
    });
    no_profile().when(command, now()).then_invalid(&["region", "company_name", "description", "locations"]);
}

// ---------------------------------------------------------------------------
// Update: only what changed is recorded
// ---------------------------------------------------------------------------

#[test]
fn update_allowed_records_only_changed_fields() {
    let mut change = changes();
    change.company_name = Some("Contoso Consulting GmbH".into());
    change.description = Some("Now also Power Platform.".into());
    let state = one_profile()
        .when(update_profile(change), now())
        .then([updated(|e| e.description = Some("Now also Power Platform.".into()))]);
    let profile = &state.regions[&region()];
    assert_eq!(profile.description.as_deref(), Some("Now also Power Platform."));
    assert_eq!(profile.company_name, "Contoso Consulting GmbH");
}

#[test]
fn update_records_nothing_when_nothing_changed() {
    let mut change = changes();
    change.company_name = Some(" Contoso Consulting GmbH ".into());
    change.locations = Some(profile_input().locations);
    change.expertise = Some(profile_input().expertise);
    change.target_sizes = Some(vec![]);
    one_profile().when(update_profile(change), now()).then([]);
}

#[test]
fn update_refused_when_no_field_named() {
    one_profile().when(update_profile(changes()), now()).then_invalid(&["update_mask"]);
}

#[test]
fn update_refused_when_partner_has_no_profile() {
    let mut change = changes();
    change.company_name = Some("Contoso".into());
    no_profile().when(update_profile(change), now()).then_err(DomainError::PartnerNotFound(partner()));
}

#[test]
fn update_refused_when_region_not_registered() {
    let mut change = changes();
    change.region = "apac".into();
    change.company_name = Some("Contoso".into());
    one_profile().when(update_profile(change), now()).then_precondition("has no profile for region apac");
}

#[test]
fn update_allowed_clearing_the_description() {
    let mut change = changes();
    change.description = Some(String::new());
    let state =
        one_profile().when(update_profile(change), now()).then([updated(|e| e.description = Some(String::new()))]);
    assert_eq!(state.regions[&region()].description, None);
}

#[test]
fn update_allowed_with_up_to_five_locations() {
    let mut change = changes();
    change.locations = Some(locations(MAX_LOCATIONS));
    let events = one_profile().when(update_profile(change), now()).then_events();
    assert!(matches!(events.as_slice(), [PartnerEvent::ProfileUpdated(e)]
        if e.locations.as_ref().map(Vec::len) == Some(MAX_LOCATIONS) && e.company_name.is_none()));
}

#[test]
fn update_refused_with_more_than_five_locations() {
    let mut change = changes();
    change.locations = Some(locations(MAX_LOCATIONS + 1));
    one_profile().when(update_profile(change), now()).then_invalid(&["locations"]);
}

#[test]
fn update_allowed_changing_expertise_and_sizes() {
    let mut change = changes();
    change.expertise = Some(ExpertiseInput { solutions: vec!["crm".into()], ..ExpertiseInput::default() });
    change.target_sizes = Some(vec![SizeBand::S10To50]);
    let state = one_profile().when(update_profile(change), now()).then([updated(|e| {
        e.expertise = Some(Expertise { solutions: vec!["crm".into()], ..Expertise::default() });
        e.target_sizes = Some(vec![SizeBand::S10To50]);
    })]);
    assert_eq!(state.regions[&region()].target_sizes, [SizeBand::S10To50]);
}

#[test]
fn update_refused_with_invalid_values() {
    let mut change = changes();
    change.company_name = Some(" ".into());
    change.description = Some(text(2_501));
    change.expertise = Some(ExpertiseInput { products: vec![text(101)], ..ExpertiseInput::default() });
    one_profile().when(update_profile(change), now()).then_invalid(&[
        "company_name",
        "description",
        "expertise.products",
    ]);
}

#[test]
fn update_allowed_while_paused_and_stays_paused() {
    let mut change = changes();
    change.company_name = Some("Contoso AG".into());
    let state = given([registered(), paused()])
        .when(update_profile(change), now())
        .then([updated(|e| e.company_name = Some("Contoso AG".into()))]);
    assert_eq!(status_of(&state, "emea"), ProfileStatus::Paused);
}

// ---------------------------------------------------------------------------
// Pause and resume
// ---------------------------------------------------------------------------

#[test]
fn pause_allowed_when_active() {
    let state = one_profile().when(pause("emea"), now()).then([paused()]);
    assert_eq!(status_of(&state, "emea"), ProfileStatus::Paused);
}

#[test]
fn pause_refused_when_already_paused() {
    given([registered(), paused()]).when(pause("emea"), now()).then_precondition("is already paused");
}

#[test]
fn resume_allowed_when_paused() {
    let state = given([registered(), paused()]).when(resume("emea"), now()).then([resumed()]);
    assert_eq!(status_of(&state, "emea"), ProfileStatus::Active);
}

#[test]
fn resume_refused_when_active() {
    one_profile().when(resume("emea"), now()).then_precondition("is already active");
}

#[test]
fn pause_and_resume_refused_when_partner_has_no_profile() {
    no_profile().when(pause("emea"), now()).then_err(DomainError::PartnerNotFound(partner()));
    no_profile().when(resume("emea"), now()).then_err(DomainError::PartnerNotFound(partner()));
}

#[test]
fn pause_and_resume_refused_for_a_region_not_registered() {
    one_profile().when(pause("apac"), now()).then_precondition("has no profile for region apac");
    one_profile().when(resume("apac"), now()).then_precondition("has no profile for region apac");
}

#[test]
fn pause_and_resume_refused_with_region_malformed() {
    one_profile().when(pause(""), now()).then_invalid(&["region"]);
    one_profile().when(resume("e m e a"), now()).then_invalid(&["region"]);
}

#[test]
fn pause_allowed_for_one_region_leaves_the_others_active() {
    let state = given([registered(), registered_in("apac")]).when(pause("emea"), now()).then([paused()]);
    assert_eq!((status_of(&state, "emea"), status_of(&state, "apac")), (ProfileStatus::Paused, ProfileStatus::Active));
}

// ---------------------------------------------------------------------------
// Which profile may receive a referral
// ---------------------------------------------------------------------------

fn can_receive(state: &PartnerState, region: &str, location: Option<&str>) -> Result<(), DomainError> {
    let location = location.map(|l| LocationId::parse(l).unwrap());
    state.check_can_receive(&partner(), &RegionId::parse(region).unwrap(), location.as_ref())
}

#[test]
fn receiving_allowed_for_an_active_profile_covering_the_region() {
    let state = fold(&[registered()]);
    assert_eq!(can_receive(&state, "emea", None), Ok(()));
    assert_eq!(can_receive(&state, "emea", Some("berlin")), Ok(()));
    assert_eq!(can_receive(&state, "emea", Some("munich")), Ok(()));
}

#[test]
fn receiving_refused_without_a_registered_profile() {
    let refused = can_receive(&PartnerState::default(), "emea", None);
    assert!(matches!(refused, Err(DomainError::Precondition(m)) if m.contains("has no registered business profile")));
}

#[test]
fn receiving_refused_for_a_region_the_partner_does_not_cover() {
    let refused = can_receive(&fold(&[registered()]), "apac", None);
    assert!(matches!(refused, Err(DomainError::Precondition(m)) if m.contains("no profile for region apac")));
}

#[test]
fn receiving_refused_while_paused() {
    let refused = can_receive(&fold(&[registered(), paused()]), "emea", Some("berlin"));
    assert!(matches!(refused, Err(DomainError::Precondition(m)) if m.contains("is paused")));
}

#[test]
fn receiving_allowed_again_after_resume() {
    assert_eq!(can_receive(&fold(&[registered(), paused(), resumed()]), "emea", Some("berlin")), Ok(()));
}

#[test]
fn receiving_refused_for_a_location_not_in_the_profile() {
    let refused = can_receive(&fold(&[registered()]), "emea", Some("hamburg"));
    assert!(matches!(refused, Err(DomainError::Precondition(m)) if m.contains("location hamburg")));
}

#[test]
fn partner_event_type_names_are_stable() {
    let events = [registered(), updated(|_| {}), paused(), resumed()];
    let names: Vec<&str> = events.iter().map(PartnerEvent::event_type).collect();
    assert_eq!(
        names,
        ["PartnerProfileRegistered", "PartnerProfileUpdated", "PartnerProfilePaused", "PartnerProfileResumed"]
    );
}

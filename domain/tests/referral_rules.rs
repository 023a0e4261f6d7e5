//! The referral's rules (DOMAIN.md "A referral's life" and "Clocks that
//! matter"), each shown allowed and refused.

mod support;

use chrono::Duration;
use referral_domain::clock::{
    contact_alert, is_overdue, response_due_at, ContactAlert, ExpiryPolicy, Now, DEFAULT_EXPIRY,
};
use referral_domain::error::DomainError;
use referral_domain::ids::{CommandId, LocationId, PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::profile::PartnerState;
use referral_domain::referral::{
    ContactAdded, Engagement, EngagementUpdated, Outcome, ReferralAccepted, ReferralDeclined, ReferralEvent,
    ReferralExpired, ReferralLost, ReferralState, ReferralWon, Status, UpdateEngagement,
};
use referral_domain::values::{ContactInput, Money, Reason, ReasonCode, SizeBand, MAX_REFERRAL_CONTACTS};
use support::*;

fn accepted_now(engagement: Engagement) -> ReferralEvent {
    ReferralEvent::Accepted(ReferralAccepted { referral: referral_id(), engagement, accepted_at: now().at() })
}

fn added_now(name: &str, email: &str, phone: Option<&str>) -> ReferralEvent {
    ReferralEvent::ContactAdded(ContactAdded {
        referral: referral_id(),
        contact: contact(name, email, phone),
        added_at: now().at(),
    })
}

fn updated_now(f: impl FnOnce(&mut EngagementUpdated)) -> ReferralEvent {
    let mut e = EngagementUpdated {
        referral: referral_id(),
        name: None,
        estimated_value: None,
        estimated_purchase_date: None,
        notes: None,
        crm_id: None,
        campaign_id: None,
        updated_at: now().at(),
    };
    f(&mut e);
    ReferralEvent::EngagementUpdated(e)
}

fn not_allowed(status: Status, action: &'static str, allowed_from: &'static str) -> DomainError {
    DomainError::NotAllowed { referral: referral_id(), status, action, allowed_from }
}

fn closed(status: Status) -> DomainError {
    DomainError::Closed { referral: referral_id(), status }
}

fn new_referral() -> Given<ReferralEvent> {
    given(history(Status::New))
}

fn active_referral() -> Given<ReferralEvent> {
    given(history(Status::Active))
}

fn no_referral() -> Given<ReferralEvent> {
    given::<ReferralEvent>([])
}

// ---------------------------------------------------------------------------
// RFI submitted: referral received
// ---------------------------------------------------------------------------

#[test]
fn receive_allowed_with_complete_rfi() {
    let state = no_referral().when(receive(receive_input()), now()).then([received()]);
    let r = the_referral(state);
    assert_eq!(r.status, Status::New);
    assert_eq!((r.status.status(), r.status.substatus()), ("New", "Received"));
    assert_eq!(r.received_at, received_at());
    assert_eq!(r.expires_at, received_at() + Duration::days(14));
    assert_eq!(r.last_changed_at, received_at());
    assert!(r.engagement.is_none() && r.outcome.is_none() && r.contacts.is_empty());
}

#[test]
fn receive_refused_when_referral_already_exists() {
    new_referral().when(receive(receive_input()), now()).then_refused(
        |e| matches!(e, DomainError::AlreadyExists(m) if m.contains(&referral_id().to_string()) && m.contains("rfi-1001")),
    );
}

#[test]
fn receive_allowed_without_optional_fields() {
    let command = receive_with(|r| {
        r.location = None;
        r.customer.industry = "  ".into();
        r.customer.country = String::new();
        r.customer.contact.phone = String::new();
        r.requirements.products.clear();
        r.requirements.services.clear();
        r.requirements.keywords.clear();
    });
    let expected = received_with(|e| {
        e.location = None;
        e.customer.industry = None;
        e.customer.country = None;
        e.customer.contact.phone = None;
        e.requirements.products.clear();
        e.requirements.services.clear();
        e.requirements.keywords.clear();
    });
    no_referral().when(command, now()).then([expected]);
}

#[test]
fn receive_refused_when_required_fields_missing() {
    let command = receive_with(|r| {
        r.customer.company_name = "   ".into();
        r.customer.size_band = None;
        r.customer.contact = ContactInput::default();
        r.requirements.description = String::new();
    });
    no_referral().when(command, now()).then_invalid(&[
        "customer.company_name",
        "customer.size_band",
        "customer.contact.name",
        "customer.contact.email",
        "requirements.description",
    ]);
}

#[test]
fn receive_allowed_with_consent_to_contact_and_share() {
    let events = no_referral().when(receive(receive_input()), now()).then_events();
    let [ReferralEvent::Received(e)] = events.as_slice() else { panic!("{events:?}") };
    assert!(e.consent.contact && e.consent.share_details);
}

#[test]
fn receive_refused_without_consent_to_contact() {
    no_referral().when(receive_with(|r| r.consent.contact = false), now()).then_invalid(&["consent.contact"]);
}

#[test]
fn receive_refused_without_consent_to_share_details() {
    no_referral()
        .when(receive_with(|r| r.consent.share_details = false), now())
        .then_invalid(&["consent.share_details"]);
}

#[test]
fn receive_allowed_with_direct_contact_requested() {
    let command = receive_with(|r| r.direct_contact_requested = true);
    no_referral().when(command, now()).then([received_with(|e| e.direct_contact_requested = true)]);
}

#[test]
fn receive_allowed_when_received_at_is_now() {
    let command = receive_with(|r| r.received_at = now().at());
    let expected = received_with(|e| {
        e.received_at = now().at();
        e.expires_at = now().at() + Duration::days(14);
    });
    no_referral().when(command, now()).then([expected]);
}

#[test]
fn receive_refused_when_received_at_is_in_the_future() {
    no_referral()
        .when(receive_with(|r| r.received_at = now().at() + Duration::seconds(1)), now())
        .then_invalid(&["received_at"]);
}

#[test]
fn receive_allowed_with_customer_email_and_phone_well_formed() {
    let command = receive_with(|r| {
        r.customer.contact = ContactInput::new("Dana", "dana.f+rfi@mail.fabrikam.example", "(030) 123-4567")
    });
    let events = no_referral().when(command, now()).then_events();
    let [ReferralEvent::Received(e)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(e.customer.contact, contact("Dana", "dana.f+rfi@mail.fabrikam.example", Some("(030) 123-4567")));
}

#[test]
fn receive_refused_with_customer_email_malformed() {
    no_referral()
        .when(receive_with(|r| r.customer.contact.email = "dana at fabrikam".into()), now())
        .then_invalid(&["customer.contact.email"]);
}

#[test]
fn receive_refused_with_customer_phone_malformed() {
    no_referral()
        .when(receive_with(|r| r.customer.contact.phone = "call me".into()), now())
        .then_invalid(&["customer.contact.phone"]);
}

#[test]
fn receive_allowed_with_texts_at_their_limits() {
    let command = receive_with(|r| {
        r.customer.company_name = text(200);
        r.customer.industry = text(200);
        r.requirements.description = text(4_000);
        r.requirements.keywords = (0..50).map(|i| format!("k{i}")).collect();
        r.requirements.products = vec![text(100)];
    });
    let events = no_referral().when(command, now()).then_events();
    let [ReferralEvent::Received(e)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(e.customer.company_name.len(), 200);
    assert_eq!(e.requirements.description.len(), 4_000);
    assert_eq!(e.requirements.keywords.len(), 50);
}

#[test]
fn receive_refused_with_texts_over_their_limits() {
    let command = receive_with(|r| {
        r.customer.company_name = text(201);
        r.customer.industry = text(201);
        r.customer.country = text(201);
        r.requirements.description = text(4_001);
        r.requirements.products = vec![text(101)];
        r.requirements.services = vec!["ok".into(), " ".into()];
        r.requirements.keywords = (0..51).map(|i| format!("k{i}")).collect();
    });
    no_referral().when(command, now()).then_invalid(&[
        "customer.company_name",
        "customer.industry",
        "customer.country",
        "requirements.description",
        "requirements.products",
        "requirements.services",
        "requirements.keywords",
    ]);
}

#[test]
fn receive_refused_with_control_characters_in_text() {
    no_referral()
        .when(receive_with(|r| r.customer.company_name = "Fabrikam\u{0}Ltd".into()), now())
        .then_invalid(&["customer.company_name"]);
}

#[test]
fn receive_allowed_with_duplicate_tags_recorded_once() {
    let command = receive_with(|r| r.requirements.keywords = vec!["ERP".into(), "erp".into(), " Cloud ".into()]);
    let events = no_referral().when(command, now()).then_events();
    let [ReferralEvent::Received(e)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(e.requirements.keywords, ["ERP", "Cloud"]);
}

#[test]
fn receive_allowed_with_configured_expiry() {
    let command = receive_with(|r| r.expiry = ExpiryPolicy::new(Duration::days(7)).unwrap());
    no_referral().when(command, now()).then([received_with(|e| e.expires_at = received_at() + Duration::days(7))]);
}

#[test]
fn receive_allowed_when_partner_profile_active_for_region() {
    let events = no_referral().when(receive(receive_input()), now()).then_events();
    let [ReferralEvent::Received(e)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!((&e.partner, &e.region, &e.location), (&partner(), &region(), &Some(location())));
}

#[test]
fn receive_refused_when_partner_has_no_profile() {
    no_referral()
        .when(receive_with(|r| r.partner_state = PartnerState::default()), now())
        .then_precondition("has no registered business profile");
}

#[test]
fn receive_refused_when_region_not_covered_by_profile() {
    let command = receive_with(|r| r.region = RegionId::parse("apac").unwrap());
    no_referral().when(command, now()).then_precondition("has no profile for region apac (it covers emea)");
}

#[test]
fn receive_refused_when_profile_paused() {
    let command = receive_with(|r| r.partner_state = fold(&[registered(), paused()]));
    no_referral().when(command, now()).then_precondition("is paused");
}

#[test]
fn receive_allowed_when_profile_resumed() {
    let command = receive_with(|r| r.partner_state = fold(&[registered(), paused(), resumed()]));
    no_referral().when(command, now()).then([received()]);
}

#[test]
fn receive_allowed_for_any_listed_location() {
    let munich = LocationId::parse("munich").unwrap();
    let command = receive_with(|r| r.location = Some(munich.clone()));
    no_referral().when(command, now()).then([received_with(|e| e.location = Some(munich))]);
}

#[test]
fn receive_refused_when_location_not_in_profile() {
    let command = receive_with(|r| r.location = Some(LocationId::parse("hamburg").unwrap()));
    no_referral().when(command, now()).then_precondition("location hamburg is not one of");
}

#[test]
fn receive_refused_for_invalid_fields_before_profile_checks() {
    let command = receive_with(|r| {
        r.partner_state = PartnerState::default();
        r.consent.contact = false;
    });
    no_referral().when(command, now()).then_invalid(&["consent.contact"]);
}

// ---------------------------------------------------------------------------
// New -> accept -> Active
// ---------------------------------------------------------------------------

#[test]
fn accept_allowed_when_new() {
    let state = new_referral().when(accept(accept_input()), now()).then([accepted_now(engagement())]);
    let r = the_referral(state);
    assert_eq!((r.status.status(), r.status.substatus()), ("Active", "Accepted"));
    assert_eq!(r.accepted_at, Some(now().at()));
    assert_eq!(r.engagement, Some(engagement()));
    assert_eq!(r.last_changed_at, now().at());
}

#[test]
fn accept_refused_when_active() {
    active_referral().when(accept(accept_input()), now()).then_err(not_allowed(Status::Active, "accepting it", "New"));
}

#[test]
fn accept_refused_when_declined() {
    given(history(Status::Declined)).when(accept(accept_input()), now()).then_err(closed(Status::Declined));
}

#[test]
fn accept_refused_when_referral_does_not_exist() {
    no_referral().when(accept(accept_input()), now()).then_err(DomainError::ReferralNotFound(referral_id()));
}

#[test]
fn accept_allowed_with_extra_contacts() {
    let command = accept_with(|a| {
        a.contacts = vec![
            ContactInput::new("Ana Partner", "ana@contoso.example", "+49 89 7654321"),
            ContactInput::new("Ben Partner", "ben@contoso.example", ""),
        ]
    });
    let state = new_referral().when(command, now()).then([
        accepted_now(engagement()),
        added_now("Ana Partner", "ana@contoso.example", Some("+49 89 7654321")),
        added_now("Ben Partner", "ben@contoso.example", None),
    ]);
    assert_eq!(the_referral(state).contacts.len(), 2);
}

#[test]
fn accept_allowed_with_optional_crm_and_campaign_ids() {
    let command = accept_with(|a| {
        a.crm_id = text(100);
        a.campaign_id = "CMP-7".into();
    });
    let expected = Engagement { crm_id: Some(text(100)), campaign_id: Some("CMP-7".into()), ..engagement() };
    new_referral().when(command, now()).then([accepted_now(expected)]);
}

#[test]
fn accept_allowed_without_crm_and_campaign_ids() {
    let expected = Engagement { crm_id: None, campaign_id: None, ..engagement() };
    new_referral().when(accept_with(|a| a.crm_id = " ".into()), now()).then([accepted_now(expected)]);
}

#[test]
fn accept_refused_with_crm_or_campaign_id_too_long() {
    let command = accept_with(|a| {
        a.crm_id = text(101);
        a.campaign_id = text(101);
    });
    new_referral().when(command, now()).then_invalid(&["crm_id", "campaign_id"]);
}

#[test]
fn accept_refused_when_required_fields_missing() {
    let command = accept_with(|a| {
        a.engagement_name = " ".into();
        a.estimated_value = Default::default();
        a.estimated_purchase_date = None;
        a.notes = String::new();
    });
    new_referral().when(command, now()).then_invalid(&[
        "engagement_name",
        "estimated_value",
        "estimated_purchase_date",
        "notes",
    ]);
}

#[test]
fn accept_allowed_with_name_and_notes_at_their_limits() {
    let command = accept_with(|a| {
        a.engagement_name = text(200);
        a.notes = text(4_000);
    });
    let expected = Engagement { name: text(200), notes: text(4_000), ..engagement() };
    new_referral().when(command, now()).then([accepted_now(expected)]);
}

#[test]
fn accept_refused_with_name_and_notes_over_their_limits() {
    let command = accept_with(|a| {
        a.engagement_name = text(201);
        a.notes = text(4_001);
    });
    new_referral().when(command, now()).then_invalid(&["engagement_name", "notes"]);
}

#[test]
fn accept_allowed_with_purchase_date_today() {
    let command = accept_with(|a| a.estimated_purchase_date = Some(now().today()));
    let expected = Engagement { estimated_purchase_date: now().today(), ..engagement() };
    new_referral().when(command, now()).then([accepted_now(expected)]);
}

#[test]
fn accept_refused_with_purchase_date_in_the_past() {
    let command = accept_with(|a| a.estimated_purchase_date = Some(date(2026, 11, 23)));
    let violations = new_referral().when(command, now()).then_invalid(&["estimated_purchase_date"]);
    assert!(violations[0].description.contains("is in the past"));
}

#[test]
fn accept_allowed_with_positive_value_in_minor_units() {
    // 0.01 EUR as google.type.Money: 0 units, 10,000,000 nanos.
    let command = accept_with(|a| a.estimated_value = money_in("EUR", 0, 10_000_000));
    let events = new_referral().when(command, now()).then_events();
    let [ReferralEvent::Accepted(e)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(e.engagement.estimated_value.minor_units, 1);
    assert_eq!(e.engagement.estimated_value.currency.code(), "EUR");
}

#[test]
fn accept_refused_with_zero_value() {
    new_referral().when(accept_with(|a| a.estimated_value = eur(0)), now()).then_invalid(&["estimated_value"]);
}

#[test]
fn accept_refused_with_negative_value() {
    let command = accept_with(|a| a.estimated_value = money_in("EUR", -5, -500_000_000));
    new_referral().when(command, now()).then_invalid(&["estimated_value"]);
}

#[test]
fn accept_allowed_with_iso_4217_currencies_and_their_decimals() {
    for (code, units, nanos, minor) in
        [("USD", 12_500, 500_000_000, 1_250_050), ("JPY", 1_500_000, 0, 1_500_000), ("KWD", 10, 125_000_000, 10_125)]
    {
        let command = accept_with(|a| a.estimated_value = money_in(code, units, nanos));
        let events = new_referral().when(command, now()).then_events();
        let [ReferralEvent::Accepted(e)] = events.as_slice() else { panic!("{events:?}") };
        assert_eq!(
            (e.engagement.estimated_value.currency.code(), e.engagement.estimated_value.minor_units),
            (code, minor)
        );
    }
}

#[test]
fn accept_refused_with_currency_not_iso_4217() {
    for code in ["", "EURO", "eur", "XYZ", "€"] {
        let command = accept_with(|a| a.estimated_value = money_in(code, 100, 0));
        new_referral().when(command, now()).then_invalid(&["estimated_value"]);
    }
}

#[test]
fn accept_refused_with_fractions_finer_than_the_currency() {
    for (code, units, nanos) in [("EUR", 1, 1_000_000), ("JPY", 1, 500_000_000), ("KWD", 1, 100_000)] {
        let command = accept_with(|a| a.estimated_value = money_in(code, units, nanos));
        new_referral().when(command, now()).then_invalid(&["estimated_value"]);
    }
}

#[test]
fn accept_refused_with_units_and_nanos_of_mixed_sign() {
    let command = accept_with(|a| a.estimated_value = money_in("EUR", 10, -500_000_000));
    new_referral().when(command, now()).then_invalid(&["estimated_value"]);
}

#[test]
fn accept_allowed_with_twenty_contacts() {
    let command = accept_with(|a| {
        a.contacts =
            (0..MAX_REFERRAL_CONTACTS).map(|i| ContactInput::new("P", &format!("p{i}@contoso.example"), "")).collect()
    });
    assert_eq!(new_referral().when(command, now()).then_events().len(), 1 + MAX_REFERRAL_CONTACTS);
}

#[test]
fn accept_refused_with_more_than_twenty_contacts() {
    let command = accept_with(|a| {
        a.contacts =
            (0..=MAX_REFERRAL_CONTACTS).map(|i| ContactInput::new("P", &format!("p{i}@contoso.example"), "")).collect()
    });
    new_referral().when(command, now()).then_invalid(&["contacts"]);
}

#[test]
fn accept_refused_with_malformed_contacts() {
    let command = accept_with(|a| {
        a.contacts = vec![
            ContactInput::new("", "ana@contoso.example", ""),
            ContactInput::new("Ben", "ben-at-contoso", ""),
            ContactInput::new("Cem", "cem@contoso.example", "12"),
            ContactInput::new("Ana again", "ANA@contoso.example", ""),
        ]
    });
    new_referral().when(command, now()).then_invalid(&["contacts[0].name", "contacts[1].email", "contacts[2].phone"]);
}

#[test]
fn accept_refused_with_the_same_contact_twice() {
    let command = accept_with(|a| {
        a.contacts = vec![
            ContactInput::new("Ana", "ana@contoso.example", ""),
            ContactInput::new("Ana", "ANA@Contoso.example", ""),
        ]
    });
    new_referral().when(command, now()).then_invalid(&["contacts[1].email"]);
}

#[test]
fn accept_allowed_just_before_expiry_time() {
    let just_before = at(expires_at() - Duration::seconds(1));
    let events = new_referral().when(accept(accept_input()), just_before).then_events();
    assert!(matches!(events.as_slice(), [ReferralEvent::Accepted(e)] if e.accepted_at == just_before.at()));
}

#[test]
fn accept_refused_once_expiry_time_reached() {
    new_referral().when(accept(accept_input()), at(expires_at())).then_precondition("is expiring");
    new_referral().when(accept(accept_input()), at(expires_at() + Duration::days(3))).then_precondition("is expiring");
}

// ---------------------------------------------------------------------------
// New -> decline -> Closed/Declined
// ---------------------------------------------------------------------------

#[test]
fn decline_allowed_when_new() {
    let expected = ReferralEvent::Declined(ReferralDeclined {
        referral: referral_id(),
        reason: Reason { code: ReasonCode::TimelineTooShort, notes: None },
        declined_at: now().at(),
    });
    let state = new_referral().when(decline(Some(ReasonCode::TimelineTooShort), ""), now()).then([expected]);
    let r = the_referral(state);
    assert_eq!((r.status.status(), r.status.substatus()), ("Closed", "Declined"));
    assert_eq!(
        r.outcome,
        Some(Outcome::Declined { reason: Reason { code: ReasonCode::TimelineTooShort, notes: None }, at: now().at() })
    );
}

#[test]
fn decline_refused_when_active() {
    active_referral().when(decline(Some(ReasonCode::TimelineTooShort), ""), now()).then_err(not_allowed(
        Status::Active,
        "declining it",
        "New",
    ));
}

#[test]
fn decline_allowed_with_every_reason_code() {
    for code in ReasonCode::ALL.into_iter().filter(|c| *c != ReasonCode::Other) {
        let events = new_referral().when(decline(Some(code), ""), now()).then_events();
        assert!(matches!(events.as_slice(), [ReferralEvent::Declined(e)] if e.reason == Reason { code, notes: None }));
    }
}

#[test]
fn decline_refused_without_reason() {
    new_referral().when(decline(None, "no thanks"), now()).then_invalid(&["reason"]);
}

#[test]
fn decline_allowed_with_other_and_notes() {
    let events = new_referral().when(decline(Some(ReasonCode::Other), " Outside our region "), now()).then_events();
    let [ReferralEvent::Declined(e)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(e.reason, Reason { code: ReasonCode::Other, notes: Some("Outside our region".into()) });
}

#[test]
fn decline_refused_with_other_without_notes() {
    new_referral().when(decline(Some(ReasonCode::Other), ""), now()).then_invalid(&["notes"]);
    new_referral().when(decline(Some(ReasonCode::Other), " \n "), now()).then_invalid(&["notes"]);
}

#[test]
fn decline_allowed_with_notes_at_their_limit() {
    let events = new_referral().when(decline(Some(ReasonCode::NotARealCustomer), &text(4_000)), now()).then_events();
    assert!(
        matches!(events.as_slice(), [ReferralEvent::Declined(e)] if e.reason.notes.as_deref() == Some(text(4_000).as_str()))
    );
}

#[test]
fn decline_refused_with_notes_over_their_limit() {
    new_referral().when(decline(Some(ReasonCode::NotARealCustomer), &text(4_001)), now()).then_invalid(&["notes"]);
}

#[test]
fn decline_allowed_just_before_expiry_time() {
    let just_before = at(expires_at() - Duration::seconds(1));
    let events = new_referral().when(decline(Some(ReasonCode::TimelineTooShort), ""), just_before).then_events();
    assert!(matches!(events.as_slice(), [ReferralEvent::Declined(_)]));
}

#[test]
fn decline_refused_once_expiry_time_reached() {
    new_referral()
        .when(decline(Some(ReasonCode::TimelineTooShort), ""), at(expires_at()))
        .then_precondition("is expiring");
}

#[test]
fn reason_codes_allowed_by_their_bulk_update_names() {
    let names: Vec<&str> = ReasonCode::ALL.iter().map(ReasonCode::as_str).collect();
    assert_eq!(
        names,
        [
            "budget_not_adequate",
            "customer_did_not_respond",
            "customer_chose_another_vendor",
            "customer_requirement_not_met",
            "not_a_real_customer",
            "timeline_too_short",
            "abuse_spam_phishing",
            "other",
        ]
    );
    for code in ReasonCode::ALL {
        assert_eq!(ReasonCode::parse(code.as_str()), Ok(code));
    }
}

#[test]
fn reason_codes_refused_when_unknown() {
    for text in ["", "spam", "Other", "budget"] {
        assert!(ReasonCode::parse(text).is_err(), "{text:?}");
    }
}

// ---------------------------------------------------------------------------
// New -> no answer in time -> Closed/Expired
// ---------------------------------------------------------------------------

#[test]
fn expire_allowed_when_due() {
    let expected = ReferralEvent::Expired(ReferralExpired { referral: referral_id(), expired_at: expires_at() });
    let state = new_referral().when(expire(), at(expires_at())).then([expected]);
    let r = the_referral(state);
    assert_eq!((r.status.status(), r.status.substatus()), ("Closed", "Expired"));
    assert_eq!(r.outcome, Some(Outcome::Expired { at: expires_at() }));
}

#[test]
fn expire_allowed_after_due() {
    let later = at(expires_at() + Duration::hours(5));
    new_referral()
        .when(expire(), later)
        .then([ReferralEvent::Expired(ReferralExpired { referral: referral_id(), expired_at: later.at() })]);
}

#[test]
fn expire_refused_before_due() {
    new_referral().when(expire(), at(expires_at() - Duration::seconds(1))).then_precondition("is not due to expire");
    new_referral().when(expire(), now()).then_precondition("is not due to expire");
}

#[test]
fn expire_refused_when_active() {
    active_referral().when(expire(), at(expires_at() + Duration::days(1))).then_err(not_allowed(
        Status::Active,
        "expiring it",
        "New",
    ));
}

#[test]
fn expire_allowed_when_configured_period_elapsed() {
    let seven_days = received_at() + Duration::days(7);
    let events = given([received_with(|e| e.expires_at = seven_days)]).when(expire(), at(seven_days)).then_events();
    assert!(matches!(events.as_slice(), [ReferralEvent::Expired(_)]));
}

#[test]
fn expire_refused_before_configured_period_elapsed() {
    let seven_days = received_at() + Duration::days(7);
    given([received_with(|e| e.expires_at = seven_days)])
        .when(expire(), at(seven_days - Duration::seconds(1)))
        .then_precondition("is not due to expire");
}

// ---------------------------------------------------------------------------
// Active -> add contact
// ---------------------------------------------------------------------------

#[test]
fn add_contact_allowed_when_active() {
    let state = active_referral()
        .when(add_contact("Ana Partner", "ana@contoso.example", "+49 89 7654321"), now())
        .then([added_now("Ana Partner", "ana@contoso.example", Some("+49 89 7654321"))]);
    let r = the_referral(state);
    assert_eq!(r.contacts, [contact("Ana Partner", "ana@contoso.example", Some("+49 89 7654321"))]);
    assert_eq!(r.status, Status::Active);
    assert_eq!(r.last_changed_at, now().at());
}

#[test]
fn add_contact_refused_when_new() {
    new_referral().when(add_contact("Ana", "ana@contoso.example", ""), now()).then_err(not_allowed(
        Status::New,
        "adding a contact",
        "Active",
    ));
}

#[test]
fn add_contact_refused_without_name_or_email() {
    active_referral().when(add_contact(" ", "", ""), now()).then_invalid(&["contact.name", "contact.email"]);
}

#[test]
fn add_contact_allowed_with_well_formed_emails() {
    for email in ["ana@contoso.example", "ana.maria+crm@sub.contoso.example", "a@b.co", "o'neil@x-y.example"] {
        let events = active_referral().when(add_contact("Ana", email, ""), now()).then_events();
        assert_eq!(events, [added_now("Ana", email, None)]);
    }
}

#[test]
fn add_contact_refused_with_malformed_emails() {
    let too_long = format!("{}@contoso.example", text(250));
    let long_local = format!("{}@contoso.example", text(65));
    for email in [
        "ana",
        "ana@",
        "@contoso.example",
        "ana@contoso",
        "ana@@contoso.example",
        "ana@x@contoso.example",
        "ana maria@contoso.example",
        "ana@-contoso.example",
        "ana@contoso-.example",
        "ana@contoso..example",
        "ana@contoso_x.example",
        too_long.as_str(),
        long_local.as_str(),
    ] {
        active_referral().when(add_contact("Ana", email, ""), now()).then_invalid(&["contact.email"]);
    }
}

#[test]
fn add_contact_allowed_with_well_formed_phones() {
    for phone in ["+49 30 1234567", "(030) 123-4567", "030.1234567", "1234567", "+123456789012345"] {
        let events = active_referral().when(add_contact("Ana", "ana@contoso.example", phone), now()).then_events();
        assert_eq!(events, [added_now("Ana", "ana@contoso.example", Some(phone))]);
    }
}

#[test]
fn add_contact_refused_with_malformed_phones() {
    for phone in ["123456", "1234567890123456", "+49 30 CALL-ME", "++49 30 1234567", "ext. 12", "+", "49/30/1234567"] {
        active_referral()
            .when(add_contact("Ana", "ana@contoso.example", phone), now())
            .then_invalid(&["contact.phone"]);
    }
}

#[test]
fn add_contact_allowed_when_email_is_new_to_the_referral() {
    given([received(), accepted(), contact_added("Ana", "ana@contoso.example")])
        .when(add_contact("Ben", "ben@contoso.example", ""), now())
        .then([added_now("Ben", "ben@contoso.example", None)]);
}

#[test]
fn add_contact_refused_when_email_already_on_the_referral() {
    given([received(), accepted(), contact_added("Ana", "ana@contoso.example")])
        .when(add_contact("Ana M.", "ANA@contoso.example", ""), now())
        .then_refused(|e| matches!(e, DomainError::AlreadyExists(m) if m.contains("already a contact")));
}

fn active_with_contacts(n: usize) -> Given<ReferralEvent> {
    let mut events = history(Status::Active);
    events.extend((0..n).map(|i| contact_added("P", &format!("p{i}@contoso.example"))));
    given(events)
}

#[test]
fn add_contact_allowed_up_to_twenty_contacts() {
    let state = active_with_contacts(MAX_REFERRAL_CONTACTS - 1)
        .when(add_contact("Last", "last@contoso.example", ""), now())
        .then([added_now("Last", "last@contoso.example", None)]);
    assert_eq!(the_referral(state).contacts.len(), MAX_REFERRAL_CONTACTS);
}

#[test]
fn add_contact_refused_beyond_twenty_contacts() {
    active_with_contacts(MAX_REFERRAL_CONTACTS)
        .when(add_contact("One more", "more@contoso.example", ""), now())
        .then_precondition("already has 20 contacts");
}

// ---------------------------------------------------------------------------
// Active -> edit engagement (only what changed is recorded)
// ---------------------------------------------------------------------------

#[test]
fn update_engagement_allowed_when_active_records_only_changed_fields() {
    let change = UpdateEngagement {
        name: Some("Fabrikam ERP phase 1".into()),
        notes: Some(engagement().notes),
        estimated_value: Some(eur(12_500)),
        crm_id: Some("CRM-1".into()),
        ..UpdateEngagement::default()
    };
    let state = active_referral()
        .when(update(change), now())
        .then([updated_now(|e| e.name = Some("Fabrikam ERP phase 1".into()))]);
    let r = the_referral(state);
    assert_eq!(r.engagement, Some(Engagement { name: "Fabrikam ERP phase 1".into(), ..engagement() }));
    assert_eq!(r.last_changed_at, now().at());
}

#[test]
fn update_engagement_refused_when_new() {
    new_referral()
        .when(update(UpdateEngagement { name: Some("x".into()), ..UpdateEngagement::default() }), now())
        .then_err(not_allowed(Status::New, "editing the engagement", "Active"));
}

#[test]
fn update_engagement_allowed_for_every_field() {
    let change = UpdateEngagement {
        name: Some("Phase 2".into()),
        estimated_value: Some(money_in("USD", 20_000, 0)),
        estimated_purchase_date: Some(date(2027, 3, 1)),
        notes: Some("Now also wants CRM.".into()),
        crm_id: Some("CRM-2".into()),
        campaign_id: Some("CMP-7".into()),
    };
    let state = active_referral().when(update(change), now()).then([updated_now(|e| {
        e.name = Some("Phase 2".into());
        e.estimated_value = Some(money("USD", "20000"));
        e.estimated_purchase_date = Some(date(2027, 3, 1));
        e.notes = Some("Now also wants CRM.".into());
        e.crm_id = Some("CRM-2".into());
        e.campaign_id = Some("CMP-7".into());
    })]);
    let expected = Engagement {
        name: "Phase 2".into(),
        estimated_value: money("USD", "20000"),
        estimated_purchase_date: date(2027, 3, 1),
        notes: "Now also wants CRM.".into(),
        crm_id: Some("CRM-2".into()),
        campaign_id: Some("CMP-7".into()),
    };
    assert_eq!(the_referral(state).engagement, Some(expected));
}

#[test]
fn update_engagement_records_nothing_when_nothing_changed() {
    let same = UpdateEngagement {
        name: Some(engagement().name),
        estimated_value: Some(eur(12_500)),
        estimated_purchase_date: Some(date(2027, 1, 31)),
        notes: Some(format!("  {}  ", engagement().notes)),
        crm_id: Some("CRM-1".into()),
        campaign_id: Some(String::new()),
    };
    active_referral().when(update(same), now()).then([]);
}

#[test]
fn update_engagement_refused_when_no_field_named() {
    active_referral().when(update(UpdateEngagement::default()), now()).then_invalid(&["update_mask"]);
}

#[test]
fn update_engagement_allowed_clearing_crm_id() {
    let change = UpdateEngagement { crm_id: Some(String::new()), ..UpdateEngagement::default() };
    let state = active_referral().when(update(change), now()).then([updated_now(|e| e.crm_id = Some(String::new()))]);
    assert_eq!(the_referral(state).engagement.and_then(|g| g.crm_id), None);
}

#[test]
fn update_engagement_allowed_with_stale_purchase_date_when_it_is_not_edited() {
    let old = Engagement { estimated_purchase_date: date(2026, 11, 22), ..engagement() };
    let accepted_then = ReferralEvent::Accepted(ReferralAccepted {
        referral: referral_id(),
        engagement: old,
        accepted_at: accepted_at(),
    });
    given([received(), accepted_then])
        .when(
            update(UpdateEngagement { notes: Some("Call back Monday.".into()), ..UpdateEngagement::default() }),
            now(),
        )
        .then([updated_now(|e| e.notes = Some("Call back Monday.".into()))]);
}

#[test]
fn update_engagement_refused_with_invalid_values() {
    let change = UpdateEngagement {
        name: Some(" ".into()),
        estimated_value: Some(eur(0)),
        estimated_purchase_date: Some(date(2026, 11, 23)),
        notes: Some(String::new()),
        crm_id: Some(text(101)),
        campaign_id: Some(text(101)),
    };
    active_referral().when(update(change), now()).then_invalid(&[
        "engagement_name",
        "estimated_value",
        "estimated_purchase_date",
        "notes",
        "crm_id",
        "campaign_id",
    ]);
}

#[test]
fn update_engagement_refused_with_currency_not_iso_4217() {
    let change = UpdateEngagement { estimated_value: Some(money_in("EURO", 10, 0)), ..UpdateEngagement::default() };
    active_referral().when(update(change), now()).then_invalid(&["estimated_value"]);
}

#[test]
fn update_engagement_allowed_with_purchase_date_today() {
    let change = UpdateEngagement { estimated_purchase_date: Some(now().today()), ..UpdateEngagement::default() };
    active_referral()
        .when(update(change), now())
        .then([updated_now(|e| e.estimated_purchase_date = Some(now().today()))]);
}

// ---------------------------------------------------------------------------
// Active -> won -> Closed/Won
// ---------------------------------------------------------------------------

#[test]
fn won_allowed_when_active() {
    let expected = ReferralEvent::Won(ReferralWon {
        referral: referral_id(),
        final_value: money("EUR", "14000"),
        closed_on: now().today(),
        reported_at: now().at(),
    });
    let state = active_referral().when(mark_won(eur(14_000), Some(now().today())), now()).then([expected]);
    let r = the_referral(state);
    assert_eq!((r.status.status(), r.status.substatus()), ("Closed", "Won"));
    assert_eq!(
        r.outcome,
        Some(Outcome::Won { final_value: money("EUR", "14000"), closed_on: now().today(), at: now().at() })
    );
}

#[test]
fn won_refused_when_new() {
    new_referral().when(mark_won(eur(14_000), Some(now().today())), now()).then_err(not_allowed(
        Status::New,
        "marking it won",
        "Active",
    ));
}

#[test]
fn won_allowed_with_close_date_on_the_day_of_receipt() {
    let events = active_referral().when(mark_won(eur(1), Some(date(2026, 11, 20))), now()).then_events();
    assert!(matches!(events.as_slice(), [ReferralEvent::Won(e)] if e.closed_on == date(2026, 11, 20)));
}

#[test]
fn won_refused_with_close_date_before_receipt() {
    active_referral().when(mark_won(eur(1), Some(date(2026, 11, 19))), now()).then_invalid(&["closed_on"]);
}

#[test]
fn won_refused_with_close_date_in_the_future() {
    active_referral().when(mark_won(eur(1), Some(date(2026, 11, 25))), now()).then_invalid(&["closed_on"]);
}

#[test]
fn won_refused_without_close_date() {
    active_referral().when(mark_won(eur(1), None), now()).then_invalid(&["closed_on"]);
}

#[test]
fn won_allowed_with_final_value_in_another_currency() {
    let events =
        active_referral().when(mark_won(money_in("GBP", 9_999, 990_000_000), Some(now().today())), now()).then_events();
    assert!(matches!(events.as_slice(), [ReferralEvent::Won(e)] if e.final_value == money("GBP", "9999.99")));
}

#[test]
fn won_refused_with_final_value_not_positive_or_not_iso_4217() {
    for value in [eur(0), eur(-1), money_in("EURO", 10, 0), money_in("EUR", 1, 1)] {
        active_referral().when(mark_won(value, Some(now().today())), now()).then_invalid(&["final_value"]);
    }
}

// ---------------------------------------------------------------------------
// Active -> lost -> Closed/Lost
// ---------------------------------------------------------------------------

#[test]
fn lost_allowed_when_active() {
    let expected = ReferralEvent::Lost(ReferralLost {
        referral: referral_id(),
        reason: Reason { code: ReasonCode::CustomerChoseAnotherVendor, notes: None },
        reported_at: now().at(),
    });
    let state =
        active_referral().when(mark_lost(Some(ReasonCode::CustomerChoseAnotherVendor), ""), now()).then([expected]);
    let r = the_referral(state);
    assert_eq!((r.status.status(), r.status.substatus()), ("Closed", "Lost"));
    assert!(matches!(r.outcome, Some(Outcome::Lost { at, .. }) if at == now().at()));
}

#[test]
fn lost_refused_when_new() {
    new_referral().when(mark_lost(Some(ReasonCode::BudgetNotAdequate), ""), now()).then_err(not_allowed(
        Status::New,
        "marking it lost",
        "Active",
    ));
}

#[test]
fn lost_allowed_with_optional_notes() {
    let events =
        active_referral().when(mark_lost(Some(ReasonCode::BudgetNotAdequate), "Halved budget"), now()).then_events();
    assert!(matches!(events.as_slice(), [ReferralEvent::Lost(e)]
        if e.reason == Reason { code: ReasonCode::BudgetNotAdequate, notes: Some("Halved budget".into()) }));
}

#[test]
fn lost_refused_without_reason() {
    active_referral().when(mark_lost(None, ""), now()).then_invalid(&["reason"]);
}

#[test]
fn lost_allowed_with_other_and_notes() {
    let events = active_referral().when(mark_lost(Some(ReasonCode::Other), "Merged with a rival"), now()).then_events();
    assert!(matches!(events.as_slice(), [ReferralEvent::Lost(e)] if e.reason.code == ReasonCode::Other));
}

#[test]
fn lost_refused_with_other_without_notes() {
    active_referral().when(mark_lost(Some(ReasonCode::Other), ""), now()).then_invalid(&["notes"]);
}

// ---------------------------------------------------------------------------
// Closed is terminal; moves not allowed from the current state
// ---------------------------------------------------------------------------

fn every_action_refused_when(status: Status) {
    for command in every_action() {
        given(history(status)).when(command, now()).then_err(closed(status));
    }
    given(history(status))
        .when(receive(receive_input()), now())
        .then_refused(|e| matches!(e, DomainError::AlreadyExists(_)));
}

#[test]
fn every_action_refused_when_declined() {
    every_action_refused_when(Status::Declined);
}

#[test]
fn every_action_refused_when_expired() {
    every_action_refused_when(Status::Expired);
}

#[test]
fn every_action_refused_when_won() {
    every_action_refused_when(Status::Won);
}

#[test]
fn every_action_refused_when_lost() {
    every_action_refused_when(Status::Lost);
}

#[test]
fn every_action_refused_when_referral_does_not_exist() {
    for command in every_action() {
        no_referral().when(command, now()).then_err(DomainError::ReferralNotFound(referral_id()));
    }
}

#[test]
fn closed_refusal_says_why() {
    let id = referral_id();
    for (status, word) in
        [(Status::Declined, "Declined"), (Status::Expired, "Expired"), (Status::Won, "Won"), (Status::Lost, "Lost")]
    {
        assert_eq!(
            closed(status).to_string(),
            format!("referral {id} is closed ({word}); no further changes are allowed")
        );
    }
}

#[test]
fn not_allowed_refusal_says_why() {
    assert_eq!(
        not_allowed(Status::Active, "accepting it", "New").to_string(),
        format!("referral {} is Active (Accepted); accepting it is not allowed (allowed from New)", referral_id())
    );
}

#[test]
fn only_allowed_moves_succeed_from_each_state() {
    // Index into every_action(): accept, decline, expire, add contact, edit, won, lost.
    let allowed_from = |status: Status| -> &'static [usize] {
        match status {
            Status::New => &[0, 1],
            Status::Active => &[3, 4, 5, 6],
            _ => &[],
        }
    };
    for status in ALL_STATUSES {
        for (i, command) in every_action().into_iter().enumerate() {
            let result = referral_domain::referral::decide(&fold(&history(status)), command, now());
            assert_eq!(result.is_ok(), allowed_from(status).contains(&i), "{status:?} action #{i}: {result:?}");
        }
    }
}

#[test]
fn status_and_substatus_follow_the_public_api() {
    let table: Vec<(&str, &str, bool)> =
        ALL_STATUSES.iter().map(|s| (s.status(), s.substatus(), s.is_closed())).collect();
    assert_eq!(
        table,
        [
            ("New", "Received", false),
            ("Active", "Accepted", false),
            ("Closed", "Declined", true),
            ("Closed", "Expired", true),
            ("Closed", "Won", true),
            ("Closed", "Lost", true),
        ]
    );
}

#[test]
fn evolve_ignores_events_without_a_received_referral() {
    for event in [accepted(), declined(), expired(), won(), lost(), contact_added("A", "a@b.co")] {
        assert_eq!(fold(&[event]), ReferralState(None));
    }
}

// ---------------------------------------------------------------------------
// Clocks: 24 hours, 72 hours, 14 days
// ---------------------------------------------------------------------------

#[test]
fn response_due_24_hours_after_receipt() {
    assert_eq!(response_due_at(received_at()), ts(2026, 11, 21, 9, 0, 0));
}

#[test]
fn overdue_not_reported_until_24_hours_passed() {
    assert!(!is_overdue(received_at(), at(received_at())));
    assert!(!is_overdue(received_at(), at(received_at() + Duration::hours(24))));
}

#[test]
fn overdue_reported_after_24_hours() {
    assert!(is_overdue(received_at(), at(received_at() + Duration::hours(24) + Duration::seconds(1))));
    assert!(is_overdue(received_at(), now()));
}

#[test]
fn contact_alert_hot_before_72_hours_when_direct_contact_requested() {
    assert_eq!(contact_alert(true, received_at(), at(received_at())), ContactAlert::Hot);
    assert_eq!(
        contact_alert(true, received_at(), at(received_at() + Duration::hours(72) - Duration::seconds(1))),
        ContactAlert::Hot
    );
}

#[test]
fn contact_alert_aging_from_72_hours() {
    assert_eq!(contact_alert(true, received_at(), at(received_at() + Duration::hours(72))), ContactAlert::Aging);
    assert_eq!(contact_alert(true, received_at(), now()), ContactAlert::Aging);
}

#[test]
fn contact_alert_none_without_direct_contact_request() {
    assert_eq!(contact_alert(false, received_at(), at(received_at())), ContactAlert::None);
    assert_eq!(contact_alert(false, received_at(), now()), ContactAlert::None);
}

#[test]
fn expiry_policy_allowed_when_positive_and_defaults_to_14_days() {
    assert_eq!(DEFAULT_EXPIRY, Duration::days(14));
    assert_eq!(ExpiryPolicy::default().expires_at(received_at()), ts(2026, 12, 4, 9, 0, 0));
    assert_eq!(ExpiryPolicy::new(Duration::hours(1)).map(|p| p.after()), Ok(Duration::hours(1)));
}

#[test]
fn expiry_policy_refused_when_not_positive() {
    assert!(ExpiryPolicy::new(Duration::zero()).is_err());
    assert!(ExpiryPolicy::new(Duration::days(-1)).is_err());
}

#[test]
fn now_today_is_the_utc_date() {
    assert_eq!(Now(ts(2026, 11, 24, 23, 59, 59)).today(), date(2026, 11, 24));
}

// ---------------------------------------------------------------------------
// Identity: a retried command must not write twice
// ---------------------------------------------------------------------------

#[test]
fn referral_id_same_for_a_retried_rfi() {
    assert_eq!(ReferralId::for_rfi(&rfi(), &partner(), &region()), referral_id());
}

#[test]
fn referral_id_differs_per_partner_and_region() {
    let other_partner = PartnerId::parse("northwind").unwrap();
    let other_region = RegionId::parse("apac").unwrap();
    let other_rfi = RfiId::parse("rfi-1002").unwrap();
    assert_ne!(ReferralId::for_rfi(&rfi(), &other_partner, &region()), referral_id());
    assert_ne!(ReferralId::for_rfi(&rfi(), &partner(), &other_region), referral_id());
    assert_ne!(ReferralId::for_rfi(&other_rfi, &partner(), &region()), referral_id());
    let stream = referral_id().stream();
    assert_eq!(ReferralId::from_stream(&stream), Some(referral_id()));
}

#[test]
fn command_id_event_ids_stable_for_a_retried_command() {
    let id = CommandId::parse("req-7").unwrap();
    let stream = referral_id().stream();
    assert_eq!(id.event_id(&stream, 0), CommandId::parse("req-7").unwrap().event_id(&stream, 0));
    assert_ne!(id.event_id(&stream, 0), id.event_id(&stream, 1));
    assert_ne!(id.event_id(&stream, 0), CommandId::parse("req-8").unwrap().event_id(&stream, 0));
}

#[test]
fn command_id_allowed_up_to_128_characters() {
    assert!(CommandId::parse("3f0e8a0c-5d1b-4c8e-9a57-0d5b2b1f4e11").is_ok());
    assert!(CommandId::parse(&text(128)).is_ok());
}

#[test]
fn command_id_refused_when_blank_too_long_or_with_control_characters() {
    for bad in ["".to_string(), "  ".to_string(), text(129), "req\n7".to_string()] {
        assert!(CommandId::parse(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn slug_ids_allowed_with_letters_digits_dash_underscore_dot_up_to_64() {
    for ok in ["emea", "us-west_2.a", &text(64)] {
        assert!(RegionId::parse(ok).is_ok(), "{ok:?}");
        assert!(PartnerId::parse(ok).is_ok(), "{ok:?}");
    }
}

#[test]
fn slug_ids_refused_when_empty_too_long_or_with_other_characters() {
    for bad in ["", "us west", "emea/1", "münchen", &text(65)] {
        assert!(RegionId::parse(bad).is_err(), "{bad:?}");
        assert!(LocationId::parse(bad).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------
// Money: integer minor units, no floating point
// ---------------------------------------------------------------------------

#[test]
fn money_allowed_as_exact_decimal_amounts() {
    let m = money("EUR", "12500.5");
    assert_eq!(
        (m.minor_units, m.amount_string(), m.units(), m.nanos()),
        (1_250_050, "12500.50".into(), 12_500, 500_000_000)
    );
    assert_eq!(money("JPY", "1500").minor_units, 1_500);
    assert_eq!(money("KWD", "1.125").amount_string(), "1.125");
    assert_eq!(Money::from_units_nanos("EUR", 12_500, 500_000_000), Ok(m));
    let json = serde_json::to_value(m).unwrap();
    assert_eq!(json, serde_json::json!({ "currency": "EUR", "amount": "12500.50" }));
    assert_eq!(serde_json::from_value::<Money>(json).unwrap(), m);
}

#[test]
fn money_refused_when_not_an_exact_decimal_in_the_currency() {
    for (code, amount) in
        [("EUR", "0.001"), ("JPY", "1.5"), ("EUR", "1e3"), ("EUR", "12,50"), ("EUR", ""), ("ABC", "1")]
    {
        assert!(Money::parse_decimal(code, amount).is_err(), "{code} {amount:?}");
    }
    assert!(Money::from_units_nanos("EUR", i64::MAX, 0).is_err());
    assert!(Money::from_units_nanos("EUR", 0, 1_000_000_000).is_err());
}

#[test]
fn size_bands_follow_the_domain() {
    let names: Vec<&str> = SizeBand::ALL.iter().map(SizeBand::as_str).collect();
    assert_eq!(names, ["1-9", "10-50", "51-250", "251-1000", "1001-5000", "5001-10000", "10001-20000", "20000+"]);
    assert_eq!(SizeBand::parse("51-250"), Ok(SizeBand::S51To250));
    assert!(SizeBand::parse("50-250").is_err());
}

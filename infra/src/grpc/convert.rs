//! Protobuf messages to the domain's inputs and the domain's state back to
//! protobuf. Conversions that can fail record a field violation under the
//! request's field path.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use referral_commands::handler::{RfiTarget, SubmitRfi};
use referral_domain::clock::{self, ContactAlert, Now};
use referral_domain::error::Violations;
use referral_domain::eventlog::Position;
use referral_domain::ids::{LocationId, PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::profile::{ExpertiseInput, LocationInput, ProfileChanges, ProfileInput};
use referral_domain::referral::{
    Consent, CustomerInput, MoneyInput, Outcome, Referral, RequirementsInput, Source, Status,
};
use referral_domain::values::{ContactInput, Money, ReasonCode, SizeBand};
use referral_domain::FieldViolation;

use super::pb;
use super::pb::google::r#type as gtype;

/// Fails with every violation collected so far.
pub fn finish(v: Violations) -> Result<(), Vec<FieldViolation>> {
    match v.into_result() {
        Ok(()) => Ok(()),
        Err(referral_domain::DomainError::Invalid(list)) => Err(list),
        Err(other) => Err(vec![FieldViolation { field: String::new(), description: other.to_string() }]),
    }
}

pub fn partner_id(field: &str, text: &str, v: &mut Violations) -> Option<PartnerId> {
    v.check(field, PartnerId::parse(text.trim()))
}

pub fn referral_id(text: &str, v: &mut Violations) -> Option<ReferralId> {
    if text.trim().is_empty() {
        v.add("referral_id", "is required");
        return None;
    }
    v.check("referral_id", ReferralId::parse(text.trim()))
}

pub fn contact(c: Option<&pb::Contact>) -> ContactInput {
    c.map(|c| ContactInput::new(&c.name, &c.email, &c.phone)).unwrap_or_default()
}

pub fn contacts(list: &[pb::Contact]) -> Vec<ContactInput> {
    list.iter().map(|c| contact(Some(c))).collect()
}

fn locations(list: &[pb::Location]) -> Vec<LocationInput> {
    list.iter()
        .map(|l| LocationInput { id: l.id.clone(), name: l.name.clone(), contacts: contacts(&l.contacts) })
        .collect()
}

fn expertise(e: Option<&pb::Expertise>) -> ExpertiseInput {
    e.map(|e| ExpertiseInput {
        industries: e.industries.clone(),
        products: e.products.clone(),
        services: e.services.clone(),
        solutions: e.solutions.clone(),
    })
    .unwrap_or_default()
}

/// A size band; `None` for unspecified.
pub fn size_band(field: &str, value: i32, v: &mut Violations) -> Option<SizeBand> {
    use pb::SizeBand as P;
    match P::try_from(value) {
        Ok(P::Unspecified) => None,
        Ok(P::SizeBand19) => Some(SizeBand::S1To9),
        Ok(P::SizeBand1050) => Some(SizeBand::S10To50),
        Ok(P::SizeBand51250) => Some(SizeBand::S51To250),
        Ok(P::SizeBand2511000) => Some(SizeBand::S251To1000),
        Ok(P::SizeBand10015000) => Some(SizeBand::S1001To5000),
        Ok(P::SizeBand500110000) => Some(SizeBand::S5001To10000),
        Ok(P::SizeBand1000120000) => Some(SizeBand::S10001To20000),
        Ok(P::Over20000) => Some(SizeBand::Over20000),
        Err(_) => {
            v.add(field, format!("{value} is not a SizeBand"));
            None
        }
    }
}

pub fn size_band_to_pb(s: SizeBand) -> pb::SizeBand {
    use pb::SizeBand as P;
    match s {
        SizeBand::S1To9 => P::SizeBand19,
        SizeBand::S10To50 => P::SizeBand1050,
        SizeBand::S51To250 => P::SizeBand51250,
        SizeBand::S251To1000 => P::SizeBand2511000,
        SizeBand::S1001To5000 => P::SizeBand10015000,
        SizeBand::S5001To10000 => P::SizeBand500110000,
        SizeBand::S10001To20000 => P::SizeBand1000120000,
        SizeBand::Over20000 => P::Over20000,
    }
}

fn size_bands(field: &str, list: &[i32], v: &mut Violations) -> Vec<SizeBand> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let band = size_band(&format!("{field}[{i}]"), *s, v);
            if band.is_none() && *s == 0 {
                v.add(format!("{field}[{i}]"), "is unspecified");
            }
            band
        })
        .collect()
}

/// A reason code; `None` for unspecified (the domain says it is required).
pub fn reason(value: i32, v: &mut Violations) -> Option<ReasonCode> {
    use pb::ReasonCode as P;
    match P::try_from(value) {
        Ok(P::Unspecified) => None,
        Ok(P::BudgetNotAdequate) => Some(ReasonCode::BudgetNotAdequate),
        Ok(P::CustomerDidNotRespond) => Some(ReasonCode::CustomerDidNotRespond),
        Ok(P::CustomerChoseAnotherVendor) => Some(ReasonCode::CustomerChoseAnotherVendor),
        Ok(P::CustomerRequirementNotMet) => Some(ReasonCode::CustomerRequirementNotMet),
        Ok(P::NotARealCustomer) => Some(ReasonCode::NotARealCustomer),
        Ok(P::TimelineTooShort) => Some(ReasonCode::TimelineTooShort),
        Ok(P::AbuseSpamPhishing) => Some(ReasonCode::AbuseSpamPhishing),
        Ok(P::Other) => Some(ReasonCode::Other),
        Err(_) => {
            v.add("reason", format!("{value} is not a ReasonCode"));
            None
        }
    }
}

pub fn reason_to_pb(r: ReasonCode) -> pb::ReasonCode {
    use pb::ReasonCode as P;
    match r {
        ReasonCode::BudgetNotAdequate => P::BudgetNotAdequate,
        ReasonCode::CustomerDidNotRespond => P::CustomerDidNotRespond,
        ReasonCode::CustomerChoseAnotherVendor => P::CustomerChoseAnotherVendor,
        ReasonCode::CustomerRequirementNotMet => P::CustomerRequirementNotMet,
        ReasonCode::NotARealCustomer => P::NotARealCustomer,
        ReasonCode::TimelineTooShort => P::TimelineTooShort,
        ReasonCode::AbuseSpamPhishing => P::AbuseSpamPhishing,
        ReasonCode::Other => P::Other,
    }
}

fn source(value: i32, v: &mut Violations) -> Option<Source> {
    use pb::Source as P;
    match P::try_from(value) {
        Ok(P::Unspecified) => {
            v.add("source", "is required (marketing campaign, sales agent, partner search or other)");
            None
        }
        Ok(P::MarketingCampaign) => Some(Source::MarketingCampaign),
        Ok(P::SalesAgent) => Some(Source::SalesAgent),
        Ok(P::PartnerSearch) => Some(Source::PartnerSearch),
        Ok(P::Other) => Some(Source::Other),
        Err(_) => {
            v.add("source", format!("{value} is not a Source"));
            None
        }
    }
}

fn source_to_pb(s: Source) -> pb::Source {
    match s {
        Source::MarketingCampaign => pb::Source::MarketingCampaign,
        Source::SalesAgent => pb::Source::SalesAgent,
        Source::PartnerSearch => pb::Source::PartnerSearch,
        Source::Other => pb::Source::Other,
    }
}

/// A required amount of money.
pub fn money(field: &str, m: Option<&gtype::Money>, v: &mut Violations) -> Option<MoneyInput> {
    match m {
        None => {
            v.add(field, "is required");
            None
        }
        Some(m) => Some(MoneyInput { currency_code: m.currency_code.clone(), units: m.units, nanos: m.nanos }),
    }
}

pub fn money_to_pb(m: &Money) -> gtype::Money {
    gtype::Money { currency_code: m.currency.code().to_string(), units: m.units(), nanos: m.nanos() }
}

/// An optional date; a malformed one is a violation.
pub fn date(field: &str, d: Option<&gtype::Date>, v: &mut Violations) -> Option<NaiveDate> {
    let d = d?;
    let parsed = u32::try_from(d.month)
        .ok()
        .zip(u32::try_from(d.day).ok())
        .and_then(|(m, day)| NaiveDate::from_ymd_opt(d.year, m, day));
    if parsed.is_none() {
        v.add(field, format!("{}-{:02}-{:02} is not a calendar date", d.year, d.month, d.day));
    }
    parsed
}

pub fn date_to_pb(d: NaiveDate) -> gtype::Date {
    gtype::Date { year: d.year(), month: d.month() as i32, day: d.day() as i32 }
}

pub fn timestamp_to_pb(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

pub fn timestamp(field: &str, t: Option<&prost_types::Timestamp>, v: &mut Violations) -> Option<DateTime<Utc>> {
    let t = t?;
    let parsed = u32::try_from(t.nanos).ok().and_then(|n| Utc.timestamp_opt(t.seconds, n).single());
    if parsed.is_none() {
        v.add(field, "is not a valid timestamp");
    }
    parsed
}

pub fn position_to_pb(p: Position) -> pb::LogPosition {
    pb::LogPosition { commit: p.commit, prepare: p.prepare }
}

pub fn register_profile(r: &pb::RegisterPartnerProfileRequest, v: &mut Violations) -> ProfileInput {
    ProfileInput {
        region: r.region.clone(),
        company_name: r.company_name.clone(),
        description: r.description.clone(),
        locations: locations(&r.locations),
        expertise: expertise(r.expertise.as_ref()),
        target_sizes: size_bands("target_sizes", &r.target_sizes, v),
    }
}

pub fn update_profile(r: &pb::UpdatePartnerProfileRequest, v: &mut Violations) -> ProfileChanges {
    ProfileChanges {
        region: r.region.clone(),
        company_name: r.company_name.clone(),
        description: r.description.clone(),
        locations: r.replace_locations.then(|| locations(&r.locations)),
        expertise: r.expertise.as_ref().map(|e| expertise(Some(e))),
        target_sizes: r.replace_target_sizes.then(|| size_bands("target_sizes", &r.target_sizes, v)),
    }
}

pub fn submit_rfi(r: &pb::SubmitRfiRequest, v: &mut Violations) -> Option<SubmitRfi> {
    let rfi = v.check("rfi_id", RfiId::parse(r.rfi_id.trim()));
    let mut targets = Vec::with_capacity(r.targets.len());
    for (i, t) in r.targets.iter().enumerate() {
        let partner = partner_id(&format!("targets[{i}].partner_id"), &t.partner_id, v);
        let region = v.check(&format!("targets[{i}].region"), RegionId::parse(t.region.trim()));
        let location = if t.location.trim().is_empty() {
            Some(None)
        } else {
            v.check(&format!("targets[{i}].location"), LocationId::parse(t.location.trim())).map(Some)
        };
        if let (Some(partner), Some(region), Some(location)) = (partner, region, location) {
            targets.push(RfiTarget { partner, region, location });
        }
    }
    if r.customer.is_none() {
        v.add("customer", "is required");
    }
    let c = r.customer.clone().unwrap_or_default();
    let customer = CustomerInput {
        company_name: c.company_name,
        industry: c.industry,
        size_band: size_band("customer.size_band", c.size_band, v),
        country: c.country,
        contact: contact(c.contact.as_ref()),
    };
    let q = r.requirements.clone().unwrap_or_default();
    let requirements = RequirementsInput {
        description: q.description,
        products: q.products,
        services: q.services,
        keywords: q.keywords,
    };
    let consent = r.consent.map(|c| Consent { contact: c.contact, share_details: c.share_details });
    let source = source(r.source, v);
    let received_at = timestamp("received_at", r.received_at.as_ref(), v);
    Some(SubmitRfi {
        rfi: rfi?,
        targets,
        customer,
        requirements,
        consent: consent.unwrap_or(Consent { contact: false, share_details: false }),
        direct_contact_requested: r.direct_contact_requested,
        source: source?,
        received_at,
    })
}

fn status_to_pb(s: Status) -> (pb::Status, pb::Substatus) {
    match s {
        Status::New => (pb::Status::New, pb::Substatus::Received),
        Status::Active => (pb::Status::Active, pb::Substatus::Accepted),
        Status::Declined => (pb::Status::Closed, pb::Substatus::Declined),
        Status::Expired => (pb::Status::Closed, pb::Substatus::Expired),
        Status::Won => (pb::Status::Closed, pb::Substatus::Won),
        Status::Lost => (pb::Status::Closed, pb::Substatus::Lost),
    }
}

pub fn alert_to_pb(a: ContactAlert) -> pb::ContactAlert {
    match a {
        ContactAlert::None => pb::ContactAlert::None,
        ContactAlert::Hot => pb::ContactAlert::Hot,
        ContactAlert::Aging => pb::ContactAlert::Aging,
    }
}

fn contact_to_pb(c: &referral_domain::values::Contact) -> pb::Contact {
    pb::Contact { name: c.name.clone(), email: c.email.clone(), phone: c.phone.clone().unwrap_or_default() }
}

/// A referral's state as the API shows it, with the clocks judged at `now`.
pub fn referral_to_pb(r: &Referral, revision: u64, position: Option<Position>, now: Now) -> pb::Referral {
    let (status, substatus) = status_to_pb(r.status);
    let alert = if r.status.is_closed() {
        ContactAlert::None
    } else {
        clock::contact_alert(r.direct_contact_requested, r.received_at, now)
    };
    let outcome = r.outcome.as_ref().map(|o| match o {
        Outcome::Declined { reason, at } | Outcome::Lost { reason, at } => pb::Outcome {
            closed_at: Some(timestamp_to_pb(*at)),
            reason: reason_to_pb(reason.code) as i32,
            reason_notes: reason.notes.clone().unwrap_or_default(),
            final_value: None,
            closed_on: None,
        },
        Outcome::Expired { at } => pb::Outcome { closed_at: Some(timestamp_to_pb(*at)), ..Default::default() },
        Outcome::Won { final_value, closed_on, at } => pb::Outcome {
            closed_at: Some(timestamp_to_pb(*at)),
            reason: 0,
            reason_notes: String::new(),
            final_value: Some(money_to_pb(final_value)),
            closed_on: Some(date_to_pb(*closed_on)),
        },
    });
    pb::Referral {
        referral_id: r.id.to_string(),
        rfi_id: r.rfi.to_string(),
        partner_id: r.partner.to_string(),
        region: r.region.to_string(),
        location: r.location.as_ref().map(ToString::to_string).unwrap_or_default(),
        status: status as i32,
        substatus: substatus as i32,
        customer: Some(pb::Customer {
            company_name: r.customer.company_name.clone(),
            industry: r.customer.industry.clone().unwrap_or_default(),
            size_band: size_band_to_pb(r.customer.size_band) as i32,
            country: r.customer.country.clone().unwrap_or_default(),
            contact: Some(contact_to_pb(&r.customer.contact)),
        }),
        requirements: Some(pb::Requirements {
            description: r.requirements.description.clone(),
            products: r.requirements.products.clone(),
            services: r.requirements.services.clone(),
            keywords: r.requirements.keywords.clone(),
        }),
        consent: Some(pb::Consent { contact: r.consent.contact, share_details: r.consent.share_details }),
        direct_contact_requested: r.direct_contact_requested,
        source: source_to_pb(r.source) as i32,
        received_at: Some(timestamp_to_pb(r.received_at)),
        response_due_at: Some(timestamp_to_pb(clock::response_due_at(r.received_at))),
        overdue: r.status == Status::New && clock::is_overdue(r.received_at, now),
        expires_at: Some(timestamp_to_pb(r.expires_at)),
        contact_alert: alert_to_pb(alert) as i32,
        accepted_at: r.accepted_at.map(timestamp_to_pb),
        engagement: r.engagement.as_ref().map(|g| pb::Engagement {
            name: g.name.clone(),
            estimated_value: Some(money_to_pb(&g.estimated_value)),
            estimated_purchase_date: Some(date_to_pb(g.estimated_purchase_date)),
            notes: g.notes.clone(),
            crm_id: g.crm_id.clone().unwrap_or_default(),
            campaign_id: g.campaign_id.clone().unwrap_or_default(),
        }),
        contacts: r.contacts.iter().map(contact_to_pb).collect(),
        outcome,
        last_changed_at: Some(timestamp_to_pb(r.last_changed_at)),
        stream_revision: revision,
        position: position.map(position_to_pb),
    }
}

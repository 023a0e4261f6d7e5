//! The referral: one RFI sent to one partner, from New through Active to Closed.
//!
//! | from | action | to |
//! |---|---|---|
//! | — | receive (RFI submitted) | New/Received |
//! | New | accept | Active/Accepted |
//! | New | decline | Closed/Declined |
//! | New | expire (14 days, the engine's scheduler) | Closed/Expired |
//! | Active | edit engagement, add contact | Active |
//! | Active | won / lost | Closed/Won, Closed/Lost |
//!
//! Closed is terminal. [`decide`] refuses every other move with an error that
//! says why, and [`evolve`] folds events into [`ReferralState`].

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::{ExpiryPolicy, Now};
use crate::error::{DomainError, Violations};
use crate::ids::{LocationId, PartnerId, ReferralId, RegionId, RfiId};
use crate::profile::PartnerState;
use crate::values::{
    contacts, optional_text, positive_money, required_text, tags, Contact, ContactInput, Money, Reason, ReasonCode,
    SizeBand, MAX_LONG_TEXT, MAX_REFERENCE, MAX_REFERRAL_CONTACTS, MAX_SHORT_TEXT,
};

/// Where in a referral's life it is: the public API's status and substatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// New / Received: waiting for the partner to answer.
    New,
    /// Active / Accepted: the partner is working the deal.
    Active,
    Declined,
    Expired,
    Won,
    Lost,
}

impl Status {
    pub fn is_closed(&self) -> bool {
        matches!(self, Status::Declined | Status::Expired | Status::Won | Status::Lost)
    }

    /// `New`, `Active` or `Closed`.
    pub fn status(&self) -> &'static str {
        match self {
            Status::New => "New",
            Status::Active => "Active",
            _ => "Closed",
        }
    }

    /// `Received`, `Accepted`, `Declined`, `Expired`, `Won` or `Lost`.
    pub fn substatus(&self) -> &'static str {
        match self {
            Status::New => "Received",
            Status::Active => "Accepted",
            Status::Declined => "Declined",
            Status::Expired => "Expired",
            Status::Won => "Won",
            Status::Lost => "Lost",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.status(), self.substatus())
    }
}

/// How the RFI reached the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    MarketingCampaign,
    SalesAgent,
    PartnerSearch,
    Other,
}

/// The customer's company and the person who asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub company_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub industry: Option<String>,
    pub size_band: SizeBand,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    pub contact: Contact,
}

/// What the customer asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    pub description: String,
    #[serde(default)]
    pub products: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
}

/// What the customer agreed to. Both are required for a referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub contact: bool,
    pub share_details: bool,
}

/// The deal as the partner describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    pub name: String,
    pub estimated_value: Money,
    pub estimated_purchase_date: NaiveDate,
    pub notes: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
}

/// How a closed referral ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    Declined { reason: Reason, at: DateTime<Utc> },
    Expired { at: DateTime<Utc> },
    Won { final_value: Money, closed_on: NaiveDate, at: DateTime<Utc> },
    Lost { reason: Reason, at: DateTime<Utc> },
}

/// A referral's current state, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub id: ReferralId,
    pub rfi: RfiId,
    pub partner: PartnerId,
    pub region: RegionId,
    pub location: Option<LocationId>,
    pub customer: Customer,
    pub requirements: Requirements,
    pub consent: Consent,
    pub direct_contact_requested: bool,
    pub source: Source,
    pub received_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: Status,
    pub accepted_at: Option<DateTime<Utc>>,
    pub engagement: Option<Engagement>,
    pub contacts: Vec<Contact>,
    pub outcome: Option<Outcome>,
    pub last_changed_at: DateTime<Utc>,
}

/// The state a decision is made against: no referral yet, or one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferralState(pub Option<Referral>);

/// A customer as given, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerInput {
    pub company_name: String,
    pub industry: String,
    pub size_band: Option<SizeBand>,
    pub country: String,
    pub contact: ContactInput,
}

/// Requirements as given, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequirementsInput {
    pub description: String,
    pub products: Vec<String>,
    pub services: Vec<String>,
    pub keywords: Vec<String>,
}

/// Money as given (`google.type.Money`): an ISO 4217 code, whole units and nanos.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoneyInput {
    pub currency_code: String,
    pub units: i64,
    pub nanos: i32,
}

impl MoneyInput {
    pub fn validate(&self) -> Result<Money, String> {
        Money::from_units_nanos(&self.currency_code, self.units, self.nanos)
    }
}

impl From<Money> for MoneyInput {
    fn from(m: Money) -> Self {
        MoneyInput { currency_code: m.currency.code().to_string(), units: m.units(), nanos: m.nanos() }
    }
}

/// A new referral for one partner, from an RFI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveReferral {
    pub rfi: RfiId,
    pub partner: PartnerId,
    pub region: RegionId,
    pub location: Option<LocationId>,
    pub customer: CustomerInput,
    pub requirements: RequirementsInput,
    pub consent: Consent,
    pub direct_contact_requested: bool,
    pub source: Source,
    pub received_at: DateTime<Utc>,
    pub expiry: ExpiryPolicy,
    /// The partner's profiles as the partner stream says now; the referral
    /// may only go to an active profile covering its region.
    pub partner_state: PartnerState,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptReferral {
    pub engagement_name: String,
    pub estimated_value: MoneyInput,
    pub estimated_purchase_date: Option<NaiveDate>,
    pub notes: String,
    pub crm_id: String,
    pub campaign_id: String,
    pub contacts: Vec<ContactInput>,
}

/// Changes to an engagement: `None` leaves a field as it is. For `crm_id` and
/// `campaign_id`, `Some("")` clears the field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateEngagement {
    pub name: Option<String>,
    pub estimated_value: Option<MoneyInput>,
    pub estimated_purchase_date: Option<NaiveDate>,
    pub notes: Option<String>,
    pub crm_id: Option<String>,
    pub campaign_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferralAction {
    Receive(Box<ReceiveReferral>),
    Accept(AcceptReferral),
    Decline {
        reason: Option<ReasonCode>,
        notes: String,
    },
    /// Issued by the engine's scheduler when the referral's time is up.
    Expire,
    AddContact(ContactInput),
    UpdateEngagement(UpdateEngagement),
    MarkWon {
        final_value: MoneyInput,
        closed_on: Option<NaiveDate>,
    },
    MarkLost {
        reason: Option<ReasonCode>,
        notes: String,
    },
}

impl ReferralAction {
    /// The action in words, for refusals ("accepting it is not allowed").
    pub fn describe(&self) -> &'static str {
        match self {
            ReferralAction::Receive(_) => "receiving it",
            ReferralAction::Accept(_) => "accepting it",
            ReferralAction::Decline { .. } => "declining it",
            ReferralAction::Expire => "expiring it",
            ReferralAction::AddContact(_) => "adding a contact",
            ReferralAction::UpdateEngagement(_) => "editing the engagement",
            ReferralAction::MarkWon { .. } => "marking it won",
            ReferralAction::MarkLost { .. } => "marking it lost",
        }
    }

    /// The type of the first event this action records when it is allowed.
    pub fn event_type(&self) -> &'static str {
        let index = match self {
            ReferralAction::Receive(_) => 0,
            ReferralAction::Accept(_) => 1,
            ReferralAction::Decline { .. } => 2,
            ReferralAction::Expire => 3,
            ReferralAction::AddContact(_) => 4,
            ReferralAction::UpdateEngagement(_) => 5,
            ReferralAction::MarkWon { .. } => 6,
            ReferralAction::MarkLost { .. } => 7,
        };
        ReferralEvent::TYPES[index]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralCommand {
    pub referral: ReferralId,
    pub action: ReferralAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralReceived {
    pub referral: ReferralId,
    pub rfi: RfiId,
    pub partner: PartnerId,
    pub region: RegionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationId>,
    pub customer: Customer,
    pub requirements: Requirements,
    pub consent: Consent,
    pub direct_contact_requested: bool,
    pub source: Source,
    pub received_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralAccepted {
    pub referral: ReferralId,
    pub engagement: Engagement,
    pub accepted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralDeclined {
    pub referral: ReferralId,
    pub reason: Reason,
    pub declined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralExpired {
    pub referral: ReferralId,
    pub expired_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactAdded {
    pub referral: ReferralId,
    pub contact: Contact,
    pub added_at: DateTime<Utc>,
}

/// Only the fields that changed are present. For `crm_id` and `campaign_id`
/// an empty string means the field was cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngagementUpdated {
    pub referral: ReferralId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_value: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_purchase_date: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralWon {
    pub referral: ReferralId,
    pub final_value: Money,
    pub closed_on: NaiveDate,
    pub reported_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralLost {
    pub referral: ReferralId,
    pub reason: Reason,
    pub reported_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferralEvent {
    Received(Box<ReferralReceived>),
    Accepted(ReferralAccepted),
    Declined(ReferralDeclined),
    Expired(ReferralExpired),
    ContactAdded(ContactAdded),
    EngagementUpdated(EngagementUpdated),
    Won(ReferralWon),
    Lost(ReferralLost),
}

impl ReferralEvent {
    /// Stable event type names: renaming one breaks history.
    pub const TYPES: [&'static str; 8] = [
        "ReferralReceived",
        "ReferralAccepted",
        "ReferralDeclined",
        "ReferralExpired",
        "ReferralContactAdded",
        "ReferralEngagementUpdated",
        "ReferralWon",
        "ReferralLost",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            ReferralEvent::Received(_) => Self::TYPES[0],
            ReferralEvent::Accepted(_) => Self::TYPES[1],
            ReferralEvent::Declined(_) => Self::TYPES[2],
            ReferralEvent::Expired(_) => Self::TYPES[3],
            ReferralEvent::ContactAdded(_) => Self::TYPES[4],
            ReferralEvent::EngagementUpdated(_) => Self::TYPES[5],
            ReferralEvent::Won(_) => Self::TYPES[6],
            ReferralEvent::Lost(_) => Self::TYPES[7],
        }
    }

    /// The referral the event belongs to.
    pub fn referral(&self) -> ReferralId {
        match self {
            ReferralEvent::Received(e) => e.referral,
            ReferralEvent::Accepted(e) => e.referral,
            ReferralEvent::Declined(e) => e.referral,
            ReferralEvent::Expired(e) => e.referral,
            ReferralEvent::ContactAdded(e) => e.referral,
            ReferralEvent::EngagementUpdated(e) => e.referral,
            ReferralEvent::Won(e) => e.referral,
            ReferralEvent::Lost(e) => e.referral,
        }
    }
}

fn check_date_not_past(field: &str, date: Option<NaiveDate>, now: Now, v: &mut Violations) -> Option<NaiveDate> {
    match date {
        None => {
            v.add(field, "is required");
            None
        }
        Some(d) if d < now.today() => {
            v.add(field, format!("{d} is in the past (today is {})", now.today()));
            None
        }
        Some(d) => Some(d),
    }
}

fn decide_receive(id: ReferralId, cmd: ReceiveReferral, now: Now) -> Result<Vec<ReferralEvent>, DomainError> {
    let mut v = Violations::new();
    let company_name = v.check("customer.company_name", required_text(&cmd.customer.company_name, MAX_SHORT_TEXT));
    let industry = v.check("customer.industry", optional_text(&cmd.customer.industry, MAX_SHORT_TEXT));
    let country = v.check("customer.country", optional_text(&cmd.customer.country, MAX_SHORT_TEXT));
    if cmd.customer.size_band.is_none() {
        v.add("customer.size_band", "is required");
    }
    let mut contact_v = Violations::new();
    let contact = cmd.customer.contact.validate(false, &mut contact_v);
    v.extend_prefixed("customer.contact.", contact_v);
    let description = v.check("requirements.description", required_text(&cmd.requirements.description, MAX_LONG_TEXT));
    let products = v.check("requirements.products", tags(&cmd.requirements.products));
    let services = v.check("requirements.services", tags(&cmd.requirements.services));
    let keywords = v.check("requirements.keywords", tags(&cmd.requirements.keywords));
    if !cmd.consent.contact {
        v.add("consent.contact", "the customer must consent to being contacted");
    }
    if !cmd.consent.share_details {
        v.add("consent.share_details", "the customer must consent to sharing their details with the partner");
    }
    if cmd.received_at > now.at() {
        v.add("received_at", format!("{} is in the future (now is {})", cmd.received_at, now.at()));
    }
    v.into_result()?;
    cmd.partner_state.check_can_receive(&cmd.partner, &cmd.region, cmd.location.as_ref())?;
    let customer = Customer {
        company_name: company_name.unwrap_or_default(),
        industry: industry.flatten(),
        size_band: cmd.customer.size_band.expect("validated"),
        country: country.flatten(),
        contact: contact.expect("validated"),
    };
    let requirements = Requirements {
        description: description.unwrap_or_default(),
        products: products.unwrap_or_default(),
        services: services.unwrap_or_default(),
        keywords: keywords.unwrap_or_default(),
    };
    Ok(vec![ReferralEvent::Received(Box::new(ReferralReceived {
        referral: id,
        rfi: cmd.rfi,
        partner: cmd.partner,
        region: cmd.region,
        location: cmd.location,
        customer,
        requirements,
        consent: cmd.consent,
        direct_contact_requested: cmd.direct_contact_requested,
        source: cmd.source,
        received_at: cmd.received_at,
        expires_at: cmd.expiry.expires_at(cmd.received_at),
    }))])
}

fn require(referral: &Referral, allowed: Status, action: &ReferralAction) -> Result<(), DomainError> {
    if referral.status.is_closed() {
        return Err(DomainError::Closed { referral: referral.id, status: referral.status });
    }
    if referral.status != allowed {
        return Err(DomainError::NotAllowed {
            referral: referral.id,
            status: referral.status,
            action: action.describe(),
            allowed_from: allowed.status(),
        });
    }
    Ok(())
}

fn require_not_expired(referral: &Referral, action: &ReferralAction, now: Now) -> Result<(), DomainError> {
    if now.at() >= referral.expires_at {
        return Err(DomainError::Precondition(format!(
            "referral {} went unanswered until {} and is expiring; {} is no longer allowed",
            referral.id,
            referral.expires_at,
            action.describe()
        )));
    }
    Ok(())
}

/// Decides which events a command produces, or why it is refused. Pure: the
/// same state, command and time always give the same answer.
pub fn decide(state: &ReferralState, command: ReferralCommand, now: Now) -> Result<Vec<ReferralEvent>, DomainError> {
    let id = command.referral;
    let action = command.action;
    let referral = match (&state.0, action) {
        (None, ReferralAction::Receive(cmd)) => return decide_receive(id, *cmd, now),
        (Some(existing), ReferralAction::Receive(_)) => {
            return Err(DomainError::AlreadyExists(format!(
                "referral {} already exists (RFI {} to partner {})",
                existing.id, existing.rfi, existing.partner
            )))
        }
        (None, _) => return Err(DomainError::ReferralNotFound(id)),
        (Some(referral), action) => (referral, action),
    };
    let (referral, action) = referral;
    match &action {
        ReferralAction::Receive(_) => unreachable!("handled above"),
        ReferralAction::Accept(accept) => {
            require(referral, Status::New, &action)?;
            require_not_expired(referral, &action, now)?;
            let mut v = Violations::new();
            let name = v.check("engagement_name", required_text(&accept.engagement_name, MAX_SHORT_TEXT));
            let value = v.check("estimated_value", accept.estimated_value.validate().and_then(positive_money));
            let date = check_date_not_past("estimated_purchase_date", accept.estimated_purchase_date, now, &mut v);
            let notes = v.check("notes", required_text(&accept.notes, MAX_LONG_TEXT));
            let crm_id = v.check("crm_id", optional_text(&accept.crm_id, MAX_REFERENCE));
            let campaign_id = v.check("campaign_id", optional_text(&accept.campaign_id, MAX_REFERENCE));
            let people = contacts("contacts", &accept.contacts, false, MAX_REFERRAL_CONTACTS, &mut v);
            v.into_result()?;
            let engagement = Engagement {
                name: name.unwrap_or_default(),
                estimated_value: value.expect("validated"),
                estimated_purchase_date: date.expect("validated"),
                notes: notes.unwrap_or_default(),
                crm_id: crm_id.flatten(),
                campaign_id: campaign_id.flatten(),
            };
            let mut events =
                vec![ReferralEvent::Accepted(ReferralAccepted { referral: id, engagement, accepted_at: now.at() })];
            events.extend(people.into_iter().map(|contact| {
                ReferralEvent::ContactAdded(ContactAdded { referral: id, contact, added_at: now.at() })
            }));
            Ok(events)
        }
        ReferralAction::Decline { reason, notes } => {
            require(referral, Status::New, &action)?;
            require_not_expired(referral, &action, now)?;
            let mut v = Violations::new();
            let reason = Reason::validate(*reason, notes, &mut v);
            v.into_result()?;
            Ok(vec![ReferralEvent::Declined(ReferralDeclined {
                referral: id,
                reason: reason.expect("validated"),
                declined_at: now.at(),
            })])
        }
        ReferralAction::Expire => {
            require(referral, Status::New, &action)?;
            if now.at() < referral.expires_at {
                return Err(DomainError::Precondition(format!(
                    "referral {} is not due to expire until {}",
                    referral.id, referral.expires_at
                )));
            }
            Ok(vec![ReferralEvent::Expired(ReferralExpired { referral: id, expired_at: now.at() })])
        }
        ReferralAction::AddContact(input) => {
            require(referral, Status::Active, &action)?;
            let mut v = Violations::new();
            let mut inner = Violations::new();
            let contact = input.validate(false, &mut inner);
            v.extend_prefixed("contact.", inner);
            v.into_result()?;
            let contact = contact.expect("validated");
            if referral.contacts.iter().any(|c| c.email.eq_ignore_ascii_case(&contact.email)) {
                return Err(DomainError::AlreadyExists(format!(
                    "{} is already a contact on referral {}",
                    contact.email, referral.id
                )));
            }
            if referral.contacts.len() >= MAX_REFERRAL_CONTACTS {
                return Err(DomainError::Precondition(format!(
                    "referral {} already has {MAX_REFERRAL_CONTACTS} contacts, the most it may have",
                    referral.id
                )));
            }
            Ok(vec![ReferralEvent::ContactAdded(ContactAdded { referral: id, contact, added_at: now.at() })])
        }
        ReferralAction::UpdateEngagement(update) => {
            require(referral, Status::Active, &action)?;
            let current = referral.engagement.as_ref().expect("an active referral has an engagement");
            let mut v = Violations::new();
            let name = update.name.as_deref().map(|n| v.check("engagement_name", required_text(n, MAX_SHORT_TEXT)));
            let value = update
                .estimated_value
                .as_ref()
                .map(|m| v.check("estimated_value", m.validate().and_then(positive_money)));
            let date = update
                .estimated_purchase_date
                .map(|d| check_date_not_past("estimated_purchase_date", Some(d), now, &mut v));
            let notes = update.notes.as_deref().map(|n| v.check("notes", required_text(n, MAX_LONG_TEXT)));
            let crm_id = update.crm_id.as_deref().map(|c| v.check("crm_id", optional_text(c, MAX_REFERENCE)));
            let campaign_id =
                update.campaign_id.as_deref().map(|c| v.check("campaign_id", optional_text(c, MAX_REFERENCE)));
            if name.is_none()
                && value.is_none()
                && date.is_none()
                && notes.is_none()
                && crm_id.is_none()
                && campaign_id.is_none()
            {
                v.add("update_mask", "names no field to change");
            }
            v.into_result()?;
            let changed_ref = |new: Option<Option<Option<String>>>, old: &Option<String>| match new {
                Some(Some(new)) if &new != old => Some(new.unwrap_or_default()),
                _ => None,
            };
            let event = EngagementUpdated {
                referral: id,
                name: name.flatten().filter(|n| n != &current.name),
                estimated_value: value.flatten().filter(|m| m != &current.estimated_value),
                estimated_purchase_date: date.flatten().filter(|d| d != &current.estimated_purchase_date),
                notes: notes.flatten().filter(|n| n != &current.notes),
                crm_id: changed_ref(crm_id, &current.crm_id),
                campaign_id: changed_ref(campaign_id, &current.campaign_id),
                updated_at: now.at(),
            };
            let changed = event.name.is_some()
                || event.estimated_value.is_some()
                || event.estimated_purchase_date.is_some()
                || event.notes.is_some()
                || event.crm_id.is_some()
                || event.campaign_id.is_some();
            // Only what changed is recorded; an edit that changes nothing records nothing.
            Ok(if changed { vec![ReferralEvent::EngagementUpdated(event)] } else { Vec::new() })
        }
        ReferralAction::MarkWon { final_value, closed_on } => {
            require(referral, Status::Active, &action)?;
            let mut v = Violations::new();
            let value = v.check("final_value", final_value.validate().and_then(positive_money));
            match closed_on {
                None => v.add("closed_on", "is required"),
                Some(d) if *d > now.today() => {
                    v.add("closed_on", format!("{d} is in the future (today is {})", now.today()))
                }
                Some(d) if *d < referral.received_at.date_naive() => v.add(
                    "closed_on",
                    format!("{d} is before the referral was received ({})", referral.received_at.date_naive()),
                ),
                Some(_) => {}
            }
            v.into_result()?;
            Ok(vec![ReferralEvent::Won(ReferralWon {
                referral: id,
                final_value: value.expect("validated"),
                closed_on: closed_on.expect("validated"),
                reported_at: now.at(),
            })])
        }
        ReferralAction::MarkLost { reason, notes } => {
            require(referral, Status::Active, &action)?;
            let mut v = Violations::new();
            let reason = Reason::validate(*reason, notes, &mut v);
            v.into_result()?;
            Ok(vec![ReferralEvent::Lost(ReferralLost {
                referral: id,
                reason: reason.expect("validated"),
                reported_at: now.at(),
            })])
        }
    }
}

/// Applies one event. Events are facts: evolve never refuses one.
pub fn evolve(state: ReferralState, event: &ReferralEvent) -> ReferralState {
    let referral = match (state.0, event) {
        (_, ReferralEvent::Received(e)) => Referral {
            id: e.referral,
            rfi: e.rfi.clone(),
            partner: e.partner.clone(),
            region: e.region.clone(),
            location: e.location.clone(),
            customer: e.customer.clone(),
            requirements: e.requirements.clone(),
            consent: e.consent,
            direct_contact_requested: e.direct_contact_requested,
            source: e.source,
            received_at: e.received_at,
            expires_at: e.expires_at,
            status: Status::New,
            accepted_at: None,
            engagement: None,
            contacts: Vec::new(),
            outcome: None,
            last_changed_at: e.received_at,
        },
        (None, _) => return ReferralState(None),
        (Some(mut r), event) => {
            match event {
                ReferralEvent::Received(_) => unreachable!("handled above"),
                ReferralEvent::Accepted(e) => {
                    r.status = Status::Active;
                    r.accepted_at = Some(e.accepted_at);
                    r.engagement = Some(e.engagement.clone());
                    r.last_changed_at = e.accepted_at;
                }
                ReferralEvent::Declined(e) => {
                    r.status = Status::Declined;
                    r.outcome = Some(Outcome::Declined { reason: e.reason.clone(), at: e.declined_at });
                    r.last_changed_at = e.declined_at;
                }
                ReferralEvent::Expired(e) => {
                    r.status = Status::Expired;
                    r.outcome = Some(Outcome::Expired { at: e.expired_at });
                    r.last_changed_at = e.expired_at;
                }
                ReferralEvent::ContactAdded(e) => {
                    r.contacts.push(e.contact.clone());
                    r.last_changed_at = e.added_at;
                }
                ReferralEvent::EngagementUpdated(e) => {
                    if let Some(g) = r.engagement.as_mut() {
                        apply_engagement_update(g, e);
                    }
                    r.last_changed_at = e.updated_at;
                }
                ReferralEvent::Won(e) => {
                    r.status = Status::Won;
                    r.outcome =
                        Some(Outcome::Won { final_value: e.final_value, closed_on: e.closed_on, at: e.reported_at });
                    r.last_changed_at = e.reported_at;
                }
                ReferralEvent::Lost(e) => {
                    r.status = Status::Lost;
                    r.outcome = Some(Outcome::Lost { reason: e.reason.clone(), at: e.reported_at });
                    r.last_changed_at = e.reported_at;
                }
            }
            r
        }
    };
    ReferralState(Some(referral))
}

/// Applies the changed fields of an [`EngagementUpdated`] to an engagement.
pub fn apply_engagement_update(g: &mut Engagement, e: &EngagementUpdated) {
    if let Some(n) = &e.name {
        g.name = n.clone();
    }
    if let Some(m) = e.estimated_value {
        g.estimated_value = m;
    }
    if let Some(d) = e.estimated_purchase_date {
        g.estimated_purchase_date = d;
    }
    if let Some(n) = &e.notes {
        g.notes = n.clone();
    }
    if let Some(c) = &e.crm_id {
        g.crm_id = (!c.is_empty()).then(|| c.clone());
    }
    if let Some(c) = &e.campaign_id {
        g.campaign_id = (!c.is_empty()).then(|| c.clone());
    }
}

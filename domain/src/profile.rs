//! The partner's business profiles: one per region, each with up to five
//! locations, expertise, target customer sizes and contacts; active or paused.
//!
//! One stream per partner (`partner-<id>`) holds all of its regions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::Now;
use crate::error::{DomainError, Violations};
use crate::ids::{LocationId, PartnerId, RegionId};
use crate::values::{
    contacts, optional_text, required_text, tags, Contact, ContactInput, SizeBand, MAX_DESCRIPTION, MAX_LOCATIONS,
    MAX_LOCATION_CONTACTS, MAX_SHORT_TEXT,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub id: LocationId,
    pub name: String,
    #[serde(default)]
    pub contacts: Vec<Contact>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expertise {
    #[serde(default)]
    pub industries: Vec<String>,
    #[serde(default)]
    pub products: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
    /// Free-form solution keywords.
    #[serde(default)]
    pub solutions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileStatus {
    Active,
    Paused,
}

/// A partner's profile for one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionProfile {
    pub company_name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub locations: Vec<Location>,
    pub expertise: Expertise,
    /// Customer sizes the partner takes; the ones left out are opted out of.
    pub target_sizes: Vec<SizeBand>,
    pub status: ProfileStatus,
}

/// Everything the partner stream says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerState {
    pub partner: Option<PartnerId>,
    pub regions: BTreeMap<RegionId, RegionProfile>,
}

impl PartnerState {
    /// Refuses unless the partner has an active profile for `region` that
    /// includes `location` (when one is named).
    pub fn check_can_receive(
        &self,
        partner: &PartnerId,
        region: &RegionId,
        location: Option<&LocationId>,
    ) -> Result<(), DomainError> {
        if self.regions.is_empty() {
            return Err(DomainError::Precondition(format!(
                "partner {partner} has no registered business profile; register one before sending referrals"
            )));
        }
        let Some(profile) = self.regions.get(region) else {
            let covered: Vec<&str> = self.regions.keys().map(RegionId::as_str).collect();
            return Err(DomainError::Precondition(format!(
                "partner {partner} has no profile for region {region} (it covers {})",
                covered.join(", ")
            )));
        };
        if profile.status == ProfileStatus::Paused {
            return Err(DomainError::Precondition(format!(
                "partner {partner}'s profile for region {region} is paused; it takes no new referrals"
            )));
        }
        if let Some(location) = location {
            if !profile.locations.iter().any(|l| &l.id == location) {
                let known: Vec<&str> = profile.locations.iter().map(|l| l.id.as_str()).collect();
                return Err(DomainError::Precondition(format!(
                    "location {location} is not one of partner {partner}'s locations in region {region} ({})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// A location as given, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocationInput {
    pub id: String,
    pub name: String,
    pub contacts: Vec<ContactInput>,
}

/// Expertise as given, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpertiseInput {
    pub industries: Vec<String>,
    pub products: Vec<String>,
    pub services: Vec<String>,
    pub solutions: Vec<String>,
}

/// A region profile as given, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileInput {
    pub region: String,
    pub company_name: String,
    pub description: String,
    pub locations: Vec<LocationInput>,
    pub expertise: ExpertiseInput,
    /// Empty means every size.
    pub target_sizes: Vec<SizeBand>,
}

/// Changes to a region profile: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChanges {
    pub region: String,
    pub company_name: Option<String>,
    pub description: Option<String>,
    pub locations: Option<Vec<LocationInput>>,
    pub expertise: Option<ExpertiseInput>,
    pub target_sizes: Option<Vec<SizeBand>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerAction {
    RegisterProfile(ProfileInput),
    UpdateProfile(ProfileChanges),
    PauseProfile { region: String },
    ResumeProfile { region: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerCommand {
    pub partner: PartnerId,
    pub action: PartnerAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRegistered {
    pub partner: PartnerId,
    pub region: RegionId,
    pub profile: RegionProfile,
    pub registered_at: DateTime<Utc>,
}

/// Only the fields that changed are present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileUpdated {
    pub partner: PartnerId,
    pub region: RegionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    /// `Some("")` clears the description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<Location>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expertise: Option<Expertise>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sizes: Option<Vec<SizeBand>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfilePaused {
    pub partner: PartnerId,
    pub region: RegionId,
    pub paused_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileResumed {
    pub partner: PartnerId,
    pub region: RegionId,
    pub resumed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerEvent {
    ProfileRegistered(ProfileRegistered),
    ProfileUpdated(ProfileUpdated),
    ProfilePaused(ProfilePaused),
    ProfileResumed(ProfileResumed),
}

impl PartnerEvent {
    /// Stable event type names: renaming one breaks history.
    pub const TYPES: [&'static str; 4] =
        ["PartnerProfileRegistered", "PartnerProfileUpdated", "PartnerProfilePaused", "PartnerProfileResumed"];

    pub fn event_type(&self) -> &'static str {
        match self {
            PartnerEvent::ProfileRegistered(_) => Self::TYPES[0],
            PartnerEvent::ProfileUpdated(_) => Self::TYPES[1],
            PartnerEvent::ProfilePaused(_) => Self::TYPES[2],
            PartnerEvent::ProfileResumed(_) => Self::TYPES[3],
        }
    }
}

fn validate_locations(list: &[LocationInput], v: &mut Violations) -> Vec<Location> {
    if list.is_empty() {
        v.add("locations", "at least one location is required");
    }
    if list.len() > MAX_LOCATIONS {
        v.add("locations", format!("has {} locations; a region profile has at most {MAX_LOCATIONS}", list.len()));
    }
    let mut out: Vec<Location> = Vec::new();
    for (i, input) in list.iter().enumerate() {
        let mut inner = Violations::new();
        let id = inner.check("id", LocationId::parse(input.id.trim()));
        let name = inner.check("name", required_text(&input.name, MAX_SHORT_TEXT));
        let people = contacts("contacts", &input.contacts, false, MAX_LOCATION_CONTACTS, &mut inner);
        if let (Some(id), Some(name)) = (id, name) {
            if out.iter().any(|l| l.id == id) {
                inner.add("id", format!("location {id} appears twice"));
            } else {
                out.push(Location { id, name, contacts: people });
            }
        }
        v.extend_prefixed(&format!("locations[{i}]."), inner);
    }
    out
}

fn validate_expertise(input: &ExpertiseInput, v: &mut Violations) -> Expertise {
    Expertise {
        industries: v.check("expertise.industries", tags(&input.industries)).unwrap_or_default(),
        products: v.check("expertise.products", tags(&input.products)).unwrap_or_default(),
        services: v.check("expertise.services", tags(&input.services)).unwrap_or_default(),
        solutions: v.check("expertise.solutions", tags(&input.solutions)).unwrap_or_default(),
    }
}

fn normalize_sizes(sizes: &[SizeBand]) -> Vec<SizeBand> {
    if sizes.is_empty() {
        return SizeBand::ALL.to_vec();
    }
    let mut out = sizes.to_vec();
    out.sort();
    out.dedup();
    out
}

fn parse_region(region: &str, v: &mut Violations) -> Option<RegionId> {
    v.check("region", RegionId::parse(region.trim()))
}

fn description(text: &str) -> Result<Option<String>, String> {
    optional_text(text, MAX_DESCRIPTION)
}

/// Decides what a partner command changes.
pub fn decide(state: &PartnerState, command: PartnerCommand, now: Now) -> Result<Vec<PartnerEvent>, DomainError> {
    let partner = command.partner;
    match command.action {
        PartnerAction::RegisterProfile(input) => {
            let mut v = Violations::new();
            let region = parse_region(&input.region, &mut v);
            let company_name = v.check("company_name", required_text(&input.company_name, MAX_SHORT_TEXT));
            let description = v.check("description", description(&input.description));
            let locations = validate_locations(&input.locations, &mut v);
            let expertise = validate_expertise(&input.expertise, &mut v);
            v.into_result()?;
            let (Some(region), Some(company_name), Some(description)) = (region, company_name, description) else {
                unreachable!("validation passed");
            };
            if state.regions.contains_key(&region) {
                return Err(DomainError::AlreadyExists(format!(
                    "partner {partner} already has a profile for region {region}; update it instead"
                )));
            }
            let profile = RegionProfile {
                company_name,
                description,
                locations,
                expertise,
                target_sizes: normalize_sizes(&input.target_sizes),
                status: ProfileStatus::Active,
            };
            Ok(vec![PartnerEvent::ProfileRegistered(ProfileRegistered {
                partner,
                region,
                profile,
                registered_at: now.at(),
            })])
        }
        PartnerAction::UpdateProfile(changes) => {
            let mut v = Violations::new();
            let region = parse_region(&changes.region, &mut v);
            let company_name =
                changes.company_name.as_deref().map(|n| v.check("company_name", required_text(n, MAX_SHORT_TEXT)));
            let new_description = changes.description.as_deref().map(|d| v.check("description", description(d)));
            let locations = changes.locations.as_deref().map(|l| validate_locations(l, &mut v));
            let expertise = changes.expertise.as_ref().map(|e| validate_expertise(e, &mut v));
            let nothing = company_name.is_none()
                && new_description.is_none()
                && locations.is_none()
                && expertise.is_none()
                && changes.target_sizes.is_none();
            if nothing {
                v.add("update_mask", "names no field to change");
            }
            v.into_result()?;
            let region = region.expect("validation passed");
            let profile = existing(state, &partner, &region)?;
            let mut event = ProfileUpdated {
                partner,
                region,
                company_name: None,
                description: None,
                locations: None,
                expertise: None,
                target_sizes: None,
                updated_at: now.at(),
            };
            if let Some(Some(name)) = company_name {
                event.company_name = (name != profile.company_name).then_some(name);
            }
            if let Some(Some(d)) = new_description {
                event.description = (d != profile.description).then(|| d.unwrap_or_default());
            }
            if let Some(l) = locations {
                event.locations = (l != profile.locations).then_some(l);
            }
            if let Some(e) = expertise {
                event.expertise = (e != profile.expertise).then_some(e);
            }
            if let Some(sizes) = changes.target_sizes {
                let sizes = normalize_sizes(&sizes);
                event.target_sizes = (sizes != profile.target_sizes).then_some(sizes);
            }
            let changed = event.company_name.is_some()
                || event.description.is_some()
                || event.locations.is_some()
                || event.expertise.is_some()
                || event.target_sizes.is_some();
            // Setting a field to the value it already has records nothing.
            Ok(if changed { vec![PartnerEvent::ProfileUpdated(event)] } else { Vec::new() })
        }
        PartnerAction::PauseProfile { region } => {
            let mut v = Violations::new();
            let region = parse_region(&region, &mut v);
            v.into_result()?;
            let region = region.expect("validation passed");
            let profile = existing(state, &partner, &region)?;
            if profile.status == ProfileStatus::Paused {
                return Err(DomainError::Precondition(format!(
                    "partner {partner}'s profile for region {region} is already paused"
                )));
            }
            Ok(vec![PartnerEvent::ProfilePaused(ProfilePaused { partner, region, paused_at: now.at() })])
        }
        PartnerAction::ResumeProfile { region } => {
            let mut v = Violations::new();
            let region = parse_region(&region, &mut v);
            v.into_result()?;
            let region = region.expect("validation passed");
            let profile = existing(state, &partner, &region)?;
            if profile.status == ProfileStatus::Active {
                return Err(DomainError::Precondition(format!(
                    "partner {partner}'s profile for region {region} is already active"
                )));
            }
            Ok(vec![PartnerEvent::ProfileResumed(ProfileResumed { partner, region, resumed_at: now.at() })])
        }
    }
}

fn existing<'a>(
    state: &'a PartnerState,
    partner: &PartnerId,
    region: &RegionId,
) -> Result<&'a RegionProfile, DomainError> {
    if state.regions.is_empty() {
        return Err(DomainError::PartnerNotFound(partner.clone()));
    }
    state.regions.get(region).ok_or_else(|| {
        DomainError::Precondition(format!("partner {partner} has no profile for region {region}; register it first"))
    })
}

/// Applies one event to the partner state.
pub fn evolve(mut state: PartnerState, event: &PartnerEvent) -> PartnerState {
    match event {
        PartnerEvent::ProfileRegistered(e) => {
            state.partner = Some(e.partner.clone());
            state.regions.insert(e.region.clone(), e.profile.clone());
        }
        PartnerEvent::ProfileUpdated(e) => {
            if let Some(profile) = state.regions.get_mut(&e.region) {
                if let Some(name) = &e.company_name {
                    profile.company_name = name.clone();
                }
                if let Some(d) = &e.description {
                    profile.description = (!d.is_empty()).then(|| d.clone());
                }
                if let Some(l) = &e.locations {
                    profile.locations = l.clone();
                }
                if let Some(x) = &e.expertise {
                    profile.expertise = x.clone();
                }
                if let Some(s) = &e.target_sizes {
                    profile.target_sizes = s.clone();
                }
            }
        }
        PartnerEvent::ProfilePaused(e) => {
            if let Some(profile) = state.regions.get_mut(&e.region) {
                profile.status = ProfileStatus::Paused;
            }
        }
        PartnerEvent::ProfileResumed(e) => {
            if let Some(profile) = state.regions.get_mut(&e.region) {
                profile.status = ProfileStatus::Active;
            }
        }
    }
    state
}

//! Identifiers. Each one validates its text once, at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::eventlog::StreamName;

/// Longest partner, region, location, RFI or command id accepted.
pub const MAX_ID_LEN: usize = 64;

fn check_slug(kind: &str, text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("{kind} is required"));
    }
    if text.len() > MAX_ID_LEN {
        return Err(format!("{kind} is longer than {MAX_ID_LEN} characters"));
    }
    if let Some(bad) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')) {
        return Err(format!("{kind} {text:?} contains {bad:?}; use letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, String> {
                check_slug($kind, text)?;
                Ok(Self(text.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                check_slug($kind, &value)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

slug_id!(
    /// A partner company, e.g. `contoso-consulting`.
    PartnerId,
    "partner id"
);
slug_id!(
    /// A region a partner profile covers, e.g. `emea` or `us-west`.
    RegionId,
    "region"
);
slug_id!(
    /// A location within a region's profile, e.g. `berlin`.
    LocationId,
    "location"
);
slug_id!(
    /// The customer's request for information, as the intake service names it.
    RfiId,
    "rfi id"
);

impl PartnerId {
    pub fn stream(&self) -> StreamName {
        StreamName::new(format!("partner-{}", self.0)).expect("partner ids are valid stream names")
    }
}

/// A referral: one RFI sent to one partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReferralId(pub Uuid);

/// Namespace for ids the engine derives (referral ids, event ids).
pub const ENGINE_NAMESPACE: Uuid = Uuid::from_u128(0x5c1f_2d8e_4b7a_4e61_9a3d_0f6b_8c2e_7d41);

impl ReferralId {
    pub fn parse(text: &str) -> Result<Self, String> {
        Uuid::parse_str(text).map(ReferralId).map_err(|_| format!("referral id {text:?} is not a UUID"))
    }

    /// The id of the referral an RFI creates for one partner. Deterministic, so a
    /// retried submission names the same referrals.
    pub fn for_rfi(rfi: &RfiId, partner: &PartnerId, region: &RegionId) -> Self {
        let key = format!("rfi/{}/{}/{}", rfi.0, partner.0, region.0);
        ReferralId(Uuid::new_v5(&ENGINE_NAMESPACE, key.as_bytes()))
    }

    pub fn stream(&self) -> StreamName {
        StreamName::new(format!("referral-{}", self.0)).expect("referral ids are valid stream names")
    }

    /// Parses the id back out of a `referral-<uuid>` stream name.
    pub fn from_stream(stream: &StreamName) -> Option<Self> {
        stream.as_str().strip_prefix("referral-").and_then(|s| Uuid::parse_str(s).ok()).map(ReferralId)
    }
}

impl fmt::Display for ReferralId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A client-chosen id that makes a command idempotent: the same command id
/// never writes twice (AIP-155 request id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(String);

/// Longest command id accepted.
pub const MAX_COMMAND_ID_LEN: usize = 128;

impl CommandId {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("request id is required (a client-chosen id, e.g. a UUID, reused on retries)".into());
        }
        if text.len() > MAX_COMMAND_ID_LEN {
            return Err(format!("request id is longer than {MAX_COMMAND_ID_LEN} characters"));
        }
        if text.chars().any(char::is_control) {
            return Err("request id contains a control character".into());
        }
        Ok(CommandId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the `index`-th event this command writes to `stream`.
    pub fn event_id(&self, stream: &StreamName, index: usize) -> Uuid {
        let key = format!("event/{}/{}/{}", self.0, stream, index);
        Uuid::new_v5(&ENGINE_NAMESPACE, key.as_bytes())
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

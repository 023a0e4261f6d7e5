//! The clocks that matter: respond within 24 hours, the 72-hour contact alert,
//! expiry after 14 days. Time is always an input ([`Now`]); nothing here reads
//! the system clock, so tests and replays are deterministic.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// The engine's idea of the present moment, handed to every decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now(pub DateTime<Utc>);

impl Now {
    pub fn at(&self) -> DateTime<Utc> {
        self.0
    }

    /// Today's date in UTC: the day against which "not in the past" is judged.
    pub fn today(&self) -> NaiveDate {
        self.0.date_naive()
    }
}

/// Partners are advised to accept or decline within a day.
pub const RESPONSE_WINDOW: Duration = Duration::hours(24);
/// How long a direct-contact request keeps its hot alert before it ages.
pub const CONTACT_ALERT_WINDOW: Duration = Duration::hours(72);
/// How long a referral may stay New before the engine expires it.
pub const DEFAULT_EXPIRY: Duration = Duration::days(14);

/// When the partner's answer is due.
pub fn response_due_at(received_at: DateTime<Utc>) -> DateTime<Utc> {
    received_at + RESPONSE_WINDOW
}

/// Whether a referral that is still New is past its response deadline.
pub fn is_overdue(received_at: DateTime<Utc>, now: Now) -> bool {
    now.0 > response_due_at(received_at)
}

/// Which alert a referral carries now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactAlert {
    /// The customer did not ask to be contacted directly.
    None,
    /// The customer asked to be contacted directly, less than 72 hours ago.
    Hot,
    /// The customer asked to be contacted directly, 72 hours ago or more.
    Aging,
}

/// The alert that applies now: hot for 72 hours after receipt when the
/// customer asked for direct contact, aging from then on.
pub fn contact_alert(direct_contact_requested: bool, received_at: DateTime<Utc>, now: Now) -> ContactAlert {
    if !direct_contact_requested {
        ContactAlert::None
    } else if now.0 < received_at + CONTACT_ALERT_WINDOW {
        ContactAlert::Hot
    } else {
        ContactAlert::Aging
    }
}

/// How long an unanswered referral lives. Fixed into each referral when it is
/// received (`expires_at`), so changing the setting affects new referrals only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryPolicy {
    after: Duration,
}

impl ExpiryPolicy {
    pub fn new(after: Duration) -> Result<ExpiryPolicy, String> {
        if after <= Duration::zero() {
            return Err("the expiry period must be positive".into());
        }
        Ok(ExpiryPolicy { after })
    }

    pub fn after(&self) -> Duration {
        self.after
    }

    pub fn expires_at(&self, received_at: DateTime<Utc>) -> DateTime<Utc> {
        received_at + self.after
    }
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        ExpiryPolicy { after: DEFAULT_EXPIRY }
    }
}

//! The `deadlines` projection: when each referral still New falls due to
//! expire. The expiry scheduler reads it to find the referrals to expire.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use referral_domain::codec::DomainEvent;
use referral_domain::referral::ReferralEvent;
use rusqlite::{params, Connection};

use crate::projection::{from_micros, micros, Applier, ApplyError, BatchError, ProjectedEvent, Projection, Version};
use crate::ViewError;

pub const NAME: &str = "deadlines";
const TABLE: &str = "deadlines";

/// A referral that is due (or will be due) to expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    pub referral: String,
    pub partner: String,
    pub expires_at: DateTime<Utc>,
}

pub struct DeadlinesProjection;

impl Projection for DeadlinesProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> u32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    fn create(&self, conn: &Connection, version: Version) -> rusqlite::Result<()> {
        let t = version.table(TABLE);
        conn.execute_batch(&format!(
            "CREATE TABLE {t} (
                referral TEXT PRIMARY KEY,
                partner TEXT NOT NULL,
                expires_at INTEGER NOT NULL
            );"
        ))
    }

    fn indexes(&self, version: Version) -> Vec<String> {
        let t = version.table(TABLE);
        vec![format!("CREATE INDEX IF NOT EXISTS {t}_by_time ON {t} (expires_at, referral)")]
    }

    fn applier(&self, version: Version) -> Box<dyn Applier> {
        Box::new(DeadlinesApplier { version, pending: HashMap::new() })
    }
}

/// Holds each referral's change until the flush: most referrals are answered
/// soon after they arrive, so a rebuild that applies both events in one
/// transaction writes nothing for them.
struct DeadlinesApplier {
    version: Version,
    /// Referral id to its deadline (partner, expires-at), or `None` once it
    /// left New.
    pending: HashMap<String, Option<(String, i64)>>,
}

impl Applier for DeadlinesApplier {
    fn apply(&mut self, _conn: &Connection, events: &[Arc<ProjectedEvent>]) -> Result<(), BatchError> {
        for e in events {
            match &e.event {
                DomainEvent::Referral(ReferralEvent::Received(r)) => {
                    let deadline = (r.partner.as_str().to_string(), micros(r.expires_at));
                    self.pending.insert(r.referral.to_string(), Some(deadline));
                }
                // Any answer or expiry takes the referral out of New for good.
                DomainEvent::Referral(
                    event @ (ReferralEvent::Accepted(_) | ReferralEvent::Declined(_) | ReferralEvent::Expired(_)),
                ) => {
                    self.pending.insert(event.referral().to_string(), None);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn flush(&mut self, conn: &Connection) -> Result<(), ApplyError> {
        let t = self.version.table(TABLE);
        let mut insert = conn.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {t} (referral, partner, expires_at) VALUES (?1, ?2, ?3)"
        ))?;
        let mut delete = conn.prepare_cached(&format!("DELETE FROM {t} WHERE referral = ?1"))?;
        for (referral, deadline) in self.pending.drain() {
            match deadline {
                Some((partner, expires_at)) => insert.execute(params![referral, partner, expires_at])?,
                None => delete.execute([referral])?,
            };
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.pending.clear();
    }
}

/// Referrals due to expire at or before `now`, earliest first.
pub fn due(conn: &Connection, version: Version, now: DateTime<Utc>, limit: u32) -> Result<Vec<Deadline>, ViewError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT referral, partner, expires_at FROM {} WHERE expires_at <= ?1 ORDER BY expires_at, referral LIMIT ?2",
        version.table(TABLE)
    ))?;
    let rows = stmt
        .query_map(params![micros(now), limit], |row| {
            Ok(Deadline { referral: row.get(0)?, partner: row.get(1)?, expires_at: from_micros(row.get(2)?) })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

//! The `history` projection: each partner's accept/decline history, per
//! profile (region): how many referrals it received, accepted, declined, let
//! expire, won and lost; why it declined and lost; how fast it answered; its
//! acceptance and win rates broken down by the RFI's features; the deal values
//! and close dates it reported. This is what matching learns from.
//!
//! Counters are summed per batch in memory and written once per batch, so a
//! rebuild does not rewrite the same counter row for every event.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use referral_domain::codec::DomainEvent;
use referral_domain::referral::ReferralEvent;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::projection::{from_micros, micros, Applier, ApplyError, BatchError, ProjectedEvent, Projection, Version};
use crate::ViewError;

pub const NAME: &str = "history";
const REFERRALS: &str = "history_referrals";
const STATS: &str = "history_stats";
const REASONS: &str = "history_reasons";
const DEALS: &str = "history_deals";

/// How many of the latest reported deals a history lists.
pub const RECENT_DEALS: u32 = 20;

/// What happened to the referrals of a partner (or of one feature value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub received: u64,
    pub accepted: u64,
    pub declined: u64,
    pub expired: u64,
    pub won: u64,
    pub lost: u64,
}

impl Counts {
    /// Accepted out of those answered or expired; `None` before any.
    pub fn acceptance_rate(&self) -> Option<f64> {
        let decided = self.accepted + self.declined + self.expired;
        (decided > 0).then(|| self.accepted as f64 / decided as f64)
    }

    /// Won out of those closed as won or lost; `None` before any.
    pub fn win_rate(&self) -> Option<f64> {
        let closed = self.won + self.lost;
        (closed > 0).then(|| self.won as f64 / closed as f64)
    }

    fn add(&mut self, other: &Counts) {
        self.received += other.received;
        self.accepted += other.accepted;
        self.declined += other.declined;
        self.expired += other.expired;
        self.won += other.won;
        self.lost += other.lost;
    }
}

/// Acceptance and win figures for one value of one RFI feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureStats {
    /// `industry`, `size_band`, `product`, `service`, `keyword` or `region`.
    pub kind: String,
    pub value: String,
    pub counts: Counts,
}

/// How many referrals were declined or lost for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
}

/// A won deal as the partner reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deal {
    pub referral: String,
    pub region: String,
    pub currency: String,
    pub minor_units: i64,
    pub closed_on: NaiveDate,
    pub reported_at: DateTime<Utc>,
}

/// The sum of won deals in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DealTotal {
    pub currency: String,
    pub deals: u64,
    pub minor_units: i64,
}

/// Time from receipt to accept or decline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseTimes {
    pub responded: u64,
    pub median_seconds: Option<i64>,
    pub p90_seconds: Option<i64>,
}

/// A partner's history, overall or for one region.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerHistory {
    pub partner: String,
    pub region: Option<String>,
    pub counts: Counts,
    pub decline_reasons: Vec<ReasonCount>,
    pub loss_reasons: Vec<ReasonCount>,
    pub response_times: ResponseTimes,
    pub by_feature: Vec<FeatureStats>,
    pub deal_totals: Vec<DealTotal>,
    pub recent_deals: Vec<Deal>,
}

pub struct HistoryProjection;

/// What the projection remembers of each referral to attribute later events.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tracked {
    partner: String,
    region: String,
    received_at: i64,
    features: Vec<(String, String)>,
}

/// A counter row's key (partner, region, kind, value) as one string, each
/// part preceded by its length, so that counting an event finds counters
/// that exist already without allocating a key (measured: building four-string
/// keys took a quarter of this projection's time in a rebuild).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StatKey(String);

impl StatKey {
    fn write(into: &mut String, parts: [&str; 4]) {
        use std::fmt::Write;
        into.clear();
        for part in parts {
            let _ = write!(into, "{}:", part.len());
            into.push_str(part);
        }
    }

    fn parts(&self) -> [&str; 4] {
        let mut rest = self.0.as_str();
        std::array::from_fn(|_| {
            let (len, tail) = rest.split_once(':').unwrap_or(("0", ""));
            let (part, tail) = tail.split_at(len.parse::<usize>().unwrap_or(0).min(tail.len()));
            rest = tail;
            part
        })
    }
}

impl std::borrow::Borrow<str> for StatKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

type ReasonKey = (String, String, &'static str, String);

/// A `history_referrals` row's change held until the flush.
#[derive(Default)]
struct RowChange {
    /// The row does not exist yet: insert it.
    new: bool,
    status: Option<&'static str>,
    /// Responded at (micros) and the response time in seconds.
    responded: Option<(i64, i64)>,
}

/// Sums counters and reasons in memory and holds each referral's row change
/// until the flush, so a rebuild writes each counter row once per flush and
/// each referral's row once per flush it changed in. Nothing is kept across a
/// flush.
struct HistoryApplier {
    version: Version,
    /// Shared, not copied, by the events that use it.
    tracked: HashMap<String, Arc<Tracked>>,
    rows: HashMap<String, RowChange>,
    stats: HashMap<StatKey, Counts>,
    /// Where `count` writes the key it looks up.
    key: String,
    reasons: HashMap<ReasonKey, u64>,
    /// Deals reported since the flush, with their partners.
    deals: Vec<(String, Deal)>,
}

impl HistoryApplier {
    fn tracked(&mut self, conn: &Connection, referral: &str) -> Result<Arc<Tracked>, ApplyError> {
        if let Some(t) = self.tracked.get(referral) {
            return Ok(t.clone());
        }
        let features: Option<(String, String, i64, String)> = conn
            .prepare_cached(&format!(
                "SELECT partner, region, received_at, features FROM {} WHERE referral = ?1",
                self.version.table(REFERRALS)
            ))?
            .query_row([referral], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
            .optional()?;
        let Some((partner, region, received_at, features)) = features else {
            return Err(ApplyError::Inconsistent(format!(
                "referral {referral} has an event but no ReferralReceived before it"
            )));
        };
        let features = serde_json::from_str(&features)
            .map_err(|e| ApplyError::Inconsistent(format!("stored features of {referral}: {e}")))?;
        let t = Arc::new(Tracked { partner, region, received_at, features });
        self.tracked.insert(referral.to_string(), t.clone());
        Ok(t)
    }

    fn count(&mut self, t: &Tracked, bump: impl Fn(&mut Counts)) {
        for (kind, value) in &t.features {
            StatKey::write(&mut self.key, [&t.partner, &t.region, kind, value]);
            match self.stats.get_mut(self.key.as_str()) {
                Some(counts) => bump(counts),
                None => {
                    let mut counts = Counts::default();
                    bump(&mut counts);
                    self.stats.insert(StatKey(self.key.clone()), counts);
                }
            }
        }
    }

    fn respond(&mut self, id: String, t: &Tracked, at: DateTime<Utc>, status: &'static str) {
        let seconds = (micros(at) - t.received_at).max(0) / 1_000_000;
        let row = self.rows.entry(id).or_default();
        row.status = Some(status);
        row.responded = Some((micros(at), seconds));
    }

    fn close(&mut self, id: String, status: &'static str) {
        self.rows.entry(id).or_default().status = Some(status);
    }

    fn apply_one(&mut self, conn: &Connection, e: &ProjectedEvent) -> Result<(), ApplyError> {
        let DomainEvent::Referral(event) = &e.event else { return Ok(()) };
        let id = event.referral().to_string();
        match event {
            ReferralEvent::Received(r) => {
                let t = Arc::new(Tracked {
                    partner: r.partner.as_str().to_string(),
                    region: r.region.as_str().to_string(),
                    received_at: micros(r.received_at),
                    features: features(r),
                });
                self.count(&t, |c| c.received += 1);
                self.rows.insert(id.clone(), RowChange { new: true, status: Some("new"), responded: None });
                self.tracked.insert(id, t);
            }
            ReferralEvent::Accepted(a) => {
                let t = self.tracked(conn, &id)?;
                self.respond(id, &t, a.accepted_at, "active");
                self.count(&t, |c| c.accepted += 1);
            }
            ReferralEvent::Declined(d) => {
                let t = self.tracked(conn, &id)?;
                self.respond(id, &t, d.declined_at, "declined");
                self.count(&t, |c| c.declined += 1);
                let key = (t.partner.clone(), t.region.clone(), "declined", d.reason.code.as_str().to_string());
                *self.reasons.entry(key).or_default() += 1;
            }
            ReferralEvent::Expired(_) => {
                let t = self.tracked(conn, &id)?;
                self.close(id, "expired");
                self.count(&t, |c| c.expired += 1);
            }
            ReferralEvent::Won(w) => {
                let t = self.tracked(conn, &id)?;
                self.close(id.clone(), "won");
                self.count(&t, |c| c.won += 1);
                let partner = t.partner.clone();
                self.deals.push((
                    partner,
                    Deal {
                        referral: id,
                        region: t.region.clone(),
                        currency: w.final_value.currency.code().to_string(),
                        minor_units: w.final_value.minor_units,
                        closed_on: w.closed_on,
                        reported_at: w.reported_at,
                    },
                ));
            }
            ReferralEvent::Lost(l) => {
                let t = self.tracked(conn, &id)?;
                self.close(id, "lost");
                self.count(&t, |c| c.lost += 1);
                let key = (t.partner.clone(), t.region.clone(), "lost", l.reason.code.as_str().to_string());
                *self.reasons.entry(key).or_default() += 1;
            }
            ReferralEvent::ContactAdded(_) | ReferralEvent::EngagementUpdated(_) => {}
        }
        Ok(())
    }

    fn write_rows(&mut self, conn: &Connection) -> Result<(), ApplyError> {
        let t_ref = self.version.table(REFERRALS);
        let mut insert = conn.prepare_cached(&format!(
            "INSERT INTO {t_ref} (referral, partner, region, received_at, status, responded_at, response_seconds,
                 features)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))?;
        let mut respond = conn.prepare_cached(&format!(
            "UPDATE {t_ref} SET status = ?2, responded_at = ?3, response_seconds = ?4 WHERE referral = ?1"
        ))?;
        let mut close = conn.prepare_cached(&format!("UPDATE {t_ref} SET status = ?2 WHERE referral = ?1"))?;
        for (id, change) in self.rows.drain() {
            let status = change.status.unwrap_or("new");
            let (responded_at, seconds) = change.responded.unzip();
            if change.new {
                let t = self.tracked.get(&id).ok_or_else(|| {
                    ApplyError::Inconsistent(format!("referral {id} was received but is no longer tracked"))
                })?;
                let stored = serde_json::to_string(&t.features).map_err(|e| ApplyError::Inconsistent(e.to_string()))?;
                insert.execute(params![
                    id,
                    t.partner,
                    t.region,
                    t.received_at,
                    status,
                    responded_at,
                    seconds,
                    stored
                ])?;
            } else if change.responded.is_some() {
                respond.execute(params![id, status, responded_at, seconds])?;
            } else {
                close.execute(params![id, status])?;
            }
        }
        Ok(())
    }
}

fn features(r: &referral_domain::referral::ReferralReceived) -> Vec<(String, String)> {
    let mut f = vec![("all".to_string(), String::new()), ("region".to_string(), r.region.as_str().to_string())];
    if let Some(industry) = &r.customer.industry {
        f.push(("industry".into(), industry.clone()));
    }
    f.push(("size_band".into(), r.customer.size_band.as_str().into()));
    let req = &r.requirements;
    for (kind, values) in [("product", &req.products), ("service", &req.services), ("keyword", &req.keywords)] {
        for v in values {
            f.push((kind.into(), v.clone()));
        }
    }
    f.sort();
    f.dedup();
    f
}

impl Applier for HistoryApplier {
    fn apply(&mut self, conn: &Connection, events: &[Arc<ProjectedEvent>]) -> Result<(), BatchError> {
        for (index, e) in events.iter().enumerate() {
            self.apply_one(conn, e).map_err(|error| BatchError { index, error })?;
        }
        Ok(())
    }

    fn flush(&mut self, conn: &Connection) -> Result<(), ApplyError> {
        self.write_rows(conn)?;
        let mut upsert = conn.prepare_cached(&format!(
            "INSERT INTO {} (partner, region, kind, value, received, accepted, declined, expired, won, lost)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (partner, region, kind, value) DO UPDATE SET
                received = received + excluded.received, accepted = accepted + excluded.accepted,
                declined = declined + excluded.declined, expired = expired + excluded.expired,
                won = won + excluded.won, lost = lost + excluded.lost",
            self.version.table(STATS)
        ))?;
        for (key, c) in self.stats.drain() {
            let [partner, region, kind, value] = key.parts();
            upsert.execute(params![
                partner,
                region,
                kind,
                value,
                c.received as i64,
                c.accepted as i64,
                c.declined as i64,
                c.expired as i64,
                c.won as i64,
                c.lost as i64
            ])?;
        }
        let mut reasons = conn.prepare_cached(&format!(
            "INSERT INTO {} (partner, region, outcome, reason, count) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (partner, region, outcome, reason) DO UPDATE SET count = count + excluded.count",
            self.version.table(REASONS)
        ))?;
        for ((partner, region, outcome, reason), n) in self.reasons.drain() {
            reasons.execute(params![partner, region, outcome, reason, n as i64])?;
        }
        let mut deals = conn.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {} (referral, partner, region, currency, minor_units, closed_on, reported_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            self.version.table(DEALS)
        ))?;
        for (partner, deal) in self.deals.drain(..) {
            deals.execute(params![
                deal.referral,
                partner,
                deal.region,
                deal.currency,
                deal.minor_units,
                deal.closed_on.to_string(),
                micros(deal.reported_at)
            ])?;
        }
        self.tracked.clear();
        Ok(())
    }

    fn reset(&mut self) {
        self.tracked.clear();
        self.rows.clear();
        self.stats.clear();
        self.reasons.clear();
        self.deals.clear();
    }
}

impl Projection for HistoryProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> u32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &[REFERRALS, STATS, REASONS, DEALS]
    }

    fn create(&self, conn: &Connection, version: Version) -> rusqlite::Result<()> {
        let (r, s, why, d) =
            (version.table(REFERRALS), version.table(STATS), version.table(REASONS), version.table(DEALS));
        conn.execute_batch(&format!(
            "CREATE TABLE {r} (
                referral TEXT PRIMARY KEY,
                partner TEXT NOT NULL,
                region TEXT NOT NULL,
                received_at INTEGER NOT NULL,
                status TEXT NOT NULL,
                responded_at INTEGER,
                response_seconds INTEGER,
                features TEXT NOT NULL
            );
            CREATE TABLE {s} (
                partner TEXT NOT NULL, region TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL,
                received INTEGER NOT NULL, accepted INTEGER NOT NULL, declined INTEGER NOT NULL,
                expired INTEGER NOT NULL, won INTEGER NOT NULL, lost INTEGER NOT NULL,
                PRIMARY KEY (partner, region, kind, value)
            ) WITHOUT ROWID;
            CREATE TABLE {why} (
                partner TEXT NOT NULL, region TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL,
                count INTEGER NOT NULL,
                PRIMARY KEY (partner, region, outcome, reason)
            ) WITHOUT ROWID;
            CREATE TABLE {d} (
                referral TEXT PRIMARY KEY,
                partner TEXT NOT NULL,
                region TEXT NOT NULL,
                currency TEXT NOT NULL,
                minor_units INTEGER NOT NULL,
                closed_on TEXT NOT NULL,
                reported_at INTEGER NOT NULL
            );"
        ))
    }

    fn indexes(&self, version: Version) -> Vec<String> {
        let (r, d) = (version.table(REFERRALS), version.table(DEALS));
        vec![
            format!(
                "CREATE INDEX IF NOT EXISTS {r}_response ON {r} (partner, response_seconds)
                 WHERE response_seconds IS NOT NULL"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {r}_region_response ON {r} (partner, region, response_seconds)
                 WHERE response_seconds IS NOT NULL"
            ),
            format!("CREATE INDEX IF NOT EXISTS {d}_by_partner ON {d} (partner, reported_at)"),
        ]
    }

    fn applier(&self, version: Version) -> Box<dyn Applier> {
        Box::new(HistoryApplier {
            version,
            tracked: HashMap::new(),
            rows: HashMap::new(),
            stats: HashMap::new(),
            key: String::new(),
            reasons: HashMap::new(),
            deals: Vec::new(),
        })
    }
}

fn region_clause(region: &Option<String>) -> &'static str {
    if region.is_some() {
        " AND region = ?2"
    } else {
        " AND ?2 IS NULL"
    }
}

/// The nearest-rank percentile `p` (0–100) of the partner's response times.
fn percentile(
    conn: &Connection,
    version: Version,
    partner: &str,
    region: &Option<String>,
    n: u64,
    p: u64,
) -> Result<Option<i64>, ViewError> {
    if n == 0 {
        return Ok(None);
    }
    let rank = (n * p).div_ceil(100).max(1) - 1;
    let value = conn
        .prepare_cached(&format!(
            "SELECT response_seconds FROM {} WHERE partner = ?1{} AND response_seconds IS NOT NULL
             ORDER BY response_seconds LIMIT 1 OFFSET ?3",
            version.table(REFERRALS),
            region_clause(region)
        ))?
        .query_row(params![partner, region, rank as i64], |row| row.get(0))
        .optional()?;
    Ok(value)
}

/// A partner's history, overall (`region: None`) or for one profile's region.
pub fn partner_history(
    conn: &Connection,
    version: Version,
    partner: &str,
    region: Option<String>,
) -> Result<PartnerHistory, ViewError> {
    let rc = region_clause(&region);
    let mut by_feature: Vec<FeatureStats> = Vec::new();
    let mut counts = Counts::default();
    {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT kind, value, SUM(received), SUM(accepted), SUM(declined), SUM(expired), SUM(won), SUM(lost)
             FROM {} WHERE partner = ?1{rc} GROUP BY kind, value ORDER BY kind, SUM(received) DESC, value",
            version.table(STATS)
        ))?;
        let mut rows = stmt.query(params![partner, region])?;
        while let Some(row) = rows.next()? {
            let kind: String = row.get(0)?;
            let c = Counts {
                received: row.get::<_, i64>(2)? as u64,
                accepted: row.get::<_, i64>(3)? as u64,
                declined: row.get::<_, i64>(4)? as u64,
                expired: row.get::<_, i64>(5)? as u64,
                won: row.get::<_, i64>(6)? as u64,
                lost: row.get::<_, i64>(7)? as u64,
            };
            if kind == "all" {
                counts.add(&c);
            } else {
                by_feature.push(FeatureStats { kind, value: row.get(1)?, counts: c });
            }
        }
    }
    let reasons = |outcome: &str| -> Result<Vec<ReasonCount>, ViewError> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT reason, SUM(count) FROM {} WHERE partner = ?1{rc} AND outcome = ?3
             GROUP BY reason ORDER BY SUM(count) DESC, reason",
            version.table(REASONS)
        ))?;
        let rows = stmt
            .query_map(params![partner, region, outcome], |row| {
                Ok(ReasonCount { reason: row.get(0)?, count: row.get::<_, i64>(1)? as u64 })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    };
    let decline_reasons = reasons("declined")?;
    let loss_reasons = reasons("lost")?;
    let responded: i64 = conn
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM {} WHERE partner = ?1{rc} AND response_seconds IS NOT NULL",
            version.table(REFERRALS)
        ))?
        .query_row(params![partner, region], |row| row.get(0))?;
    let responded = responded as u64;
    let response_times = ResponseTimes {
        responded,
        median_seconds: percentile(conn, version, partner, &region, responded, 50)?,
        p90_seconds: percentile(conn, version, partner, &region, responded, 90)?,
    };
    let deal_totals = conn
        .prepare_cached(&format!(
            "SELECT currency, COUNT(*), SUM(minor_units) FROM {} WHERE partner = ?1{rc}
             GROUP BY currency ORDER BY currency",
            version.table(DEALS)
        ))?
        .query_map(params![partner, region], |row| {
            Ok(DealTotal { currency: row.get(0)?, deals: row.get::<_, i64>(1)? as u64, minor_units: row.get(2)? })
        })?
        .collect::<Result<_, _>>()?;
    let recent_deals = conn
        .prepare_cached(&format!(
            "SELECT referral, region, currency, minor_units, closed_on, reported_at FROM {}
             WHERE partner = ?1{rc} ORDER BY reported_at DESC, referral LIMIT ?3",
            version.table(DEALS)
        ))?
        .query_map(params![partner, region, RECENT_DEALS], |row| {
            let closed_on: String = row.get(4)?;
            Ok(Deal {
                referral: row.get(0)?,
                region: row.get(1)?,
                currency: row.get(2)?,
                minor_units: row.get(3)?,
                closed_on: closed_on.parse().unwrap_or(NaiveDate::MIN),
                reported_at: from_micros(row.get(5)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(PartnerHistory {
        partner: partner.to_string(),
        region,
        counts,
        decline_reasons,
        loss_reasons,
        response_times,
        by_feature,
        deal_totals,
        recent_deals,
    })
}

#[cfg(test)]
mod tests {
    use super::StatKey;

    #[test]
    fn a_stat_key_gives_back_its_parts_whatever_they_hold() {
        let cases = [
            ["contoso", "emea", "all", ""],
            ["p-1", "apac", "keyword", "4:2:ratio"],
            ["", "", "", ""],
            ["müller-ag", "emea", "industry", "bäckerei & café"],
            ["12", "3:", "product", ":"],
        ];
        let mut buffer = String::from("left over from the last key");
        for parts in cases {
            StatKey::write(&mut buffer, parts);
            assert_eq!(StatKey(buffer.clone()).parts(), parts);
        }
        StatKey::write(&mut buffer, ["a", "bc", "d", ""]);
        let other = {
            let mut b = String::new();
            StatKey::write(&mut b, ["ab", "c", "d", ""]);
            b
        };
        assert_ne!(buffer, other, "parts do not run into each other");
    }
}

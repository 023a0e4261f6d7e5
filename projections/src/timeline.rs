//! The `timeline` projection: every event of every referral, in order, with
//! who did it and when, for the referral detail's history.

use chrono::{DateTime, Utc};
use referral_domain::codec::DomainEvent;
use referral_domain::eventlog::{Position, StreamRevision};
use rusqlite::{params, Connection};

use crate::paging::{self, Cursor};
use crate::projection::{from_micros, micros, BatchError, ProjectedEvent, Projection, Version};
use crate::referrals::Page;
use crate::ViewError;

pub const NAME: &str = "timeline";
const TABLE: &str = "timeline";

/// One event in a referral's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub referral: String,
    pub revision: StreamRevision,
    pub position: Position,
    pub event_type: String,
    /// When the command that caused it ran (the engine's clock).
    pub occurred_at: DateTime<Utc>,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub command_id: String,
    pub correlation_id: String,
    /// The event's payload, as stored (JSON).
    pub data: String,
}

pub struct TimelineProjection;

impl Projection for TimelineProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> u32 {
        // 2: an ordinary (rowid) table with the key as a unique index instead
        // of a WITHOUT ROWID table; same columns, same answers.
        2
    }

    fn tables(&self) -> &'static [&'static str] {
        &[TABLE]
    }

    /// An ordinary table with the key as a unique index: rows carry the
    /// event's JSON (often a kilobyte) and are appended in log order, and
    /// only the small index entry lands at a random place. As a WITHOUT ROWID
    /// table every row went to a random place in the key's b-tree, and a
    /// rebuild of this projection was three to four times slower.
    fn create(&self, conn: &Connection, version: Version) -> rusqlite::Result<()> {
        let t = version.table(TABLE);
        conn.execute_batch(&format!(
            "CREATE TABLE {t} (
                referral TEXT NOT NULL,
                revision INTEGER NOT NULL,
                position_commit INTEGER NOT NULL,
                position_prepare INTEGER NOT NULL,
                event_type TEXT NOT NULL,
                occurred_at INTEGER NOT NULL,
                recorded_at INTEGER NOT NULL,
                actor TEXT NOT NULL,
                command_id TEXT NOT NULL,
                correlation_id TEXT NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (referral, revision)
            );"
        ))
    }

    fn apply_batch(&self, conn: &Connection, version: Version, events: &[ProjectedEvent]) -> Result<(), BatchError> {
        let sql = format!(
            "INSERT OR IGNORE INTO {} (referral, revision, position_commit, position_prepare, event_type,
                 occurred_at, recorded_at, actor, command_id, correlation_id, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            version.table(TABLE)
        );
        for (index, e) in events.iter().enumerate() {
            let DomainEvent::Referral(event) = &e.event else { continue };
            let fail = |error: rusqlite::Error| BatchError { index, error: error.into() };
            let mut stmt = conn.prepare_cached(&sql).map_err(fail)?;
            stmt.execute(params![
                event.referral().to_string(),
                e.revision.0 as i64,
                e.position.commit as i64,
                e.position.prepare as i64,
                e.event_type,
                micros(e.metadata.occurred_at),
                micros(e.recorded_at),
                e.metadata.actor,
                e.metadata.command_id,
                e.metadata.correlation_id,
                String::from_utf8_lossy(&e.data),
            ])
            .map_err(fail)?;
        }
        Ok(())
    }
}

/// A page of one referral's timeline, oldest first.
pub fn page(
    conn: &Connection,
    version: Version,
    referral: &str,
    page_size: u32,
    page_token: &str,
) -> Result<Page<TimelineEntry>, ViewError> {
    let query = paging::fingerprint(&("timeline", referral));
    let after = paging::decode(page_token, query)?.map(|c| c.sort_key).unwrap_or(-1);
    let size = paging::page_size(page_size);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT referral, revision, position_commit, position_prepare, event_type, occurred_at, recorded_at,
                actor, command_id, correlation_id, data
         FROM {} WHERE referral = ?1 AND revision > ?2 ORDER BY revision LIMIT ?3",
        version.table(TABLE)
    ))?;
    let mut rows: Vec<TimelineEntry> = stmt
        .query_map(params![referral, after, i64::from(size) + 1], |row| {
            Ok(TimelineEntry {
                referral: row.get(0)?,
                revision: StreamRevision(row.get::<_, i64>(1)? as u64),
                position: Position { commit: row.get::<_, i64>(2)? as u64, prepare: row.get::<_, i64>(3)? as u64 },
                event_type: row.get(4)?,
                occurred_at: from_micros(row.get(5)?),
                recorded_at: from_micros(row.get(6)?),
                actor: row.get(7)?,
                command_id: row.get(8)?,
                correlation_id: row.get(9)?,
                data: row.get(10)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut next_page_token = String::new();
    if rows.len() > size as usize {
        rows.truncate(size as usize);
        if let Some(last) = rows.last() {
            next_page_token = paging::encode(&Cursor { sort_key: last.revision.0 as i64, id: String::new() }, query);
        }
    }
    Ok(Page { rows, next_page_token })
}

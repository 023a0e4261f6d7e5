//! The per-stream index of the embedded store, kept out of the commit path.
//!
//! Every event is found by `(stream, revision)` through the table
//! `stream_index`. Writing that entry in the event's own commit would rewrite
//! one index page per stream in every group commit, which on a WAL is most of
//! the commit's bytes. Instead the writer keeps the entries of recent events
//! in memory ([`PendingIndex`]) and writes them to `stream_index` in sorted
//! batches, together with `indexed_up_to`, the position up to which the table
//! is complete. The events table stays the single source of truth: on open,
//! the entries of events after `indexed_up_to` are read back from it.
//!
//! Readers copy the pending entries of their stream *before* they start their
//! read transaction. Entries leave the pending set only after the commit that
//! wrote them to the table, so every entry is in the copy, in the reader's
//! snapshot of the table, or in both (the merge removes duplicates).

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection};

/// Index entries of committed events not yet in `stream_index`.
#[derive(Debug, Default)]
pub(crate) struct PendingIndex {
    streams: HashMap<i64, BTreeMap<u64, u64>>,
    entries: usize,
}

impl PendingIndex {
    pub fn add(&mut self, entries: &[(i64, u64, u64)]) {
        for &(stream, revision, position) in entries {
            if self.streams.entry(stream).or_default().insert(revision, position).is_none() {
                self.entries += 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    /// Every entry, sorted by stream and revision (the table's order).
    pub fn sorted(&self) -> Vec<(i64, u64, u64)> {
        let mut all: Vec<(i64, u64, u64)> = self
            .streams
            .iter()
            .flat_map(|(&stream, revisions)| revisions.iter().map(move |(&r, &p)| (stream, r, p)))
            .collect();
        all.sort_unstable();
        all
    }

    /// Forgets the entries of events at or before `position` (now in the table).
    pub fn remove_up_to(&mut self, position: u64) {
        let mut removed = 0;
        self.streams.retain(|_, revisions| {
            let before = revisions.len();
            revisions.retain(|_, p| *p > position);
            removed += before - revisions.len();
            !revisions.is_empty()
        });
        self.entries -= removed;
    }

    /// A copy of one stream's pending entries with `low <= revision <= high`.
    pub fn range(&self, stream: i64, low: u64, high: u64) -> BTreeMap<u64, u64> {
        match self.streams.get(&stream) {
            Some(revisions) if low <= high => revisions.range(low..=high).map(|(&r, &p)| (r, p)).collect(),
            _ => BTreeMap::new(),
        }
    }

    pub fn last_revision(&self, stream: i64) -> Option<u64> {
        self.streams.get(&stream).and_then(|r| r.keys().next_back().copied())
    }
}

/// Revisions and positions of one stream with `low <= revision <= high`, from
/// the table merged with `extra` (pending or not yet committed entries), in
/// ascending or descending order, at most `limit`.
pub(crate) fn positions(
    conn: &Connection,
    stream: i64,
    low: u64,
    high: u64,
    descending: bool,
    limit: usize,
    extra: &BTreeMap<u64, u64>,
) -> rusqlite::Result<Vec<(u64, u64)>> {
    if low > high || limit == 0 {
        return Ok(Vec::new());
    }
    let sql = if descending {
        "SELECT revision, position FROM stream_index WHERE stream_id = ?1 AND revision >= ?2 AND revision <= ?3
         ORDER BY revision DESC LIMIT ?4"
    } else {
        "SELECT revision, position FROM stream_index WHERE stream_id = ?1 AND revision >= ?2 AND revision <= ?3
         ORDER BY revision ASC LIMIT ?4"
    };
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement
        .query_map(params![stream, clamp(low), clamp(high), i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?;
    for row in rows {
        let (revision, position) = row?;
        merged.insert(revision, position);
    }
    merged.extend(extra.range(low..=high).map(|(&r, &p)| (r, p)));
    Ok(if descending {
        merged.into_iter().rev().take(limit).collect()
    } else {
        merged.into_iter().take(limit).collect()
    })
}

/// The last revision of a stream in the table.
pub(crate) fn last_indexed_revision(conn: &Connection, stream: i64) -> rusqlite::Result<Option<u64>> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT MAX(revision) FROM stream_index WHERE stream_id = ?1")?
        .query_row([stream], |r| r.get(0))?;
    Ok(last.map(|l| l as u64))
}

/// Writes `entries` (sorted) to the table and records that it is complete up
/// to `up_to`.
pub(crate) fn flush(conn: &Connection, entries: &[(i64, u64, u64)], up_to: u64) -> rusqlite::Result<()> {
    let mut insert =
        conn.prepare_cached("INSERT OR REPLACE INTO stream_index (stream_id, revision, position) VALUES (?1, ?2, ?3)")?;
    for &(stream, revision, position) in entries {
        insert.execute(params![stream, revision as i64, position as i64])?;
    }
    conn.prepare_cached("UPDATE index_state SET indexed_up_to = ?1")?.execute([up_to as i64])?;
    Ok(())
}

/// Reads back the entries of events after the table's `indexed_up_to`.
pub(crate) fn recover(conn: &Connection) -> rusqlite::Result<PendingIndex> {
    let up_to: i64 = conn.query_row("SELECT indexed_up_to FROM index_state", [], |r| r.get(0))?;
    let mut statement =
        conn.prepare("SELECT stream_id, revision, position FROM events WHERE position > ?1 ORDER BY position")?;
    let rows = statement
        .query_map([up_to], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)))?;
    let mut pending = PendingIndex::default();
    let entries = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    pending.add(&entries);
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_entries_leave_once_flushed() {
        let mut pending = PendingIndex::default();
        pending.add(&[(1, 0, 10), (2, 0, 11), (1, 1, 12)]);
        assert_eq!(pending.len(), 3);
        assert_eq!(pending.sorted(), vec![(1, 0, 10), (1, 1, 12), (2, 0, 11)]);
        assert_eq!(pending.last_revision(1), Some(1));
        pending.remove_up_to(11);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.range(1, 0, 9).into_iter().collect::<Vec<_>>(), vec![(1, 12)]);
        assert!(pending.range(1, 2, 1).is_empty());
        assert_eq!(pending.last_revision(2), None);
    }
}

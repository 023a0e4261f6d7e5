//! The EventStoreDB rules both embedded backends share: when an expected
//! revision matches, what a soft delete does to it, and when a re-append is
//! the idempotent replay of an earlier one.

use referral_domain::eventlog::{
    AppendResult, CurrentRevision, EventData, ExpectedRevision, Position, StoreError, StreamName, StreamRevision,
};
use uuid::Uuid;

/// What a backend knows about one stream's head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamHead {
    /// Revision of the last event ever written (deleted ones included).
    pub last: Option<u64>,
    /// Revisions below this are hidden by a soft delete.
    pub truncate_before: u64,
    /// Deleted and not written to since: reads as not found.
    pub soft_deleted: bool,
    /// Tombstoned: gone for good.
    pub tombstoned: bool,
}

impl StreamHead {
    /// The revision a writer sees: a soft-deleted stream counts as absent.
    pub fn current(&self) -> CurrentRevision {
        match self.last {
            Some(last) if !self.soft_deleted => CurrentRevision::Current(StreamRevision(last)),
            _ => CurrentRevision::NoStream,
        }
    }

    /// Whether `expected` lets a write through. As in EventStoreDB, a
    /// soft-deleted stream accepts both `NoStream` and its last revision.
    pub fn admits(&self, expected: ExpectedRevision) -> bool {
        match expected {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => self.last.is_none() || self.soft_deleted,
            ExpectedRevision::StreamExists => self.last.is_some() && !self.soft_deleted,
            ExpectedRevision::Exact(StreamRevision(n)) => self.last == Some(n),
        }
    }

    /// Whether the stream has events a reader can see.
    pub fn is_readable(&self) -> bool {
        matches!(self.last, Some(last) if !self.soft_deleted && last >= self.truncate_before)
    }

    /// The revision the next appended event gets.
    pub fn next_revision(&self) -> u64 {
        self.last.map_or(0, |l| l + 1)
    }

    /// The head after a soft delete.
    pub fn soft_delete(&mut self) {
        self.soft_deleted = true;
        self.truncate_before = self.next_revision();
    }

    pub fn wrong_expected(&self, stream: &StreamName, expected: ExpectedRevision) -> StoreError {
        StoreError::WrongExpectedVersion { stream: stream.clone(), expected, actual: self.current() }
    }
}

/// Where an event id is already recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub stream: String,
    pub revision: u64,
    pub position: u64,
}

/// How an append relates to what is already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Prior {
    /// None of the event ids is recorded.
    New,
    /// Every event id is recorded, in this stream, in order, from `first_revision`.
    Replay { first_revision: u64, result: AppendResult },
}

/// Classifies an append by looking up each of its event ids.
pub(crate) fn classify(
    stream: &StreamName,
    events: &[EventData],
    mut lookup: impl FnMut(&Uuid) -> Result<Option<Recorded>, StoreError>,
) -> Result<Prior, StoreError> {
    let mut found = Vec::with_capacity(events.len());
    for event in events {
        found.push(lookup(&event.id)?);
    }
    if found.iter().all(Option::is_none) {
        return Ok(Prior::New);
    }
    let conflict = |reason: String| StoreError::IdempotencyConflict { stream: stream.clone(), reason };
    let Some(Some(first)) = found.first() else {
        return Err(conflict("some of its event ids are already recorded and others are not".into()));
    };
    let mut last_position = first.position;
    for (i, (event, recorded)) in events.iter().zip(&found).enumerate() {
        let Some(recorded) = recorded else {
            return Err(conflict(format!("event id {} is new but earlier ids of the append are recorded", event.id)));
        };
        if recorded.stream != stream.as_str() {
            return Err(conflict(format!("event id {} is recorded in stream {}", event.id, recorded.stream)));
        }
        if recorded.revision != first.revision + i as u64 {
            return Err(conflict(format!(
                "event id {} is recorded at revision {}, not in the order of this append",
                event.id, recorded.revision
            )));
        }
        last_position = recorded.position;
    }
    let last_revision = first.revision + events.len() as u64 - 1;
    Ok(Prior::Replay {
        first_revision: first.revision,
        result: AppendResult {
            next_expected_revision: StreamRevision(last_revision),
            position: Position::at(last_position),
        },
    })
}

/// Whether a replayed append's expected revision matches the stream as it
/// was when the original append was written.
pub(crate) fn replay_matches(expected: ExpectedRevision, first_revision: u64, head: &StreamHead) -> bool {
    match expected {
        ExpectedRevision::Any | ExpectedRevision::StreamExists => true,
        ExpectedRevision::NoStream => first_revision == 0 || first_revision == head.truncate_before,
        ExpectedRevision::Exact(StreamRevision(n)) => first_revision == n + 1,
    }
}

/// The checks every append goes through before anything is written.
/// `Ok(Some(result))` is an idempotent replay; `Ok(None)` means write.
pub(crate) fn check_append(
    stream: &StreamName,
    expected: ExpectedRevision,
    events: &[EventData],
    head: &StreamHead,
    lookup: impl FnMut(&Uuid) -> Result<Option<Recorded>, StoreError>,
) -> Result<Option<AppendResult>, StoreError> {
    if head.tombstoned {
        return Err(StoreError::StreamDeleted(stream.clone()));
    }
    if let Prior::Replay { first_revision, result } = classify(stream, events, lookup)? {
        return if replay_matches(expected, first_revision, head) {
            Ok(Some(result))
        } else {
            Err(head.wrong_expected(stream, expected))
        };
    }
    if !head.admits(expected) {
        return Err(head.wrong_expected(stream, expected));
    }
    Ok(None)
}

/// The checks before a soft delete or tombstone.
pub(crate) fn check_delete(
    stream: &StreamName,
    expected: ExpectedRevision,
    head: &StreamHead,
) -> Result<(), StoreError> {
    if head.tombstoned {
        return Err(StoreError::StreamDeleted(stream.clone()));
    }
    if !head.admits(expected) {
        return Err(head.wrong_expected(stream, expected));
    }
    Ok(())
}

/// Name of the metadata stream that records deletes of `stream`.
pub(crate) fn metadata_stream(stream: &StreamName) -> String {
    format!("$${stream}")
}

/// Event type of a soft-delete record (EventStoreDB's stream-metadata type).
pub(crate) const METADATA_EVENT_TYPE: &str = "$metadata";
/// Event type of a tombstone record.
pub(crate) const TOMBSTONE_EVENT_TYPE: &str = "$streamDeleted";

/// The body of a soft-delete record: `{"$tb": <truncate before>}`.
pub(crate) fn truncate_before_body(truncate_before: u64) -> Vec<u8> {
    format!("{{\"$tb\":{truncate_before}}}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(last: Option<u64>, soft_deleted: bool) -> StreamHead {
        StreamHead { last, truncate_before: 0, soft_deleted, tombstoned: false }
    }

    #[test]
    fn expected_revision_rules() {
        let cases: &[(StreamHead, ExpectedRevision, bool)] = &[
            (head(None, false), ExpectedRevision::NoStream, true),
            (head(None, false), ExpectedRevision::StreamExists, false),
            (head(None, false), ExpectedRevision::Exact(StreamRevision(0)), false),
            (head(Some(2), false), ExpectedRevision::Exact(StreamRevision(2)), true),
            (head(Some(2), false), ExpectedRevision::Exact(StreamRevision(1)), false),
            (head(Some(2), false), ExpectedRevision::NoStream, false),
            (head(Some(2), false), ExpectedRevision::StreamExists, true),
            (head(Some(2), true), ExpectedRevision::NoStream, true),
            (head(Some(2), true), ExpectedRevision::Exact(StreamRevision(2)), true),
            (head(Some(2), true), ExpectedRevision::StreamExists, false),
            (head(Some(2), true), ExpectedRevision::Any, true),
        ];
        for (head, expected, admits) in cases {
            assert_eq!(head.admits(*expected), *admits, "{head:?} admits {expected}");
        }
    }

    #[test]
    fn soft_delete_hides_and_truncates() {
        let mut h = head(Some(4), false);
        h.soft_delete();
        assert_eq!(h.truncate_before, 5);
        assert!(!h.is_readable());
        assert_eq!(h.current(), CurrentRevision::NoStream);
        assert_eq!(h.next_revision(), 5);
    }
}

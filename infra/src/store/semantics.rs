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

/// How far back an append with `Any` or `StreamExists` looks for its own
/// events when deciding whether it is a retry (EventStoreDB, too, only
/// recognises such retries among recent writes).
pub(crate) const RETRY_WINDOW: u64 = 1000;

/// What a backend can tell about the events a stream already holds.
pub(crate) trait StreamIds {
    /// The id and `$all` position of the event at `revision`, if any.
    fn at(&mut self, revision: u64) -> Result<Option<(Uuid, u64)>, StoreError>;
    /// The revision of the first event with `id` at or after `from`.
    fn find(&mut self, id: &Uuid, from: u64) -> Result<Option<u64>, StoreError>;
}

/// Where a re-append would have to start to be a retry of an earlier append.
fn retry_candidate(
    expected: ExpectedRevision,
    events: &[EventData],
    head: &StreamHead,
    ids: &mut dyn StreamIds,
) -> Result<Option<u64>, StoreError> {
    let Some(last) = head.last else { return Ok(None) };
    Ok(match expected {
        ExpectedRevision::Exact(StreamRevision(n)) if n < last => Some(n + 1),
        ExpectedRevision::Exact(_) => None,
        ExpectedRevision::NoStream if !head.admits(expected) => Some(head.truncate_before),
        ExpectedRevision::NoStream => None,
        ExpectedRevision::Any | ExpectedRevision::StreamExists => {
            let from = last.saturating_sub(RETRY_WINDOW).max(head.truncate_before);
            ids.find(&events[0].id, from)?
        }
    })
}

/// The checks every append goes through before anything is written.
/// `Ok(Some(result))` is an idempotent replay of an earlier append with the
/// same event ids; `Ok(None)` means write.
pub(crate) fn check_append(
    stream: &StreamName,
    expected: ExpectedRevision,
    events: &[EventData],
    head: &StreamHead,
    ids: &mut dyn StreamIds,
) -> Result<Option<AppendResult>, StoreError> {
    if head.tombstoned {
        return Err(StoreError::StreamDeleted(stream.clone()));
    }
    if !events.is_empty() {
        if let Some(first) = retry_candidate(expected, events, head, ids)? {
            let mut last_position = None;
            for (i, event) in events.iter().enumerate() {
                match ids.at(first + i as u64)? {
                    Some((id, position)) if id == event.id => last_position = Some(position),
                    _ if i == 0 => break,
                    _ => {
                        return Err(StoreError::IdempotencyConflict {
                            stream: stream.clone(),
                            reason: format!(
                            "its first {i} event id(s) match the events from revision {first} but event id {} does not",
                            event.id
                        ),
                        })
                    }
                }
            }
            if let Some(position) = last_position {
                return Ok(Some(AppendResult {
                    next_expected_revision: StreamRevision(first + events.len() as u64 - 1),
                    position: Position::at(position),
                }));
            }
        }
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

//! The codec between domain events and the store's JSON: what it reads back,
//! and how it refuses what it cannot read.

use chrono::{DateTime, TimeZone, Utc};
use referral_domain::codec::{self, CodecError, DomainEvent, EventMetadata};
use referral_domain::eventlog::{Position, RecordedEvent, StreamName, StreamRevision};
use referral_domain::ids::ReferralId;
use referral_domain::referral::{ReferralEvent, ReferralExpired};
use uuid::Uuid;

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap()
}

fn expired() -> (DomainEvent, EventMetadata) {
    let referral = ReferralId::parse("4a456146-54b6-5fa9-90a9-b31fb45a9719").unwrap();
    let event = DomainEvent::Referral(ReferralEvent::Expired(ReferralExpired { referral, expired_at: at() }));
    let metadata = EventMetadata {
        correlation_id: "corr-1".into(),
        causation_id: "cause-1".into(),
        command_id: "expire-1".into(),
        actor: "scheduler: ünïcode ✓".into(),
        schema_version: 1,
        occurred_at: at(),
    };
    (event, metadata)
}

/// `event` as the store hands it back.
fn recorded(event: &DomainEvent, metadata: &EventMetadata) -> RecordedEvent {
    let data = codec::encode(Uuid::from_u128(7), event, metadata);
    RecordedEvent {
        stream: StreamName::new("referral-4a456146-54b6-5fa9-90a9-b31fb45a9719").unwrap(),
        revision: StreamRevision(3),
        position: Position::at(42),
        id: data.id,
        event_type: data.event_type,
        data: data.data,
        metadata: data.metadata,
        created: at(),
    }
}

#[test]
fn an_encoded_event_decodes_to_itself_with_its_metadata() {
    let (event, metadata) = expired();
    let stored = recorded(&event, &metadata);
    assert_eq!(codec::decode(&stored), Ok(event.clone()));
    assert_eq!(codec::decode_metadata(&stored), Ok(metadata.clone()));
    assert_eq!(codec::decode_with_metadata(&stored), Ok((event, metadata)));
}

#[test]
fn bytes_that_are_not_utf8_are_refused_as_malformed() {
    let (event, metadata) = expired();
    let mut stored = recorded(&event, &metadata);
    let inside = stored.data.iter().position(|&b| b == b'"').unwrap() + 1;
    stored.data.insert(inside, 0xff);
    let Err(CodecError::Malformed { reason, .. }) = codec::decode(&stored) else { panic!("decoded bad bytes") };
    assert!(reason.contains("line 1 column"), "{reason}");

    let mut stored = recorded(&event, &metadata);
    let inside = stored.metadata.iter().position(|&b| b == b'"').unwrap() + 1;
    stored.metadata.insert(inside, 0xc3);
    let Err(CodecError::Malformed { reason, .. }) = codec::decode_with_metadata(&stored) else {
        panic!("decoded bad metadata")
    };
    assert!(reason.starts_with("metadata: "), "{reason}");
}

#[test]
fn metadata_without_a_schema_version_reads_as_version_one_but_is_not_full_metadata() {
    let (event, metadata) = expired();
    let mut stored = recorded(&event, &metadata);
    stored.metadata = br#"{"$correlationId":"c"}"#.to_vec();
    assert_eq!(codec::decode(&stored), Ok(event));
    let Err(CodecError::Malformed { reason, .. }) = codec::decode_with_metadata(&stored) else {
        panic!("partial metadata accepted")
    };
    assert!(reason.contains("missing field"), "{reason}");
}

#[test]
fn a_schema_version_newer_than_this_build_is_refused() {
    let (event, metadata) = expired();
    let newer = EventMetadata { schema_version: codec::CURRENT_SCHEMA_VERSION + 1, ..metadata };
    let stored = recorded(&event, &newer);
    assert!(matches!(codec::decode(&stored), Err(CodecError::UnknownVersion { .. })));
    assert!(matches!(codec::decode_with_metadata(&stored), Err(CodecError::UnknownVersion { .. })));
}

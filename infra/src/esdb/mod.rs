//! EventStoreDB's gRPC protocol: the generated types (from `proto/esdb/`),
//! conversions between them and the event-store port, and the compatible
//! node that serves the protocol over any `EventStore`.

pub mod node;

use chrono::{DateTime, Utc};
use referral_domain::eventlog::{ExpectedRevision, StreamRevision};
use uuid::Uuid;

/// Code generated from `proto/esdb/` by `tonic-build`.
#[allow(clippy::large_enum_variant)]
pub mod pb {
    pub mod event_store {
        pub mod client {
            tonic::include_proto!("event_store.client");
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
            pub mod server_features {
                tonic::include_proto!("event_store.client.server_features");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

use pb::event_store::client as es;

/// The EventStoreDB version whose gRPC protocol the node and adapter follow.
pub const PROTOCOL_VERSION: &str = "24.10.0";

/// An event id as the protocol carries it, in the form the reader asked for.
pub fn uuid_to_proto(id: Uuid, structured: bool) -> es::Uuid {
    let value = if structured {
        let (most, least) = id.as_u64_pair();
        es::uuid::Value::Structured(es::uuid::Structured {
            most_significant_bits: most as i64,
            least_significant_bits: least as i64,
        })
    } else {
        es::uuid::Value::String(id.hyphenated().to_string())
    };
    es::Uuid { value: Some(value) }
}

/// An event id from the protocol; `None` when it is missing or malformed.
pub fn uuid_from_proto(id: Option<&es::Uuid>) -> Option<Uuid> {
    match id?.value.as_ref()? {
        es::uuid::Value::Structured(s) => {
            Some(Uuid::from_u64_pair(s.most_significant_bits as u64, s.least_significant_bits as u64))
        }
        es::uuid::Value::String(s) => Uuid::parse_str(s).ok(),
    }
}

/// EventStoreDB's `created`: 100-nanosecond ticks since the Unix epoch.
pub fn ticks(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros() * 10 + i64::from(at.timestamp_subsec_nanos() % 1_000) / 100
}

/// The inverse of [`ticks`].
pub fn from_ticks(ticks: i64) -> DateTime<Utc> {
    let (seconds, rest) = (ticks.div_euclid(10_000_000), ticks.rem_euclid(10_000_000));
    DateTime::from_timestamp(seconds, (rest * 100) as u32).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The text EventStoreDB puts in `expected-version` / `actual-version`
/// trailers: the revision, or -1 (no stream), -2 (any), -4 (stream exists).
pub fn expected_code(expected: ExpectedRevision) -> i64 {
    match expected {
        ExpectedRevision::Any => -2,
        ExpectedRevision::NoStream => -1,
        ExpectedRevision::StreamExists => -4,
        ExpectedRevision::Exact(StreamRevision(r)) => r as i64,
    }
}

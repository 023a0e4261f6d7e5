//! Event store backends behind the [`EventStore`](referral_domain::eventlog::EventStore) port.
//!
//! * [`SqliteEventStore`]: the embedded, durable default (one file in the data
//!   directory).
//! * [`InMemoryEventStore`]: the same semantics without durability, for tests.
//! * [`EsdbEventStore`]: EventStoreDB, through the official client.
//!
//! The first two share the EventStoreDB rules in `semantics` and the catch-up
//! subscription in `subscription`; all three pass the conformance suite in
//! `tests/tests/store_conformance.rs` (EventStoreDB through the project's
//! compatible node).

mod esdb;
mod index;
mod memory;
mod semantics;
mod sqlite;
mod subscription;

pub use esdb::EsdbEventStore;
pub use memory::InMemoryEventStore;
/// Where deletes write their markers and the tombstone's type, as EventStoreDB names them.
pub(crate) use semantics::{metadata_stream, TOMBSTONE_EVENT_TYPE};
pub(crate) use sqlite::{plain_connection, INSERT_EVENT};
pub use sqlite::{SqliteEventStore, SqliteOptions};

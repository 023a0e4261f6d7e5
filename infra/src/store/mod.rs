//! Event store backends behind the [`EventStore`](referral_domain::eventlog::EventStore) port.
//!
//! * [`SqliteEventStore`]: the embedded, durable default (one file in the data
//!   directory).
//! * [`InMemoryEventStore`]: the same semantics without durability, for tests.
//!
//! Both share the EventStoreDB rules in `semantics` and the catch-up
//! subscription in `subscription`, and both pass the conformance suite in
//! `tests/tests/store_conformance.rs`.

mod index;
mod memory;
mod semantics;
mod sqlite;
mod subscription;

pub use memory::InMemoryEventStore;
pub(crate) use sqlite::{plain_connection, INSERT_EVENT};
pub use sqlite::{SqliteEventStore, SqliteOptions};

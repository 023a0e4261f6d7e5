//! The referral domain, pure: no I/O, no runtime, no clock reads.
//!
//! * [`referral`]: the Referral decider (`decide`, `evolve`), its commands and events;
//! * [`profile`]: the partner's business profiles, one per region;
//! * [`clock`]: the 24-hour, 72-hour and 14-day rules, with time as an input;
//! * [`values`] and [`ids`]: validated value types;
//! * [`eventlog`]: the event-log vocabulary and the `EventStore` port;
//! * [`codec`]: events and their metadata to and from the store's JSON, upcasting.
//!
//! Deciders follow one shape: `decide(&State, Command, Now) -> Result<Vec<Event>, DomainError>`
//! and `evolve(State, &Event) -> State`.
pub mod clock;
pub mod codec;
pub mod error;
pub mod eventlog;
pub mod ids;
pub mod profile;
pub mod referral;
pub mod values;

pub use clock::Now;
pub use error::{DomainError, FieldViolation};

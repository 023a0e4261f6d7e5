//! The write side: load a stream, decide, append with the expected revision,
//! retry on conflict.
//!
//! ```text
//! request ──► CommandHandler::execute_* ──► EventStore::read_stream
//!                    │                         (fold with evolve)
//!                    ├──► domain::decide(state, command, clock.now())
//!                    └──► EventStore::append(expected = revision read)
//!                              └─ wrong expected version → read again (bounded)
//! ```
//!
//! * [`handler`]: the loop, command-id idempotency, RFI fan-out;
//! * [`cache`]: recently used streams, decoded, so most commands skip the read;
//! * [`codec`]: events and metadata to and from JSON, upcasting;
//! * [`context`]: who issues a command (actor, role) and its ids;
//! * [`clock`]: the clock the engine is given;
//! * [`expiry`]: the scheduler that expires referrals left unanswered.
pub mod cache;
pub mod clock;
pub use referral_domain::codec;
pub mod context;
pub mod expiry;
pub mod handler;

pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{Actor, CommandContext, Role};
pub use expiry::{DueReferrals, ExpiryPass, ExpiryScheduler};
pub use handler::{CommandError, CommandHandler, Loaded, RfiTarget, SubmitRfi, SubmittedReferral, Written};

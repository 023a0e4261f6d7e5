//! The referral domain, pure: no I/O, no runtime, no clock reads.
pub mod eventlog;

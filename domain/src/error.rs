//! Why a command was refused.

use std::fmt;

use crate::ids::{PartnerId, ReferralId};
use crate::referral::Status;

/// One invalid field: the field's path (as in the gRPC request, e.g.
/// `estimated_value.currency_code`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Collects field violations so that one refusal lists everything wrong.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    /// Records the error of a validation step, if any, and passes its value on.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    /// Adds violations under a prefix (`contacts[2].` + `email`).
    pub fn extend_prefixed(&mut self, prefix: &str, other: Violations) {
        for v in other.0 {
            self.add(format!("{prefix}{}", v.field), v.description);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(self.0))
        }
    }
}

/// A refused command. Every variant's message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The command itself is malformed (maps to `InvalidArgument`).
    #[error("invalid request: {}", join(.0))]
    Invalid(Vec<FieldViolation>),
    /// The referral does not exist (maps to `NotFound`).
    #[error("referral {0} does not exist")]
    ReferralNotFound(ReferralId),
    /// The partner has no profile at all (maps to `NotFound`).
    #[error("partner {0} has no business profile")]
    PartnerNotFound(PartnerId),
    /// The referral is closed; nothing may change (maps to `FailedPrecondition`).
    #[error("referral {referral} is closed ({}); no further changes are allowed", .status.substatus())]
    Closed { referral: ReferralId, status: Status },
    /// The action is not allowed from the current state (maps to `FailedPrecondition`).
    #[error("referral {referral} is {status}; {action} is not allowed (allowed from {allowed_from})")]
    NotAllowed { referral: ReferralId, status: Status, action: &'static str, allowed_from: &'static str },
    /// Something that must not exist yet already does (maps to `AlreadyExists`).
    #[error("{0}")]
    AlreadyExists(String),
    /// A rule about the current state refuses the command (maps to `FailedPrecondition`).
    #[error("{0}")]
    Precondition(String),
}

impl DomainError {
    /// A refusal naming one invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        DomainError::Invalid(vec![FieldViolation { field: field.into(), description: description.into() }])
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

//! Refusals to gRPC statuses. The message always says what was wrong; field
//! violations also travel as a `google.rpc.BadRequest` detail.

use referral_commands::CommandError;
use referral_domain::eventlog::StoreError;
use referral_domain::{DomainError, FieldViolation};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// An `INVALID_ARGUMENT` status listing every bad field.
pub fn invalid(violations: &[FieldViolation]) -> Status {
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    let message =
        format!("invalid request: {}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Maps a refused or failed command to its status code.
pub fn to_status(error: CommandError) -> Status {
    match error {
        CommandError::Domain(DomainError::Invalid(violations)) => invalid(&violations),
        CommandError::Domain(e @ (DomainError::ReferralNotFound(_) | DomainError::PartnerNotFound(_))) => {
            Status::not_found(e.to_string())
        }
        CommandError::Domain(e @ DomainError::AlreadyExists(_)) => Status::already_exists(e.to_string()),
        CommandError::Domain(
            e @ (DomainError::Closed { .. } | DomainError::NotAllowed { .. } | DomainError::Precondition(_)),
        ) => Status::failed_precondition(e.to_string()),
        CommandError::PermissionDenied(m) => Status::permission_denied(m),
        e @ CommandError::Conflict { .. } => Status::aborted(e.to_string()),
        CommandError::Store(e @ StoreError::StreamDeleted(_)) => Status::failed_precondition(e.to_string()),
        CommandError::Store(e @ StoreError::Unavailable(_)) => Status::unavailable(e.to_string()),
        CommandError::Store(e @ StoreError::WrongExpectedVersion { .. }) => Status::aborted(e.to_string()),
        CommandError::Store(e) => {
            tracing::error!(error = %e, "event store failed");
            Status::internal(e.to_string())
        }
        CommandError::Codec(e) => {
            tracing::error!(error = %e, "stored event cannot be decoded");
            Status::internal(e.to_string())
        }
    }
}

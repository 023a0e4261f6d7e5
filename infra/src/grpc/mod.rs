//! The gRPC API (`referrals.v1`): generated types, conversions, error
//! mapping, authentication and the services.
pub mod admin_service;
pub mod auth;
pub mod commands_service;
pub mod convert;
pub mod errors;
pub mod queries_service;

/// Code generated from `proto/` by `tonic-build`.
pub mod pb {
    pub mod google {
        pub mod r#type {
            tonic::include_proto!("google.r#type");
        }
    }
    pub mod referrals {
        pub mod v1 {
            tonic::include_proto!("referrals.v1");
        }
    }
    pub use referrals::v1::*;

    /// The encoded descriptors, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("referrals_descriptor");
}

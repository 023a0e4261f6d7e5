//! Adapters and the binary's parts: event stores, the gRPC API, auth, the
//! server, the CLI.
pub mod grpc;

//! Adapters and the binary's parts: event stores, the gRPC API, auth, the
//! server, the CLI and the benchmarks.
pub mod bench;
pub mod cli;
pub mod grpc;
pub mod server;
pub mod store;

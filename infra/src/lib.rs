//! Adapters and the binary's parts: event stores, the gRPC API, auth, the
//! server, the CLI and the benchmarks.
// tonic's `Status` is large and is the error type of every gRPC call; boxing
// it everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod bench;
pub mod cli;
pub mod esdb;
pub mod grpc;
pub mod server;
pub mod store;

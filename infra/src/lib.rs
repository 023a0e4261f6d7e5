//! Adapters: event stores, gRPC, auth, config.

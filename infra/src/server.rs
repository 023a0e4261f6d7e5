//! The `serve` process: the embedded event store, the command handler and the
//! gRPC services (with health and reflection) on one listener.
//!
//! Shutdown is graceful: on Ctrl-C or SIGTERM the listener stops taking new
//! connections, calls in flight finish, and the store's writer commits what it
//! has queued before the process exits. An append is acknowledged only after
//! its transaction is durable, so nothing acknowledged is lost on any exit.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use referral_commands::{Clock, CommandHandler};
use referral_domain::clock::ExpiryPolicy;
use referral_domain::eventlog::EventStore;
use tokio::net::TcpListener;

use crate::grpc::auth::{self, TokenStore};
use crate::grpc::commands_service::CommandsService;
use crate::grpc::pb;
use crate::grpc::pb::referral_commands_server::ReferralCommandsServer;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("cannot open the event store in {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("cannot accept connections: {0}")]
    Accept(String),
}

/// File name of the embedded event store inside the data directory.
pub const EVENTS_DB: &str = "events.db";

/// Everything a server runs with.
pub struct ServerParts {
    pub store: Arc<dyn EventStore>,
    pub clock: Arc<dyn Clock>,
    pub tokens: Arc<TokenStore>,
    pub expiry: ExpiryPolicy,
}

/// Serves the gRPC API on `listener` until `shutdown` resolves, then drains
/// calls in flight.
pub async fn run(
    parts: ServerParts,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let handler = CommandHandler::new(parts.store.clone(), parts.clock.clone()).with_expiry(parts.expiry);
    let commands = ReferralCommandsServer::with_interceptor(
        CommandsService::new(handler),
        auth::interceptor(parts.tokens.clone()),
    );
    let (mut health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ReferralCommandsServer<CommandsService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    // Small request/response messages: send each at once rather than wait
    // for more to fill a segment.
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(|e| ServeError::Accept(e.to_string()))?;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(commands)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })
}

/// Opens (creating if needed) the embedded SQLite event store of a data directory.
pub fn open_embedded_store(data_dir: &Path) -> Result<Arc<dyn EventStore>, ServeError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ServeError::Store { path: data_dir.to_path_buf(), reason: e.to_string() })?;
    let path = data_dir.join(EVENTS_DB);
    let store = crate::store::SqliteEventStore::open(&path)
        .map_err(|e| ServeError::Store { path: path.clone(), reason: e.to_string() })?;
    Ok(Arc::new(store))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}

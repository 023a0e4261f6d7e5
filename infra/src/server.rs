//! The `serve` process: the embedded event store, the command handler, the
//! projections and the expiry scheduler, and the gRPC services (with health
//! and reflection) on one listener.
//!
//! Shutdown is graceful: on Ctrl-C or SIGTERM the listener stops taking new
//! connections, calls in flight finish, and the store's writer commits what it
//! has queued before the process exits. An append is acknowledged only after
//! its transaction is durable, so nothing acknowledged is lost on any exit.
//! The projections finish the batch they are applying; whatever they had not
//! applied yet is applied from their checkpoint at the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use referral_commands::{Clock, CommandHandler, DueReferrals, ExpiryScheduler};
use referral_domain::clock::ExpiryPolicy;
use referral_domain::eventlog::EventStore;
use referral_domain::ids::ReferralId;
use referral_projections::{Projector, RunnerOptions, ViewDb, Views};
use tokio::net::TcpListener;

use crate::grpc::admin_service::AdminService;
use crate::grpc::auth::{self, TokenStore};
use crate::grpc::commands_service::CommandsService;
use crate::grpc::pb;
use crate::grpc::pb::projection_admin_server::ProjectionAdminServer;
use crate::grpc::pb::referral_commands_server::ReferralCommandsServer;
use crate::grpc::pb::referral_queries_server::ReferralQueriesServer;
use crate::grpc::queries_service::QueriesService;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("cannot open the event store in {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("--store: {0}")]
    StoreChoice(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("cannot accept connections: {0}")]
    Accept(String),
    #[error("views: {0}")]
    Views(#[from] referral_projections::ViewError),
}

/// File name of the embedded event store inside the data directory.
pub const EVENTS_DB: &str = "events.db";
/// Directory of the view databases (one file per projection) inside the data directory.
pub const VIEWS_DIR: &str = "views";

/// Everything a server runs with.
pub struct ServerParts {
    pub store: Arc<dyn EventStore>,
    pub clock: Arc<dyn Clock>,
    pub tokens: Arc<TokenStore>,
    pub expiry: ExpiryPolicy,
    /// The read side. `None` serves commands only (no queries, projections
    /// or expiry), which the write-path benchmarks use.
    pub read_side: Option<ReadSide>,
}

/// The view database and how often the expiry scheduler looks for due referrals.
pub struct ReadSide {
    pub views: ViewDb,
    pub expiry_interval: Duration,
}

impl ReadSide {
    /// The read side of a data directory, with a scheduler pass every second.
    pub fn in_dir(data_dir: &Path) -> Result<ReadSide, ServeError> {
        let single_file = data_dir.join("views.db");
        if single_file.exists() {
            tracing::warn!(
                file = %single_file.display(),
                "views now live in one file per projection under {VIEWS_DIR}/ and are built there from the log; \
                 the single-file view database of earlier builds is not read and can be deleted"
            );
        }
        Ok(ReadSide { views: ViewDb::open(&data_dir.join(VIEWS_DIR))?, expiry_interval: Duration::from_secs(1) })
    }
}

/// The `deadlines` view as the expiry scheduler's source.
pub struct ViewDeadlines(pub Views);

#[async_trait]
impl DueReferrals for ViewDeadlines {
    async fn due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<ReferralId>, String> {
        let due = self.0.due(now, limit).await.map_err(|e| e.to_string())?;
        due.iter().map(|d| ReferralId::parse(&d.referral)).collect()
    }
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
        CommandsService::new(handler.clone()),
        auth::interceptor(parts.tokens.clone()),
    );
    let (mut health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ReferralCommandsServer<CommandsService>>().await;

    let (stop_scheduler, scheduler_stopped) = tokio::sync::watch::channel(false);
    let mut read_services = None;
    let mut background = None;
    if let Some(read_side) = parts.read_side {
        let projector = Projector::open(
            parts.store.clone(),
            read_side.views.clone(),
            referral_projections::all_projections(),
            RunnerOptions::default(),
        )
        .await?;
        projector.start().await?;
        let views = Views::new(read_side.views);
        let scheduler = ExpiryScheduler::new(handler, Arc::new(ViewDeadlines(views.clone())))
            .with_interval(read_side.expiry_interval);
        let scheduler = tokio::spawn(scheduler.run(scheduler_stopped));
        let queries = ReferralQueriesServer::with_interceptor(
            QueriesService::new(views, projector.clone(), parts.clock.clone()),
            auth::interceptor(parts.tokens.clone()),
        );
        let admin = ProjectionAdminServer::with_interceptor(
            AdminService::new(projector.clone()),
            auth::interceptor(parts.tokens.clone()),
        );
        health_reporter.set_serving::<ReferralQueriesServer<QueriesService>>().await;
        health_reporter.set_serving::<ProjectionAdminServer<AdminService>>().await;
        read_services = Some((queries, admin));
        background = Some((projector, scheduler));
    }

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
    let (queries, admin) = read_services.unzip();
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(commands)
        .add_optional_service(queries)
        .add_optional_service(admin)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    stop_scheduler.send_replace(true);
    if let Some((projector, scheduler)) = background {
        let _ = scheduler.await;
        projector.shutdown().await;
    }
    served?;
    Ok(())
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })
}

/// The event store `serve --store` names: `embedded` (the data directory's
/// SQLite store) or an EventStoreDB connection string (`esdb://...`,
/// `esdb+discover://...`).
pub fn open_store(store: &str, data_dir: &Path) -> Result<Arc<dyn EventStore>, ServeError> {
    if store == "embedded" {
        return open_embedded_store(data_dir);
    }
    if !(store.starts_with("esdb://") || store.starts_with("esdb+discover://")) {
        return Err(ServeError::StoreChoice(format!(
            "{store:?} is neither `embedded` nor an EventStoreDB connection string such as \
             esdb://127.0.0.1:2113?tls=false"
        )));
    }
    let adapter = crate::store::EsdbEventStore::connect(store).map_err(|e| ServeError::StoreChoice(e.to_string()))?;
    Ok(Arc::new(adapter))
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

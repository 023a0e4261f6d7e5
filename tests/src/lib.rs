//! Shared helpers for the cross-crate suites: an in-process server on a
//! loopback port with its own data directory, and authenticated clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use referral_commands::{ManualClock, Role};
use referral_domain::clock::ExpiryPolicy;
use referral_domain::eventlog::EventStore;
use referral_infra::grpc::auth::{self, AdminClient, BearerToken, CommandsClient, QueriesClient, TokenStore};
use referral_infra::grpc::pb;
use referral_infra::server::{self, ServerParts};
use referral_infra::store::{EsdbEventStore, SqliteEventStore};
use tonic::transport::Channel;

/// The moment the test clock starts at.
pub fn test_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).single().expect("valid date")
}

pub type Client = CommandsClient;

/// Where a [`TestServer`] keeps the engine's events. Views and tokens stay
/// in the server's data directory either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventBackend {
    /// The embedded SQLite event store in the data directory.
    Embedded,
    /// EventStoreDB: the engine's EventStoreDB adapter talking to the
    /// project's EventStoreDB-compatible node, run in this process on a
    /// loopback port over an embedded store in `<data dir>/esdb-node`.
    EsdbNode,
}

/// Where the EventStoreDB-compatible node of an [`EventBackend::EsdbNode`]
/// server keeps its events, inside the server's data directory.
pub const ESDB_NODE_DIR: &str = "esdb-node";

/// A server running in this process on 127.0.0.1 with a temporary data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub data_dir: tempfile::TempDir,
    pub backend: EventBackend,
    running: Running,
}

pub type NodeTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// The server task and, for [`EventBackend::EsdbNode`], the node task, with
/// their shutdown senders. The node is stopped only after the server.
struct Running {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), server::ServeError>>>,
    node: Option<(tokio::sync::oneshot::Sender<()>, NodeTask)>,
}

impl Running {
    /// Stops the server, letting calls in flight finish, then the node.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
        if let Some((tx, task)) = self.node.take() {
            let _ = tx.send(());
            task.await.expect("EventStoreDB node task").expect("EventStoreDB node stopped cleanly");
        }
    }
}

impl Drop for Running {
    /// Dropping the shutdown sender stops the server in the background, as
    /// it always has; the node follows once the server is done.
    fn drop(&mut self) {
        self.shutdown.take();
        let Some((node_stop, _node_task)) = self.node.take() else { return };
        match (self.task.take(), tokio::runtime::Handle::try_current()) {
            (Some(task), Ok(runtime)) => {
                runtime.spawn(async move {
                    let _ = task.await;
                    let _ = node_stop.send(());
                });
            }
            _ => {
                let _ = node_stop.send(());
            }
        }
    }
}

impl TestServer {
    /// A server on the embedded event store.
    pub async fn start() -> TestServer {
        TestServer::start_on(EventBackend::Embedded).await
    }

    /// A server keeping its events in `backend`.
    pub async fn start_on(backend: EventBackend) -> TestServer {
        TestServer::start_in(backend, tempfile::tempdir().expect("temporary directory")).await
    }

    /// A server on `data_dir`, which may hold what an earlier one left
    /// (see [`TestServer::stop_keeping_data`]).
    pub async fn start_in(backend: EventBackend, data_dir: tempfile::TempDir) -> TestServer {
        let clock = Arc::new(ManualClock::new(test_epoch()));
        let (store, node) = match backend {
            EventBackend::Embedded => (server::open_embedded_store(data_dir.path()).expect("open store"), None),
            EventBackend::EsdbNode => {
                let (store, node) = start_esdb_node(&data_dir.path().join(ESDB_NODE_DIR)).await;
                (store, Some(node))
            }
        };
        let tokens = Arc::new(TokenStore::open(data_dir.path()).expect("tokens"));
        let listener = server::bind("127.0.0.1:0".parse().expect("address")).await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let read_side = server::ReadSide::in_dir(data_dir.path()).expect("open views");
        let parts = ServerParts {
            store,
            clock: clock.clone(),
            tokens,
            expiry: ExpiryPolicy::default(),
            read_side: Some(server::ReadSide { expiry_interval: std::time::Duration::from_millis(20), ..read_side }),
        };
        let task = tokio::spawn(server::run(parts, listener, async {
            let _ = rx.await;
        }));
        TestServer { addr, clock, data_dir, backend, running: Running { shutdown: Some(tx), task: Some(task), node } }
    }

    /// Creates a token with `role` (bound to `partner` for partner tokens).
    pub fn token(&self, role: Role, partner: Option<&str>) -> String {
        let name = format!("{}-{}", role, uuid::Uuid::new_v4().simple());
        auth::add_token(self.data_dir.path(), role, partner, &name).expect("add token")
    }

    pub async fn client(&self, token: &str) -> Client {
        BearerToken::new(token).expect("token is a valid header value").client(self.channel().await)
    }

    pub async fn queries(&self, token: &str) -> QueriesClient {
        BearerToken::new(token).expect("token is a valid header value").queries_client(self.channel().await)
    }

    pub async fn admin(&self, token: &str) -> AdminClient {
        BearerToken::new(token).expect("token is a valid header value").admin_client(self.channel().await)
    }

    /// A client that sends `header` verbatim (or nothing) as its authorization metadata.
    pub async fn client_with_header(&self, header: Option<String>) -> Client {
        let auth = match header {
            Some(h) => BearerToken::raw_header(&h).expect("header value"),
            None => BearerToken::none(),
        };
        auth.client(self.channel().await)
    }

    /// A plain connection to the server, for the health and reflection services.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to test server")
    }

    /// Stops the server, letting calls in flight finish (and then the
    /// EventStoreDB node, if any).
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// Stops the server like [`TestServer::stop`] and hands back its data
    /// directory (event store, views, tokens), released by the server, for
    /// tests that work on it afterwards.
    pub async fn stop_keeping_data(self) -> tempfile::TempDir {
        let TestServer { data_dir, running, .. } = self;
        running.stop().await;
        data_dir
    }
}

/// An EventStoreDB-compatible node serving `store` in this process, bound to
/// `addr` (`127.0.0.1:0` for any free port): its address, the sender that
/// stops it (dropping it stops it too) and its task.
pub async fn spawn_esdb_node(
    store: Arc<dyn EventStore>,
    addr: SocketAddr,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, NodeTask) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the node's address");
    let addr = listener.local_addr().expect("node address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(referral_infra::esdb::node::run(store, listener, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// Any free loopback port.
pub fn any_loopback_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("a loopback address")
}

/// Starts an EventStoreDB-compatible node on a loopback port over a fresh
/// embedded store in `dir`; the adapter connected to it, and the node's
/// shutdown sender and task.
async fn start_esdb_node(dir: &Path) -> (Arc<dyn EventStore>, (tokio::sync::oneshot::Sender<()>, NodeTask)) {
    std::fs::create_dir_all(dir).expect("EventStoreDB node directory");
    let inner: Arc<dyn EventStore> =
        Arc::new(SqliteEventStore::open(&dir.join("events.db")).expect("open the node's store"));
    let (node_addr, stop, task) = spawn_esdb_node(inner, any_loopback_port()).await;
    let adapter = EsdbEventStore::connect(&format!("esdb://{node_addr}?tls=false")).expect("connect the adapter");
    (Arc::new(adapter), (stop, task))
}

/// A region profile registration for `partner` in `region` with one location.
pub fn profile_request(request_id: &str, partner: &str, region: &str) -> pb::RegisterPartnerProfileRequest {
    pb::RegisterPartnerProfileRequest {
        request_id: request_id.into(),
        partner_id: partner.into(),
        region: region.into(),
        company_name: format!("{partner} GmbH"),
        description: "Cloud migrations for the Mittelstand.".into(),
        locations: vec![pb::Location {
            id: "berlin".into(),
            name: "Berlin".into(),
            contacts: vec![pb::Contact {
                name: "Ines Berg".into(),
                email: "ines@example.com".into(),
                phone: String::new(),
            }],
        }],
        expertise: Some(pb::Expertise {
            industries: vec!["manufacturing".into()],
            products: vec!["erp".into()],
            services: vec!["migration".into()],
            solutions: vec![],
        }),
        target_sizes: vec![],
    }
}

/// An RFI for the given partners (all in region `emea`).
pub fn rfi_request(request_id: &str, rfi: &str, partners: &[&str]) -> pb::SubmitRfiRequest {
    pb::SubmitRfiRequest {
        request_id: request_id.into(),
        rfi_id: rfi.into(),
        targets: partners
            .iter()
            .map(|p| pb::RfiTarget { partner_id: p.to_string(), region: "emea".into(), location: String::new() })
            .collect(),
        customer: Some(pb::Customer {
            company_name: "Fabrikam AG".into(),
            industry: "manufacturing".into(),
            size_band: pb::SizeBand::SizeBand51250 as i32,
            country: "DE".into(),
            contact: Some(pb::Contact {
                name: "Jonas Weber".into(),
                email: "jonas.weber@fabrikam.example".into(),
                phone: "+49 30 1234567".into(),
            }),
        }),
        requirements: Some(pb::Requirements {
            description: "Move our ERP to the cloud within a year.".into(),
            products: vec!["erp".into()],
            services: vec!["migration".into()],
            keywords: vec!["cloud".into()],
        }),
        consent: Some(pb::Consent { contact: true, share_details: true }),
        direct_contact_requested: true,
        source: pb::Source::PartnerSearch as i32,
        received_at: None,
    }
}

pub fn money(currency: &str, units: i64, nanos: i32) -> pb::google::r#type::Money {
    pb::google::r#type::Money { currency_code: currency.into(), units, nanos }
}

pub fn date(year: i32, month: i32, day: i32) -> pb::google::r#type::Date {
    pb::google::r#type::Date { year, month, day }
}

/// A valid accept request (purchase date a month after the test epoch).
pub fn accept_request(request_id: &str, referral_id: &str) -> pb::AcceptReferralRequest {
    pb::AcceptReferralRequest {
        request_id: request_id.into(),
        referral_id: referral_id.into(),
        engagement_name: "Fabrikam ERP migration".into(),
        estimated_value: Some(money("EUR", 125_000, 500_000_000)),
        estimated_purchase_date: Some(date(2026, 12, 31)),
        notes: "Needs a phased migration of finance first.".into(),
        crm_id: "CRM-1".into(),
        campaign_id: String::new(),
        contacts: vec![],
    }
}

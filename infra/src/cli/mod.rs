//! The `referral-engine` command line: the server, token management, client
//! subcommands for every gRPC command, and benchmarks.

mod client;
mod output;
mod projections;
mod queries;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use referral_commands::{Role, SystemClock};
use referral_domain::clock::ExpiryPolicy;

use crate::bench::append::EsdbTarget;
use crate::grpc::auth::{self, TokenStore};
use crate::server::{self, ServerParts};

#[derive(Parser)]
#[command(name = "referral-engine", version, about = "An event-sourced referral engine", propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the engine: the gRPC API over the embedded event store in the data directory.
    Serve(ServeArgs),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Measure throughput; prints a table, or one JSON object with --json.
    Bench(BenchArgs),
    /// One phase of `bench rebuild`, which runs each in a process of its own.
    #[command(name = crate::bench::rebuild::PHASE_COMMAND, hide = true)]
    BenchRebuildPhase(RebuildPhaseArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
    #[command(flatten)]
    Queries(queries::QueryCommand),
    /// Operate the projections: status, rebuild, retry (a server's, or offline with --data-dir).
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Serve EventStoreDB's gRPC protocol over an embedded store (an insecure single node).
    EsdbNode(EsdbNodeArgs),
}

#[derive(Args)]
struct EsdbNodeArgs {
    /// Where the node keeps its events.
    #[arg(long, default_value = "./esdb-data")]
    data_dir: PathBuf,
    /// Address to listen on (EventStoreDB's usual port by default).
    #[arg(long, default_value = "127.0.0.1:2113")]
    listen: SocketAddr,
}

#[derive(Args)]
struct ServeArgs {
    /// Where the event store and the tokens file live.
    #[arg(long, env = "REFERRAL_ENGINE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Address the gRPC API listens on.
    #[arg(long, env = "REFERRAL_ENGINE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Days after receipt an unanswered referral expires.
    #[arg(long, default_value_t = 14)]
    expiry_days: u32,
    /// Where events live: `embedded` (SQLite in the data directory), or an
    /// EventStoreDB connection string such as `esdb://HOST:2113?tls=false`
    /// (views and tokens stay in the data directory).
    #[arg(long, env = "REFERRAL_ENGINE_STORE", default_value = "embedded")]
    store: String,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once and stored only as a hash.
    Add {
        /// intake, partner, operator or analyst.
        #[arg(long)]
        role: String,
        /// The partner a partner token is bound to.
        #[arg(long)]
        partner: Option<String>,
        /// A name for the token, shown in the audit trail of every event it writes.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, env = "REFERRAL_ENGINE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// append: durable appends/s; commands: full commands/s; rebuild: projection
    /// rebuild events/s and memory; queries: inbox page latency; lag: command to view.
    scenario: String,
    /// Seconds per measurement (3 by default; 10 for lag).
    #[arg(long)]
    seconds: Option<f64>,
    /// For `rebuild`: events in the log (measured at a quarter of them too).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// For `rebuild`: events the projection runner applies per transaction
    /// while rebuilding (the runner's default when absent).
    #[arg(long)]
    batch_size: Option<usize>,
    /// For `queries`: referrals in the views.
    #[arg(long, default_value_t = 1_000_000)]
    referrals: u64,
    /// For `lag`: commands per second; for `queries`: pages per second
    /// that the headline's eight clients share.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// For `append` on the embedded store and `commands`: measure each row this many times, engine
    /// and baseline alternating, and show each side's median run (every
    /// run's figure is listed in the notes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeat: u32,
    /// For `commands`: drive the commands through a gRPC server over loopback.
    #[arg(long)]
    grpc: bool,
    /// For `append`: measure an EventStoreDB through the adapter, beside the
    /// embedded store: `esdb://HOST:PORT?tls=false` for a running server, or
    /// `esdb-node` for the compatible node started in this process.
    #[arg(long)]
    store: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// The directory in which the benchmark makes a scratch directory for its
    /// data, removed when it ends (the system's temporary directory by default).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct RebuildPhaseArgs {
    /// The event store holding the generated log.
    #[arg(long)]
    store: PathBuf,
    /// The directory to build the views in (replaced).
    #[arg(long)]
    views: PathBuf,
    /// `baseline`, `all`, or one projection's name.
    #[arg(long)]
    phase: String,
    /// The log's head position.
    #[arg(long)]
    head: u64,
    /// Events the runner applies per transaction while rebuilding.
    #[arg(long)]
    batch_size: usize,
}

/// Runs the command line; the binary's `main` is this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Token(TokenCommand::Add { role, partner, name, data_dir }) => {
                token_add(&role, partner.as_deref(), name.as_deref(), &data_dir)
            }
            Command::Bench(args) => bench(args).await,
            Command::BenchRebuildPhase(args) => rebuild_phase(args).await,
            Command::Client(command) => client::run(command).await,
            Command::Queries(command) => queries::run(command).await,
            Command::Projections(command) => projections::run(command).await,
            Command::EsdbNode(args) => esdb_node(args).await,
        }
    })
}

/// Success, or the error on standard error and a failing exit code.
fn exit_code(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn esdb_node(args: EsdbNodeArgs) -> ExitCode {
    let result = async {
        let store = server::open_embedded_store(&args.data_dir).map_err(|e| e.to_string())?;
        let listener = server::bind(args.listen).await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!(
            "EventStoreDB-compatible node listening on {addr} (data in {}); connect with esdb://{addr}?tls=false",
            args.data_dir.display()
        );
        crate::esdb::node::run(store, listener, server::shutdown_signal()).await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    }
    .await;
    exit_code(result)
}

async fn serve(args: ServeArgs) -> ExitCode {
    let result = async {
        let expiry = ExpiryPolicy::new(chrono::Duration::days(i64::from(args.expiry_days)))
            .map_err(|e| format!("--expiry-days: {e}"))?;
        let store = server::open_store(&args.store, &args.data_dir).map_err(|e| e.to_string())?;
        if let Some(path) = auth::bootstrap_operator(&args.data_dir).map_err(|e| e.to_string())? {
            println!("First start: created an operator token in {}", path.display());
            println!("  export REFERRAL_ENGINE_TOKEN=$(cat {})", path.display());
        }
        let tokens = Arc::new(TokenStore::open(&args.data_dir).map_err(|e| e.to_string())?);
        let listener = server::bind(args.listen).await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, data_dir = %args.data_dir.display(), "referral-engine serving gRPC");
        println!("referral-engine listening on {addr} (data in {})", args.data_dir.display());
        if args.store != "embedded" {
            println!("events in EventStoreDB at {}", args.store);
        }
        let read_side = server::ReadSide::in_dir(&args.data_dir).map_err(|e| e.to_string())?;
        let parts = ServerParts { store, clock: Arc::new(SystemClock), tokens, expiry, read_side: Some(read_side) };
        server::run(parts, listener, server::shutdown_signal()).await.map_err(|e| e.to_string())?;
        tracing::info!("stopped");
        Ok::<(), String>(())
    }
    .await;
    exit_code(result)
}

fn token_add(role: &str, partner: Option<&str>, name: Option<&str>, data_dir: &std::path::Path) -> ExitCode {
    let role = match Role::parse(role) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: --role: {e}");
            return ExitCode::FAILURE;
        }
    };
    let default_name = match partner {
        Some(p) => format!("{role}-{p}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        None => format!("{role}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    };
    match auth::add_token(data_dir, role, partner, name.unwrap_or(&default_name)) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn rebuild_phase(args: RebuildPhaseArgs) -> ExitCode {
    let options = referral_projections::RunnerOptions {
        rebuild_batch_size: args.batch_size.max(1),
        ..referral_projections::RunnerOptions::default()
    };
    match crate::bench::rebuild::run_phase(&args.store, &args.views, &args.phase, args.head, options).await {
        Ok(outcome) => match serde_json::to_string(&outcome) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: BenchArgs) -> ExitCode {
    let default_seconds = if args.scenario == "lag" { 10.0 } else { 3.0 };
    let duration = std::time::Duration::from_secs_f64(args.seconds.unwrap_or(default_seconds).max(0.1));
    // A scratch directory of its own, removed afterwards, so that no earlier
    // run's files are measured or get in the way.
    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = std::fs::create_dir_all(&parent)
        .and_then(|()| tempfile::Builder::new().prefix("referral-engine-bench-").tempdir_in(&parent));
    let tmp = match scratch {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot create a scratch directory in {}: {e}", parent.display());
            return ExitCode::FAILURE;
        }
    };
    let dir = tmp.path().to_path_buf();
    let report = match args.scenario.as_str() {
        "append" => match args.store.as_deref() {
            None | Some("embedded") => crate::bench::append::bench_append(&dir, duration, args.repeat as usize).await,
            Some("esdb-node") => {
                crate::bench::append::bench_append_esdb(&dir, duration, EsdbTarget::InProcessNode).await
            }
            Some(connection) => {
                crate::bench::append::bench_append_esdb(&dir, duration, EsdbTarget::Server(connection.into())).await
            }
        }
        .map_err(|e| e.to_string()),
        "commands" => crate::bench::commands::bench_commands(&dir, duration, args.grpc, args.repeat as usize)
            .await
            .map_err(|e| e.to_string()),
        "rebuild" => {
            let mut options = referral_projections::RunnerOptions::default();
            if let Some(size) = args.batch_size {
                options.rebuild_batch_size = size.max(1);
            }
            crate::bench::rebuild::bench_rebuild(&dir, args.events, options).await.map_err(|e| e.to_string())
        }
        "queries" => crate::bench::queries::bench_queries(&dir, args.referrals, args.rate, duration)
            .await
            .map_err(|e| e.to_string()),
        "lag" => crate::bench::lag::bench_lag(&dir, args.rate, duration).await.map_err(|e| e.to_string()),
        other => Err(format!("unknown scenario {other:?}; use append, commands, rebuild, queries or lag")),
    };
    match report {
        Ok(report) => {
            let report = report.with_fsync_of(&dir);
            if args.json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

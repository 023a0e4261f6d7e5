//! The official Node.js EventStoreDB client (`@eventstore/db-client`, pinned
//! in `tests/node-client/package.json`) against the project's EventStoreDB-
//! compatible node: `tests/node-client/client-test.mjs` appends, reads,
//! subscribes, deletes and checks every answer; this test serves the node
//! over a fresh embedded store, runs the script with `node`, and then checks
//! through the store itself that the client's events were written.
//!
//! Needs Node.js and npm on the `PATH` (it fails, rather than skips, without
//! them). The npm packages come from `npm ci` (CI runs it before the tests;
//! the test runs it itself when `node_modules` is missing).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use referral_domain::eventlog::{AllFilter, AllStart, Direction, EventStore, StreamRevision};
use referral_infra::store::SqliteEventStore;
use referral_tests::{any_loopback_port, spawn_esdb_node};
use tokio::process::Command;

/// Upper bound for the client script (and for `npm ci`).
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node-client")
}

fn describe(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `program args` in `dir` to completion, with a timeout; panics with a
/// clear message when the program is not installed.
async fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "`{program}` was not found on the PATH: this test needs Node.js (v18 or later) and npm \
                     to run the official EventStoreDB Node.js client"
                )
            }
            panic!("could not start `{program}`: {e}")
        });
    match tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for `{program}`: {e}")),
        Err(_) => panic!("`{program} {}` did not finish within {CHILD_TIMEOUT:?}", args.join(" ")),
    }
}

/// Installs the pinned client from `package-lock.json` unless it is there.
async fn ensure_client_installed(dir: &Path) {
    let version = run("node", &["--version"], dir).await;
    assert!(version.status.success(), "`node --version` failed\n{}", describe(&version));
    if dir.join("node_modules/@eventstore/db-client/package.json").is_file() {
        return;
    }
    let install = run("npm", &["ci", "--no-audit", "--no-fund"], dir).await;
    assert!(install.status.success(), "`npm ci` in {} failed\n{}", dir.display(), describe(&install));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_node_client_appends_reads_and_subscribes() {
    let dir = client_dir();
    ensure_client_installed(&dir).await;

    let data = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteEventStore::open(&data.path().join("events.db")).expect("open sqlite store"));
    let (addr, stop, node) = spawn_esdb_node(store.clone(), any_loopback_port()).await;

    let stream = format!("order-{}", uuid::Uuid::new_v4().simple());
    let connection = format!("esdb://{addr}?tls=false");
    let output = run("node", &["client-test.mjs", &connection, &stream], &dir).await;
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(output.status.success(), "the Node.js client test failed\n{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("client test passed"), "the Node.js client test did not finish\n{}", describe(&output));

    // What the client wrote, read straight from the store.
    let all = store
        .read_all(Direction::Forwards, AllStart::Start, &AllFilter::streams_starting_with(&[&stream]), 1_000)
        .await
        .expect("read $all from the store");
    let ours: Vec<_> = all.iter().filter(|e| e.stream.as_str() == stream).collect();
    let types: Vec<&str> = ours.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["OrderPlaced", "ItemAdded", "OrderConfirmed", "OrderShipped", "OrderDelivered"]);
    let revisions: Vec<StreamRevision> = ours.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (0..5).map(StreamRevision).collect::<Vec<_>>());
    let first: serde_json::Value = serde_json::from_slice(&ours[0].data).expect("the first event's data is JSON");
    assert_eq!(first["total"], 42);
    assert!(ours.windows(2).all(|w| w[0].position < w[1].position), "positions increase");

    let _ = stop.send(());
    node.await.expect("the node task").expect("the node shuts down cleanly");
}

//! The EventStoreDB-compatible node at the protocol level: what the store
//! conformance suite (which goes through our adapter) and the Node.js client
//! test do not see. Each test serves a node over a fresh embedded store on a
//! loopback port and talks to it with the official Rust client (`eventstore`)
//! where that client exposes the feature, and with the project's generated
//! tonic client where the raw protocol has to be inspected.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventstore::operations::Features;
use eventstore::{
    AppendToStreamOptions, Client, ClientSettings, EventData, PersistentSubscriptionOptions, ReadStreamOptions,
    StreamPosition, SubscribeToAllOptions, SubscribeToStreamOptions, Subscription, SubscriptionEvent,
    SubscriptionFilter,
};
use futures::stream;
use referral_domain::eventlog::EventStore;
use referral_infra::esdb::pb::event_store::client as es;
use referral_infra::esdb::pb::event_store::client::server_features::server_features_client::ServerFeaturesClient;
use referral_infra::esdb::pb::event_store::client::streams as pb;
use referral_infra::store::SqliteEventStore;
use referral_tests::{any_loopback_port, spawn_esdb_node};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

use pb::streams_client::StreamsClient;

/// Upper bound for one test, so that a hang fails instead of blocking the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a subscription may take to deliver a message that is due.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the node may take to stop while a subscription is open.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The node under test
// ---------------------------------------------------------------------------

/// A node serving a fresh embedded store on a loopback port.
struct Node {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).expect("open sqlite store"));
        let (addr, stop, task) = spawn_esdb_node(store, any_loopback_port()).await;
        Node { addr, stop: Some(stop), task: Some(task), _dir: dir }
    }

    /// The official client, connected as an `--insecure` node expects.
    fn client(&self) -> Client {
        let settings: ClientSettings =
            format!("esdb://{}?tls=false", self.addr).parse().expect("a valid connection string");
        Client::new(settings).expect("create the eventstore client")
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).expect("a valid uri").connect().await.expect("connect")
    }

    /// The project's generated client for `Streams`.
    async fn streams(&self) -> StreamsClient<Channel> {
        StreamsClient::new(self.channel().await)
    }

    /// Asks the node to stop and waits (bounded) until it has; returns how
    /// long that took.
    async fn stop(&mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().expect("the node runs").send(());
        let task = self.task.take().expect("the node runs");
        tokio::time::timeout(SHUTDOWN_TIMEOUT, task)
            .await
            .expect("the node stops promptly")
            .expect("the node task")
            .expect("the node serves until asked to stop");
        started.elapsed()
    }
}

async fn run(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("the test finishes in time");
}

// ---------------------------------------------------------------------------
// Raw protocol helpers
// ---------------------------------------------------------------------------

fn stream_id(name: &str) -> es::StreamIdentifier {
    es::StreamIdentifier { stream_name: name.as_bytes().to_vec() }
}

fn string_uuid(id: uuid::Uuid) -> es::Uuid {
    es::Uuid { value: Some(es::uuid::Value::String(id.hyphenated().to_string())) }
}

fn parse_uuid(id: Option<&es::Uuid>) -> uuid::Uuid {
    match id.and_then(|id| id.value.as_ref()).expect("an id") {
        es::uuid::Value::String(s) => uuid::Uuid::parse_str(s).expect("a UUID string"),
        es::uuid::Value::Structured(s) => {
            uuid::Uuid::from_u64_pair(s.most_significant_bits as u64, s.least_significant_bits as u64)
        }
    }
}

fn append_options(stream: &str, expected: pb::append_req::options::ExpectedStreamRevision) -> pb::AppendReq {
    pb::AppendReq {
        content: Some(pb::append_req::Content::Options(pb::append_req::Options {
            stream_identifier: Some(stream_id(stream)),
            expected_stream_revision: Some(expected),
        })),
    }
}

fn no_stream() -> pb::append_req::options::ExpectedStreamRevision {
    pb::append_req::options::ExpectedStreamRevision::NoStream(es::Empty {})
}

fn exact(revision: u64) -> pb::append_req::options::ExpectedStreamRevision {
    pb::append_req::options::ExpectedStreamRevision::Revision(revision)
}

/// A proposed event with the given metadata entries (normally `type` and
/// `content-type`).
fn proposed_with(id: uuid::Uuid, metadata: &[(&str, &str)], data: &[u8]) -> pb::AppendReq {
    pb::AppendReq {
        content: Some(pb::append_req::Content::ProposedMessage(pb::append_req::ProposedMessage {
            id: Some(string_uuid(id)),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            custom_metadata: Vec::new(),
            data: data.to_vec(),
        })),
    }
}

fn proposed_json(event_type: &str) -> pb::AppendReq {
    proposed_with(
        uuid::Uuid::new_v4(),
        &[("type", event_type), ("content-type", "application/json")],
        br#"{"order":"A-1","amount":12}"#,
    )
}

async fn raw_append(
    client: &mut StreamsClient<Channel>,
    messages: Vec<pb::AppendReq>,
) -> Result<pb::AppendResp, Status> {
    client.append(stream::iter(messages)).await.map(|r| r.into_inner())
}

async fn append_json(client: &mut StreamsClient<Channel>, stream: &str, types: &[&str]) -> pb::append_resp::Success {
    let mut messages = vec![append_options(stream, pb::append_req::options::ExpectedStreamRevision::Any(es::Empty {}))];
    messages.extend(types.iter().map(|t| proposed_json(t)));
    match raw_append(client, messages).await.expect("append").result {
        Some(pb::append_resp::Result::Success(success)) => success,
        other => panic!("the append succeeds: {other:?}"),
    }
}

/// A forwards read of a whole stream, with ids in the given form.
fn read_stream_request(stream: &str, uuids: Option<pb::read_req::options::uuid_option::Content>) -> pb::ReadReq {
    use pb::read_req::options::{stream_options::RevisionOption, CountOption, FilterOption, StreamOption};
    pb::ReadReq {
        options: Some(pb::read_req::Options {
            stream_option: Some(StreamOption::Stream(pb::read_req::options::StreamOptions {
                stream_identifier: Some(stream_id(stream)),
                revision_option: Some(RevisionOption::Start(es::Empty {})),
            })),
            read_direction: pb::read_req::options::ReadDirection::Forwards as i32,
            resolve_links: false,
            count_option: Some(CountOption::Count(u64::MAX)),
            filter_option: Some(FilterOption::NoFilter(es::Empty {})),
            uuid_option: Some(pb::read_req::options::UuidOption { content: uuids }),
            control_option: Some(pb::read_req::options::ControlOption { compatibility: 1 }),
        }),
    }
}

/// Every message of a read, and how the call ended.
async fn raw_read(
    client: &mut StreamsClient<Channel>,
    request: pb::ReadReq,
) -> (Vec<pb::ReadResp>, Result<(), Status>) {
    let mut responses = match client.read(request).await {
        Ok(responses) => responses.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut messages = Vec::new();
    loop {
        match responses.message().await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return (messages, Ok(())),
            Err(status) => return (messages, Err(status)),
        }
    }
}

fn recorded(message: &pb::ReadResp) -> &pb::read_resp::read_event::RecordedEvent {
    match &message.content {
        Some(pb::read_resp::Content::Event(pb::read_resp::ReadEvent { event: Some(event), .. })) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// EventStoreDB's ticks (100 ns since the Unix epoch) for now.
fn ticks_now() -> i64 {
    (SystemTime::now().duration_since(UNIX_EPOCH).expect("after the epoch").as_nanos() / 100) as i64
}

fn exception(status: &Status) -> Option<&str> {
    status.metadata().get("exception").and_then(|v| v.to_str().ok())
}

/// A unary call with an empty message on any path.
async fn raw_unary_empty(channel: Channel, path: &'static str) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
    let codec = tonic::codec::ProstCodec::<(), ()>::default();
    grpc.unary(tonic::Request::new(()), PathAndQuery::from_static(path), codec).await.map(|r| r.into_inner())
}

fn batch_request(
    correlation: uuid::Uuid,
    options: Option<pb::batch_append_req::Options>,
    types: &[&str],
    is_final: bool,
) -> pb::BatchAppendReq {
    pb::BatchAppendReq {
        correlation_id: Some(string_uuid(correlation)),
        options,
        proposed_messages: types
            .iter()
            .map(|t| pb::batch_append_req::ProposedMessage {
                id: Some(string_uuid(uuid::Uuid::new_v4())),
                metadata: HashMap::from([
                    ("type".to_string(), t.to_string()),
                    ("content-type".to_string(), "application/json".to_string()),
                ]),
                custom_metadata: Vec::new(),
                data: b"{}".to_vec(),
            })
            .collect(),
        is_final,
    }
}

fn batch_options(
    stream: &str,
    expected: pb::batch_append_req::options::ExpectedStreamPosition,
) -> Option<pb::batch_append_req::Options> {
    Some(pb::batch_append_req::Options {
        stream_identifier: Some(stream_id(stream)),
        expected_stream_position: Some(expected),
        deadline_option: Some(pb::batch_append_req::options::DeadlineOption::Deadline(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        })),
    })
}

/// Sends all `requests` over one BatchAppend call and returns every answer.
async fn raw_batch_append(
    client: &mut StreamsClient<Channel>,
    requests: Vec<pb::BatchAppendReq>,
) -> Vec<pb::BatchAppendResp> {
    let mut responses = client.batch_append(stream::iter(requests)).await.expect("batch append call").into_inner();
    let mut all = Vec::new();
    while let Some(response) = responses.message().await.expect("batch append answer") {
        all.push(response);
    }
    all
}

// ---------------------------------------------------------------------------
// Official client helpers
// ---------------------------------------------------------------------------

fn json_event(event_type: &str, n: usize) -> EventData {
    EventData::json(event_type, &serde_json::json!({ "n": n })).expect("serialize")
}

/// The event itself (the node writes no links).
fn original(event: eventstore::ResolvedEvent) -> eventstore::RecordedEvent {
    event.event.expect("an event")
}

async fn next_message(subscription: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(DELIVERY_TIMEOUT, subscription.next_subscription_event())
        .await
        .expect("a subscription message in time")
        .expect("a subscription message")
}

async fn expect_confirmed(subscription: &mut Subscription) {
    match next_message(subscription).await {
        SubscriptionEvent::Confirmed(id) => assert!(!id.is_empty(), "a subscription id"),
        other => panic!("the first message is the confirmation, got {other:?}"),
    }
}

/// The next `n` events, skipping caught-up markers; panics on anything else.
async fn next_events(subscription: &mut Subscription, n: usize) -> Vec<eventstore::RecordedEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        match next_message(subscription).await {
            SubscriptionEvent::EventAppeared(e) => events.push(original(e)),
            SubscriptionEvent::CaughtUp => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
    events
}

// ---------------------------------------------------------------------------
// ServerFeatures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_features_report_a_numeric_version_and_batch_append() {
    run(async {
        let node = Node::start().await;
        let mut features = ServerFeaturesClient::new(node.channel().await);
        let methods = features.get_supported_methods(es::Empty {}).await.expect("GetSupportedMethods").into_inner();

        let parts: Vec<&str> = methods.event_store_server_version.split('.').collect();
        assert_eq!(parts.len(), 3, "a major.minor.patch version: {:?}", methods.event_store_server_version);
        assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()), "numeric: {:?}", methods.event_store_server_version);
        assert!(
            methods
                .methods
                .iter()
                .any(|m| m.method_name == "batchappend" && m.service_name == "event_store.client.streams.streams"),
            "batchappend is advertised: {:?}",
            methods.methods
        );

        // The official client reads the same answer when it connects.
        let info = node.client().server_info().await.expect("server info");
        assert_eq!(info.version().to_string(), methods.event_store_server_version);
        assert!(info.contains_features(Features::BATCH_APPEND));
        assert!(!info.contains_features(Features::PERSISTENT_SUBSCRIPTION_LIST));
    })
    .await;
}

// ---------------------------------------------------------------------------
// Services the node does not serve
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_subscriptions_are_an_unsupported_feature_for_the_client() {
    run(async {
        let node = Node::start().await;
        let client = node.client();
        let created =
            client.create_persistent_subscription("orders", "group", &PersistentSubscriptionOptions::default()).await;
        assert!(matches!(created, Err(eventstore::Error::UnsupportedFeature)), "{created:?}");

        // The client is still usable afterwards.
        let written = client.append_to_stream("orders", &Default::default(), json_event("Placed", 0)).await;
        assert_eq!(written.expect("append after the refusal").next_expected_version, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_services_and_methods_answer_unimplemented() {
    run(async {
        let node = Node::start().await;
        for path in [
            "/event_store.client.gossip.Gossip/Read",
            "/event_store.client.users.Users/Details",
            "/event_store.client.operations.Operations/Shutdown",
            "/event_store.client.projections.Projections/Statistics",
            "/event_store.client.monitoring.Monitoring/Stats",
            "/event_store.client.persistent_subscriptions.PersistentSubscriptions/List",
            // An unknown method of a service the node does serve.
            "/event_store.client.streams.Streams/Subscribe",
        ] {
            let answer = raw_unary_empty(node.channel().await, path).await;
            let status = answer.expect_err(path);
            assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
        }
        // The node still serves after the refusals.
        let mut streams = node.streams().await;
        let (messages, end) = raw_read(&mut streams, read_stream_request("nothing", None)).await;
        assert!(end.is_ok() && messages.len() == 1, "{messages:?} {end:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// Reads through the raw protocol
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_events_carry_type_content_type_and_created_ticks() {
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        let before = ticks_now();
        let binary = [0xffu8, 0x00, 0x01, 0xfe];
        let messages = vec![
            append_options("mixed", no_stream()),
            proposed_json("OrderPlaced"),
            proposed_with(
                uuid::Uuid::new_v4(),
                &[("type", "Thumbnail"), ("content-type", "application/octet-stream")],
                &binary,
            ),
        ];
        raw_append(&mut client, messages).await.expect("append");
        let after = ticks_now();

        let (messages, end) = raw_read(&mut client, read_stream_request("mixed", None)).await;
        end.expect("the read ends OK");
        assert_eq!(messages.len(), 2);
        let (json, bytes) = (recorded(&messages[0]), recorded(&messages[1]));
        assert_eq!(json.metadata["type"], "OrderPlaced");
        assert_eq!(json.metadata["content-type"], "application/json");
        assert_eq!(bytes.metadata["type"], "Thumbnail");
        assert_eq!(bytes.metadata["content-type"], "application/octet-stream");
        assert_eq!(bytes.data, binary);
        assert_eq!((json.stream_revision, bytes.stream_revision), (0, 1));
        assert_eq!(json.stream_identifier, Some(stream_id("mixed")));

        for event in [json, bytes] {
            let created = &event.metadata["created"];
            assert!(created.chars().all(|c| c.is_ascii_digit()), "decimal ticks: {created}");
            let created: i64 = created.parse().expect("ticks fit in an i64");
            // The store keeps microseconds, so allow for the truncation.
            assert!(created >= before - 10 && created <= after, "{before} <= {created} <= {after}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_returns_ids_in_the_form_the_reader_asks_for() {
    use pb::read_req::options::uuid_option::Content;
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        let id = uuid::Uuid::new_v4();
        let event = proposed_with(id, &[("type", "Placed"), ("content-type", "application/json")], b"{}");
        raw_append(&mut client, vec![append_options("ids", no_stream()), event]).await.expect("append");

        let (messages, _) =
            raw_read(&mut client, read_stream_request("ids", Some(Content::String(es::Empty {})))).await;
        assert_eq!(recorded(&messages[0]).id, Some(string_uuid(id)));

        let (messages, _) =
            raw_read(&mut client, read_stream_request("ids", Some(Content::Structured(es::Empty {})))).await;
        let (most, least) = id.as_u64_pair();
        let structured =
            es::uuid::Structured { most_significant_bits: most as i64, least_significant_bits: least as i64 };
        assert_eq!(recorded(&messages[0]).id, Some(es::Uuid { value: Some(es::uuid::Value::Structured(structured)) }));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_missing_stream_yields_one_stream_not_found_and_ends_ok() {
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        let (messages, end) = raw_read(&mut client, read_stream_request("never-written", None)).await;
        end.expect("the read ends OK");
        assert_eq!(messages.len(), 1, "{messages:?}");
        match &messages[0].content {
            Some(pb::read_resp::Content::StreamNotFound(not_found)) => {
                assert_eq!(not_found.stream_identifier, Some(stream_id("never-written")))
            }
            other => panic!("expected stream_not_found, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_delete_shows_in_the_streams_metadata_stream_which_cannot_be_written() {
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        append_json(&mut client, "closed", &["Placed", "Cancelled"]).await;
        let delete = pb::DeleteReq {
            options: Some(pb::delete_req::Options {
                stream_identifier: Some(stream_id("closed")),
                expected_stream_revision: Some(pb::delete_req::options::ExpectedStreamRevision::Revision(1)),
            }),
        };
        client.delete(delete).await.expect("soft delete");
        let (messages, end) = raw_read(&mut client, read_stream_request("$$closed", None)).await;
        end.expect("the metadata stream reads OK");
        assert_eq!(messages.len(), 1, "{messages:?}");
        let marker = recorded(&messages[0]);
        assert_eq!(marker.metadata.get("type").map(String::as_str), Some("$metadata"));
        let body: serde_json::Value = serde_json::from_slice(&marker.data).expect("JSON metadata");
        assert_eq!(body, serde_json::json!({"$tb": 2}), "truncate before the deleted revisions");

        let refused =
            raw_append(&mut client, vec![append_options("$$closed", exact(0)), proposed_json("$metadata")]).await;
        let status = refused.expect_err("stream metadata cannot be written");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains('$'), "{}", status.message());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_tombstoned_stream_fails_with_stream_deleted() {
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        append_json(&mut client, "gone", &["Placed", "Cancelled"]).await;
        let tombstone = pb::TombstoneReq {
            options: Some(pb::tombstone_req::Options {
                stream_identifier: Some(stream_id("gone")),
                expected_stream_revision: Some(pb::tombstone_req::options::ExpectedStreamRevision::Revision(1)),
            }),
        };
        client.tombstone(tombstone).await.expect("tombstone");

        let (messages, end) = raw_read(&mut client, read_stream_request("gone", None)).await;
        assert!(messages.is_empty(), "no events of a tombstoned stream: {messages:?}");
        let status = end.expect_err("the read fails");
        assert_eq!(exception(&status), Some("stream-deleted"), "{status:?}");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

        // The official client maps it to its own error.
        let read = node.client().read_stream("gone", &ReadStreamOptions::default()).await;
        let error = match read {
            Err(e) => e,
            Ok(mut events) => events.next().await.expect_err("reading a tombstoned stream fails"),
        };
        assert!(matches!(error, eventstore::Error::ResourceDeleted), "{error:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// Appends through the raw protocol
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_wrong_expected_version_fills_current_and_20_6_fields() {
    use pb::append_resp::wrong_expected_version as w;
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        append_json(&mut client, "orders", &["Placed", "Paid"]).await;

        let answer = raw_append(&mut client, vec![append_options("orders", exact(5)), proposed_json("Shipped")]).await;
        let Some(pb::append_resp::Result::WrongExpectedVersion(wrong)) = answer.expect("a normal response").result
        else {
            panic!("expected a wrong-expected-version result");
        };
        assert_eq!(wrong.current_revision_option, Some(w::CurrentRevisionOption::CurrentRevision(1)));
        assert_eq!(wrong.expected_revision_option, Some(w::ExpectedRevisionOption::ExpectedRevision(5)));
        assert_eq!(wrong.current_revision_option_20_6_0, Some(w::CurrentRevisionOption2060::CurrentRevision2060(1)));
        assert_eq!(wrong.expected_revision_option_20_6_0, Some(w::ExpectedRevisionOption2060::ExpectedRevision2060(5)));

        // On a stream that does not exist, both forms say "no stream".
        let answer = raw_append(&mut client, vec![append_options("absent", exact(0)), proposed_json("Placed")]).await;
        let Some(pb::append_resp::Result::WrongExpectedVersion(wrong)) = answer.expect("a normal response").result
        else {
            panic!("expected a wrong-expected-version result");
        };
        assert_eq!(wrong.current_revision_option, Some(w::CurrentRevisionOption::CurrentNoStream(es::Empty {})));
        assert_eq!(
            wrong.current_revision_option_20_6_0,
            Some(w::CurrentRevisionOption2060::NoStream2060(es::Empty {}))
        );
        assert_eq!(wrong.expected_revision_option, Some(w::ExpectedRevisionOption::ExpectedRevision(0)));

        // The official client turns the response into its typed error.
        let written = node
            .client()
            .append_to_stream(
                "orders",
                &AppendToStreamOptions::default().expected_revision(eventstore::ExpectedRevision::Exact(7)),
                json_event("Shipped", 0),
            )
            .await;
        match written {
            Err(eventstore::Error::WrongExpectedVersion { expected, current }) => {
                assert_eq!(expected, eventstore::ExpectedRevision::Exact(7));
                assert_eq!(current, eventstore::CurrentRevision::Current(1));
            }
            other => panic!("expected WrongExpectedVersion, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_not_starting_with_options_is_invalid_argument() {
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        let status = raw_append(&mut client, vec![proposed_json("Placed"), append_options("orders", no_stream())])
            .await
            .expect_err("the append is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("options"), "the message says what is wrong: {status:?}");

        let (messages, _) = raw_read(&mut client, read_stream_request("orders", None)).await;
        assert!(matches!(messages[0].content, Some(pb::read_resp::Content::StreamNotFound(_))), "nothing written");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_of_an_event_without_type_is_invalid_argument_naming_it() {
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        let untyped = uuid::Uuid::new_v4();
        let messages = vec![
            append_options("orders", no_stream()),
            proposed_json("Placed"),
            proposed_with(untyped, &[("content-type", "application/json")], b"{}"),
        ];
        let status = raw_append(&mut client, messages).await.expect_err("the append is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("type"), "the message names the missing type: {status:?}");
        assert!(status.message().contains(&untyped.to_string()), "the message names the event: {status:?}");

        // The whole append was refused, including the well-formed event.
        let (messages, _) = raw_read(&mut client, read_stream_request("orders", None)).await;
        assert!(matches!(messages[0].content, Some(pb::read_resp::Content::StreamNotFound(_))), "nothing written");
    })
    .await;
}

// ---------------------------------------------------------------------------
// BatchAppend
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_append_with_the_official_client_reports_revisions_and_positions() {
    use eventstore::ExpectedRevision;
    run(async {
        let node = Node::start().await;
        let client = node.client();
        let batch = client.batch_append(&Default::default()).await.expect("the node supports batch append");

        let first = batch
            .append_to_stream("batch-a", ExpectedRevision::NoStream, (0..3).map(|n| json_event("Placed", n)).collect())
            .await
            .expect("first batch");
        assert_eq!(first.stream_name(), "batch-a");
        assert_eq!(first.current_revision(), Some(2));
        let first_position = first.current_position().expect("a position");

        let second = batch
            .append_to_stream(
                "batch-b",
                ExpectedRevision::NoStream,
                vec![json_event("Placed", 0), json_event("Paid", 1)],
            )
            .await
            .expect("second batch");
        assert_eq!(second.current_revision(), Some(1));
        let second_position = second.current_position().expect("a position");
        assert!(second_position.commit > first_position.commit, "{first_position:?} < {second_position:?}");

        let third = batch
            .append_to_stream("batch-a", ExpectedRevision::Exact(2), vec![json_event("Shipped", 3)])
            .await
            .expect("third batch");
        assert_eq!(third.current_revision(), Some(3));
        assert!(third.current_position().expect("a position").commit > second_position.commit);

        let mut read = client.read_stream("batch-a", &ReadStreamOptions::default()).await.expect("read");
        let mut revisions = Vec::new();
        while let Some(event) = read.next().await.expect("read an event") {
            revisions.push(event.get_original_event().revision);
        }
        assert_eq!(revisions, [0, 1, 2, 3]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_append_wrong_expected_version_is_an_error_result_echoing_the_request() {
    use pb::batch_append_req::options::ExpectedStreamPosition as E;
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        append_json(&mut client, "orders", &["Placed"]).await;

        let correlation = uuid::Uuid::new_v4();
        let request = batch_request(correlation, batch_options("orders", E::StreamPosition(7)), &["Paid"], true);
        let responses = raw_batch_append(&mut client, vec![request]).await;
        assert_eq!(responses.len(), 1, "{responses:?}");
        let response = &responses[0];
        assert_eq!(parse_uuid(response.correlation_id.as_ref()), correlation);
        assert_eq!(response.stream_identifier, Some(stream_id("orders")));
        assert_eq!(
            response.expected_stream_position,
            Some(pb::batch_append_resp::ExpectedStreamPosition::StreamPosition(7))
        );
        let Some(pb::batch_append_resp::Result::Error(status)) = &response.result else {
            panic!("expected an error result, got {response:?}");
        };
        assert_eq!(status.code, Code::FailedPrecondition as i32, "{status:?}");
        let detail = status.details.as_ref().expect("a detail");
        assert!(detail.type_url.ends_with("event_store.client.WrongExpectedVersion"), "{detail:?}");
        let wrong: es::WrongExpectedVersion = prost::Message::decode(detail.value.as_slice()).expect("decode detail");
        use es::wrong_expected_version::{CurrentStreamRevisionOption as C, ExpectedStreamPositionOption as X};
        assert_eq!(wrong.current_stream_revision_option, Some(C::CurrentStreamRevision(0)));
        assert_eq!(wrong.expected_stream_position_option, Some(X::ExpectedStreamPosition(7)));

        let (messages, _) = raw_read(&mut client, read_stream_request("orders", None)).await;
        assert_eq!(messages.len(), 1, "nothing appended by the failed batch");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_append_parts_until_final_are_appended_together() {
    use pb::batch_append_req::options::ExpectedStreamPosition as E;
    run(async {
        let node = Node::start().await;
        let mut client = node.streams().await;
        let (split, whole) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let requests = vec![
            batch_request(split, batch_options("split", E::NoStream(())), &["Placed", "Paid"], false),
            // Another correlation id, complete in one request, in between.
            batch_request(whole, batch_options("whole", E::Any(())), &["Placed"], true),
            batch_request(split, None, &["Shipped"], true),
        ];
        let responses = raw_batch_append(&mut client, requests).await;
        assert_eq!(responses.len(), 2, "one answer per final request: {responses:?}");
        assert_eq!(parse_uuid(responses[0].correlation_id.as_ref()), whole);
        assert_eq!(parse_uuid(responses[1].correlation_id.as_ref()), split);
        match &responses[1].result {
            Some(pb::batch_append_resp::Result::Success(success)) => assert_eq!(
                success.current_revision_option,
                Some(pb::batch_append_resp::success::CurrentRevisionOption::CurrentRevision(2))
            ),
            other => panic!("expected success, got {other:?}"),
        }
        assert_eq!(responses[1].stream_identifier, Some(stream_id("split")));

        let (messages, _) = raw_read(&mut client, read_stream_request("split", None)).await;
        let types: Vec<&str> = messages.iter().map(|m| recorded(m).metadata["type"].as_str()).collect();
        assert_eq!(types, ["Placed", "Paid", "Shipped"]);
        // One append: the parts are contiguous in $all.
        let positions: Vec<u64> = messages.iter().map(|m| recorded(m).commit_position).collect();
        assert_eq!(positions.windows(2).filter(|w| w[1] != w[0] + 1).count(), 0, "{positions:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// Subscriptions with the official client
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscription_from_a_revision_starts_after_it_then_goes_live() {
    run(async {
        let node = Node::start().await;
        let client = node.client();
        let events: Vec<EventData> = (0..4).map(|n| json_event("Step", n)).collect();
        client.append_to_stream("steps", &Default::default(), events).await.expect("append");
        // A stream whose name extends the subscribed one must not leak in.
        client.append_to_stream("steps-2", &Default::default(), json_event("Other", 0)).await.expect("append");

        let options = SubscribeToStreamOptions::default().start_from(StreamPosition::Position(1));
        let mut subscription = client.subscribe_to_stream("steps", &options).await;
        expect_confirmed(&mut subscription).await;
        let caught_up = next_events(&mut subscription, 2).await;
        assert_eq!(caught_up.iter().map(|e| e.revision).collect::<Vec<_>>(), [2, 3]);
        assert!(caught_up.iter().all(|e| e.stream_id == "steps"));

        client.append_to_stream("steps-2", &Default::default(), json_event("Other", 1)).await.expect("append");
        client.append_to_stream("steps", &Default::default(), json_event("Step", 4)).await.expect("append");
        let live = next_events(&mut subscription, 1).await;
        assert_eq!((live[0].stream_id.as_str(), live[0].revision), ("steps", 4));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscription_from_a_revision_past_the_end_skips_revisions_up_to_it() {
    run(async {
        let node = Node::start().await;
        let client = node.client();
        let events: Vec<EventData> = (0..2).map(|n| json_event("Step", n)).collect();
        client.append_to_stream("steps", &Default::default(), events).await.expect("append");

        // EventStoreDB skips every event at or before the start revision,
        // also those written after the subscription started.
        let options = SubscribeToStreamOptions::default().start_from(StreamPosition::Position(3));
        let mut subscription = client.subscribe_to_stream("steps", &options).await;
        expect_confirmed(&mut subscription).await;
        assert!(matches!(next_message(&mut subscription).await, SubscriptionEvent::CaughtUp));
        let events: Vec<EventData> = (2..5).map(|n| json_event("Step", n)).collect();
        client.append_to_stream("steps", &Default::default(), events).await.expect("append");
        let live = next_events(&mut subscription, 1).await;
        assert_eq!(live[0].revision, 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_subscription_fails_with_stream_deleted_when_the_stream_is_tombstoned() {
    run(async {
        let node = Node::start().await;
        let client = node.client();
        client.append_to_stream("doomed", &Default::default(), json_event("Step", 0)).await.expect("append");
        let options = SubscribeToStreamOptions::default().start_from(StreamPosition::Start);
        let mut subscription = client.subscribe_to_stream("doomed", &options).await;
        expect_confirmed(&mut subscription).await;
        assert_eq!(next_events(&mut subscription, 1).await[0].revision, 0);
        assert!(matches!(next_message(&mut subscription).await, SubscriptionEvent::CaughtUp));

        client.tombstone_stream("doomed", &Default::default()).await.expect("tombstone");
        let ended = tokio::time::timeout(DELIVERY_TIMEOUT, subscription.next_subscription_event())
            .await
            .expect("the subscriber hears of the tombstone");
        assert!(matches!(ended, Err(eventstore::Error::ResourceDeleted)), "{ended:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_subscription_filtered_by_type_sends_only_matches_and_checkpoints() {
    run(async {
        let node = Node::start().await;
        let client = node.client();
        let mut events = vec![json_event("OrderPlaced", 0)];
        events.extend((1..=10).map(|n| json_event("Noise", n)));
        events.push(json_event("OrderShipped", 11));
        client.append_to_stream("mixed", &Default::default(), events).await.expect("append");

        let filter = SubscriptionFilter::on_event_type().regex("^Order").max(2);
        let options = SubscribeToAllOptions::default().position(StreamPosition::Start).filter(filter);
        let mut subscription = client.subscribe_to_all(&options).await;
        expect_confirmed(&mut subscription).await;

        let mut types = Vec::new();
        let mut checkpoints = Vec::new();
        loop {
            match next_message(&mut subscription).await {
                SubscriptionEvent::EventAppeared(e) => types.push(e.get_original_event().event_type.clone()),
                SubscriptionEvent::Checkpoint(position) => checkpoints.push(position.commit),
                SubscriptionEvent::CaughtUp => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(types, ["OrderPlaced", "OrderShipped"]);
        assert!(!checkpoints.is_empty(), "checkpoints over the skipped events");
        assert!(checkpoints.windows(2).all(|w| w[0] < w[1]), "{checkpoints:?}");

        // Live: still filtered.
        let live = vec![json_event("Noise", 12), json_event("OrderCancelled", 13)];
        client.append_to_stream("mixed", &Default::default(), live).await.expect("append");
        let event = loop {
            match next_message(&mut subscription).await {
                SubscriptionEvent::EventAppeared(e) => break original(e),
                SubscriptionEvent::Checkpoint(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!((event.event_type.as_str(), event.revision), ("OrderCancelled", 13));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_subscription_filtered_by_stream_prefix_sends_only_those_streams() {
    run(async {
        let node = Node::start().await;
        let client = node.client();
        for stream in ["shop-1", "other-1", "shop-2", "workshop-1"] {
            client.append_to_stream(stream, &Default::default(), json_event("Opened", 0)).await.expect("append");
        }

        let filter = SubscriptionFilter::on_stream_name().add_prefix("shop-");
        let options = SubscribeToAllOptions::default().position(StreamPosition::Start).filter(filter);
        let mut subscription = client.subscribe_to_all(&options).await;
        expect_confirmed(&mut subscription).await;
        let caught_up = next_events(&mut subscription, 2).await;
        assert_eq!(caught_up.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>(), ["shop-1", "shop-2"]);

        client.append_to_stream("other-2", &Default::default(), json_event("Opened", 0)).await.expect("append");
        client.append_to_stream("shop-3", &Default::default(), json_event("Opened", 0)).await.expect("append");
        let live = next_events(&mut subscription, 1).await;
        assert_eq!(live[0].stream_id, "shop-3");
    })
    .await;
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_an_open_subscription_is_prompt_and_fails_the_subscriber() {
    run(async {
        let mut node = Node::start().await;
        let client = node.client();
        client.append_to_stream("orders", &Default::default(), json_event("Placed", 0)).await.expect("append");
        let options = SubscribeToAllOptions::default().position(StreamPosition::Start);
        let mut subscription = client.subscribe_to_all(&options).await;
        expect_confirmed(&mut subscription).await;
        assert_eq!(next_events(&mut subscription, 1).await[0].stream_id, "orders");
        assert!(matches!(next_message(&mut subscription).await, SubscriptionEvent::CaughtUp), "live before the stop");

        let took = node.stop().await;
        assert!(took < SHUTDOWN_TIMEOUT, "stopped in {took:?}");

        // Not a clean end: the subscriber learns its subscription is gone.
        let ended = tokio::time::timeout(DELIVERY_TIMEOUT, subscription.next_subscription_event())
            .await
            .expect("the subscriber hears of the shutdown");
        assert!(ended.is_err(), "an error, not another message: {ended:?}");
    })
    .await;
}

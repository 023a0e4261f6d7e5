//! The EventStoreDB-compatible node: EventStoreDB's public gRPC protocol
//! (`Streams` and `ServerFeatures`) served over an `EventStore`, so that the
//! engine's EventStoreDB adapter, and official EventStoreDB clients in other
//! languages, can be run against the embedded store.
//!
//! It runs like an `--insecure` single node: no TLS, no users. Services it
//! does not serve (persistent subscriptions, projections, users, gossip,
//! operations, monitoring) answer `UNIMPLEMENTED`, as any gRPC server does
//! for a service it lacks.
//!
//! Differences from EventStoreDB follow from the store underneath: `$all`
//! positions count events (commit = prepare); the only system events are the
//! `$metadata` and `$streamDeleted` markers deletes write to `$$<stream>`;
//! there are no link events; and an event's content type is not stored:
//! events whose data is JSON read back as `application/json`, others as
//! `application/octet-stream`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use referral_domain::eventlog::{
    AllFilter, AllStart, CurrentRevision, Direction, EventData, EventStore, ExpectedRevision, Position, RecordedEvent,
    StoreError, StreamName, StreamRevision, StreamStart, SubscriptionMessage, SubscriptionStart,
};
use regex::Regex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use super::pb::event_store::client as es;
use super::pb::event_store::client::server_features as features;
use super::pb::event_store::client::streams as pb;
use super::pb::google::rpc;
use super::{expected_code, ticks, uuid_from_proto, uuid_to_proto, PROTOCOL_VERSION};
use crate::store::{metadata_stream, TOMBSTONE_EVENT_TYPE};
use pb::streams_server::{Streams, StreamsServer};

/// Events read from the store at a time while serving a read.
const PAGE: usize = 512;
/// Messages buffered per read call before the node waits for the client.
const READ_BUFFER: usize = 64;

/// Serves EventStoreDB's protocol on `listener` until `shutdown` completes.
pub async fn run(
    store: Arc<dyn EventStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        accepted.map(|stream| {
            let _ = stream.set_nodelay(true);
            QuickAck(stream)
        })
    });
    let (mut health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<StreamsServer<StreamsService>>().await;
    // Subscriptions never end on their own; on shutdown they end with
    // UNAVAILABLE (clients resubscribe elsewhere or later), so that the
    // graceful shutdown does not wait for them forever.
    let (stopping, stop) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(StreamsServer::new(StreamsService { store, stop }))
        .add_service(features::server_features_server::ServerFeaturesServer::new(FeaturesService))
        .serve_with_incoming_shutdown(incoming, signal)
        .await
}

/// A connection that acknowledges what it reads at once.
///
/// Clients that leave Nagle's algorithm on (the official Rust client does)
/// hold the last small segment of a call until the previous one is
/// acknowledged, and Linux delays that acknowledgement by up to 40 ms while
/// the server has nothing to send yet: every lone append waited that long.
/// Quick-ack mode is not sticky, so it is set again after each read.
struct QuickAck(TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let read = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
        read
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for QuickAck {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

/// `event_store.client.streams.Streams` over an `EventStore`.
#[derive(Clone)]
pub struct StreamsService {
    store: Arc<dyn EventStore>,
    /// Turns true when the node shuts down.
    stop: watch::Receiver<bool>,
}

/// `event_store.client.server_features.ServerFeatures`.
pub struct FeaturesService;

#[tonic::async_trait]
impl features::server_features_server::ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _request: Request<es::Empty>,
    ) -> Result<Response<features::SupportedMethods>, Status> {
        let streams = "event_store.client.streams.streams";
        let method = |name: &str, service: &str, features: &[&str]| features::SupportedMethod {
            method_name: name.into(),
            service_name: service.into(),
            features: features.iter().map(|f| f.to_string()).collect(),
        };
        Ok(Response::new(features::SupportedMethods {
            methods: vec![
                method("read", streams, &["position", "events"]),
                method("append", streams, &[]),
                method("batchappend", streams, &[]),
                method("delete", streams, &[]),
                method("tombstone", streams, &[]),
                method("getsupportedmethods", "event_store.client.server_features.serverfeatures", &[]),
            ],
            event_store_server_version: PROTOCOL_VERSION.into(),
        }))
    }
}

// ---------------------------------------------------------------------------
// Errors, as EventStoreDB reports them: a status code and an `exception`
// trailer naming the case, with the facts in further trailers.
// ---------------------------------------------------------------------------

fn with_trailers(mut status: Status, trailers: &[(&'static str, String)]) -> Status {
    for (key, value) in trailers {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            status.metadata_mut().insert(*key, value);
        }
    }
    status
}

fn current_code(current: CurrentRevision) -> i64 {
    match current {
        CurrentRevision::NoStream => -1,
        CurrentRevision::Current(StreamRevision(r)) => r as i64,
    }
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::WrongExpectedVersion { stream, expected, actual } => with_trailers(
            Status::failed_precondition(format!(
                "Append failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {}, Actual version: {}",
                expected_code(expected),
                current_code(actual)
            )),
            &[
                ("exception", "wrong-expected-version".into()),
                ("stream-name", stream.to_string()),
                ("expected-version", expected_code(expected).to_string()),
                ("actual-version", current_code(actual).to_string()),
            ],
        ),
        StoreError::StreamDeleted(stream) => with_trailers(
            Status::failed_precondition(format!("Event stream '{stream}' is deleted.")),
            &[("exception", "stream-deleted".into()), ("stream-name", stream.to_string())],
        ),
        StoreError::StreamNotFound(stream) => with_trailers(
            Status::not_found(format!("Event stream '{stream}' is not found.")),
            &[("exception", "stream-not-found".into()), ("stream-name", stream.to_string())],
        ),
        StoreError::IdempotencyConflict { stream, reason } => {
            Status::invalid_argument(format!("append to stream {stream} reuses event ids of another append: {reason}"))
        }
        StoreError::Unavailable(reason) => Status::unavailable(reason),
        StoreError::Backend(reason) => Status::internal(reason),
    }
}

fn bad_request(message: impl Into<String>) -> Status {
    let message = message.into();
    with_trailers(Status::invalid_argument(message.clone()), &[("exception", "bad-request".into())])
}

/// A stream that may be written: system streams (`$…`) are refused.
fn stream_name(id: Option<&es::StreamIdentifier>) -> Result<StreamName, Status> {
    StreamName::new(stream_text(id)?).map_err(|e| bad_request(e.to_string()))
}

/// A stream that may be read: also the `$$<stream>` metadata streams deletes
/// write to.
fn readable_stream_name(id: Option<&es::StreamIdentifier>) -> Result<StreamName, Status> {
    StreamName::stored(stream_text(id)?).map_err(|e| bad_request(e.to_string()))
}

fn stream_text(id: Option<&es::StreamIdentifier>) -> Result<String, Status> {
    let id = id.ok_or_else(|| bad_request("stream_identifier is required"))?;
    String::from_utf8(id.stream_name.clone()).map_err(|_| bad_request("stream_identifier.stream_name is not UTF-8"))
}

// ---------------------------------------------------------------------------
// Appends
// ---------------------------------------------------------------------------

fn proposed(
    id: Option<&es::Uuid>,
    metadata: &HashMap<String, String>,
    custom_metadata: &[u8],
    data: &[u8],
) -> Result<EventData, Status> {
    let id = uuid_from_proto(id).ok_or_else(|| bad_request("every proposed event needs an id (a UUID)"))?;
    let event_type = metadata
        .get("type")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad_request(format!("event {id} has no \"type\" in its metadata")))?;
    Ok(EventData { id, event_type: event_type.clone(), data: data.to_vec(), metadata: custom_metadata.to_vec() })
}

/// The port's expected revision from one of the protocol's
/// `expected_stream_revision` oneofs (Append, Delete and Tombstone each have
/// their own type with the same cases); absent means any.
macro_rules! expected_revision {
    ($oneof:path, $value:expr) => {{
        use $oneof as E;
        match $value {
            Some(E::Revision(r)) => ExpectedRevision::Exact(StreamRevision(r)),
            Some(E::NoStream(_)) => ExpectedRevision::NoStream,
            Some(E::StreamExists(_)) => ExpectedRevision::StreamExists,
            Some(E::Any(_)) | None => ExpectedRevision::Any,
        }
    }};
}

fn wrong_expected_version(
    expected: ExpectedRevision,
    actual: CurrentRevision,
) -> pb::append_resp::WrongExpectedVersion {
    use pb::append_resp::wrong_expected_version as w;
    let empty = es::Empty {};
    let (current, current_20_6) = match actual {
        CurrentRevision::NoStream => {
            (w::CurrentRevisionOption::CurrentNoStream(empty), w::CurrentRevisionOption2060::NoStream2060(empty))
        }
        CurrentRevision::Current(r) => {
            (w::CurrentRevisionOption::CurrentRevision(r.0), w::CurrentRevisionOption2060::CurrentRevision2060(r.0))
        }
    };
    let (expected_now, expected_20_6) = match expected {
        ExpectedRevision::Any => {
            (w::ExpectedRevisionOption::ExpectedAny(empty), Some(w::ExpectedRevisionOption2060::Any2060(empty)))
        }
        ExpectedRevision::StreamExists => (
            w::ExpectedRevisionOption::ExpectedStreamExists(empty),
            Some(w::ExpectedRevisionOption2060::StreamExists2060(empty)),
        ),
        ExpectedRevision::NoStream => (w::ExpectedRevisionOption::ExpectedNoStream(empty), None),
        ExpectedRevision::Exact(r) => (
            w::ExpectedRevisionOption::ExpectedRevision(r.0),
            Some(w::ExpectedRevisionOption2060::ExpectedRevision2060(r.0)),
        ),
    };
    pb::append_resp::WrongExpectedVersion {
        current_revision_option_20_6_0: Some(current_20_6),
        expected_revision_option_20_6_0: expected_20_6,
        current_revision_option: Some(current),
        expected_revision_option: Some(expected_now),
    }
}

fn append_success(next: StreamRevision, position: Position) -> pb::append_resp::Success {
    use pb::append_resp::success as s;
    pb::append_resp::Success {
        current_revision_option: Some(s::CurrentRevisionOption::CurrentRevision(next.0)),
        position_option: Some(s::PositionOption::Position(pb::append_resp::Position {
            commit_position: position.commit,
            prepare_position: position.prepare,
        })),
    }
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

/// Which events of `$all` a read or subscription sends.
#[derive(Clone)]
enum EventFilter {
    Everything,
    StreamPrefixes(Vec<String>),
    StreamRegex(Regex),
    TypePrefixes(Vec<String>),
    TypeRegex(Regex),
}

impl EventFilter {
    fn from_options(options: Option<&pb::read_req::options::FilterOption>) -> Result<(EventFilter, u64), Status> {
        use pb::read_req::options::filter_options::{Filter, Window};
        use pb::read_req::options::FilterOption;
        let Some(FilterOption::Filter(f)) = options else { return Ok((EventFilter::Everything, 0)) };
        let expression = |e: &pb::read_req::options::filter_options::Expression,
                          prefixes: fn(Vec<String>) -> EventFilter,
                          regex: fn(Regex) -> EventFilter|
         -> Result<EventFilter, Status> {
            if !e.regex.is_empty() {
                Regex::new(&e.regex).map(regex).map_err(|err| bad_request(format!("filter regex: {err}")))
            } else {
                Ok(prefixes(e.prefix.clone()))
            }
        };
        let filter = match &f.filter {
            Some(Filter::StreamIdentifier(e)) => expression(e, EventFilter::StreamPrefixes, EventFilter::StreamRegex)?,
            Some(Filter::EventType(e)) => expression(e, EventFilter::TypePrefixes, EventFilter::TypeRegex)?,
            None => EventFilter::Everything,
        };
        let window = match f.window {
            Some(Window::Max(max)) => u64::from(max.max(1)),
            Some(Window::Count(_)) | None => 32,
        };
        let checkpoint_every = window * u64::from(f.checkpoint_interval_multiplier.max(1));
        Ok((filter, checkpoint_every))
    }

    fn matches(&self, e: &RecordedEvent) -> bool {
        let (stream, event_type) = (e.stream.as_str(), e.event_type.as_str());
        match self {
            EventFilter::Everything => true,
            EventFilter::StreamPrefixes(p) => p.iter().any(|p| stream.starts_with(p.as_str())),
            EventFilter::StreamRegex(r) => r.is_match(stream),
            EventFilter::TypePrefixes(p) => p.iter().any(|p| event_type.starts_with(p.as_str())),
            EventFilter::TypeRegex(r) => r.is_match(event_type),
        }
    }
}

/// What the reader asked for about each event's encoding.
#[derive(Clone, Copy)]
struct Encoding {
    structured_ids: bool,
}

fn content_type(data: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

fn read_event(e: RecordedEvent, encoding: Encoding) -> pb::ReadResp {
    use pb::read_resp::read_event::Position as P;
    let metadata = HashMap::from([
        ("type".to_string(), e.event_type.clone()),
        ("content-type".to_string(), content_type(&e.data).to_string()),
        ("created".to_string(), ticks(e.created).to_string()),
    ]);
    let commit = e.position.commit;
    let recorded = pb::read_resp::read_event::RecordedEvent {
        id: Some(uuid_to_proto(e.id, encoding.structured_ids)),
        stream_identifier: Some(es::StreamIdentifier { stream_name: e.stream.as_str().as_bytes().to_vec() }),
        stream_revision: e.revision.0,
        prepare_position: e.position.prepare,
        commit_position: e.position.commit,
        metadata,
        custom_metadata: e.metadata,
        data: e.data,
    };
    pb::ReadResp {
        content: Some(pb::read_resp::Content::Event(pb::read_resp::ReadEvent {
            event: Some(recorded),
            link: None,
            position: Some(P::CommitPosition(commit)),
        })),
    }
}

fn content(c: pb::read_resp::Content) -> pb::ReadResp {
    pb::ReadResp { content: Some(c) }
}

type ReadSender = mpsc::Sender<Result<pb::ReadResp, Status>>;

/// Sends `message`; `false` when the client has gone.
async fn send(tx: &ReadSender, message: Result<pb::ReadResp, Status>) -> bool {
    tx.send(message).await.is_ok()
}

/// A bounded read of one stream.
async fn read_stream(
    store: Arc<dyn EventStore>,
    stream: StreamName,
    direction: Direction,
    mut from: StreamStart,
    mut count: u64,
    encoding: Encoding,
    tx: ReadSender,
) {
    while count > 0 {
        let page = count.min(PAGE as u64) as usize;
        let events = match store.read_stream(&stream, direction, from, page).await {
            Ok(events) => events,
            Err(StoreError::StreamNotFound(_)) => {
                let id = es::StreamIdentifier { stream_name: stream.as_str().as_bytes().to_vec() };
                let not_found = pb::read_resp::StreamNotFound { stream_identifier: Some(id) };
                send(&tx, Ok(content(pb::read_resp::Content::StreamNotFound(not_found)))).await;
                return;
            }
            Err(e) => {
                send(&tx, Err(store_status(e))).await;
                return;
            }
        };
        let got = events.len();
        let Some(last) = events.last().map(|e| e.revision.0) else { return };
        for e in events {
            if !send(&tx, Ok(read_event(e, encoding))).await {
                return;
            }
        }
        count -= got as u64;
        if got < page {
            return;
        }
        from = match direction {
            Direction::Forwards => StreamStart::Revision(StreamRevision(last + 1)),
            Direction::Backwards if last == 0 => return,
            Direction::Backwards => StreamStart::Revision(StreamRevision(last - 1)),
        };
    }
}

/// A bounded read of `$all`, filtered by the node.
async fn read_all(
    store: Arc<dyn EventStore>,
    direction: Direction,
    mut from: AllStart,
    filter: EventFilter,
    mut count: u64,
    encoding: Encoding,
    tx: ReadSender,
) {
    while count > 0 {
        let events = match store.read_all(direction, from, &AllFilter::with_system_streams(), PAGE).await {
            Ok(events) => events,
            Err(e) => {
                send(&tx, Err(store_status(e))).await;
                return;
            }
        };
        let got = events.len();
        let Some(last) = events.last().map(|e| e.position) else { return };
        for e in events {
            if !filter.matches(&e) {
                continue;
            }
            if !send(&tx, Ok(read_event(e, encoding))).await {
                return;
            }
            count -= 1;
            if count == 0 {
                return;
            }
        }
        if got < PAGE {
            return;
        }
        from = match direction {
            Direction::Forwards => AllStart::Position(Position::at(last.commit + 1)),
            Direction::Backwards if last.commit <= 1 => return,
            Direction::Backwards => AllStart::Position(Position::at(last.commit - 1)),
        };
    }
}

/// What a subscription to one stream delivers: that stream's events after
/// revision `after` (exclusive; EventStoreDB skips every event at or before
/// the requested revision, even those written after the subscription
/// started, when the stream was shorter).
struct OnlyStream {
    stream: StreamName,
    after: Option<u64>,
}

/// A catch-up subscription to `$all` (or, with `only`, to one stream):
/// confirmation, the events after `start`, caught-up, then live events. It
/// ends only when the client goes away or the store fails, or, for a stream,
/// with `stream-deleted` when the stream is tombstoned (as EventStoreDB's).
#[allow(clippy::too_many_arguments)]
async fn subscribe(
    store: Arc<dyn EventStore>,
    start: SubscriptionStart,
    only: Option<OnlyStream>,
    filter: EventFilter,
    checkpoint_every: u64,
    encoding: Encoding,
    mut stop: watch::Receiver<bool>,
    tx: ReadSender,
) {
    let all = match &only {
        // The stream's events and its delete markers.
        Some(only) => AllFilter {
            stream_prefixes: vec![only.stream.as_str().to_string(), metadata_stream(&only.stream)],
            event_type_prefixes: Vec::new(),
            system_streams: true,
        },
        None => AllFilter::with_system_streams(),
    };
    let mut subscription = match store.subscribe_all(start, all).await {
        Ok(s) => s,
        Err(e) => {
            send(&tx, Err(store_status(e))).await;
            return;
        }
    };
    let confirmation =
        pb::read_resp::SubscriptionConfirmation { subscription_id: uuid::Uuid::new_v4().hyphenated().to_string() };
    if !send(&tx, Ok(content(pb::read_resp::Content::Confirmation(confirmation)))).await {
        return;
    }
    let mut skipped = 0u64;
    loop {
        let message = tokio::select! {
            m = subscription.next() => Some(m),
            _ = tx.closed() => return,
            _ = stopped(&mut stop) => None,
        };
        let Some(message) = message else {
            send(&tx, Err(Status::unavailable("the node is shutting down"))).await;
            return;
        };
        let sent = match message {
            Ok(SubscriptionMessage::Event(e)) => {
                if let Some(only) = &only {
                    if e.event_type == TOMBSTONE_EVENT_TYPE && e.stream.as_str() == metadata_stream(&only.stream) {
                        send(&tx, Err(store_status(StoreError::StreamDeleted(only.stream.clone())))).await;
                        return;
                    }
                    if only.stream != e.stream || only.after.is_some_and(|after| e.revision.0 <= after) {
                        continue;
                    }
                }
                if filter.matches(&e) {
                    skipped = 0;
                    send(&tx, Ok(read_event(e, encoding))).await
                } else {
                    skipped += 1;
                    if checkpoint_every > 0 && skipped.is_multiple_of(checkpoint_every) {
                        let checkpoint = pb::read_resp::Checkpoint {
                            commit_position: e.position.commit,
                            prepare_position: e.position.prepare,
                        };
                        send(&tx, Ok(content(pb::read_resp::Content::Checkpoint(checkpoint)))).await
                    } else {
                        true
                    }
                }
            }
            Ok(SubscriptionMessage::CaughtUp) => {
                send(&tx, Ok(content(pb::read_resp::Content::CaughtUp(pb::read_resp::CaughtUp {})))).await
            }
            Err(e) => {
                send(&tx, Err(store_status(e))).await;
                return;
            }
        };
        if !sent {
            return;
        }
    }
}

/// Completes when the node starts shutting down.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Where a stream subscription from `revision` (exclusive) starts in `$all`.
async fn after_revision(
    store: &Arc<dyn EventStore>,
    stream: &StreamName,
    revision: u64,
) -> Result<SubscriptionStart, Status> {
    match store.read_stream(stream, Direction::Forwards, StreamStart::Revision(StreamRevision(revision)), 1).await {
        Ok(events) => match events.first() {
            Some(e) => Ok(SubscriptionStart::After(e.position)),
            // Past the stream's end: only events written from now on.
            None => Ok(SubscriptionStart::End),
        },
        Err(StoreError::StreamNotFound(_)) => Ok(SubscriptionStart::Start),
        Err(e) => Err(store_status(e)),
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadResp, Status>> + Send>>;
type BatchAppendStream = Pin<Box<dyn Stream<Item = Result<pb::BatchAppendResp, Status>> + Send>>;

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReadStream;
    type BatchAppendStream = BatchAppendStream;

    async fn read(&self, request: Request<pb::ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        use pb::read_req::options::{
            all_options::AllOption, stream_options::RevisionOption, CountOption, StreamOption,
        };
        let options = request.into_inner().options.ok_or_else(|| bad_request("options are required"))?;
        let direction = match options.read_direction() {
            pb::read_req::options::ReadDirection::Forwards => Direction::Forwards,
            pb::read_req::options::ReadDirection::Backwards => Direction::Backwards,
        };
        let encoding = Encoding {
            structured_ids: matches!(
                options.uuid_option.as_ref().and_then(|u| u.content.as_ref()),
                Some(pb::read_req::options::uuid_option::Content::Structured(_))
            ),
        };
        let (filter, checkpoint_every) = EventFilter::from_options(options.filter_option.as_ref())?;
        let (tx, rx) = mpsc::channel(READ_BUFFER);
        let store = self.store.clone();
        match (options.stream_option, options.count_option) {
            (Some(StreamOption::Stream(s)), Some(CountOption::Count(count))) => {
                let stream = readable_stream_name(s.stream_identifier.as_ref())?;
                let from = match s.revision_option {
                    Some(RevisionOption::Revision(r)) => StreamStart::Revision(StreamRevision(r)),
                    Some(RevisionOption::End(_)) => StreamStart::End,
                    Some(RevisionOption::Start(_)) | None => StreamStart::Start,
                };
                tokio::spawn(read_stream(store, stream, direction, from, count, encoding, tx));
            }
            (Some(StreamOption::Stream(s)), Some(CountOption::Subscription(_))) => {
                let stream = stream_name(s.stream_identifier.as_ref())?;
                let (start, after) = match s.revision_option {
                    Some(RevisionOption::Revision(r)) => (after_revision(&store, &stream, r).await?, Some(r)),
                    Some(RevisionOption::End(_)) => (SubscriptionStart::End, None),
                    Some(RevisionOption::Start(_)) | None => (SubscriptionStart::Start, None),
                };
                // A tombstoned stream cannot be subscribed to.
                if let Err(StoreError::StreamDeleted(s)) =
                    store.read_stream(&stream, Direction::Forwards, StreamStart::Start, 1).await
                {
                    return Err(store_status(StoreError::StreamDeleted(s)));
                }
                let stop = self.stop.clone();
                let only = OnlyStream { stream, after };
                tokio::spawn(subscribe(store, start, Some(only), EventFilter::Everything, 0, encoding, stop, tx));
            }
            (Some(StreamOption::All(a)), Some(CountOption::Count(count))) => {
                let from = match a.all_option {
                    Some(AllOption::Position(p)) => {
                        AllStart::Position(Position { commit: p.commit_position, prepare: p.prepare_position })
                    }
                    Some(AllOption::End(_)) => AllStart::End,
                    Some(AllOption::Start(_)) | None => AllStart::Start,
                };
                tokio::spawn(read_all(store, direction, from, filter, count, encoding, tx));
            }
            (Some(StreamOption::All(a)), Some(CountOption::Subscription(_))) => {
                let start = match a.all_option {
                    Some(AllOption::Position(p)) => {
                        SubscriptionStart::After(Position { commit: p.commit_position, prepare: p.prepare_position })
                    }
                    Some(AllOption::End(_)) => SubscriptionStart::End,
                    Some(AllOption::Start(_)) | None => SubscriptionStart::Start,
                };
                let stop = self.stop.clone();
                tokio::spawn(subscribe(store, start, None, filter, checkpoint_every, encoding, stop, tx));
            }
            (None, _) => return Err(bad_request("options.stream_option (a stream or $all) is required")),
            (_, None) => return Err(bad_request("options.count_option (a count or a subscription) is required")),
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append(&self, request: Request<Streaming<pb::AppendReq>>) -> Result<Response<pb::AppendResp>, Status> {
        use pb::append_req::Content;
        let mut messages = request.into_inner();
        let options = match messages.message().await? {
            Some(pb::AppendReq { content: Some(Content::Options(options)) }) => options,
            _ => return Err(bad_request("an append starts with its options")),
        };
        let stream = stream_name(options.stream_identifier.as_ref())?;
        let expected =
            expected_revision!(pb::append_req::options::ExpectedStreamRevision, options.expected_stream_revision);
        let mut events = Vec::new();
        while let Some(message) = messages.message().await? {
            match message.content {
                Some(Content::ProposedMessage(m)) => {
                    events.push(proposed(m.id.as_ref(), &m.metadata, &m.custom_metadata, &m.data)?)
                }
                _ => return Err(bad_request("only proposed messages may follow an append's options")),
            }
        }
        let result = match self.store.append(&stream, expected, events).await {
            Ok(done) => pb::append_resp::Result::Success(append_success(done.next_expected_revision, done.position)),
            Err(StoreError::WrongExpectedVersion { expected, actual, .. }) => {
                pb::append_resp::Result::WrongExpectedVersion(wrong_expected_version(expected, actual))
            }
            Err(e) => return Err(store_status(e)),
        };
        Ok(Response::new(pb::AppendResp { result: Some(result) }))
    }

    async fn delete(&self, request: Request<pb::DeleteReq>) -> Result<Response<pb::DeleteResp>, Status> {
        let options = request.into_inner().options.ok_or_else(|| bad_request("options are required"))?;
        let stream = stream_name(options.stream_identifier.as_ref())?;
        let expected =
            expected_revision!(pb::delete_req::options::ExpectedStreamRevision, options.expected_stream_revision);
        let done = self.store.delete_stream(&stream, expected).await.map_err(store_status)?;
        let position = pb::delete_resp::Position {
            commit_position: done.position.commit,
            prepare_position: done.position.prepare,
        };
        Ok(Response::new(pb::DeleteResp { position_option: Some(pb::delete_resp::PositionOption::Position(position)) }))
    }

    async fn tombstone(&self, request: Request<pb::TombstoneReq>) -> Result<Response<pb::TombstoneResp>, Status> {
        let options = request.into_inner().options.ok_or_else(|| bad_request("options are required"))?;
        let stream = stream_name(options.stream_identifier.as_ref())?;
        let expected =
            expected_revision!(pb::tombstone_req::options::ExpectedStreamRevision, options.expected_stream_revision);
        let done = self.store.tombstone_stream(&stream, expected).await.map_err(store_status)?;
        let position = pb::tombstone_resp::Position {
            commit_position: done.position.commit,
            prepare_position: done.position.prepare,
        };
        Ok(Response::new(pb::TombstoneResp {
            position_option: Some(pb::tombstone_resp::PositionOption::Position(position)),
        }))
    }

    async fn batch_append(
        &self,
        request: Request<Streaming<pb::BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let mut requests = request.into_inner();
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel::<Result<pb::BatchAppendResp, Status>>(READ_BUFFER);
        tokio::spawn(async move {
            // Proposed events gathered per correlation id until its final request.
            let mut pending: HashMap<uuid::Uuid, (pb::batch_append_req::Options, Vec<EventData>)> = HashMap::new();
            loop {
                let request = match requests.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return,
                };
                let Some(correlation) = uuid_from_proto(request.correlation_id.as_ref()) else {
                    let _ = tx.send(Err(bad_request("every batch append request needs a correlation_id"))).await;
                    return;
                };
                let entry = match (pending.remove(&correlation), request.options) {
                    (Some(entry), _) => entry,
                    (None, Some(options)) => (options, Vec::new()),
                    (None, None) => {
                        let message = format!("the first request of correlation id {correlation} needs options");
                        let _ = tx.send(Err(bad_request(message))).await;
                        return;
                    }
                };
                let (options, mut events) = entry;
                for m in &request.proposed_messages {
                    match proposed(m.id.as_ref(), &m.metadata, &m.custom_metadata, &m.data) {
                        Ok(e) => events.push(e),
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                if !request.is_final {
                    pending.insert(correlation, (options, events));
                    continue;
                }
                let response = batch_append_one(&store, correlation, options, events).await;
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn batch_append_one(
    store: &Arc<dyn EventStore>,
    correlation: uuid::Uuid,
    options: pb::batch_append_req::Options,
    events: Vec<EventData>,
) -> pb::BatchAppendResp {
    use pb::batch_append_req::options::ExpectedStreamPosition as E;
    use pb::batch_append_resp::{success as s, ExpectedStreamPosition as R};
    let (expected, echoed) = match options.expected_stream_position {
        Some(E::StreamPosition(r)) => (ExpectedRevision::Exact(StreamRevision(r)), R::StreamPosition(r)),
        Some(E::NoStream(e)) => (ExpectedRevision::NoStream, R::NoStream(e)),
        Some(E::StreamExists(e)) => (ExpectedRevision::StreamExists, R::StreamExists(e)),
        Some(E::Any(e)) => (ExpectedRevision::Any, R::Any(e)),
        None => (ExpectedRevision::Any, R::Any(())),
    };
    let mut response = pb::BatchAppendResp {
        correlation_id: Some(uuid_to_proto(correlation, false)),
        result: None,
        stream_identifier: options.stream_identifier.clone(),
        expected_stream_position: Some(echoed),
    };
    let stream = match stream_name(options.stream_identifier.as_ref()) {
        Ok(s) => s,
        Err(status) => {
            response.result = Some(pb::batch_append_resp::Result::Error(rpc_status(&status, None)));
            return response;
        }
    };
    response.result = Some(match store.append(&stream, expected, events).await {
        Ok(done) => pb::batch_append_resp::Result::Success(pb::batch_append_resp::Success {
            current_revision_option: Some(s::CurrentRevisionOption::CurrentRevision(done.next_expected_revision.0)),
            position_option: Some(s::PositionOption::Position(es::AllStreamPosition {
                commit_position: done.position.commit,
                prepare_position: done.position.prepare,
            })),
        }),
        Err(StoreError::WrongExpectedVersion { stream, expected, actual }) => {
            let detail = shared_wrong_expected_version(expected, actual);
            let status = store_status(StoreError::WrongExpectedVersion { stream, expected, actual });
            pb::batch_append_resp::Result::Error(rpc_status(
                &status,
                Some(prost_types::Any {
                    type_url: "type.googleapis.com/event_store.client.WrongExpectedVersion".into(),
                    value: prost::Message::encode_to_vec(&detail),
                }),
            ))
        }
        Err(StoreError::StreamDeleted(stream)) => {
            let detail = es::StreamDeleted {
                stream_identifier: Some(es::StreamIdentifier { stream_name: stream.as_str().as_bytes().to_vec() }),
            };
            let status = store_status(StoreError::StreamDeleted(stream));
            pb::batch_append_resp::Result::Error(rpc_status(
                &status,
                Some(prost_types::Any {
                    type_url: "type.googleapis.com/event_store.client.StreamDeleted".into(),
                    value: prost::Message::encode_to_vec(&detail),
                }),
            ))
        }
        Err(e) => pb::batch_append_resp::Result::Error(rpc_status(&store_status(e), None)),
    });
    response
}

fn shared_wrong_expected_version(expected: ExpectedRevision, actual: CurrentRevision) -> es::WrongExpectedVersion {
    use es::wrong_expected_version::{CurrentStreamRevisionOption as C, ExpectedStreamPositionOption as X};
    es::WrongExpectedVersion {
        current_stream_revision_option: Some(match actual {
            CurrentRevision::NoStream => C::CurrentNoStream(es::Empty {}),
            CurrentRevision::Current(r) => C::CurrentStreamRevision(r.0),
        }),
        expected_stream_position_option: Some(match expected {
            ExpectedRevision::Any => X::ExpectedAny(es::Empty {}),
            ExpectedRevision::NoStream => X::ExpectedNoStream(es::Empty {}),
            ExpectedRevision::StreamExists => X::ExpectedStreamExists(es::Empty {}),
            ExpectedRevision::Exact(r) => X::ExpectedStreamPosition(r.0),
        }),
    }
}

fn rpc_status(status: &Status, detail: Option<prost_types::Any>) -> rpc::Status {
    rpc::Status { code: status.code() as i32, message: status.message().to_string(), details: detail }
}

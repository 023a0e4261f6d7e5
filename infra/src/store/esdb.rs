//! The `EventStore` port on EventStoreDB, through the official `eventstore`
//! client.
//!
//! * Streams, event ids, types, payloads and metadata are written as the
//!   embedded store keeps them: the payload with content type
//!   `application/json` when it is JSON, the event's metadata (correlation
//!   and causation ids, command id, actor, schema version) as EventStoreDB's
//!   custom metadata.
//! * Expected revisions map one to one; a wrong expected version comes back
//!   as the port's `WrongExpectedVersion` with the stream's actual revision.
//!   Deletes report a conflict only as a status message, so the actual
//!   revision is then read from the stream.
//! * `$all` is read without system events. A subscription is filtered on the
//!   server by stream-name prefix when the filter has one, and resubscribes
//!   after the last event it delivered when the connection drops, backing off
//!   up to [`MAX_BACKOFF`] between attempts; after [`RESUBSCRIBE_ATTEMPTS`]
//!   failures in a row it reports the store unavailable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventstore::{
    AppendToStreamOptions, Client, ClientSettings, DeleteStreamOptions, ReadAllOptions, ReadStreamOptions,
    SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter, TombstoneStreamOptions,
};
use referral_domain::eventlog::{
    AllFilter, AllStart, AppendResult, CurrentRevision, DeleteResult, Direction, EventData, EventStore,
    ExpectedRevision, Position, RecordedEvent, StoreError, StreamName, StreamRevision, StreamStart, Subscription,
    SubscriptionMessage, SubscriptionStart,
};

use crate::esdb::from_ticks;

/// Events asked for per read while paging through `$all`.
const PAGE: usize = 512;
/// Longest pause between two resubscription attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Failed resubscriptions in a row before a subscription gives up.
pub const RESUBSCRIBE_ATTEMPTS: u32 = 12;

/// An `EventStore` in EventStoreDB (or KurrentDB, or the project's
/// compatible node).
pub struct EsdbEventStore {
    connection: Arc<Connection>,
    /// The connection string, for error messages.
    target: String,
}

/// The client, replaced by a fresh one when the server stops answering: the
/// `eventstore` client keeps trying a dead HTTP/2 connection to a single node
/// after that node restarts, and a new client connects afresh.
struct Connection {
    settings: ClientSettings,
    /// The client and how many clients came before it.
    current: Mutex<(u64, Client)>,
}

impl Connection {
    fn new(settings: ClientSettings) -> Result<Connection, StoreError> {
        let client = Client::new(settings.clone())
            .map_err(|e| StoreError::Backend(format!("cannot create the EventStoreDB client: {e}")))?;
        Ok(Connection { settings, current: Mutex::new((0, client)) })
    }

    fn client(&self) -> (u64, Client) {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces client number `generation` (unless another caller already did).
    fn replace(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 == generation {
            if let Ok(client) = Client::new(self.settings.clone()) {
                *current = (generation + 1, client);
            }
        }
    }
}

impl EsdbEventStore {
    /// Connects lazily to `connection_string` (`esdb://host:port?tls=false`,
    /// or any form the `eventstore` client accepts); the first call that
    /// needs the server reports it unreachable.
    pub fn connect(connection_string: &str) -> Result<EsdbEventStore, StoreError> {
        let settings: ClientSettings = connection_string.parse().map_err(|e| {
            StoreError::Backend(format!("invalid EventStoreDB connection string {connection_string:?}: {e}"))
        })?;
        let connection = Arc::new(Connection::new(settings)?);
        Ok(EsdbEventStore { connection, target: connection_string.to_string() })
    }

    /// The port's error for `e`, which client number `generation` returned;
    /// a client that lost the server is replaced for the next call.
    fn error(&self, e: eventstore::Error, stream: Option<&StreamName>, generation: u64) -> StoreError {
        let error = self.classify(e, stream);
        if matches!(error, StoreError::Unavailable(_)) {
            self.connection.replace(generation);
        }
        error
    }

    fn classify(&self, e: eventstore::Error, stream: Option<&StreamName>) -> StoreError {
        use eventstore::Error as E;
        match (e, stream) {
            (E::ResourceNotFound, Some(s)) => StoreError::StreamNotFound(s.clone()),
            (E::ResourceDeleted, Some(s)) => StoreError::StreamDeleted(s.clone()),
            (e @ (E::ConnectionClosed | E::GrpcConnectionError(_) | E::ServerError(_) | E::DeadlineExceeded), _) => {
                StoreError::Unavailable(format!("EventStoreDB at {} did not answer: {e}", self.target))
            }
            (E::Grpc { code: tonic::Code::Unavailable, message }, _) => {
                StoreError::Unavailable(format!("EventStoreDB at {} is unavailable: {message}", self.target))
            }
            (e, _) => StoreError::Backend(format!("EventStoreDB at {}: {e}", self.target)),
        }
    }

    /// The stream's last revision, for conflicts the server reports only in words.
    async fn current_revision(&self, stream: &StreamName) -> Result<CurrentRevision, StoreError> {
        match self.read_stream(stream, Direction::Backwards, StreamStart::End, 1).await {
            Ok(events) => {
                Ok(events.first().map_or(CurrentRevision::NoStream, |e| CurrentRevision::Current(e.revision)))
            }
            Err(StoreError::StreamNotFound(_)) => Ok(CurrentRevision::NoStream),
            Err(e) => Err(e),
        }
    }

    async fn delete_error(
        &self,
        e: eventstore::Error,
        stream: &StreamName,
        expected: ExpectedRevision,
        generation: u64,
    ) -> StoreError {
        match e {
            eventstore::Error::Grpc { code: tonic::Code::FailedPrecondition, message }
                if message.contains("WrongExpectedVersion") || message.contains("wrong expected") =>
            {
                match self.current_revision(stream).await {
                    Ok(actual) => StoreError::WrongExpectedVersion { stream: stream.clone(), expected, actual },
                    Err(e) => e,
                }
            }
            e => self.error(e, Some(stream), generation),
        }
    }
}

fn expected_revision(expected: ExpectedRevision) -> eventstore::ExpectedRevision {
    match expected {
        ExpectedRevision::Any => eventstore::ExpectedRevision::Any,
        ExpectedRevision::NoStream => eventstore::ExpectedRevision::NoStream,
        ExpectedRevision::StreamExists => eventstore::ExpectedRevision::StreamExists,
        ExpectedRevision::Exact(r) => eventstore::ExpectedRevision::Exact(r.0),
    }
}

fn current_revision(current: eventstore::CurrentRevision) -> CurrentRevision {
    match current {
        eventstore::CurrentRevision::NoStream => CurrentRevision::NoStream,
        eventstore::CurrentRevision::Current(r) => CurrentRevision::Current(StreamRevision(r)),
    }
}

fn position(p: eventstore::Position) -> Position {
    Position { commit: p.commit, prepare: p.prepare }
}

fn esdb_position(p: Position) -> eventstore::Position {
    eventstore::Position { commit: p.commit, prepare: p.prepare }
}

fn event_data(e: EventData) -> Result<eventstore::EventData, StoreError> {
    let data = match serde_json::from_slice::<&serde_json::value::RawValue>(&e.data) {
        // JSON goes in as it is, byte for byte, marked as JSON.
        Ok(raw) => eventstore::EventData::json(&e.event_type, &raw)
            .map_err(|err| StoreError::Backend(format!("event {}: {err}", e.id)))?,
        Err(_) => eventstore::EventData::binary(&e.event_type, e.data.clone().into()),
    };
    Ok(data.id(e.id).metadata(e.metadata.into()))
}

/// A recorded event as the port has it; `None` for a stream name the port
/// cannot hold.
fn recorded(e: eventstore::RecordedEvent) -> Option<RecordedEvent> {
    let stream = StreamName::stored(e.stream_id).ok()?;
    // The client keeps whole seconds of `created`; the ticks have it all.
    let created = e.metadata.get("created").and_then(|t| t.parse::<i64>().ok()).map(from_ticks).unwrap_or(e.created);
    Some(RecordedEvent {
        stream,
        revision: StreamRevision(e.revision),
        position: position(e.position),
        id: e.id,
        event_type: e.event_type,
        data: e.data.to_vec(),
        metadata: e.custom_metadata.to_vec(),
        created,
    })
}

#[async_trait]
impl EventStore for EsdbEventStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let events = events.into_iter().map(event_data).collect::<Result<Vec<_>, _>>()?;
        let options = AppendToStreamOptions::default().expected_revision(expected_revision(expected));
        let (generation, client) = self.connection.client();
        match client.append_to_stream(stream.as_str(), &options, events).await {
            Ok(done) => Ok(AppendResult {
                next_expected_revision: StreamRevision(done.next_expected_version),
                position: position(done.position),
            }),
            Err(eventstore::Error::WrongExpectedVersion { current, .. }) => Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual: current_revision(current),
            }),
            Err(eventstore::Error::Grpc { code: tonic::Code::InvalidArgument, message })
                if message.contains("reuses event ids") =>
            {
                Err(StoreError::IdempotencyConflict { stream: stream.clone(), reason: message })
            }
            Err(e) => Err(self.error(e, Some(stream), generation)),
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        direction: Direction,
        from: StreamStart,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max_count == 0 {
            // Still say whether the stream is there.
            self.read_stream(stream, direction, from, 1).await?;
            return Ok(Vec::new());
        }
        // The client reads forwards from Start and backwards from End
        // whatever the direction asked; the other two combinations are
        // spelled with revisions.
        let from = match (direction, from) {
            (Direction::Forwards, StreamStart::End) => {
                // Nothing lies after the end, but a missing stream is still not found.
                self.read_stream(stream, Direction::Backwards, StreamStart::End, 1).await?;
                return Ok(Vec::new());
            }
            (_, StreamStart::Start) => eventstore::StreamPosition::Position(0),
            (_, StreamStart::End) => eventstore::StreamPosition::End,
            (_, StreamStart::Revision(r)) => eventstore::StreamPosition::Position(r.0),
        };
        let options = ReadStreamOptions::default().max_count(max_count).position(from);
        let options = match direction {
            Direction::Forwards => options.forwards(),
            Direction::Backwards => options.backwards(),
        };
        let (generation, client) = self.connection.client();
        let failed = |e| self.error(e, Some(stream), generation);
        let mut read = client.read_stream(stream.as_str(), &options).await.map_err(failed)?;
        let mut out = Vec::new();
        while let Some(resolved) = read.next().await.map_err(failed)? {
            if let Some(event) = resolved.event.and_then(recorded) {
                out.push(event);
            }
        }
        Ok(out)
    }

    async fn read_all(
        &self,
        direction: Direction,
        from: AllStart,
        filter: &AllFilter,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut out = Vec::new();
        let mut from = match (direction, from) {
            (Direction::Forwards, AllStart::End) | (Direction::Backwards, AllStart::Start) => return Ok(out),
            (_, AllStart::Start) => eventstore::StreamPosition::Start,
            (_, AllStart::End) => eventstore::StreamPosition::End,
            (_, AllStart::Position(p)) => eventstore::StreamPosition::Position(esdb_position(p)),
        };
        // The event a page starts at when the next page starts from it.
        let mut seen: Option<Position> = None;
        while out.len() < max_count {
            let options = ReadAllOptions::default().max_count(PAGE).position(from);
            let options = match direction {
                Direction::Forwards => options.forwards(),
                Direction::Backwards => options.backwards(),
            };
            let (generation, client) = self.connection.client();
            let failed = |e| self.error(e, None, generation);
            let mut read = client.read_all(&options).await.map_err(failed)?;
            let mut got = 0;
            let mut last = None;
            while let Some(resolved) = read.next().await.map_err(failed)? {
                got += 1;
                let Some(event) = resolved.event else { continue };
                last = Some(position(event.position));
                if seen == Some(position(event.position)) {
                    continue;
                }
                let Some(event) = recorded(event) else { continue };
                if filter.matches(event.stream.as_str(), &event.event_type) && out.len() < max_count {
                    out.push(event);
                }
            }
            match last {
                Some(p) if got == PAGE && Some(p) != seen => {
                    seen = Some(p);
                    from = eventstore::StreamPosition::Position(esdb_position(p));
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn subscribe_all(
        &self,
        start: SubscriptionStart,
        filter: AllFilter,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        // The client's subscription loses its place when a `next` is
        // cancelled (it then resubscribes), so a task owns it and hands
        // messages over a channel, whose `recv` is cancel-safe.
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIPTION_BUFFER);
        let pump = SubscriptionPump { connection: self.connection.clone(), target: self.target.clone(), filter, start };
        tokio::spawn(pump.run(tx));
        Ok(Box::new(EsdbSubscription { messages: rx }))
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<DeleteResult, StoreError> {
        let options = DeleteStreamOptions::default().expected_revision(expected_revision(expected));
        let (generation, client) = self.connection.client();
        match client.delete_stream(stream.as_str(), &options).await {
            Ok(p) => Ok(DeleteResult { position: p.map(position).unwrap_or(Position::START) }),
            Err(e) => Err(self.delete_error(e, stream, expected, generation).await),
        }
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<DeleteResult, StoreError> {
        let options = TombstoneStreamOptions::default().expected_revision(expected_revision(expected));
        let (generation, client) = self.connection.client();
        match client.tombstone_stream(stream.as_str(), &options).await {
            Ok(p) => Ok(DeleteResult { position: p.map(position).unwrap_or(Position::START) }),
            Err(e) => Err(self.delete_error(e, stream, expected, generation).await),
        }
    }

    async fn head_position(&self) -> Result<Option<Position>, StoreError> {
        let last = self.read_all(Direction::Backwards, AllStart::End, &AllFilter::with_system_streams(), 1).await?;
        Ok(last.first().map(|e| e.position))
    }
}

/// Messages a subscription buffers ahead of its reader.
const SUBSCRIPTION_BUFFER: usize = 256;

/// A catch-up subscription to `$all` on EventStoreDB.
struct EsdbSubscription {
    messages: tokio::sync::mpsc::Receiver<Result<SubscriptionMessage, StoreError>>,
}

#[async_trait]
impl Subscription for EsdbSubscription {
    async fn next(&mut self) -> Result<SubscriptionMessage, StoreError> {
        match self.messages.recv().await {
            Some(message) => message,
            None => Err(StoreError::Unavailable("the EventStoreDB subscription ended".into())),
        }
    }
}

/// Reads the client's subscription and resubscribes after the last event it
/// delivered when the connection drops.
struct SubscriptionPump {
    connection: Arc<Connection>,
    target: String,
    filter: AllFilter,
    /// Where the next (re)subscription starts.
    start: SubscriptionStart,
}

impl SubscriptionPump {
    async fn subscribe(&self) -> (u64, eventstore::Subscription) {
        let position = match self.start {
            SubscriptionStart::Start => eventstore::StreamPosition::Start,
            SubscriptionStart::End => eventstore::StreamPosition::End,
            SubscriptionStart::After(p) => eventstore::StreamPosition::Position(esdb_position(p)),
        };
        let mut options = SubscribeToAllOptions::default().position(position);
        // The server filters by stream-name prefix; event-type prefixes and
        // system streams are filtered here as well.
        if !self.filter.stream_prefixes.is_empty() {
            let filter =
                self.filter.stream_prefixes.iter().fold(SubscriptionFilter::on_stream_name(), |f, p| f.add_prefix(p));
            options = options.filter(filter);
        } else if !self.filter.system_streams {
            options = options.filter(SubscriptionFilter::on_event_type().exclude_system_events());
        }
        let (generation, client) = self.connection.client();
        (generation, client.subscribe_to_all(&options).await)
    }

    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Result<SubscriptionMessage, StoreError>>) {
        let mut failures = 0u32;
        let mut pause = Duration::from_millis(50);
        let (mut generation, mut subscription) = self.subscribe().await;
        loop {
            let event = tokio::select! {
                event = subscription.next_subscription_event() => event,
                _ = tx.closed() => return,
            };
            let message = match event {
                Ok(SubscriptionEvent::EventAppeared(resolved)) => {
                    failures = 0;
                    pause = Duration::from_millis(50);
                    let Some(event) = resolved.event else { continue };
                    self.start = SubscriptionStart::After(position(event.position));
                    match recorded(event) {
                        Some(e) if self.filter.matches(e.stream.as_str(), &e.event_type) => {
                            SubscriptionMessage::Event(e)
                        }
                        _ => continue,
                    }
                }
                Ok(SubscriptionEvent::CaughtUp) => SubscriptionMessage::CaughtUp,
                Ok(SubscriptionEvent::Checkpoint(p)) => {
                    self.start = SubscriptionStart::After(position(p));
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    failures += 1;
                    if failures >= RESUBSCRIBE_ATTEMPTS {
                        let error = format!(
                            "subscription to EventStoreDB at {} failed {failures} times in a row: {e}",
                            self.target
                        );
                        let _ = tx.send(Err(StoreError::Unavailable(error))).await;
                        return;
                    }
                    tracing::warn!(target = %self.target, error = %e, "EventStoreDB subscription dropped; resubscribing");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = tx.closed() => return,
                    }
                    pause = (pause * 2).min(MAX_BACKOFF);
                    self.connection.replace(generation);
                    (generation, subscription) = self.subscribe().await;
                    continue;
                }
            };
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
        }
    }
}

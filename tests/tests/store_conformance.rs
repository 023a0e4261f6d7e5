//! The `EventStore` port's EventStoreDB semantics, checked once and run
//! against every backend: each case appears as `sqlite::<case>`,
//! `sqlite_eager_index::<case>`, `memory::<case>` and `esdb::<case>` (the
//! EventStoreDB adapter talking over gRPC to the project's EventStoreDB-
//! compatible node, itself over a fresh embedded store).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use referral_domain::eventlog::{
    AllFilter, AllStart, AppendResult, CurrentRevision, Direction, EventData, EventStore, ExpectedRevision, Position,
    RecordedEvent, StoreError, StreamName, StreamRevision, StreamStart, Subscription, SubscriptionMessage,
    SubscriptionStart,
};
use referral_infra::store::{EsdbEventStore, InMemoryEventStore, SqliteEventStore, SqliteOptions};
use referral_tests::{any_loopback_port, spawn_esdb_node, NodeTask};
use uuid::Uuid;

type Store = Arc<dyn EventStore>;

/// Upper bound for one case, so that a hang fails instead of blocking the run.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a subscription may take to deliver a message that is due.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a subscription must stay silent when nothing is due.
const QUIET_PERIOD: Duration = Duration::from_millis(200);

/// A backend under test; the directory (and the node, if any) lives as long
/// as the store.
struct Backend {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    _node: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Backend {
    fn memory() -> Backend {
        Backend { store: Arc::new(InMemoryEventStore::new()), _dir: None, _node: None }
    }

    fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteEventStore::open(&dir.path().join("events.db")).expect("open sqlite store");
        Backend { store: Arc::new(store), _dir: Some(dir), _node: None }
    }

    /// SQLite writing its per-stream index to disk after every few events,
    /// so reads always combine the table with entries still in memory.
    fn sqlite_eager_index() -> Backend {
        let dir = tempfile::tempdir().expect("temporary directory");
        let options = SqliteOptions { index_flush: 3, ..SqliteOptions::default() };
        let store = SqliteEventStore::open_with(&dir.path().join("events.db"), options).expect("open sqlite store");
        Backend { store: Arc::new(store), _dir: Some(dir), _node: None }
    }
}

impl Backend {
    /// The EventStoreDB adapter against a compatible node on a loopback port.
    async fn esdb() -> Backend {
        let dir = tempfile::tempdir().expect("temporary directory");
        let inner: Store = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).expect("open sqlite store"));
        let (addr, stop, _task) = spawn_esdb_node(inner, any_loopback_port()).await;
        let store = EsdbEventStore::connect(&format!("esdb://{addr}?tls=false")).expect("connect the adapter");
        Backend { store: Arc::new(store), _dir: Some(dir), _node: Some(stop) }
    }
}

macro_rules! conformance {
    (shared: [$($case:ident),* $(,)?], sqlite_only: [$($sqlite_case:ident),* $(,)?] $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::Backend::memory();
                    super::run(super::$case(backend.store.clone())).await;
                }
            )*
        }

        mod esdb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::Backend::esdb().await;
                    super::run(super::$case(backend.store.clone())).await;
                }
            )*
        }

        mod sqlite_eager_index {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::Backend::sqlite_eager_index();
                    super::run(super::$case(backend.store.clone())).await;
                }
            )*
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::Backend::sqlite();
                    super::run(super::$case(backend.store.clone())).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $sqlite_case() {
                    super::run(super::$sqlite_case()).await;
                }
            )*
        }
    };
}

conformance! {
    shared: [
        empty_store_has_no_head,
        append_no_stream_creates_stream,
        append_no_stream_conflict,
        append_exact_continues_stream,
        append_exact_conflict,
        append_stream_exists,
        append_any,
        streams_have_independent_revisions,
        empty_append_checks_expected_revision_only,
        idempotent_reappend_exact,
        idempotent_reappend_no_stream,
        idempotent_reappend_any_recent,
        idempotent_reappend_stream_exists,
        idempotent_reappend_after_recreation,
        reappend_with_other_expected_is_wrong_expected_version,
        reappend_with_different_later_ids_is_idempotency_conflict,
        positions_increase_in_commit_order,
        head_position_tracks_last_append,
        read_stream_forwards,
        read_stream_backwards,
        read_missing_stream_is_not_found,
        read_all_forwards,
        read_all_backwards,
        read_all_filters,
        read_all_filter_scans_past_many_non_matching_events,
        system_streams_never_in_read_all,
        subscribe_from_start_catches_up_then_goes_live,
        subscribe_after_position_is_exclusive,
        subscribe_from_end_delivers_only_new_events,
        subscribe_on_empty_store,
        subscription_applies_filter,
        subscription_skips_system_streams,
        subscription_catches_up_across_many_events,
        soft_delete_hides_stream,
        soft_deleted_stream_recreated_with_no_stream,
        soft_deleted_stream_recreated_with_exact_last,
        soft_deleted_stream_recreated_with_any,
        delete_wrong_expected_is_refused,
        tombstone_is_final,
        tombstone_wrong_expected_is_refused,
        concurrent_exact_appends_with_retry,
    ],
    sqlite_only: [reopen_keeps_everything, reopen_continues_positions, reopen_finds_events_whether_indexed_or_not],
}

async fn run(case: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(CASE_TIMEOUT, case).await.expect("the case did not finish in time");
}

// ---------------------------------------------------------------- helpers --

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("valid stream name")
}

fn event(event_type: &str) -> EventData {
    let id = Uuid::new_v4();
    EventData {
        id,
        event_type: event_type.to_owned(),
        data: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        metadata: b"{\"correlation\":\"c\"}".to_vec(),
    }
}

fn events(event_type: &str, n: usize) -> Vec<EventData> {
    (0..n).map(|_| event(event_type)).collect()
}

fn ids(events: &[EventData]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

fn recorded_ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

fn revisions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision.0).collect()
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position.commit).collect()
}

fn exact(n: u64) -> ExpectedRevision {
    ExpectedRevision::Exact(StreamRevision(n))
}

fn current(n: u64) -> CurrentRevision {
    CurrentRevision::Current(StreamRevision(n))
}

fn wrong_expected(name: &str, expected: ExpectedRevision, actual: CurrentRevision) -> StoreError {
    StoreError::WrongExpectedVersion { stream: stream(name), expected, actual }
}

async fn append(store: &Store, name: &str, expected: ExpectedRevision, events: &[EventData]) -> AppendResult {
    store
        .append(&stream(name), expected, events.to_vec())
        .await
        .unwrap_or_else(|e| panic!("append to {name} with {expected}: {e}"))
}

async fn append_err(store: &Store, name: &str, expected: ExpectedRevision, events: &[EventData]) -> StoreError {
    match store.append(&stream(name), expected, events.to_vec()).await {
        Ok(result) => panic!("append to {name} with {expected} should fail, got {result:?}"),
        Err(e) => e,
    }
}

async fn read_stream(
    store: &Store,
    name: &str,
    direction: Direction,
    from: StreamStart,
    max: usize,
) -> Vec<RecordedEvent> {
    store
        .read_stream(&stream(name), direction, from, max)
        .await
        .unwrap_or_else(|e| panic!("read {name} {direction:?} from {from:?}: {e}"))
}

async fn read_whole_stream(store: &Store, name: &str) -> Vec<RecordedEvent> {
    read_stream(store, name, Direction::Forwards, StreamStart::Start, usize::MAX).await
}

async fn read_all(
    store: &Store,
    direction: Direction,
    from: AllStart,
    filter: &AllFilter,
    max: usize,
) -> Vec<RecordedEvent> {
    store
        .read_all(direction, from, filter, max)
        .await
        .unwrap_or_else(|e| panic!("read $all {direction:?} from {from:?}: {e}"))
}

async fn read_everything(store: &Store) -> Vec<RecordedEvent> {
    read_all(store, Direction::Forwards, AllStart::Start, &AllFilter::everything(), usize::MAX).await
}

async fn head(store: &Store) -> Option<Position> {
    store.head_position().await.expect("head position")
}

async fn subscribe(store: &Store, start: SubscriptionStart, filter: AllFilter) -> Box<dyn Subscription> {
    store.subscribe_all(start, filter).await.expect("subscribe to $all")
}

async fn next_message(subscription: &mut Box<dyn Subscription>) -> SubscriptionMessage {
    tokio::time::timeout(DELIVERY_TIMEOUT, subscription.next())
        .await
        .expect("the subscription delivered nothing in time")
        .expect("subscription message")
}

async fn next_event(subscription: &mut Box<dyn Subscription>) -> RecordedEvent {
    match next_message(subscription).await {
        SubscriptionMessage::Event(event) => event,
        SubscriptionMessage::CaughtUp => panic!("expected an event, got CaughtUp"),
    }
}

async fn expect_caught_up(subscription: &mut Box<dyn Subscription>) {
    match next_message(subscription).await {
        SubscriptionMessage::CaughtUp => {}
        SubscriptionMessage::Event(event) => {
            panic!("expected CaughtUp, got event {} of {} at {}", event.revision, event.stream, event.position)
        }
    }
}

async fn expect_quiet(subscription: &mut Box<dyn Subscription>) {
    if let Ok(message) = tokio::time::timeout(QUIET_PERIOD, subscription.next()).await {
        panic!("expected no message, got {message:?}");
    }
}

/// Reads `n` events from the subscription.
async fn next_events(subscription: &mut Box<dyn Subscription>, n: usize) -> Vec<RecordedEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(subscription).await);
    }
    out
}

fn assert_strictly_increasing(positions: &[u64]) {
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions not strictly increasing: {positions:?}");
}

// ------------------------------------------------------------------ append --

async fn empty_store_has_no_head(store: Store) {
    assert_eq!(head(&store).await, None);
    assert!(read_everything(&store).await.is_empty());
    assert!(read_all(&store, Direction::Backwards, AllStart::End, &AllFilter::everything(), 10).await.is_empty());
}

async fn append_no_stream_creates_stream(store: Store) {
    let batch = events("Created", 3);
    let result = append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
    assert_eq!(result.next_expected_revision, StreamRevision(2));
    let read = read_whole_stream(&store, "referral-1").await;
    assert_eq!(revisions(&read), vec![0, 1, 2]);
    assert_eq!(recorded_ids(&read), ids(&batch));
    for (recorded, sent) in read.iter().zip(&batch) {
        assert_eq!(recorded.stream, stream("referral-1"));
        assert_eq!(recorded.event_type, sent.event_type);
        assert_eq!(recorded.data, sent.data);
        assert_eq!(recorded.metadata, sent.metadata);
        assert_eq!(recorded.position.commit, recorded.position.prepare);
        assert!(recorded.position > Position::START);
    }
    assert_strictly_increasing(&positions(&read));
    assert_eq!(result.position, read[2].position, "the result names the last event's position");
}

async fn append_no_stream_conflict(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 3)).await;
    let err = append_err(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    assert_eq!(err, wrong_expected("referral-1", ExpectedRevision::NoStream, current(2)));
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2]);
}

async fn append_exact_continues_stream(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    let more = events("Updated", 2);
    let result = append(&store, "referral-1", exact(1), &more).await;
    assert_eq!(result.next_expected_revision, StreamRevision(3));
    let read = read_whole_stream(&store, "referral-1").await;
    assert_eq!(revisions(&read), vec![0, 1, 2, 3]);
    assert_eq!(recorded_ids(&read[2..]), ids(&more));
    assert_eq!(result.position, read[3].position);
}

async fn append_exact_conflict(store: Store) {
    let err = append_err(&store, "referral-1", exact(0), &events("Created", 1)).await;
    assert_eq!(err, wrong_expected("referral-1", exact(0), CurrentRevision::NoStream));
    assert_eq!(head(&store).await, None, "a refused append writes nothing");

    let first = append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 3)).await;
    for stale in [0, 1, 3, 7] {
        let err = append_err(&store, "referral-1", exact(stale), &events("Updated", 1)).await;
        assert_eq!(err, wrong_expected("referral-1", exact(stale), current(2)));
    }
    assert_eq!(head(&store).await, Some(first.position), "a refused append writes nothing");
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2]);
}

async fn append_stream_exists(store: Store) {
    let err = append_err(&store, "referral-1", ExpectedRevision::StreamExists, &events("Created", 1)).await;
    assert_eq!(err, wrong_expected("referral-1", ExpectedRevision::StreamExists, CurrentRevision::NoStream));
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    let result = append(&store, "referral-1", ExpectedRevision::StreamExists, &events("Updated", 2)).await;
    assert_eq!(result.next_expected_revision, StreamRevision(2));
}

async fn append_any(store: Store) {
    let created = append(&store, "referral-1", ExpectedRevision::Any, &events("Created", 2)).await;
    assert_eq!(created.next_expected_revision, StreamRevision(1));
    let updated = append(&store, "referral-1", ExpectedRevision::Any, &events("Updated", 1)).await;
    assert_eq!(updated.next_expected_revision, StreamRevision(2));
    assert!(updated.position > created.position);
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2]);
}

async fn streams_have_independent_revisions(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 3)).await;
    let other = append(&store, "partner-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    assert_eq!(other.next_expected_revision, StreamRevision(0));
    append(&store, "referral-1", exact(2), &events("Updated", 1)).await;
    append(&store, "partner-1", exact(0), &events("Updated", 1)).await;
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2, 3]);
    assert_eq!(revisions(&read_whole_stream(&store, "partner-1").await), vec![0, 1]);
}

async fn empty_append_checks_expected_revision_only(store: Store) {
    let written = append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    let checked = append(&store, "referral-1", exact(1), &[]).await;
    assert_eq!(checked, written, "an empty append answers with the stream's head");
    let checked = append(&store, "referral-1", ExpectedRevision::StreamExists, &[]).await;
    assert_eq!(checked.next_expected_revision, StreamRevision(1));
    let err = append_err(&store, "referral-1", exact(0), &[]).await;
    assert_eq!(err, wrong_expected("referral-1", exact(0), current(1)));
    let err = append_err(&store, "referral-1", ExpectedRevision::NoStream, &[]).await;
    assert_eq!(err, wrong_expected("referral-1", ExpectedRevision::NoStream, current(1)));
    assert_eq!(head(&store).await, Some(written.position), "an empty append writes nothing");
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1]);
}

// ------------------------------------------------------------- idempotency --

async fn idempotent_reappend_exact(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    let batch = events("Updated", 2);
    let original = append(&store, "referral-1", exact(1), &batch).await;
    let replayed = append(&store, "referral-1", exact(1), &batch).await;
    assert_eq!(replayed, original);
    assert_eq!(head(&store).await, Some(original.position), "a replay writes nothing");

    // Still a replay once the stream has moved on.
    let later = append(&store, "referral-1", exact(3), &events("Updated", 1)).await;
    let replayed = append(&store, "referral-1", exact(1), &batch).await;
    assert_eq!(replayed, original);
    assert_eq!(head(&store).await, Some(later.position), "a replay writes nothing");
    let read = read_whole_stream(&store, "referral-1").await;
    assert_eq!(revisions(&read), vec![0, 1, 2, 3, 4]);
    assert_eq!(recorded_ids(&read[2..4]), ids(&batch));
}

async fn idempotent_reappend_no_stream(store: Store) {
    let batch = events("Created", 3);
    let original = append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
    let replayed = append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
    assert_eq!(replayed, original);

    let later = append(&store, "referral-1", exact(2), &events("Updated", 1)).await;
    let replayed = append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
    assert_eq!(replayed, original);
    assert_eq!(head(&store).await, Some(later.position), "a replay writes nothing");
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2, 3]);
}

async fn idempotent_reappend_any_recent(store: Store) {
    append(&store, "referral-1", ExpectedRevision::Any, &events("Created", 1)).await;
    let batch = events("Updated", 2);
    let original = append(&store, "referral-1", ExpectedRevision::Any, &batch).await;
    let replayed = append(&store, "referral-1", ExpectedRevision::Any, &batch).await;
    assert_eq!(replayed, original);
    assert_eq!(head(&store).await, Some(original.position), "a replay writes nothing");
    let read = read_whole_stream(&store, "referral-1").await;
    assert_eq!(revisions(&read), vec![0, 1, 2]);
    assert_eq!(recorded_ids(&read[1..]), ids(&batch));
}

async fn idempotent_reappend_stream_exists(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    let batch = events("Updated", 2);
    let original = append(&store, "referral-1", ExpectedRevision::StreamExists, &batch).await;
    append(&store, "referral-1", exact(2), &events("Updated", 1)).await;
    let replayed = append(&store, "referral-1", ExpectedRevision::StreamExists, &batch).await;
    assert_eq!(replayed, original);
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2, 3]);
}

async fn idempotent_reappend_after_recreation(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    store.delete_stream(&stream("referral-1"), exact(1)).await.expect("soft delete");
    let batch = events("Recreated", 2);
    let original = append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
    assert_eq!(original.next_expected_revision, StreamRevision(3));
    let replayed = append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
    assert_eq!(replayed, original);
    assert_eq!(head(&store).await, Some(original.position), "a replay writes nothing");
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![2, 3]);
}

async fn reappend_with_other_expected_is_wrong_expected_version(store: Store) {
    let batch = events("Created", 2);
    append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
    let updated = events("Updated", 1);
    let later = append(&store, "referral-1", exact(1), &updated).await;
    for expected in [exact(0), exact(1), exact(9)] {
        let err = append_err(&store, "referral-1", expected, &batch).await;
        assert_eq!(err, wrong_expected("referral-1", expected, current(2)), "re-append with {expected}");
    }
    for expected in [ExpectedRevision::NoStream, exact(0), exact(5)] {
        let err = append_err(&store, "referral-1", expected, &updated).await;
        assert_eq!(err, wrong_expected("referral-1", expected, current(2)), "re-append with {expected}");
    }
    assert_eq!(head(&store).await, Some(later.position), "a refused re-append writes nothing");
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2]);
}

async fn reappend_with_different_later_ids_is_idempotency_conflict(store: Store) {
    let first = events("Created", 2);
    append(&store, "referral-1", ExpectedRevision::NoStream, &first).await;
    let second = events("Updated", 2);
    let last = append(&store, "referral-1", exact(1), &second).await;

    let cases = [
        (ExpectedRevision::NoStream, vec![first[0].clone(), event("Other")]),
        (exact(1), vec![second[0].clone(), event("Other")]),
        (ExpectedRevision::Any, vec![second[0].clone(), event("Other")]),
    ];
    for (expected, batch) in cases {
        let err = append_err(&store, "referral-1", expected, &batch).await;
        assert!(
            matches!(&err, StoreError::IdempotencyConflict { stream: s, .. } if *s == stream("referral-1")),
            "re-append with {expected} and a different second id: {err:?}"
        );
    }
    assert_eq!(head(&store).await, Some(last.position), "a refused append writes nothing");
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2, 3]);
}

// --------------------------------------------------------------- positions --

async fn positions_increase_in_commit_order(store: Store) {
    let mut appended = Vec::new();
    let mut results = Vec::new();
    for (name, n) in [("referral-1", 2), ("partner-1", 1), ("referral-2", 3), ("referral-1", 1), ("partner-1", 2)] {
        let batch = events("Happened", n);
        results.push(append(&store, name, ExpectedRevision::Any, &batch).await);
        appended.extend(ids(&batch));
    }
    let all = read_everything(&store).await;
    assert_eq!(recorded_ids(&all), appended, "$all holds the events in commit order");
    assert!(all[0].position > Position::START);
    assert!(all.iter().all(|e| e.position == Position::at(e.position.commit)));
    assert_strictly_increasing(&positions(&all));
    let result_positions: Vec<u64> = results.iter().map(|r| r.position.commit).collect();
    assert_strictly_increasing(&result_positions);
    assert_eq!(all.last().map(|e| e.position), results.last().map(|r| r.position));
}

async fn head_position_tracks_last_append(store: Store) {
    assert_eq!(head(&store).await, None);
    let first = append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    assert_eq!(head(&store).await, Some(first.position));
    let second = append(&store, "partner-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    assert!(second.position > first.position);
    assert_eq!(head(&store).await, Some(second.position));
}

// ------------------------------------------------------------------- reads --

/// Ten events in `referral-1`, revisions 0..=9.
async fn ten_events(store: &Store) -> Vec<EventData> {
    let batch = events("Happened", 10);
    append(store, "referral-1", ExpectedRevision::NoStream, &batch[..4]).await;
    append(store, "referral-1", exact(3), &batch[4..]).await;
    batch
}

async fn read_stream_forwards(store: Store) {
    let batch = ten_events(&store).await;
    let name = "referral-1";
    let read = read_stream(&store, name, Direction::Forwards, StreamStart::Start, 3).await;
    assert_eq!(revisions(&read), vec![0, 1, 2]);
    assert_eq!(recorded_ids(&read), ids(&batch[..3]));
    let read = read_stream(&store, name, Direction::Forwards, StreamStart::Revision(StreamRevision(4)), 3).await;
    assert_eq!(revisions(&read), vec![4, 5, 6]);
    let read = read_stream(&store, name, Direction::Forwards, StreamStart::Revision(StreamRevision(8)), 10).await;
    assert_eq!(revisions(&read), vec![8, 9]);
    let read = read_stream(&store, name, Direction::Forwards, StreamStart::Revision(StreamRevision(10)), 10).await;
    assert!(read.is_empty());
    let read = read_stream(&store, name, Direction::Forwards, StreamStart::End, 10).await;
    assert!(read.is_empty());
    let read = read_stream(&store, name, Direction::Forwards, StreamStart::Start, usize::MAX).await;
    assert_eq!(recorded_ids(&read), ids(&batch));
    assert_strictly_increasing(&positions(&read));
}

async fn read_stream_backwards(store: Store) {
    let batch = ten_events(&store).await;
    let name = "referral-1";
    let read = read_stream(&store, name, Direction::Backwards, StreamStart::End, 3).await;
    assert_eq!(revisions(&read), vec![9, 8, 7]);
    assert_eq!(read[0].id, batch[9].id);
    let read = read_stream(&store, name, Direction::Backwards, StreamStart::Revision(StreamRevision(5)), 2).await;
    assert_eq!(revisions(&read), vec![5, 4]);
    let read = read_stream(&store, name, Direction::Backwards, StreamStart::Revision(StreamRevision(1)), 10).await;
    assert_eq!(revisions(&read), vec![1, 0]);
    let read = read_stream(&store, name, Direction::Backwards, StreamStart::Revision(StreamRevision(50)), 2).await;
    assert_eq!(revisions(&read), vec![9, 8], "backwards from past the end starts at the last event");
    let read = read_stream(&store, name, Direction::Backwards, StreamStart::End, usize::MAX).await;
    let mut all_ids = ids(&batch);
    all_ids.reverse();
    assert_eq!(recorded_ids(&read), all_ids);
    // Start is revision 0 and reads are inclusive, as in EventStoreDB.
    let read = read_stream(&store, name, Direction::Backwards, StreamStart::Start, 10).await;
    assert_eq!(revisions(&read), vec![0], "backwards from Start reads the first event only");
}

async fn read_missing_stream_is_not_found(store: Store) {
    for (direction, from) in [(Direction::Forwards, StreamStart::Start), (Direction::Backwards, StreamStart::End)] {
        let err = store.read_stream(&stream("referral-404"), direction, from, 10).await.unwrap_err();
        assert_eq!(err, StoreError::StreamNotFound(stream("referral-404")));
    }
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    let err = store.read_stream(&stream("referral-404"), Direction::Forwards, StreamStart::Start, 10).await;
    assert_eq!(err, Err(StoreError::StreamNotFound(stream("referral-404"))));
}

/// Six events over three streams; returns them as `$all` holds them.
async fn six_events_in_three_streams(store: &Store) -> Vec<RecordedEvent> {
    append(store, "referral-1", ExpectedRevision::NoStream, &events("ReferralCreated", 2)).await;
    append(store, "partner-1", ExpectedRevision::NoStream, &events("PartnerRegistered", 1)).await;
    append(store, "referral-2", ExpectedRevision::NoStream, &events("ReferralCreated", 1)).await;
    append(store, "referral-1", exact(1), &events("ReferralAccepted", 1)).await;
    append(store, "partner-1", exact(0), &events("PartnerSuspended", 1)).await;
    let all = read_everything(store).await;
    assert_eq!(all.len(), 6);
    all
}

async fn read_all_forwards(store: Store) {
    let all = six_events_in_three_streams(&store).await;
    let everything = AllFilter::everything();
    let read = read_all(&store, Direction::Forwards, AllStart::Start, &everything, 3).await;
    assert_eq!(read, all[..3]);
    let read = read_all(&store, Direction::Forwards, AllStart::Position(all[2].position), &everything, 2).await;
    assert_eq!(read, all[2..4], "a read from a position includes the event at it");
    let read = read_all(&store, Direction::Forwards, AllStart::Position(all[4].position), &everything, 10).await;
    assert_eq!(read, all[4..]);
    let past_head = Position::at(all[5].position.commit + 1);
    assert!(read_all(&store, Direction::Forwards, AllStart::Position(past_head), &everything, 10).await.is_empty());
    assert!(read_all(&store, Direction::Forwards, AllStart::End, &everything, 10).await.is_empty());
}

async fn read_all_backwards(store: Store) {
    let all = six_events_in_three_streams(&store).await;
    let mut reversed = all.clone();
    reversed.reverse();
    let everything = AllFilter::everything();
    let read = read_all(&store, Direction::Backwards, AllStart::End, &everything, 2).await;
    assert_eq!(read, reversed[..2]);
    let read = read_all(&store, Direction::Backwards, AllStart::End, &everything, usize::MAX).await;
    assert_eq!(read, reversed);
    let read = read_all(&store, Direction::Backwards, AllStart::Position(all[3].position), &everything, 2).await;
    assert_eq!(read, vec![all[3].clone(), all[2].clone()], "a read from a position includes the event at it");
    let read = read_all(&store, Direction::Backwards, AllStart::Position(all[0].position), &everything, 10).await;
    assert_eq!(read, vec![all[0].clone()]);
    assert!(read_all(&store, Direction::Backwards, AllStart::Start, &everything, 10).await.is_empty());
}

async fn read_all_filters(store: Store) {
    let all = six_events_in_three_streams(&store).await;
    let only = |keep: &dyn Fn(&RecordedEvent) -> bool| all.iter().filter(|e| keep(e)).cloned().collect::<Vec<_>>();

    let referrals = AllFilter::streams_starting_with(&["referral-"]);
    let read = read_all(&store, Direction::Forwards, AllStart::Start, &referrals, usize::MAX).await;
    assert_eq!(read, only(&|e| e.stream.as_str().starts_with("referral-")));
    assert_eq!(read.len(), 4);
    let read = read_all(&store, Direction::Forwards, AllStart::Start, &referrals, 2).await;
    assert_eq!(read, only(&|e| e.stream.as_str().starts_with("referral-"))[..2], "max_count counts matches");

    let two_prefixes = AllFilter::streams_starting_with(&["partner-", "referral-2"]);
    let read = read_all(&store, Direction::Forwards, AllStart::Start, &two_prefixes, usize::MAX).await;
    assert_eq!(read, only(&|e| e.stream.as_str() != "referral-1"));

    let partner_types =
        AllFilter { event_type_prefixes: vec!["Partner".into(), "ReferralAcc".into()], ..AllFilter::default() };
    let read = read_all(&store, Direction::Forwards, AllStart::Start, &partner_types, usize::MAX).await;
    assert_eq!(read, only(&|e| e.event_type.starts_with("Partner") || e.event_type == "ReferralAccepted"));
    assert_eq!(read.len(), 3);

    let both = AllFilter {
        stream_prefixes: vec!["referral-1".into()],
        event_type_prefixes: vec!["ReferralCreated".into()],
        ..AllFilter::default()
    };
    let read = read_all(&store, Direction::Backwards, AllStart::End, &both, usize::MAX).await;
    let mut expected = only(&|e| e.stream.as_str() == "referral-1" && e.event_type == "ReferralCreated");
    expected.reverse();
    assert_eq!(read, expected);
    assert_eq!(read.len(), 2);

    let nothing = AllFilter::streams_starting_with(&["invoice-"]);
    assert!(read_all(&store, Direction::Forwards, AllStart::Start, &nothing, 10).await.is_empty());
}

async fn read_all_filter_scans_past_many_non_matching_events(store: Store) {
    // More non-matching events than a backend is likely to scan per page.
    let wanted_first = append(&store, "partner-1", ExpectedRevision::NoStream, &events("Registered", 1)).await;
    let mut expected = ExpectedRevision::NoStream;
    for _ in 0..25 {
        let r = append(&store, "referral-1", expected, &events("Noise", 100)).await;
        expected = ExpectedRevision::Exact(r.next_expected_revision);
    }
    let wanted_last = append(&store, "partner-1", exact(0), &events("Suspended", 1)).await;
    let partners = AllFilter::streams_starting_with(&["partner-"]);

    let read = read_all(&store, Direction::Forwards, AllStart::Start, &partners, 10).await;
    assert_eq!(positions(&read), vec![wanted_first.position.commit, wanted_last.position.commit]);
    let from = Position::at(wanted_first.position.commit + 1);
    let read = read_all(&store, Direction::Forwards, AllStart::Position(from), &partners, 1).await;
    assert_eq!(positions(&read), vec![wanted_last.position.commit]);
    let read = read_all(&store, Direction::Backwards, AllStart::End, &partners, 10).await;
    assert_eq!(positions(&read), vec![wanted_last.position.commit, wanted_first.position.commit]);
    let before_last = Position::at(wanted_last.position.commit - 1);
    let read = read_all(&store, Direction::Backwards, AllStart::Position(before_last), &partners, 10).await;
    assert_eq!(positions(&read), vec![wanted_first.position.commit]);
}

async fn system_streams_never_in_read_all(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    append(&store, "referral-2", ExpectedRevision::NoStream, &events("Created", 1)).await;
    let deleted = store.delete_stream(&stream("referral-1"), exact(1)).await.expect("soft delete");
    let tombstoned = store.tombstone_stream(&stream("referral-2"), ExpectedRevision::Any).await.expect("tombstone");
    let after = append(&store, "partner-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    assert!(deleted.position < tombstoned.position && tombstoned.position < after.position);

    for direction in [Direction::Forwards, Direction::Backwards] {
        let from = if direction == Direction::Forwards { AllStart::Start } else { AllStart::End };
        let read = read_all(&store, direction, from, &AllFilter::everything(), usize::MAX).await;
        assert!(read.iter().all(|e| !e.stream.as_str().starts_with('$')), "{direction:?}: {read:?}");
        assert!(read.iter().any(|e| e.position == after.position));
        let system = AllFilter::streams_starting_with(&["$"]);
        assert!(read_all(&store, direction, from, &system, usize::MAX).await.is_empty());
        let types = AllFilter { event_type_prefixes: vec!["$".into()], ..AllFilter::default() };
        assert!(read_all(&store, direction, from, &types, usize::MAX).await.is_empty());
    }
    // A read starting exactly at a delete record skips it.
    let read =
        read_all(&store, Direction::Forwards, AllStart::Position(deleted.position), &AllFilter::everything(), 1).await;
    assert_eq!(positions(&read), vec![after.position.commit]);
}

// ----------------------------------------------------------- subscriptions --

async fn subscribe_from_start_catches_up_then_goes_live(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    append(&store, "partner-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    let before = read_everything(&store).await;
    let mut subscription = subscribe(&store, SubscriptionStart::Start, AllFilter::everything()).await;
    assert_eq!(next_events(&mut subscription, 3).await, before);
    expect_caught_up(&mut subscription).await;
    expect_quiet(&mut subscription).await;

    let live = events("Updated", 2);
    append(&store, "referral-1", exact(1), &live).await;
    let third = event("Updated");
    append(&store, "partner-1", exact(0), std::slice::from_ref(&third)).await;
    let delivered = next_events(&mut subscription, 3).await;
    assert_eq!(recorded_ids(&delivered), vec![live[0].id, live[1].id, third.id]);
    assert_eq!(revisions(&delivered), vec![2, 3, 1]);
    assert_strictly_increasing(&positions(&delivered));
    assert!(delivered[0].position > before[2].position);
    let all = read_everything(&store).await;
    assert_eq!(delivered, all[3..], "live events are the events $all holds");
    expect_quiet(&mut subscription).await;
}

async fn subscribe_after_position_is_exclusive(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 4)).await;
    let all = read_everything(&store).await;
    let mut subscription = subscribe(&store, SubscriptionStart::After(all[1].position), AllFilter::everything()).await;
    assert_eq!(next_events(&mut subscription, 2).await, all[2..]);
    expect_caught_up(&mut subscription).await;

    let mut at_head = subscribe(&store, SubscriptionStart::After(all[3].position), AllFilter::everything()).await;
    expect_caught_up(&mut at_head).await;
    let live = event("Updated");
    append(&store, "referral-1", exact(3), std::slice::from_ref(&live)).await;
    assert_eq!(next_event(&mut subscription).await.id, live.id);
    assert_eq!(next_event(&mut at_head).await.id, live.id);
}

async fn subscribe_from_end_delivers_only_new_events(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 3)).await;
    let mut subscription = subscribe(&store, SubscriptionStart::End, AllFilter::everything()).await;
    expect_caught_up(&mut subscription).await;
    expect_quiet(&mut subscription).await;
    let live = events("Updated", 2);
    append(&store, "referral-1", exact(2), &live).await;
    let delivered = next_events(&mut subscription, 2).await;
    assert_eq!(recorded_ids(&delivered), ids(&live));
    assert_eq!(revisions(&delivered), vec![3, 4]);
    expect_quiet(&mut subscription).await;
}

async fn subscribe_on_empty_store(store: Store) {
    let mut from_start = subscribe(&store, SubscriptionStart::Start, AllFilter::everything()).await;
    let mut from_end = subscribe(&store, SubscriptionStart::End, AllFilter::everything()).await;
    expect_caught_up(&mut from_start).await;
    expect_caught_up(&mut from_end).await;
    expect_quiet(&mut from_start).await;
    let first = event("Created");
    let result = append(&store, "referral-1", ExpectedRevision::NoStream, std::slice::from_ref(&first)).await;
    for subscription in [&mut from_start, &mut from_end] {
        let delivered = next_event(subscription).await;
        assert_eq!((delivered.id, delivered.position), (first.id, result.position));
    }
}

async fn subscription_applies_filter(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("ReferralCreated", 2)).await;
    append(&store, "partner-1", ExpectedRevision::NoStream, &events("PartnerRegistered", 1)).await;
    let filter = AllFilter::streams_starting_with(&["partner-"]);
    let mut partners = subscribe(&store, SubscriptionStart::Start, filter).await;
    let by_type = AllFilter { event_type_prefixes: vec!["ReferralAcc".into()], ..AllFilter::default() };
    let mut accepted = subscribe(&store, SubscriptionStart::Start, by_type).await;

    let first = next_event(&mut partners).await;
    assert_eq!(first.stream, stream("partner-1"));
    expect_caught_up(&mut partners).await;
    expect_caught_up(&mut accepted).await;

    append(&store, "referral-1", exact(1), &events("ReferralAccepted", 1)).await;
    append(&store, "referral-2", ExpectedRevision::NoStream, &events("ReferralCreated", 1)).await;
    let live_partner = event("PartnerSuspended");
    append(&store, "partner-1", exact(0), std::slice::from_ref(&live_partner)).await;

    let delivered = next_event(&mut partners).await;
    assert_eq!(delivered.id, live_partner.id);
    expect_quiet(&mut partners).await;
    let delivered = next_event(&mut accepted).await;
    assert_eq!((delivered.stream.as_str(), delivered.event_type.as_str()), ("referral-1", "ReferralAccepted"));
    expect_quiet(&mut accepted).await;
}

async fn subscription_skips_system_streams(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    append(&store, "referral-2", ExpectedRevision::NoStream, &events("Created", 1)).await;
    store.delete_stream(&stream("referral-1"), ExpectedRevision::Any).await.expect("soft delete");
    let mut from_start = subscribe(&store, SubscriptionStart::Start, AllFilter::everything()).await;
    let mut system_only = subscribe(&store, SubscriptionStart::Start, AllFilter::streams_starting_with(&["$"])).await;
    let mut live = subscribe(&store, SubscriptionStart::End, AllFilter::everything()).await;
    let caught_up = next_events(&mut from_start, 2).await;
    assert!(caught_up.iter().all(|e| !e.stream.as_str().starts_with('$')));
    expect_caught_up(&mut from_start).await;
    expect_caught_up(&mut system_only).await;
    expect_caught_up(&mut live).await;

    store.tombstone_stream(&stream("referral-2"), ExpectedRevision::Any).await.expect("tombstone");
    let marker = event("Created");
    append(&store, "partner-1", ExpectedRevision::NoStream, std::slice::from_ref(&marker)).await;
    assert_eq!(next_event(&mut from_start).await.id, marker.id, "system events are skipped");
    assert_eq!(next_event(&mut live).await.id, marker.id, "system events are skipped");
    expect_quiet(&mut system_only).await;
}

async fn subscription_catches_up_across_many_events(store: Store) {
    // More history than one catch-up read is likely to cover, with a
    // filter that matches only now and then.
    let mut expected = ExpectedRevision::NoStream;
    for i in 0..30 {
        let r = append(&store, "referral-1", expected, &events("Noise", 100)).await;
        expected = ExpectedRevision::Exact(r.next_expected_revision);
        if i % 10 == 9 {
            append(&store, &format!("partner-{i}"), ExpectedRevision::NoStream, &events("Registered", 1)).await;
        }
    }
    let all = read_everything(&store).await;
    assert_eq!(all.len(), 3003);

    let mut everything = subscribe(&store, SubscriptionStart::Start, AllFilter::everything()).await;
    let delivered = next_events(&mut everything, all.len()).await;
    assert_eq!(recorded_ids(&delivered), recorded_ids(&all));
    expect_caught_up(&mut everything).await;

    let partners = AllFilter::streams_starting_with(&["partner-"]);
    let mut filtered = subscribe(&store, SubscriptionStart::Start, partners).await;
    let delivered = next_events(&mut filtered, 3).await;
    let streams: Vec<&str> = delivered.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(streams, vec!["partner-9", "partner-19", "partner-29"]);
    expect_caught_up(&mut filtered).await;

    let last = append(&store, "partner-9", exact(0), &events("Suspended", 1)).await;
    assert_eq!(next_event(&mut everything).await.position, last.position);
    assert_eq!(next_event(&mut filtered).await.position, last.position);
}

// ----------------------------------------------------------------- deletes --

async fn soft_delete_hides_stream(store: Store) {
    let written = append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    let deleted = store.delete_stream(&stream("referral-1"), exact(1)).await.expect("soft delete");
    assert!(deleted.position > written.position, "a delete takes a later $all position");
    assert!(head(&store).await >= Some(deleted.position));
    let err = store.read_stream(&stream("referral-1"), Direction::Forwards, StreamStart::Start, 10).await;
    assert_eq!(err, Err(StoreError::StreamNotFound(stream("referral-1"))));
    let err = store.read_stream(&stream("referral-1"), Direction::Backwards, StreamStart::End, 10).await;
    assert_eq!(err, Err(StoreError::StreamNotFound(stream("referral-1"))));
    let err = append_err(&store, "referral-1", ExpectedRevision::StreamExists, &events("Updated", 1)).await;
    assert_eq!(err, wrong_expected("referral-1", ExpectedRevision::StreamExists, CurrentRevision::NoStream));
    let later = append(&store, "partner-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    assert!(later.position > deleted.position, "$all keeps increasing after a delete");
}

/// Writes revisions 0..=1 to `referral-1`, soft-deletes it, re-creates it
/// with `expected` and checks that revisions continue at 2.
async fn recreate_after_soft_delete(store: &Store, expected: ExpectedRevision) {
    append(store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    let deleted = store.delete_stream(&stream("referral-1"), exact(1)).await.expect("soft delete");
    let batch = events("Recreated", 3);
    let result = append(store, "referral-1", expected, &batch).await;
    assert_eq!(result.next_expected_revision, StreamRevision(4));
    assert!(result.position > deleted.position);

    let read = read_whole_stream(store, "referral-1").await;
    assert_eq!(revisions(&read), vec![2, 3, 4], "revisions continue after the deleted ones");
    assert_eq!(recorded_ids(&read), ids(&batch), "only the new events are readable");
    let read = read_stream(store, "referral-1", Direction::Backwards, StreamStart::End, usize::MAX).await;
    assert_eq!(revisions(&read), vec![4, 3, 2]);
    let read =
        read_stream(store, "referral-1", Direction::Forwards, StreamStart::Revision(StreamRevision(0)), 10).await;
    assert_eq!(revisions(&read), vec![2, 3, 4]);
    let read =
        read_stream(store, "referral-1", Direction::Backwards, StreamStart::Revision(StreamRevision(1)), 10).await;
    assert!(read.is_empty(), "deleted revisions stay hidden: {:?}", revisions(&read));

    let err = append_err(store, "referral-1", ExpectedRevision::NoStream, &events("Again", 1)).await;
    assert_eq!(err, wrong_expected("referral-1", ExpectedRevision::NoStream, current(4)));
    let more = append(store, "referral-1", exact(4), &events("Updated", 1)).await;
    assert_eq!(more.next_expected_revision, StreamRevision(5));
}

async fn soft_deleted_stream_recreated_with_no_stream(store: Store) {
    recreate_after_soft_delete(&store, ExpectedRevision::NoStream).await;
}

async fn soft_deleted_stream_recreated_with_exact_last(store: Store) {
    recreate_after_soft_delete(&store, exact(1)).await;
}

async fn soft_deleted_stream_recreated_with_any(store: Store) {
    recreate_after_soft_delete(&store, ExpectedRevision::Any).await;
}

async fn delete_wrong_expected_is_refused(store: Store) {
    let err = store.delete_stream(&stream("referral-1"), exact(0)).await.unwrap_err();
    assert_eq!(err, wrong_expected("referral-1", exact(0), CurrentRevision::NoStream));
    let written = append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    for expected in [exact(0), exact(5), ExpectedRevision::NoStream] {
        let err = store.delete_stream(&stream("referral-1"), expected).await.unwrap_err();
        assert_eq!(err, wrong_expected("referral-1", expected, current(1)));
    }
    assert_eq!(head(&store).await, Some(written.position), "a refused delete writes nothing");
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1]);
    store.delete_stream(&stream("referral-1"), ExpectedRevision::StreamExists).await.expect("soft delete");
}

async fn tombstone_is_final(store: Store) {
    let written = append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    let tombstoned = store.tombstone_stream(&stream("referral-1"), exact(1)).await.expect("tombstone");
    assert!(tombstoned.position > written.position);
    let gone = StoreError::StreamDeleted(stream("referral-1"));
    for (direction, from) in [(Direction::Forwards, StreamStart::Start), (Direction::Backwards, StreamStart::End)] {
        let read = store.read_stream(&stream("referral-1"), direction, from, 10).await;
        assert_eq!(read, Err(gone.clone()));
    }
    for expected in [ExpectedRevision::NoStream, ExpectedRevision::Any, ExpectedRevision::StreamExists, exact(1)] {
        assert_eq!(append_err(&store, "referral-1", expected, &events("Again", 1)).await, gone, "append {expected}");
    }
    assert_eq!(store.delete_stream(&stream("referral-1"), ExpectedRevision::Any).await, Err(gone.clone()));
    assert_eq!(store.tombstone_stream(&stream("referral-1"), ExpectedRevision::Any).await, Err(gone.clone()));
    let later = append(&store, "partner-1", ExpectedRevision::NoStream, &events("Created", 1)).await;
    assert!(later.position > tombstoned.position, "$all keeps increasing after a tombstone");
}

async fn tombstone_wrong_expected_is_refused(store: Store) {
    append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    let err = store.tombstone_stream(&stream("referral-1"), exact(3)).await.unwrap_err();
    assert_eq!(err, wrong_expected("referral-1", exact(3), current(1)));
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1]);
    append(&store, "referral-1", exact(1), &events("Updated", 1)).await;
}

// ------------------------------------------------------------- concurrency --

async fn concurrent_exact_appends_with_retry(store: Store) {
    const TASKS: usize = 32;
    const APPENDS_PER_TASK: usize = 3;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let name = stream("referral-hot");
            let mut expected = ExpectedRevision::NoStream;
            let mut acknowledged = Vec::new();
            for append in 0..APPENDS_PER_TASK {
                let batch = events(&format!("Task{task}Append{append}"), 1 + (task + append) % 2);
                loop {
                    match store.append(&name, expected, batch.clone()).await {
                        Ok(result) => {
                            acknowledged.push((batch, result));
                            expected = ExpectedRevision::Exact(result.next_expected_revision);
                            break;
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. }) => expected = actual.as_expected(),
                        Err(e) => panic!("task {task}: {e}"),
                    }
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.expect("append task"));
    }

    let read = read_whole_stream(&store, "referral-hot").await;
    let total: usize = acknowledged.iter().map(|(batch, _)| batch.len()).sum();
    assert_eq!(revisions(&read), (0..total as u64).collect::<Vec<_>>(), "revisions are contiguous");
    let unique: HashSet<Uuid> = read.iter().map(|e| e.id).collect();
    assert_eq!(unique.len(), total, "no event id is written twice");
    assert_strictly_increasing(&positions(&read));
    for (batch, result) in &acknowledged {
        let last = result.next_expected_revision.0 as usize;
        let first = last + 1 - batch.len();
        assert_eq!(recorded_ids(&read[first..=last]), ids(batch), "an append's events are contiguous");
        assert_eq!(read[last].position, result.position);
    }
}

// ------------------------------------------------------ sqlite durability --

async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("events.db");
    let (before, head_before) = {
        let store: Store = Arc::new(SqliteEventStore::open(&path).expect("open"));
        append(&store, "referral-1", ExpectedRevision::NoStream, &events("Created", 3)).await;
        append(&store, "partner-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
        append(&store, "referral-2", ExpectedRevision::NoStream, &events("Created", 2)).await;
        store.delete_stream(&stream("referral-2"), exact(1)).await.expect("soft delete");
        append(&store, "referral-3", ExpectedRevision::NoStream, &events("Created", 1)).await;
        store.tombstone_stream(&stream("referral-3"), exact(0)).await.expect("tombstone");
        append(&store, "referral-1", exact(2), &events("Updated", 1)).await;
        (read_everything(&store).await, head(&store).await)
    };
    assert!(head_before.is_some());

    let store: Store = Arc::new(SqliteEventStore::open(&path).expect("reopen"));
    assert_eq!(read_everything(&store).await, before, "every event, with the same positions and revisions");
    assert_eq!(head(&store).await, head_before);
    assert_eq!(revisions(&read_whole_stream(&store, "referral-1").await), vec![0, 1, 2, 3]);
    assert_eq!(revisions(&read_whole_stream(&store, "partner-1").await), vec![0, 1]);
    let err = store.read_stream(&stream("referral-2"), Direction::Forwards, StreamStart::Start, 10).await;
    assert_eq!(err, Err(StoreError::StreamNotFound(stream("referral-2"))), "a soft delete survives a restart");
    let err = store.read_stream(&stream("referral-3"), Direction::Forwards, StreamStart::Start, 10).await;
    assert_eq!(err, Err(StoreError::StreamDeleted(stream("referral-3"))), "a tombstone survives a restart");
    let err = append_err(&store, "referral-1", exact(2), &events("Stale", 1)).await;
    assert_eq!(err, wrong_expected("referral-1", exact(2), current(3)));
    let recreated = append(&store, "referral-2", ExpectedRevision::NoStream, &events("Recreated", 1)).await;
    assert_eq!(recreated.next_expected_revision, StreamRevision(2), "revisions continue after a restart");
}

/// Some index entries reach the table before the store is closed and some do
/// not; after a reopen (with a different flush size) every stream reads whole.
async fn reopen_finds_events_whether_indexed_or_not() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("events.db");
    let before = {
        let options = SqliteOptions { index_flush: 5, ..SqliteOptions::default() };
        let store: Store = Arc::new(SqliteEventStore::open_with(&path, options).expect("open"));
        for round in 0..4u64 {
            for s in 0..3 {
                let expected = if round == 0 { ExpectedRevision::NoStream } else { exact(round * 2 - 1) };
                append(&store, &format!("referral-{s}"), expected, &events("Step", 2)).await;
            }
        }
        read_everything(&store).await
    };
    let store: Store = Arc::new(SqliteEventStore::open(&path).expect("reopen"));
    assert_eq!(read_everything(&store).await, before);
    for s in 0..3 {
        let name = format!("referral-{s}");
        assert_eq!(revisions(&read_whole_stream(&store, &name).await), (0..8).collect::<Vec<u64>>());
        let backwards = store.read_stream(&stream(&name), Direction::Backwards, StreamStart::End, 3).await;
        assert_eq!(revisions(&backwards.expect("read backwards")), vec![7, 6, 5]);
    }
    let err = append_err(&store, "referral-0", exact(6), &events("Stale", 1)).await;
    assert_eq!(err, wrong_expected("referral-0", exact(6), current(7)), "the head survives the reopen");
}

async fn reopen_continues_positions() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("events.db");
    let batch = events("Created", 2);
    let original = {
        let store: Store = Arc::new(SqliteEventStore::open(&path).expect("open"));
        let original = append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
        store.delete_stream(&stream("referral-9"), ExpectedRevision::Any).await.ok();
        original
    };
    let store: Store = Arc::new(SqliteEventStore::open(&path).expect("reopen"));
    let head_after_reopen = head(&store).await.expect("a head after reopening");
    assert!(head_after_reopen >= original.position);

    let replayed = append(&store, "referral-1", ExpectedRevision::NoStream, &batch).await;
    assert_eq!(replayed, original, "an idempotent retry after a restart returns the original result");
    assert_eq!(head(&store).await, Some(head_after_reopen));

    let next = append(&store, "partner-1", ExpectedRevision::NoStream, &events("Created", 2)).await;
    assert!(next.position > head_after_reopen, "positions continue after the last one");
    let all = read_everything(&store).await;
    assert_strictly_increasing(&positions(&all));
    assert_eq!(all.last().map(|e| e.position), Some(next.position));

    let mut subscription =
        subscribe(&store, SubscriptionStart::After(original.position), AllFilter::everything()).await;
    let delivered = next_events(&mut subscription, 2).await;
    assert_eq!(delivered.last().map(|e| e.position), Some(next.position));
    expect_caught_up(&mut subscription).await;
}

// ------------------------------------------------- EventStoreDB restarts --

/// A compatible node that can be stopped and started again on the same
/// address over the same store.
struct RestartableNode {
    inner: Store,
    addr: std::net::SocketAddr,
    running: Option<(tokio::sync::oneshot::Sender<()>, NodeTask)>,
}

impl RestartableNode {
    async fn start(inner: Store, addr: std::net::SocketAddr) -> RestartableNode {
        let mut node = RestartableNode { inner, addr, running: None };
        node.restart().await;
        node
    }

    async fn restart(&mut self) {
        let (addr, stop, task) = spawn_esdb_node(self.inner.clone(), self.addr).await;
        self.addr = addr;
        self.running = Some((stop, task));
    }

    /// Stops the node; it must let go of its subscribers promptly.
    async fn stop(&mut self) {
        let (stop, task) = self.running.take().expect("the node runs");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the node shuts down although a subscription is open")
            .expect("the node task")
            .expect("the node serves");
    }
}

/// Skips CaughtUp markers (a resubscription may send one again).
async fn next_event_skipping_markers(subscription: &mut Box<dyn Subscription>) -> RecordedEvent {
    loop {
        if let SubscriptionMessage::Event(event) = next_message(subscription).await {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esdb_subscription_and_appends_resume_after_the_node_restarts() {
    run(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let inner: Store = Arc::new(SqliteEventStore::open(&dir.path().join("events.db")).expect("open sqlite store"));
        let mut node = RestartableNode::start(inner.clone(), "127.0.0.1:0".parse().unwrap()).await;
        let store: Store =
            Arc::new(EsdbEventStore::connect(&format!("esdb://{}?tls=false", node.addr)).expect("connect"));

        let before = events("Created", 2);
        append(&store, "referral-1", ExpectedRevision::NoStream, &before).await;
        let mut subscription = subscribe(&store, SubscriptionStart::Start, AllFilter::everything()).await;
        assert_eq!(recorded_ids(&next_events(&mut subscription, 2).await), ids(&before));
        expect_caught_up(&mut subscription).await;

        node.stop().await;
        let refused = store.append(&stream("referral-1"), exact(1), events("Updated", 1)).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
        // Written while the node is down (straight to its store): the
        // subscription must pick it up from where it was, not skip it.
        let while_down = event("Updated");
        inner.append(&stream("referral-1"), exact(1), vec![while_down.clone()]).await.expect("append to the store");

        node.restart().await;
        let after = event("Updated");
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            match store.append(&stream("referral-1"), exact(2), vec![after.clone()]).await {
                Ok(result) => {
                    assert_eq!(result.next_expected_revision, StreamRevision(3));
                    break;
                }
                Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("append after the restart: {e}"),
            }
        }
        let resumed = [
            next_event_skipping_markers(&mut subscription).await,
            next_event_skipping_markers(&mut subscription).await,
        ];
        assert_eq!(recorded_ids(&resumed), vec![while_down.id, after.id], "nothing skipped, nothing twice");
        assert_eq!(revisions(&resumed), vec![2, 3]);
        // At most the resubscription's own CaughtUp may still come; no event.
        if let Ok(message) = tokio::time::timeout(QUIET_PERIOD, subscription.next()).await {
            assert_eq!(message, Ok(SubscriptionMessage::CaughtUp));
            expect_quiet(&mut subscription).await;
        }
        assert_eq!(read_whole_stream(&store, "referral-1").await.len(), 4);
        node.stop().await;
    })
    .await;
}

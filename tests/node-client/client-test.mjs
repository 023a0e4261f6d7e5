// Drives the official Node.js EventStoreDB client (@eventstore/db-client)
// against an EventStoreDB-compatible node and checks every answer.
//
//   node client-test.mjs <connection string> [order stream name]
//   node client-test.mjs 'esdb://127.0.0.1:2113?tls=false'
//
// Prints one line per check; exits non-zero on the first failure.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import {
  EventStoreDBClient,
  jsonEvent,
  streamNameFilter,
  NO_STREAM,
  START,
  END,
  FORWARDS,
  BACKWARDS,
  WrongExpectedVersionError,
  StreamNotFoundError,
  StreamDeletedError,
} from "@eventstore/db-client";

const connectionString = process.argv[2];
if (!connectionString) {
  console.error("usage: node client-test.mjs <connection string> [order stream name]");
  process.exit(2);
}
const suffix = randomUUID().replaceAll("-", "");
const stream = process.argv[3] ?? `order-${suffix}`;
const other = `other-${suffix}`;

let checks = 0;
const ok = (what) => console.log(`ok ${String(++checks).padStart(2)} - ${what}`);

/** Collects what a read gives (a stream of ResolvedEvents). */
const collect = async (read) => {
  const events = [];
  for await (const resolved of read) events.push(resolved.event);
  return events;
};

/** Runs `action`, expecting it to fail with an error of class `type`. */
const rejects = async (action, type) => {
  try {
    await action();
  } catch (error) {
    assert.ok(error instanceof type, `expected ${type.name}, got ${error?.constructor?.name}: ${error?.message}`);
    return error;
  }
  assert.fail(`expected ${type.name}, but it succeeded`);
};

/** Rejects if `promise` does not settle within `ms`. */
const within = (ms, what, promise) =>
  Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms).unref()),
  ]);

/**
 * Listens to `subscription` (without iterating it, which would end it on the
 * first `break`); `until(n)` waits for the n-th event and gives all so far.
 */
const listen = (subscription) => {
  const received = [];
  let failure;
  let wake = () => {};
  subscription.on("data", (resolved) => (received.push(resolved.event), wake()));
  subscription.on("error", (error) => ((failure = error), wake()));
  const until = (n, what) =>
    within(10_000, what, new Promise((resolve, reject) => {
      const check = () =>
        failure ? reject(failure) : received.length >= n ? resolve(received.slice(0, n)) : (wake = check);
      check();
    }));
  return until;
};

const client = EventStoreDBClient.connectionString(connectionString);
console.log(`connecting to ${connectionString}; stream ${stream}`);

try {
  // -- append ---------------------------------------------------------------
  const proposed = [
    jsonEvent({ id: randomUUID(), type: "OrderPlaced", data: { orderId: suffix, total: 42 } }),
    jsonEvent({ id: randomUUID(), type: "ItemAdded", data: { sku: "A-1", quantity: 2 } }),
    jsonEvent({ id: randomUUID(), type: "OrderConfirmed", data: { by: "node-client" }, metadata: { source: "test" } }),
  ];
  const appended = await client.appendToStream(stream, proposed, { expectedRevision: NO_STREAM });
  assert.equal(appended.success, true);
  assert.equal(appended.nextExpectedRevision, 2n);
  assert.ok(appended.position, "the append returns a position");
  assert.equal(typeof appended.position.commit, "bigint");
  ok(`append 3 events with NO_STREAM: nextExpectedRevision 2, position ${appended.position.commit}`);

  // -- read the stream --------------------------------------------------------
  const forwards = await collect(client.readStream(stream, { direction: FORWARDS, fromRevision: START }));
  assert.equal(forwards.length, 3);
  forwards.forEach((e, i) => {
    assert.equal(e.streamId, stream);
    assert.equal(e.revision, BigInt(i));
    assert.equal(e.id, proposed[i].id);
    assert.equal(e.type, proposed[i].type);
    assert.equal(e.isJson, true);
    assert.deepEqual(e.data, proposed[i].data);
    assert.ok(e.created instanceof Date);
    const age = Date.now() - e.created.getTime();
    assert.ok(age >= -5_000 && age <= 5 * 60_000, `created ${e.created.toISOString()} is recent`);
  });
  assert.deepEqual(forwards[2].metadata, { source: "test" });
  ok(`read forwards: revisions 0,1,2 with their ids, types, data, metadata; created ${forwards[0].created.toISOString()}`);

  const last = await collect(client.readStream(stream, { direction: BACKWARDS, fromRevision: END, maxCount: 1 }));
  assert.equal(last.length, 1);
  assert.equal(last[0].revision, 2n);
  assert.equal(last[0].type, "OrderConfirmed");
  ok("read backwards from END, maxCount 1: revision 2");

  // -- optimistic concurrency -------------------------------------------------
  const stale = jsonEvent({ type: "ItemAdded", data: { sku: "B-2", quantity: 1 } });
  const wrong = await rejects(() => client.appendToStream(stream, stale, { expectedRevision: 0n }), WrongExpectedVersionError);
  assert.equal(wrong.streamName, stream);
  assert.equal(wrong.expectedVersion, 0n);
  assert.equal(wrong.actualVersion, 2n);
  ok(`stale expectedRevision 0n: WrongExpectedVersionError (expected ${wrong.expectedVersion}, actual ${wrong.actualVersion})`);

  // Call credentials make the client use the unary Append RPC instead of
  // BatchAppend; the insecure node ignores them.
  const unary = { expectedRevision: 1n, credentials: { username: "admin", password: "changeit" } };
  const wrongUnary = await rejects(() => client.appendToStream(stream, stale, unary), WrongExpectedVersionError);
  assert.equal(wrongUnary.expectedVersion, 1n);
  assert.equal(wrongUnary.actualVersion, 2n);
  ok(`same through the unary Append RPC: WrongExpectedVersionError (expected 1, actual ${wrongUnary.actualVersion})`);

  // -- idempotent retry -------------------------------------------------------
  const retried = await client.appendToStream(stream, proposed, { expectedRevision: NO_STREAM });
  assert.equal(retried.nextExpectedRevision, 2n);
  const afterRetry = await collect(client.readStream(stream));
  assert.deepEqual(afterRetry.map((e) => e.id), proposed.map((e) => e.id));
  ok("re-append of the same 3 ids with NO_STREAM is idempotent: nextExpectedRevision 2, still 3 events");

  // -- $all ------------------------------------------------------------------
  const all = await collect(client.readAll({ direction: FORWARDS, fromPosition: START, maxCount: 100_000 }));
  const ours = all.filter((e) => e.streamId === stream);
  assert.deepEqual(ours.map((e) => e.id), proposed.map((e) => e.id));
  assert.deepEqual(ours.map((e) => e.revision), [0n, 1n, 2n]);
  for (let i = 1; i < all.length; i++) {
    assert.ok(all[i].position.commit > all[i - 1].position.commit, "commit positions increase in $all");
  }
  ok(`readAll forwards: ${all.length} events, ours in order, commit positions increasing`);

  // -- subscriptions ------------------------------------------------------------
  const streamSubscription = client.subscribeToStream(stream, { fromRevision: START });
  const caughtUp = new Promise((resolve) => streamSubscription.once("caughtUp", resolve));
  const fromStream = listen(streamSubscription);
  const firstThree = await fromStream(3, "stream subscription catch-up");
  assert.deepEqual(firstThree.map((e) => e.revision), [0n, 1n, 2n]);
  assert.deepEqual(firstThree.map((e) => e.id), proposed.map((e) => e.id));
  await within(10_000, "caughtUp on the stream subscription", caughtUp);
  const live = jsonEvent({ id: randomUUID(), type: "OrderShipped", data: { carrier: "post" } });
  await client.appendToStream(stream, live, { expectedRevision: 2n });
  const liveEvent = (await fromStream(4, "live event on the stream subscription"))[3];
  assert.equal(liveEvent.id, live.id);
  assert.equal(liveEvent.revision, 3n);
  assert.equal(liveEvent.type, "OrderShipped");
  await streamSubscription.unsubscribe();
  ok("subscribeToStream from START: revisions 0,1,2, caughtUp, then live revision 3; unsubscribed");

  await client.appendToStream(other, jsonEvent({ type: "Noise", data: { n: 1 } }), { expectedRevision: NO_STREAM });
  const allSubscription = client.subscribeToAll({ fromPosition: START, filter: streamNameFilter({ prefixes: [stream] }) });
  const fromAll = listen(allSubscription);
  await fromAll(4, "filtered $all subscription catch-up");
  await client.appendToStream(other, jsonEvent({ type: "Noise", data: { n: 2 } }));
  const marker = jsonEvent({ id: randomUUID(), type: "OrderDelivered", data: { at: "door" } });
  await client.appendToStream(stream, marker, { expectedRevision: 3n });
  const filtered = await fromAll(5, "live event on the filtered $all subscription");
  assert.ok(filtered.every((e) => e.streamId === stream), "only the filtered stream's events arrive");
  assert.deepEqual(filtered.map((e) => e.revision), [0n, 1n, 2n, 3n, 4n]);
  assert.equal(filtered[4].id, marker.id);
  await allSubscription.unsubscribe();
  ok(`subscribeToAll with streamNameFilter prefix: ${filtered.length} events of ${stream} only (none of ${other}); unsubscribed`);

  // -- missing, deleted and tombstoned streams ----------------------------------
  const missing = `missing-${suffix}`;
  const notFound = await rejects(() => collect(client.readStream(missing)), StreamNotFoundError);
  assert.equal(notFound.streamName, missing);
  ok("reading a missing stream: StreamNotFoundError");

  const doomed = `deleted-${suffix}`;
  await client.appendToStream(doomed, jsonEvent({ type: "Temporary", data: {} }), { expectedRevision: NO_STREAM });
  const deleted = await client.deleteStream(doomed, { expectedRevision: 0n });
  assert.ok(deleted.position, "deleteStream returns a position");
  await rejects(() => collect(client.readStream(doomed)), StreamNotFoundError);
  ok("deleteStream, then reading it: StreamNotFoundError");

  const buried = `tombstoned-${suffix}`;
  await client.appendToStream(buried, jsonEvent({ type: "Temporary", data: {} }), { expectedRevision: NO_STREAM });
  await client.tombstoneStream(buried);
  const gone = await rejects(() => client.appendToStream(buried, jsonEvent({ type: "Late", data: {} })), StreamDeletedError);
  assert.equal(gone.streamName, buried);
  await rejects(() => collect(client.readStream(buried)), StreamDeletedError);
  ok("tombstoneStream, then appending (and reading): StreamDeletedError");
} catch (error) {
  console.error(`FAILED after ${checks} checks:`, error);
  process.exitCode = 1;
} finally {
  await client.dispose();
}
console.log(process.exitCode ? "client test FAILED" : `client test passed: ${checks} checks`);

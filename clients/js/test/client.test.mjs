// The client in headless Chromium against a real exchange, the page on another origin (so
// every call is a CORS request): see harness.mjs.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { AUTH, P256DH, call, env, send, sleep, start, stop, token, until } from "./harness.mjs";

before(start);
after(stop);

/** A page of the test origin with the client loaded, and `window.client` made for `uid`. */
async function page(uid, transport = "websocket") {
  const context = await env.browser.newContext();
  const p = await context.newPage();
  p.on("pageerror", (e) => console.error("page error:", e));
  await p.goto(env.origin + "/clients/js/test/fixtures/page.html");
  await p.waitForFunction(() => window.ready === true);
  await p.evaluate(
    ({ baseUrl, tok, transport }) => {
      window.client = new window.msgxc.MsgxcClient({ baseUrl, token: () => tok, transport, backoffMs: 100 });
      window.got = [];
      window.changes = [];
      window.states = [];
      window.client.on("notification", (n) => window.got.push(n));
      window.client.on("change", (c) => window.changes.push(c));
      window.client.on("state", (s) => window.states.push(s));
    },
    { baseUrl: env.base, tok: token(uid), transport },
  );
  return { p, context };
}

test("inbox calls: list, read, archive, read-all, delete, preferences, ack, errors", async () => {
  const { p, context } = await page("ivy");
  const mids = [await send("ivy", "one"), await send("ivy", "two"), await send("ivy", "three")];
  await until("three entries", () => p.evaluate(async () => (await window.client.list()).count === 3));
  const r = await p.evaluate(async (mids) => {
    const c = window.client;
    const page = await c.list({ limit: 2 });
    const read = await c.read([mids[0]]);
    const archived = await c.archive(mids[1]);
    const unreadAfterAll = await c.readAll();
    await c.remove(mids[2]);
    const all = await c.list({ status: "all" });
    await c.setPreferences({ types: {}, channels: { sms: false } });
    const prefs = await c.preferences();
    await c.ack(mids[0], "opened");
    const stats = await c.stats();
    let error = null;
    try {
      await c.read([]);
    } catch (e) {
      error = { name: e.name, status: e.status, code: e.code, field: e.field };
    }
    return { page, read, archived, unreadAfterAll, all, prefs, stats, error };
  }, mids);
  assert.equal(r.page.count, 3);
  assert.deepEqual(r.page.results.map((n) => n.msg), ["three", "two"]);
  assert.equal(typeof r.page.cursor, "string");
  assert.deepEqual(r.read, [mids[0]]);
  assert.equal(r.archived.status, "archived");
  assert.equal(r.unreadAfterAll, 0);
  assert.deepEqual(r.all.results.map((n) => n.msg).sort(), ["one", "two"]);
  assert.equal(r.prefs.channels.sms, false);
  assert.equal(r.stats.unread, 0);
  assert.deepEqual(r.error, { name: "MsgxcError", status: 400, code: "invalid_field", field: "ids" });
  await context.close();
});

for (const transport of ["websocket", "sse"]) {
  test(`live over ${transport}: new entries once each, across a dropped connection`, async () => {
    const uid = `live-${transport}`;
    const { p, context } = await page(uid, transport);
    await send(uid, "before"); // in the inbox before connecting: not a live notification
    await until("the first entry", () => p.evaluate(async () => (await window.client.list()).count === 1));
    await p.evaluate(() => window.client.connect());
    await until("open", () => p.evaluate(() => window.client.state === "open"));
    await send(uid, "live 1");
    await until("live 1", () => p.evaluate(() => window.got.length === 1));
    // Drop the connection as a network would; send while it is down.
    await p.evaluate((transport) => {
      const c = window.client;
      if (transport === "websocket") c.ws.close();
      else {
        // An EventSource that ends for good: the client opens a new one with last_event_id.
        c.es.close();
        c.es.onerror = null;
        c.retry();
      }
    }, transport);
    const down = [await send(uid, "missed 1"), await send(uid, "missed 2")];
    await until("the missed entries", () => p.evaluate(() => window.got.length === 3));
    await send(uid, "live 2");
    await until("live 2", () => p.evaluate(() => window.got.length === 4));
    // A read on another device arrives as a change.
    const r = await call("PATCH", "/notifications", token(uid), { ids: [down[0]] });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    await until("the read change", () => p.evaluate(() => window.changes.length >= 1));
    await sleep(300); // nothing repeated after it
    const { got, changes, states } = await p.evaluate(() => ({
      got: window.got,
      changes: window.changes,
      states: window.states,
    }));
    assert.deepEqual(got.map((n) => n.msg), ["live 1", "missed 1", "missed 2", "live 2"]);
    assert.equal(new Set(got.map((n) => n.id)).size, 4, "no entry twice");
    assert.deepEqual(changes.map((c) => [c.action, c.notification.id]), [["read", down[0]]]);
    assert.ok(states.filter((s) => s === "open").length >= 2, `reconnected: ${states}`);
    await p.evaluate(() => window.client.close());
    assert.equal(await p.evaluate(() => window.client.state), "closed");
    await context.close();
  });
}

test("Web Push: the VAPID key, the service worker, then the push service; enlisting a subscription", async () => {
  const { p, context } = await page("wendy");
  await context.grantPermissions(["notifications"], { origin: env.origin });
  const r = await p.evaluate(async () => {
    let error = null;
    try {
      await window.msgxc.enableWebPush(window.client, { serviceWorker: "sw.js" });
    } catch (e) {
      error = { name: e.name, stage: e.stage, message: String(e.message) };
    }
    const registrations = await navigator.serviceWorker.getRegistrations();
    return { error, workers: registrations.map((w) => (w.active ?? w.waiting ?? w.installing)?.scriptURL) };
  });
  // Headless Chromium here has no browser push service, so the subscription itself fails after
  // the key was fetched, the worker registered and permission granted.
  assert.equal(r.error?.name, "WebPushError", JSON.stringify(r.error));
  assert.equal(r.error.stage, "subscribe", JSON.stringify(r.error));
  assert.deepEqual(r.workers, [env.origin + "/clients/js/test/fixtures/sw.js"]);
  // What the helper enlists once a subscription exists (the shape PushSubscription.toJSON gives).
  const endpoint = env.base + "/push/1";
  const device = await p.evaluate(
    ({ endpoint, p256dh, auth }) =>
      window.msgxc.enlistWebPush(window.client, { endpoint, expirationTime: null, keys: { p256dh, auth } }),
    { endpoint, p256dh: P256DH, auth: AUTH },
  );
  const devices = await call("GET", "/devices", token("wendy"));
  assert.deepEqual(devices.body.results.map((d) => d.id), [device.id]);
  // The key the helper fetched is the exchange's.
  const key = await p.evaluate(() => window.client.request("GET", "/webpush/vapid-public-key"));
  assert.match(key.publicKey, /^[A-Za-z0-9_-]{80,}$/);
  const bytes = await p.evaluate((k) => Array.from(window.msgxc.urlBase64ToUint8Array(k)).length, key.publicKey);
  assert.equal(bytes, 65, "an uncompressed P-256 point");
  await context.close();
});

test("CORS: the listed origin may call the API, another origin may not", async () => {
  // The same page server under another name is another origin (not in MSGXC_CORS_ORIGINS).
  const other = env.origin.replace("127.0.0.1", "localhost");
  const context = await env.browser.newContext();
  const p = await context.newPage();
  await p.goto(other + "/clients/js/test/fixtures/page.html");
  await p.waitForFunction(() => window.ready === true);
  const refused = await p.evaluate(async ({ baseUrl, tok }) => {
    const c = new window.msgxc.MsgxcClient({ baseUrl, token: tok });
    try {
      await c.list();
      return "answered";
    } catch (e) {
      return e.name;
    }
  }, { baseUrl: env.base, tok: token("olive") });
  assert.equal(refused, "TypeError", "the browser refuses the answer to an unlisted origin");
  const q = await context.newPage();
  await q.goto(env.origin + "/clients/js/test/fixtures/page.html");
  await q.waitForFunction(() => window.ready === true);
  const listed = await q.evaluate(async ({ baseUrl, tok }) => {
    const c = new window.msgxc.MsgxcClient({ baseUrl, token: tok });
    // A PATCH with a JSON body needs a preflight; the exchange answers it for this origin.
    const read = await c.read(["00000000-0000-7000-8000-000000000000"]).catch((e) => e.code);
    return { page: (await c.list()).count, read };
  }, { baseUrl: env.base, tok: token("olive") });
  assert.deepEqual(listed, { page: 0, read: [] }, "nothing of an unknown id is read");
  await context.close();
});

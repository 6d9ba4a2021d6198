// The client in headless Chromium (Debian's, driven by playwright-core) against a real
// exchange: `msgxc serve` with its own nats-server, the page on another origin (CORS).
// MSGXC_BIN names the msgxc binary (default: the workspace's debug build); CHROMIUM the browser.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const bin = process.env.MSGXC_BIN ?? path.resolve(root, "../../target/debug/msgxc");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SECRET = "js-client-test-secret-0123456789abcdef";
// RFC 8291's example subscription keys: a valid P-256 point and auth secret.
const P256DH = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH = "BTBZMqHH6r4Tts7J_aSIgg";

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 token as the exchange's `msgxc token` makes them. */
function token(sub, admin = false) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub, exp: now + 600, iat: now };
  if (admin) claims.roles = ["admin"];
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, f, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

let exchange, dataDir, api, pageServer, pageOrigin, browser;

/** A call to the exchange from the test itself (an admin sending, say). */
async function call(method, p, tok, body) {
  const resp = await fetch(api + p, {
    method,
    headers: { Authorization: `Bearer ${tok}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}

async function send(uid, msg) {
  const r = await call("POST", "/send", token("admin", true), { uid, msg });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body.mid;
}

before(async () => {
  assert.ok(fs.existsSync(bin), `no msgxc binary at ${bin} (cargo build, or set MSGXC_BIN)`);
  assert.ok(fs.existsSync(browserPath), `no Chromium at ${browserPath} (apt-get install chromium, or set CHROMIUM)`);
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "msgxc-js-"));
  // The page's own origin: the built client, a page and a service worker.
  const files = { "/": "test/fixtures/page.html", "/sw.js": "test/fixtures/sw.js" };
  pageServer = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const file = files[url.pathname] ?? (url.pathname.startsWith("/dist/") ? url.pathname.slice(1) : null);
    const full = file && path.resolve(root, file);
    if (!full || !full.startsWith(root) || !fs.existsSync(full)) {
      res.writeHead(404).end();
      return;
    }
    const type = full.endsWith(".html") ? "text/html" : "text/javascript";
    res.writeHead(200, { "Content-Type": type }).end(fs.readFileSync(full));
  });
  await new Promise((r) => pageServer.listen(0, "127.0.0.1", r));
  pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;

  const port = await freePort();
  const env = {
    ...process.env,
    MSGXC_DATA_DIR: dataDir,
    MSGXC_JWT_SECRET: SECRET,
    MSGXC_CORS_ORIGINS: pageOrigin,
    MSGXC_WEBPUSH_SUBJECT: "mailto:test@example.com",
    MSGXC_WEBPUSH_ALLOWED_HOSTS: "127.0.0.1",
    MSGXC_LOG: "warn",
  };
  execFileSync(bin, ["vapid"], { env, stdio: "ignore" });
  exchange = spawn(bin, ["serve", "--listen", `127.0.0.1:${port}`], { env, stdio: ["ignore", "ignore", "inherit"] });
  api = `http://127.0.0.1:${port}/api/v1`;
  await until("msgxc serve", async () => {
    try {
      return (await fetch(api + "/ping")).ok;
    } catch {
      return false;
    }
  }, 60_000);
  browser = await chromium.launch({ executablePath: browserPath, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  if (exchange && exchange.exitCode === null) {
    const exited = new Promise((r) => exchange.once("exit", r));
    exchange.kill("SIGTERM");
    await Promise.race([exited, sleep(10_000)]);
    if (exchange.exitCode === null) exchange.kill("SIGKILL");
  }
  pageServer?.close();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

/** A page of the test origin with the client loaded, and `window.client` made for `uid`. */
async function page(uid, transport = "websocket") {
  const context = await browser.newContext();
  const p = await context.newPage();
  p.on("pageerror", (e) => console.error("page error:", e));
  await p.goto(pageOrigin + "/");
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
    { baseUrl: api.replace(/\/api\/v1$/, ""), tok: token(uid), transport },
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
  await context.grantPermissions(["notifications"], { origin: pageOrigin });
  const r = await p.evaluate(async () => {
    let error = null;
    try {
      await window.msgxc.enableWebPush(window.client, { serviceWorker: "/sw.js" });
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
  assert.deepEqual(r.workers, [pageOrigin + "/sw.js"]);
  // What the helper enlists once a subscription exists (the shape PushSubscription.toJSON gives).
  const endpoint = api.replace(/\/api\/v1$/, "") + "/push/1";
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

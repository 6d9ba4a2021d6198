// The test harness of the browser tests (the JavaScript client, the web example and the
// gateway's admin console): a real exchange
// (`msgxc serve` with its own nats-server; MSGXC_BIN names the binary, default the workspace's
// debug build), a static server for the page's own origin (the built client, the test
// fixtures and examples/web), and Debian's Chromium driven by playwright-core (CHROMIUM names
// the browser).

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
/** The repository root. */
const repo = path.resolve(here, "../../..");
const bin = process.env.MSGXC_BIN ?? path.resolve(repo, "target/debug/msgxc");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SECRET = "js-client-test-secret-0123456789abcdef";
// RFC 8291's example subscription keys: a valid P-256 point and auth secret.
export const P256DH = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
export const AUTH = "BTBZMqHH6r4Tts7J_aSIgg";

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 token as the exchange's `msgxc token` makes them. */
export function token(sub, admin = false) {
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

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function until(what, f, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** What `start` set up: `api` (the exchange's `/api/v1` URL), `origin` (the pages' origin), `browser`. */
export const env = {};
let exchange, dataDir, pageServer;

/** A call to the exchange from the test itself (an admin sending, say). */
export async function call(method, p, tok, body) {
  const resp = await fetch(env.api + p, {
    method,
    headers: { Authorization: `Bearer ${tok}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}

export async function send(uid, msg) {
  const r = await call("POST", "/send", token("admin", true), { uid, msg });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body.mid;
}

/** Starts the exchange (with `extra` environment variables), the page server and the browser. */
export async function start(extra = {}) {
  assert.ok(fs.existsSync(bin), `no msgxc binary at ${bin} (cargo build, or set MSGXC_BIN)`);
  assert.ok(fs.existsSync(browserPath), `no Chromium at ${browserPath} (apt-get install chromium, or set CHROMIUM)`);
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "msgxc-js-"));
  // The pages' own origin: the repository's files under these folders only.
  const served = ["clients/js/dist/", "clients/js/test/fixtures/", "examples/web/"];
  pageServer = http.createServer((req, res) => {
    let rel = decodeURIComponent(new URL(req.url, "http://x").pathname).slice(1);
    if (rel.endsWith("/")) rel += "index.html";
    const full = path.resolve(repo, rel);
    const allowed = served.some((d) => full.startsWith(path.join(repo, d)));
    if (!allowed || !fs.existsSync(full) || !fs.statSync(full).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const type = full.endsWith(".html") ? "text/html" : "text/javascript";
    res.writeHead(200, { "Content-Type": type }).end(fs.readFileSync(full));
  });
  await new Promise((r) => pageServer.listen(0, "127.0.0.1", r));
  env.origin = `http://127.0.0.1:${pageServer.address().port}`;

  const port = await freePort();
  const vars = {
    ...process.env,
    MSGXC_DATA_DIR: dataDir,
    MSGXC_JWT_SECRET: SECRET,
    MSGXC_CORS_ORIGINS: env.origin,
    MSGXC_WEBPUSH_SUBJECT: "mailto:test@example.com",
    MSGXC_WEBPUSH_ALLOWED_HOSTS: "127.0.0.1",
    MSGXC_LOG: "warn",
    ...extra,
  };
  execFileSync(bin, ["vapid"], { env: vars, stdio: "ignore" });
  exchange = spawn(bin, ["serve", "--listen", `127.0.0.1:${port}`], {
    env: vars,
    stdio: ["ignore", "ignore", "inherit"],
  });
  env.api = `http://127.0.0.1:${port}/api/v1`;
  env.base = `http://127.0.0.1:${port}`;
  await until("msgxc serve", async () => {
    try {
      return (await fetch(env.api + "/ping")).ok;
    } catch {
      return false;
    }
  }, 60_000);
  env.browser = await chromium.launch({ executablePath: browserPath, args: ["--no-sandbox"] });
}

/** Stops what `start` started and removes its files. */
export async function stop() {
  await env.browser?.close();
  if (exchange && exchange.exitCode === null) {
    const exited = new Promise((r) => exchange.once("exit", r));
    exchange.kill("SIGTERM");
    await Promise.race([exited, sleep(10_000)]);
    if (exchange.exitCode === null) exchange.kill("SIGKILL");
  }
  pageServer?.close();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
}


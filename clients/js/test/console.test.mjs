// The gateway's admin console (`/console`, embedded in the binary) in headless Chromium: sign
// in with an admin token, broadcast, watch the message's funnel move as a recipient
// acknowledges it, and requeue a dead letter (an SMS provider that answers 503, one attempt).
// See harness.mjs.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { call, env, start, stop, token, until } from "./harness.mjs";

/** A Twilio-shaped SMS API that refuses every message (503) and counts them. */
const sms = { requests: 0 };
let smsServer;

before(async () => {
  smsServer = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      sms.requests += 1;
      res.writeHead(503, { "Content-Type": "application/json" }).end('{"message":"try later"}');
    });
  });
  await new Promise((r) => smsServer.listen(0, "127.0.0.1", r));
  await start({
    MSGXC_SMS_ACCOUNT_SID: "AC00000000000000000000000000000000",
    MSGXC_SMS_AUTH_TOKEN: "console-test",
    MSGXC_SMS_FROM: "+15005550006",
    MSGXC_SMS_BASE_URL: `http://127.0.0.1:${smsServer.address().port}`,
    MSGXC_DISPATCH_MAX_ATTEMPTS: "1",
  });
});
after(async () => {
  await stop();
  smsServer?.close();
});

test("console: sign in, broadcast, the funnel moves, a dead letter is requeued", async () => {
  const cora = token("cora");
  const r = await call("POST", "/enlist", cora, { os: "sms", phone: "+14155550100" });
  assert.equal(r.status, 201, JSON.stringify(r.body));

  const context = await env.browser.newContext();
  const p = await context.newPage();
  p.on("pageerror", (e) => console.error("page error:", e));
  await p.goto(`${env.base}/console`);
  await p.fill("#token", token("root", true));
  await p.click("#signin button");
  await p.waitForSelector("#main:not([hidden])");
  assert.equal(await p.textContent("#who"), "signed in as root");
  // A user's token is refused.
  const p2 = await context.newPage();
  await p2.goto(`${env.base}/console`);
  await p2.fill("#token", cora);
  await p2.click("#signin button");
  await p2.waitForFunction(() => document.getElementById("signin-error").textContent !== "");
  assert.match(await p2.textContent("#signin-error"), /admin/);
  await p2.close();

  // Devices per channel: cora's SMS device.
  await p.waitForFunction(() => document.querySelectorAll("#devices tr").length >= 3);
  const devices = await p.$$eval("#devices tr", (trs) => trs.slice(1).map((tr) => [...tr.cells].map((c) => c.textContent)));
  assert.deepEqual(devices, [["sms", "1"], ["all", "1"]]);
  // The exchange's channels come from /ping; SMS is on.
  await p.waitForSelector('input[name="channel"][value="sms"]');
  // Broadcast, high urgency, SMS only.
  await p.selectOption("#kind", "broadcast");
  await p.fill("#msg", "console broadcast");
  await p.fill("#title", "Hello");
  await p.selectOption("#urgency", "high");
  await p.check('input[name="channel"][value="sms"]');
  await p.click("#compose button");
  await p.waitForFunction(() => document.getElementById("mid").textContent.length === 36);
  const mid = await p.textContent("#mid");
  const step = (s) => p.textContent(`.step-${s}`);
  await p.waitForFunction(() => Number(document.querySelector(".step-sent")?.textContent) >= 1);
  assert.equal(await step("delivered"), "0");

  // Cora acknowledges it: the funnel's delivered step moves without a reload.
  const ack = await call("POST", "/ack", cora, { mid, status: "delivered" });
  assert.equal(ack.status, 202, JSON.stringify(ack.body));
  await p.waitForFunction(() => document.querySelector(".step-delivered")?.textContent === "1", null, { timeout: 15_000 });

  // The SMS provider refused it (one attempt): a dead letter, requeued from the console.
  await p.waitForSelector("#dead button.requeue", { timeout: 20_000 });
  const before = sms.requests;
  assert.ok(before >= 1);
  const row = await p.$$eval("#dead tr", (trs) => trs.slice(1).map((tr) => [...tr.cells].slice(0, 3).map((c) => c.textContent)));
  assert.deepEqual(row[0], [mid, "cora", "sms"]);
  await p.click("#dead button.requeue");
  await until("the requeued SMS", () => sms.requests > before, 20_000);
  // The receipts table lists the SMS device's receipt (beside the app's acknowledgement).
  await p.waitForFunction(() => document.querySelectorAll("#receipts tr").length >= 2);
  const receipts = await p.$$eval("#receipts tr", (trs) => trs.slice(1).map((tr) => [...tr.cells].map((c) => c.textContent)));
  const smsReceipt = receipts.find((r) => r[2] === "sms");
  assert.ok(smsReceipt, JSON.stringify(receipts));
  assert.equal(smsReceipt[0], "cora");
  await p.screenshot({ path: new URL("../test-results/console.png", import.meta.url).pathname, fullPage: true });
  await context.close();
});

test("API reference: /api/v1/docs renders the OpenAPI document under the page's CSP", async () => {
  const context = await env.browser.newContext();
  const p = await context.newPage();
  const errors = [];
  p.on("pageerror", (e) => errors.push(String(e)));
  p.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await p.goto(`${env.base}/api/v1/docs`);
  await p.waitForSelector("body[data-ready=true]");
  assert.deepEqual(errors, []);
  const ops = await p.$$eval("details > summary", (ss) => ss.map((s) => s.textContent));
  assert.ok(ops.some((t) => t.startsWith("POST/api/v1/broadcast")), ops.slice(0, 5).join("|"));
  assert.ok(ops.some((t) => t.startsWith("GET/api/v1/notifications")));
  // An operation's body schema links to its component.
  await p.click("#postPublish > summary");
  const link = await p.getAttribute("#postPublish pre a", "href");
  assert.match(link, /^#schema-/);
  assert.ok(await p.$(link), `no ${link} section`);
  await p.screenshot({ path: new URL("../test-results/api-docs.png", import.meta.url).pathname, fullPage: false });
  await context.close();
});

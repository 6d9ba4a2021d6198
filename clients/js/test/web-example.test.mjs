// examples/web in headless Chromium against a real exchange: two tabs of one user sign in,
// both show a new message and the unread badge, a read in one tab reaches the other, and
// "mark all read" clears both badges. See harness.mjs.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { call, env, send, start, stop, token, until } from "./harness.mjs";

before(start);
after(stop);

/** A tab of the example signed in as `uid` (the token and server in its URL). */
async function tab(context, uid) {
  const p = await context.newPage();
  p.on("pageerror", (e) => console.error("page error:", e));
  const q = new URLSearchParams({ server: env.base, token: token(uid) });
  await p.goto(`${env.origin}/examples/web/?${q}`);
  await p.waitForFunction(() => document.getElementById("state").textContent === "open");
  return p;
}

const badge = (p) => p.textContent("#badge");
const items = (p) => p.$$eval("#inbox li", (lis) => lis.map((li) => [li.querySelector(".msg").textContent, li.className]));

test("two tabs: live entries, a read in one reaching the other, read-all", async () => {
  await send("tess", "waiting before sign-in");
  await until("the first entry", async () => (await call("GET", "/notifications", token("tess"))).body.count === 1);
  const context = await env.browser.newContext();
  const [a, b] = [await tab(context, "tess"), await tab(context, "tess")];
  for (const p of [a, b]) {
    assert.equal(await badge(p), "1");
    assert.deepEqual(await items(p), [["waiting before sign-in", "unread"]]);
  }
  await send("tess", "hello from the exchange");
  for (const p of [a, b]) {
    await p.waitForFunction(() => document.getElementById("badge").textContent === "2");
  }
  assert.deepEqual((await items(b))[0], ["hello from the exchange", "unread"]);

  // Read in tab A: tab B follows (a read frame from the exchange), without reloading.
  await a.click('#inbox li:has-text("hello from the exchange") button.read');
  await b.waitForFunction(() => document.getElementById("badge").textContent === "1");
  assert.deepEqual(await items(b), [
    ["hello from the exchange", "read"],
    ["waiting before sign-in", "unread"],
  ]);
  await a.waitForFunction(() => document.getElementById("badge").textContent === "1");

  // Mark all read in tab B: both badges go to 0.
  await b.click("#read-all");
  for (const p of [a, b]) {
    await p.waitForFunction(() => document.getElementById("badge").dataset.count === "0");
  }
  assert.ok((await items(a)).every(([, status]) => status === "read"));
  // The badge is in the title too.
  assert.equal(await a.title(), "msgxc inbox");

  // Enabling push gets as far as the browser's push service (none in headless Chromium here).
  await context.grantPermissions(["notifications"], { origin: env.origin });
  await a.click("#push");
  await a.waitForFunction(() => document.getElementById("push-state").textContent !== "");
  const pushState = await a.textContent("#push-state");
  assert.match(pushState, /^push not enabled: subscribe: /, pushState);
  // A screenshot as a test artifact (test-results/ is not committed).
  await a.screenshot({ path: new URL("../test-results/web-example.png", import.meta.url).pathname });
  await context.close();
});

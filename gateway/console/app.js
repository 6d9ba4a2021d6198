// The admin console: sign in with an admin token, compose any kind of send, follow a
// message's funnel and receipts live, requeue dead letters, see the exchange's channels,
// devices per channel, queues and open sockets, and register notification types. Plain
// modules over the API.

const API = "/api/v1";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("msgxc-console") ?? "";
let current = null; // the message shown
let timer = null;

async function api(method, path, body) {
  const resp = await fetch(API + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await resp.text();
  const value = text ? JSON.parse(text) : null;
  if (!resp.ok) throw new Error(value?.error?.message ?? `${resp.status} ${resp.statusText}`);
  return value;
}

function rows(table, head, data) {
  const el = $(table);
  el.replaceChildren();
  const tr = el.insertRow();
  for (const h of head) {
    const th = document.createElement("th");
    th.textContent = h;
    tr.append(th);
  }
  for (const r of data) {
    const row = el.insertRow();
    for (const cell of r) {
      const td = row.insertCell();
      if (cell instanceof Node) td.append(cell);
      else td.textContent = cell ?? "";
    }
  }
}

async function signIn() {
  // The dead letters are admins' only: a token that reads them is an admin's.
  await api("GET", "/deliveries/failed?limit=1");
  sessionStorage.setItem("msgxc-console", token);
  const sub = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")))?.sub;
  $("who").textContent = `signed in as ${sub}`;
  $("signin").hidden = true;
  $("main").hidden = false;
  await Promise.all([exchange(), types(), dead()]);
  clearInterval(timer);
  timer = setInterval(() => {
    void refresh().catch(() => {});
  }, 1000);
}

async function refresh() {
  await Promise.all([dead(), current ? message(current) : null, exchange()]);
}

async function exchange() {
  const ping = await api("GET", "/ping");
  const metrics = await (await fetch("/metrics")).text();
  // `name{lane="high"} 3` or `name 3`: [label value, value] per line of the metric.
  const gauge = (name) =>
    metrics
      .split("\n")
      .filter((l) => l.startsWith(name + " ") || l.startsWith(name + "{"))
      .map((l) => [/lane="([^"]*)"/.exec(l)?.[1] ?? "", l.split(" ").pop()]);
  const channels = ping.channels ?? [];
  const devices = await api("GET", "/devices/channels");
  rows(
    "devices",
    ["channel", "devices"],
    [...Object.entries(devices.channels), ["all", devices.total]].map(([c, n]) => [c, String(n)]),
  );
  rows("exchange", ["", ""], [
    ["channels", channels.join(", ") || "(inbox and live only)"],
    ["open sockets", gauge("msgxc_open_sockets").map(([, v]) => v).join("") || "0"],
    ["queued per lane", gauge("msgxc_dispatch_queue_pending").map(([l, v]) => `${l} ${v}`).join(", ") || "-"],
  ]);
  const box = $("channels");
  if (!box.childElementCount) {
    for (const c of channels) {
      const l = document.createElement("label");
      l.style.display = "inline";
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.value = c;
      cb.name = "channel";
      l.append(cb, ` ${c} `);
      box.append(l);
      $("fallback-channel").append(new Option(c, c));
    }
  }
}

async function types() {
  const t = await api("GET", "/types");
  rows("types", ["name", "title"], t.results.map((x) => [x.name, x.title]));
  const sel = $("type");
  const chosen = sel.value;
  sel.replaceChildren(new Option("(none)", ""), ...t.results.map((x) => new Option(x.name, x.name)));
  sel.value = chosen;
}

async function dead() {
  const d = await api("GET", "/deliveries/failed?limit=50");
  const list = d.results ?? [];
  $("dead-empty").hidden = list.length > 0;
  rows(
    "dead",
    ["message", "user", "channel", "reason", ""],
    list.map((f) => {
      const b = document.createElement("button");
      b.textContent = "requeue";
      b.className = "requeue";
      b.onclick = async () => {
        b.disabled = true;
        try {
          await api("POST", `/deliveries/${encodeURIComponent(f.id)}/retry`);
          b.textContent = "requeued";
        } catch (e) {
          b.textContent = e.message;
        }
      };
      return [f.mid, f.uid, f.channel, f.reason, b];
    }),
  );
}

async function message(mid) {
  const [funnel, receipts] = await Promise.all([
    api("GET", `/reports/funnel?mid=${mid}`),
    api("GET", `/messages/${mid}/receipts?limit=100`),
  ]);
  $("message").hidden = false;
  $("mid").textContent = mid;
  $("message-meta").textContent = `${receipts.recipients ?? 0} recipients`;
  const t = funnel.total ?? {};
  const sent = t.sent ?? 0;
  const steps = ["sent", "accepted", "delivered", "opened", "clicked", "converted"];
  rows(
    "funnel",
    ["step", "recipients", ""],
    steps.map((s) => {
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${sent ? Math.round((100 * (t[s] ?? 0)) / sent) : 0}px`;
      const n = document.createElement("span");
      n.className = `step-${s}`;
      n.textContent = String(t[s] ?? 0);
      return [s, n, bar];
    }),
  );
  rows(
    "receipts",
    ["user", "device", "channel", "status", "attempts"],
    (receipts.results ?? []).map((r) => [r.uid, r.device_id, r.channel, r.status, r.attempts]),
  );
}

function sendBody() {
  const kind = $("kind").value;
  const body = { msg: $("msg").value };
  const opts = { urgency: $("urgency").value };
  if ($("title").value) body.title = $("title").value;
  if ($("type").value) body.type = $("type").value;
  if ($("data").value.trim()) body.data = JSON.parse($("data").value);
  const channels = [...document.querySelectorAll('input[name="channel"]:checked')].map((c) => c.value);
  if (channels.length) opts.channels = channels;
  if ($("fallback-channel").value) opts.fallback = { channel: $("fallback-channel").value, after: $("fallback-after").value || "10m" };
  if ($("deliver-at").value.trim()) opts.deliver_at = $("deliver-at").value.trim();
  if ($("variants").value.trim()) body.variants = JSON.parse($("variants").value);
  body.opts = opts;
  const target = $("target").value.trim();
  if (kind === "multicast") body.uids = target.split(/[\s,]+/).filter(Boolean);
  if (kind === "send") body.uid = target;
  if (kind === "publish") body.tid = target;
  return [kind, body];
}

$("kind").onchange = () => {
  const kind = $("kind").value;
  $("target-row").hidden = kind === "broadcast";
  $("target-label").textContent = { multicast: "Users", send: "User", publish: "Thread id" }[kind] ?? "";
};
$("signin").onsubmit = (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  signIn().catch((err) => ($("signin-error").textContent = err.message));
};
$("compose").onsubmit = async (e) => {
  e.preventDefault();
  try {
    const [kind, body] = sendBody();
    const r = await api("POST", `/${kind}`, body);
    $("compose-result").textContent = r.deliver_at ? `scheduled for ${r.deliver_at}` : "accepted";
    current = r.mid;
    // Shown once the message is projected (the page refreshes every second).
    await message(current).catch(() => {});
  } catch (err) {
    $("compose-result").textContent = err.message;
  }
};
$("type-form").onsubmit = async (e) => {
  e.preventDefault();
  try {
    await api("POST", "/types", { name: $("type-name").value, title: $("type-title").value });
    $("type-error").textContent = "";
    await types();
  } catch (err) {
    $("type-error").textContent = err.message;
  }
};
if (token) signIn().catch(() => ($("signin").hidden = false));

// The example's page logic: sign in with a token, list the inbox, keep it live with the
// client (new entries, and reads, archives and deletes made in other tabs or devices), keep
// the unread badge, and enable Web Push.
import { MsgxcClient, enableWebPush } from "../../clients/js/dist/index.js";

const $ = (id) => document.getElementById(id);
/** The entries shown, by id. */
const entries = new Map();
let client = null;

function render() {
  const list = [...entries.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  const ul = $("inbox");
  ul.replaceChildren(
    ...list.map((n) => {
      const li = document.createElement("li");
      li.dataset.id = n.id;
      li.className = n.status;
      const msg = document.createElement("span");
      msg.className = "msg";
      msg.textContent = n.title ? `${n.title}: ${n.msg}` : n.msg;
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `${n.sender} · ${new Date(n.created_at).toLocaleTimeString()}`;
      li.append(msg, meta);
      if (n.status === "unread") {
        const read = document.createElement("button");
        read.textContent = "Mark read";
        read.className = "read";
        read.onclick = () => client.read([n.id]).catch(show);
        li.append(read);
      }
      return li;
    }),
  );
  const unread = list.filter((n) => n.status === "unread").length;
  $("badge").textContent = String(unread);
  $("badge").dataset.count = String(unread);
  document.title = unread ? `(${unread}) msgxc inbox` : "msgxc inbox";
}

function show(e) {
  $("state").textContent = e instanceof Error ? e.message : String(e);
}

async function signIn(server, token) {
  client?.close();
  client = new MsgxcClient({ baseUrl: server, token });
  entries.clear();
  const page = await client.list({ limit: 100 });
  for (const n of page.results) entries.set(n.id, n);
  client.on("notification", (n) => {
    entries.set(n.id, n);
    render();
  });
  client.on("change", ({ action, notification }) => {
    if (action === "deleted" || action === "archived") entries.delete(notification.id);
    else entries.set(notification.id, notification);
    render();
  });
  client.on("state", (s) => ($("state").textContent = s));
  client.on("error", show);
  render();
  await client.connect();
  $("actions").hidden = false;
}

$("signin").onsubmit = (e) => {
  e.preventDefault();
  const server = $("server").value.trim();
  const token = $("token").value.trim();
  sessionStorage.setItem("msgxc", JSON.stringify({ server, token }));
  signIn(server, token).catch(show);
};
$("read-all").onclick = () => client?.readAll().catch(show);
$("push").onclick = async () => {
  try {
    await enableWebPush(client, { serviceWorker: "sw.js" });
    $("push-state").textContent = "push enabled";
  } catch (e) {
    $("push-state").textContent = `push not enabled: ${e.message}`;
  }
};

// A token in the URL (?token=...&server=...) or this tab's last sign-in.
const q = new URLSearchParams(location.search);
const saved = JSON.parse(sessionStorage.getItem("msgxc") ?? "null");
if (q.get("server")) $("server").value = q.get("server");
else if (saved) $("server").value = saved.server;
const token = q.get("token") ?? saved?.token;
if (token) {
  $("token").value = token;
  signIn($("server").value.trim(), token).catch(show);
}

// The console page: one event stream for the cluster (snapshots and changes), the map, the
// tables, the activity log, and the inspector.

import { act, adminToken, getJSON, setAdminToken, stream } from "./api.js";
import { clock, el, ms, num, short } from "./format.js";
import { Inspector } from "./inspector.js";
import { renderMap } from "./map.js";

const $ = (id) => document.getElementById(id);
const MAX_EVENTS = 200;
let session = { actions: false, why_not: "" };
let last = null;

function logEvent(kind, text, at) {
  const li = el("li", { class: `ev ${kind}`, "data-kind": kind },
    el("time", { text: clock(at || Date.now() / 1000) }), el("span", { class: "kind", text: kind.replace("_", " ") }),
    el("span", { class: "text", text }));
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

const inspector = new Inspector(document, (text) => logEvent("you", text));

function canAct() {
  return session.actions && Boolean(adminToken());
}

function adminState() {
  $("admin-state").textContent = !session.actions ? `actions off: ${session.why_not}`
    : adminToken() ? "actions on" : "enter the token to act";
  document.body.classList.toggle("can-act", canAct());
  $("migrate-btn").disabled = !canAct();
  $("migrate-btn").title = canAct() ? "" : "needs the console admin token";
}

async function nodeAction(kind, node, button) {
  if (kind === "drain" && !window.confirm(`Drain ${node}? Every object it holds moves to other nodes.`)) return;
  button.disabled = true;
  try {
    await act(kind, { node });
    logEvent("you", `you asked to ${kind} ${node}`);
  } catch (err) {
    logEvent("error", `${kind} ${node} refused: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

function renderBindings(rates) {
  const body = $("bindings").tBodies[0];
  const rows = Object.entries((rates && rates.bindings) || {}).map(([name, r]) => el("tr", { "data-binding": name },
    el("td", { text: name }), el("td", { class: "num", text: num(r.calls_per_s) }),
    el("td", { class: `num ${r.errors_per_s ? "bad" : ""}`, text: num(r.errors_per_s) }),
    el("td", { class: "num", text: ms(r.p50_ms) }), el("td", { class: "num", text: ms(r.p95_ms) }),
    el("td", { class: "num", text: ms(r.p99_ms) })));
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "6", class: "muted", text: "no calls yet" }))]));
}

function renderReplication(snap) {
  const items = [];
  for (const g of snap.groups) {
    if (!g.under_replicated && g.serving) continue;
    const behind = g.replicas.filter((r) => !r.in_sync).map((r) => r.node);
    items.push(el("li", { class: g.serving ? "warn" : "bad", "data-group": String(g.gid) },
      el("b", { text: `group ${g.gid}` }),
      ` · primary ${g.primary} · ${g.in_sync}/${g.replicas.length} in sync`,
      behind.length ? ` · behind: ${behind.join(", ")}` : "",
      g.serving ? "" : ` · not serving (${g.why_not_serving})`,
      g.writable ? "" : " · refusing writes"));
  }
  $("rep-summary").textContent = `${snap.groups.length} groups · ${snap.replication.replicas} copies (min ${snap.replication.min_in_sync} in sync)`;
  $("replication").replaceChildren(...(items.length ? items
    : [el("li", { class: "ok", text: "Every group has all its copies in sync." })]));
}

function onSnapshot(msg) {
  const snap = msg.snapshot;
  if (!last) { // a page opened now still sees the moves the nodes remember
    for (const m of snap.recent_moves) {
      logEvent("migration", `${m.binding || "object"} ${short(m.object_id)} ${m.outcome === "released" ? "moved" : "move aborted"}: ${m.from} -> ${m.to} (held ${m.held_ms} ms)`, m.at);
    }
  }
  last = snap;
  $("cluster").textContent = `cluster ${snap.cluster}`;
  $("leader").textContent = snap.leader ? `leader ${snap.leader.id}` : "no placement leader";
  $("leader").classList.toggle("bad", !snap.leader);
  const live = snap.nodes.length;
  const healthy = snap.nodes.filter((n) => n.healthy).length;
  const objects = snap.nodes.reduce((a, n) => a + (n.sample ? n.sample.active_objects : 0), 0);
  $("totals").textContent = `${snap.regions.length} regions · ${healthy}/${live} nodes healthy · ${num(objects)} objects in memory`
    + (snap.draining_nodes.length ? ` · draining: ${snap.draining_nodes.join(", ")}` : "");
  renderMap($("map"), snap, msg.rates, nodeAction, canAct());
  renderBindings(msg.rates);
  renderReplication(snap);
  $("moving").textContent = snap.moving.length ? `moving now: ${snap.moving.map((m) => short(m.object_id)).join(", ")}` : "";
  inspector.setCluster(snap);
}

function connect() {
  stream("api/events", {
    snapshot: onSnapshot,
    event: (e) => logEvent(e.kind, e.text, e.at),
    error: (e) => logEvent("error", e.message, e.at),
  }, (ok) => {
    const s = $("status");
    s.textContent = ok ? "live" : "reconnecting…";
    s.className = `pill status ${ok ? "live" : "connecting"}`;
  });
}

async function start() {
  $("admin-token").value = adminToken();
  $("admin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setAdminToken($("admin-token").value.trim());
    adminState();
    if (last) renderMap($("map"), last, null, nodeAction, canAct());
  });
  try {
    session = await getJSON("api/session");
  } catch (err) {
    session = { actions: false, why_not: err.message, bindings: [] };
  }
  inspector.setBindings(session.bindings || []);
  adminState();
  connect();
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("binding") && (hash.get("name") || hash.get("id"))) {
    $("inspect-binding").value = hash.get("binding");
    $("inspect-name").value = hash.get("name") || hash.get("id");
    inspector.open();
  }
}

start();

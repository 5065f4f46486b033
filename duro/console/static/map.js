// The cluster map: regions -> zones -> nodes, with each node's load, objects, memory, health,
// and the drain / undrain actions.

import { bar, bytes, el, num } from "./format.js";

function nodeCard(n, rate, leader, onAction, canAct) {
  const s = n.sample;
  const state = !n.healthy ? "down" : n.draining ? "draining" : "up";
  const badges = el("div", { class: "badges" },
    el("span", { class: `badge ${state}`, text: state === "up" ? "healthy" : state === "down" ? (s ? "not serving" : "unreachable") : "draining" }),
    n.leads.length ? el("span", { class: "badge lead", title: "replica groups it is primary of", text: `leads ${n.leads.join(", ")}` }) : null,
  );
  const rows = [];
  rows.push(el("div", { class: "row" }, el("span", { class: "k", text: "load" }),
    bar(n.capacity ? n.load / n.capacity : 0, `${n.load} of ${n.capacity}`),
    el("span", { class: "v", text: `${n.load}/${n.capacity}` })));
  if (s) {
    const budget = s.memory_budget_bytes;
    rows.push(el("div", { class: "row" }, el("span", { class: "k", text: "memory" }),
      bar(budget ? s.rss_bytes / budget : 0, `${bytes(s.rss_bytes)} of ${budget ? bytes(budget) : "no budget"}`),
      el("span", { class: "v", text: bytes(s.rss_bytes) })));
    rows.push(el("div", { class: "stats" },
      el("span", {}, el("b", { class: "objects", text: num(s.active_objects) }), " objects"),
      el("span", {}, el("b", { text: num(s.open_sockets) }), " sockets"),
      el("span", {}, el("b", { class: "rate", text: num(rate ? rate.calls_per_s : 0) }), " calls/s"),
    ));
  } else if (n.error) {
    rows.push(el("p", { class: "error small", text: n.error }));
  }
  const actions = el("div", { class: "actions" });
  if (canAct) {
    const b = el("button", { type: "button", class: "small", "data-action": n.draining ? "undrain" : "drain",
      text: n.draining ? "Undrain" : "Drain" });
    b.addEventListener("click", () => onAction(n.draining ? "undrain" : "drain", n.node_id, b));
    actions.append(b);
  }
  return el("article", { class: `node ${state}`, "data-node": n.node_id },
    el("header", {}, el("h4", { text: n.node_id }), el("span", { class: "muted small", text: n.address })),
    badges, ...rows, actions);
}

export function renderMap(root, snap, rates, onAction, canAct) {
  const nodeRates = (rates && rates.nodes) || {};
  const regions = snap.regions.map((r) => {
    const zones = r.zones.map((z) => el("div", { class: "zone" },
      el("h3", { class: "zone-name", text: z.zone ? `zone ${z.zone}` : "zone –" }),
      el("div", { class: "nodes" }, ...z.nodes.map((n) => nodeCard(n, nodeRates[n.node_id], snap.leader, onAction, canAct)))));
    const count = r.zones.reduce((a, z) => a + z.nodes.length, 0);
    return el("div", { class: "region", "data-region": r.region },
      el("h3", { class: "region-name" }, r.region, el("span", { class: "muted small", text: ` ${count} node${count === 1 ? "" : "s"}` })),
      ...zones);
  });
  root.replaceChildren(...(regions.length ? regions : [el("p", { class: "muted", text: "No live node." })]));
}

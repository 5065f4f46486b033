// The object inspector: find an object by binding and name (or id), follow it live (the edge
// pushes a fresh inspection every few seconds), chart its calls by region, and move it.

import { act, stream } from "./api.js";
import { bytes, clock, el, num, when } from "./format.js";

const MAX_POINTS = 60;

export class Inspector {
  constructor(doc, log) {
    this.doc = doc;
    this.log = log;
    this.source = null;
    this.query = null;
    this.series = new Map(); // region -> [[t, calls], ...]
    this.nodes = [];
    this.regions = [];
    this.current = null;
    const $ = (id) => doc.getElementById(id);
    this.$ = $;
    $("inspect-form").addEventListener("submit", (e) => { e.preventDefault(); this.open(); });
    $("migrate-form").addEventListener("submit", (e) => { e.preventDefault(); this.migrate(); });
  }

  setBindings(names) {
    const sel = this.$("inspect-binding");
    const had = sel.value;
    sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    if (names.includes(had)) sel.value = had;
  }

  setCluster(snap) {
    this.nodes = snap.nodes.map((n) => ({ id: n.node_id, region: n.region, draining: n.draining }));
    this.regions = snap.regions.map((r) => r.region);
    this.fillTargets();
  }

  fillTargets() {
    const sel = this.$("migrate-target");
    const had = sel.value;
    const owner = this.current && this.current.node;
    const opts = [];
    for (const r of this.regions) opts.push(el("option", { value: `region:${r}`, text: `least-loaded node in ${r}` }));
    for (const n of this.nodes) {
      if (n.id === owner) continue;
      opts.push(el("option", { value: `node:${n.id}`, text: `${n.id} (${n.region})${n.draining ? " – draining" : ""}` }));
    }
    sel.replaceChildren(...opts);
    if ([...sel.options].some((o) => o.value === had)) sel.value = had;
  }

  open() {
    const binding = this.$("inspect-binding").value;
    const text = this.$("inspect-name").value.trim();
    if (!text) return;
    const q = new URLSearchParams({ binding });
    if (/^[0-9a-fA-F]{64}$/.test(text)) q.set("id", text); else q.set("name", text);
    if (this.source) this.source.close();
    this.query = q;
    this.series = new Map();
    this.current = null;
    this.$("obj-error").hidden = true;
    this.$("obj-live").textContent = "looking…";
    history.replaceState(null, "", `#${q.toString()}`);
    this.source = stream(`api/object/events?${q}`, {
      object: (o) => this.show(o),
      error: (e) => this.fail(e.message),
    }, (ok) => { this.$("obj-live").textContent = ok ? "live" : "reconnecting…"; });
  }

  fail(message) {
    const p = this.$("obj-error");
    p.textContent = message;
    p.hidden = false;
  }

  show(o) {
    const $ = this.$;
    if (!o.found) {
      $("object").hidden = true;
      this.fail(`${o.binding || ""} ${o.name || o.id}: no such object (never called, or it stored nothing and left the directory)`);
      return;
    }
    $("obj-error").hidden = !o.error;
    if (o.error) $("obj-error").textContent = o.error;
    const moved = this.current && this.current.node !== o.node;
    this.current = o;
    $("object").hidden = false;
    $("obj-owner").textContent = o.node + (o.live ? "" : " (not serving)");
    $("obj-owner").classList.toggle("flash", Boolean(moved));
    $("obj-epoch").textContent = String(o.epoch);
    $("obj-region").textContent = o.region || "–";
    $("obj-group").textContent = o.group ? `${o.group.gid} (epoch ${o.group.epoch})` : "–";
    $("obj-id").textContent = `${o.binding} · ${o.name ? `${o.name} · ` : ""}${o.id}`;
    const reps = o.group ? o.group.replicas : [];
    $("obj-replicas").replaceChildren(...reps.map((r) => el("li", {
      class: `chip ${r.in_sync ? "in-sync" : "behind"} ${r.live ? "" : "gone"}`,
      text: `${r.node}${r.node === (o.group && o.group.primary) ? " ★" : ""} · ${r.in_sync ? "in sync" : "catching up"}${r.live ? "" : " · down"}`,
    })));
    const s = o.state;
    $("obj-storage").textContent = s ? `${num(s.keys)}${s.keys_capped ? "+" : ""} key${s.keys === 1 ? "" : "s"} · ${bytes(s.stored_bytes)}` : "–";
    $("obj-alarm").textContent = s && s.alarm_at ? when(s.alarm_at) : "none";
    $("obj-sockets").textContent = s ? num(s.sockets) : "–";
    $("obj-active").textContent = s ? (s.moving ? "moving now" : s.active ? "yes" : "no (evicted)") : "–";
    if (s) this.addPoint(s.regions);
    this.drawRegions();
    const hist = s ? s.history.slice().reverse() : [];
    $("obj-history").tBodies[0].replaceChildren(...(hist.length ? hist.map((m) => el("tr", {},
      el("td", { text: when(m.at) }), el("td", { text: m.from }), el("td", { text: m.to }),
      el("td", { class: "num", text: String(m.epoch) }))) : [el("tr", {}, el("td", { colspan: "4", class: "muted", text: "never moved" }))]));
    this.fillTargets();
  }

  addPoint(regions) {
    const t = Date.now() / 1000;
    const names = new Set([...this.series.keys(), ...Object.keys(regions)]);
    for (const r of names) {
      const pts = this.series.get(r) || [];
      pts.push([t, regions[r] || 0]);
      while (pts.length > MAX_POINTS) pts.shift();
      this.series.set(r, pts);
    }
  }

  drawRegions() {
    const root = this.$("obj-regions");
    if (!this.series.size) {
      root.replaceChildren(el("p", { class: "muted", text: "No calls recorded while in memory." }));
      return;
    }
    const max = Math.max(1, ...[...this.series.values()].flat().map((p) => p[1]));
    const rows = [...this.series.entries()].sort().map(([region, pts]) => {
      const last = pts[pts.length - 1][1];
      return el("div", { class: "region-row", "data-region": region },
        el("span", { class: "k", text: region }), sparkline(pts, max),
        el("span", { class: "v", text: num(last) }));
    });
    const first = [...this.series.values()][0];
    root.replaceChildren(...rows, el("p", { class: "muted small",
      text: `since ${clock(first[0][0])}, one point per update` }));
  }

  async migrate() {
    const $ = this.$;
    const o = this.current;
    if (!o) return;
    const [kind, target] = $("migrate-target").value.split(/:(.*)/s);
    const payload = { binding: o.binding, id: o.id, [kind === "node" ? "to_node" : "to_region"]: target };
    $("migrate-btn").disabled = true;
    $("migrate-result").textContent = "moving…";
    try {
      const r = await act("migrate", payload);
      $("migrate-result").textContent = r.outcome === "released"
        ? `moved to ${r.to} (epoch ${r.epoch}, held ${r.held_ms} ms)` : `not moved: ${r.detail || r.outcome}`;
      this.log(`you moved ${o.binding} ${o.name || o.id.slice(0, 12)} → ${r.to}: ${r.outcome}`);
    } catch (err) {
      $("migrate-result").textContent = `refused: ${err.message}`;
    } finally {
      $("migrate-btn").disabled = false;
    }
  }
}

function sparkline(points, max) {
  const w = 160;
  const h = 28;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  const t0 = points[0][0];
  const span = Math.max(1, points[points.length - 1][0] - t0);
  const d = points.map(([t, v], i) => `${i ? "L" : "M"}${((t - t0) / span * (w - 2) + 1).toFixed(1)},${(h - 2 - v / max * (h - 4)).toFixed(1)}`).join(" ");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", d);
  svg.append(path);
  return svg;
}

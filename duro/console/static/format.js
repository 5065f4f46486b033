// Small formatting helpers shared by the views.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v < 10 && i ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function num(n, digits = 1) {
  if (n === null || n === undefined) return "–";
  const v = Number(n);
  if (v >= 1000) return Math.round(v).toLocaleString();
  return Number.isInteger(v) ? String(v) : v.toFixed(digits);
}

export function ms(v) {
  if (v === null || v === undefined) return "–";
  return v < 1 ? `≤${v} ms` : `≤${num(v, 0)} ms`;
}

export function when(seconds) {
  if (!seconds) return "–";
  const d = new Date(seconds * 1000);
  return d.toLocaleString(undefined, { hour12: false });
}

export function clock(seconds) {
  const d = new Date(seconds * 1000);
  return d.toLocaleTimeString(undefined, { hour12: false });
}

export function short(id) {
  return id ? `${id.slice(0, 12)}…` : "";
}

export function bar(fraction, label) {
  const f = Math.max(0, Math.min(1, Number(fraction) || 0));
  const level = f > 0.85 ? "hot" : f > 0.6 ? "warm" : "ok";
  const fill = el("span", { class: `fill ${level}` });
  fill.style.width = `${(f * 100).toFixed(1)}%`;
  return el("span", { class: "bar", title: label, role: "img", "aria-label": label }, fill);
}

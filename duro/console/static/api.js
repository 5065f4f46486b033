// Talking to the console's endpoints (duro/console/web.py): JSON reads, server-sent events,
// and admin actions with the bearer token kept in this tab's sessionStorage.

const TOKEN_KEY = "duro.console.adminToken";

export function adminToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setAdminToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export async function getJSON(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
  return body;
}

export async function act(name, payload) {
  const resp = await fetch(`api/${name}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${adminToken()}` },
    body: JSON.stringify(payload),
  });
  const body = await resp.json().catch(() => ({}));
  if (body.error) throw new Error(body.error.message);
  if (!resp.ok && resp.status !== 409) throw new Error(`HTTP ${resp.status}`);
  return body;
}

// An EventSource with named events; onState(true|false) reports the connection.
export function stream(path, handlers, onState) {
  const source = new EventSource(path);
  source.onopen = () => onState && onState(true);
  source.onerror = () => onState && onState(false);
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  }
  return source;
}

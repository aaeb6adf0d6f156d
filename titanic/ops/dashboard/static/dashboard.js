// The dashboard page: polls /api/state, fills the tables, draws the history with plotly.js.
"use strict";

const refreshMs = Number(document.body.dataset.refreshMs) || 2000;
const FIELDS = ["pending", "scheduled", "dispatched", "done", "failed", "expired", "cancelled",
  "max_in_flight", "rate_per_s"];

// The token the actions send as a header. The page holds it when it was opened with it
// (/?token=...) or needs none to be read; this tab keeps it in sessionStorage (this origin
// only) for later loads, and the address loses it at once (history, screenshots).
const tokenMeta = document.querySelector('meta[name="titanic-token"]');
const TOKEN_HEADER = tokenMeta.dataset.header;
if (tokenMeta.content) sessionStorage.setItem("titanic-token", tokenMeta.content);
const token = tokenMeta.content || sessionStorage.getItem("titanic-token") || "";
if (new URLSearchParams(location.search).has("token")) {
  history.replaceState(null, "", location.pathname);
}
const tokenHeaders = token ? { [TOKEN_HEADER]: token } : {};
const NO_TOKEN = "actions need the token: open the address the dashboard printed at start";

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size) return (seconds / size).toFixed(1) + unit;
  }
  return seconds.toFixed(1) + "s";
}

// Rows are kept and updated in place, keyed by service or UUID, so a button does not move or
// vanish under the pointer at each refresh.
function syncRows(body, items, keyOf, build, fill) {
  const existing = new Map([...body.rows].map((row) => [row.dataset.key, row]));
  items.forEach((item, index) => {
    const key = keyOf(item);
    let row = existing.get(key);
    if (row === undefined) {
      row = document.createElement("tr");
      row.dataset.key = key;
      build(row, item);
    }
    existing.delete(key);
    fill(row, item);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
  });
  for (const row of existing.values()) row.remove();
}

function addCells(row, fields, classes) {
  for (const field of fields) {
    const td = row.insertCell();
    td.dataset.field = field;
    if (classes && classes[field]) td.className = classes[field];
  }
}

function setCell(row, field, text) {
  const td = row.querySelector(`td[data-field="${field}"]`);
  if (td.textContent !== text) td.textContent = text;
}

function showWho(view) {
  const who = document.getElementById("who");
  const brokers = view.brokers.map((b) => b.error ? `broker ${b.endpoint}: not answering`
    : b.version === null || b.version === undefined ? `broker ${b.endpoint} (no mmi.broker)`
    : `broker ${b.endpoint}: titanic ${b.version}, up ${age(b.uptime_s)}, ${b.workers} worker(s)`);
  const dispatchers = view.dispatchers.map((d) =>
    `dispatcher ${d.host} pid ${d.pid}: titanic ${d.version}, up ${age(d.uptime_s)}`);
  who.textContent = [...brokers, ...dispatchers].join(" · ");
}

const SERVICE_FIELDS = ["service", ...FIELDS, "oldest_pending_age_s", "workers", "completed_per_s"];

function showServices(view) {
  syncRows(document.querySelector("#services tbody"), view.services, (s) => s.service,
    (row, s) => { row.dataset.service = s.service; addCells(row, SERVICE_FIELDS); },
    (row, s) => {
      row.className = s.workers === 0 ? "no-workers" : "";
      setCell(row, "service", s.service);
      for (const field of FIELDS) setCell(row, field, String(s[field] ?? "-"));
      setCell(row, "oldest_pending_age_s", age(s.oldest_pending_age_s));
      setCell(row, "workers", s.workers === null ? "-" : String(s.workers));
      setCell(row, "completed_per_s", s.completed_per_s.toFixed(2));
    });
}

const SITE_FIELDS = ["name", "up", "since", "services", "waiting", "in_flight",
  "forwarded_per_minute", "answered_per_minute"];

function showSites(view) {
  const sites = view.sites;
  const peers = sites && sites.peers ? sites.peers : [];
  document.getElementById("sites-section").hidden = peers.length === 0;
  document.getElementById("site-name").textContent = sites ? `this site: ${sites.site}` : "";
  syncRows(document.querySelector("#sites tbody"), peers, (p) => p.name,
    (row) => addCells(row, SITE_FIELDS),
    (row, p) => {
      row.className = p.up ? "" : "no-workers";
      setCell(row, "name", `${p.name} (${p.endpoint})`);
      setCell(row, "up", p.up ? "up" : "down");
      setCell(row, "since", p.since ? new Date(p.since * 1000).toISOString() : "-");
      setCell(row, "services", Object.entries(p.services)
        .map(([name, c]) => `${name} (${c.workers} workers, ${c.queued} queued)`).join(", "));
      for (const field of SITE_FIELDS.slice(4)) setCell(row, field, String(p[field]));
    });
}

// An answer as {ok, result, error}: JSON from the actions, plain text from a refusal.
async function answerOf(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { ok: false, error: `${response.status}: ${text.trim()}` };
  }
}

async function act(uuid, action, button) {
  button.disabled = true;
  let answer;
  try {
    const response = await fetch(`/api/requests/${uuid}/${action}`,
                                 { method: "POST", headers: tokenHeaders });
    answer = await answerOf(response);
  } catch (error) {
    answer = { ok: false, error: `dashboard unreachable: ${error}` };
  }
  setStatus(answer.ok ? `${uuid} ${answer.result}` : answer.error, !answer.ok);
  button.disabled = false;
  await refresh();
}

const FAILED_FIELDS = ["uuid", "service", "attempts", "completed_at", "last_error"];

function showFailed(failed, view) {
  document.getElementById("failed-none").hidden = failed.length > 0;
  const total = view.services.reduce((sum, s) => sum + s.failed, 0);
  document.getElementById("failed-count").textContent =
    total > failed.length ? `(the oldest ${failed.length} of ${total})` : "";
  syncRows(document.querySelector("#failed tbody"), failed, (r) => r.uuid,
    (row, r) => {
      row.dataset.uuid = r.uuid;
      addCells(row, FAILED_FIELDS, { uuid: "uuid", last_error: "error-text" });
      const buttons = row.insertCell();
      for (const [action, label] of [["retry", "Retry"], ["close", "Close"]]) {
        const button = document.createElement("button");
        button.textContent = label;
        button.className = action;
        if (token) button.addEventListener("click", () => act(r.uuid, action, button));
        else { button.disabled = true; button.title = NO_TOKEN; }
        buttons.appendChild(button);
      }
    },
    (row, r) => {
      setCell(row, "uuid", r.uuid);
      setCell(row, "service", r.service);
      setCell(row, "attempts", String(r.attempts));
      setCell(row, "completed_at", r.completed_at ? r.completed_at.replace("T", " ").slice(0, 19) : "-");
      setCell(row, "last_error", r.last_error || "");
      row.querySelector(".error-text").title = r.traceback || "";  // the worker's traceback
    });
}

function drawCharts(history) {
  const names = new Set();
  for (const sample of history) Object.keys(sample.services).forEach((n) => names.add(n));
  const times = history.map((sample) => new Date(sample.time * 1000));
  const series = (field) => [...names].sort().map((name) => ({
    x: times,
    y: history.map((sample) => (sample.services[name] || {})[field] ?? 0),
    name, type: "scatter", mode: "lines",
  }));
  const layout = (title, axis) => ({
    title: { text: title, font: { size: 14 } }, margin: { t: 36, r: 12, b: 36, l: 48 },
    yaxis: { title: { text: axis }, rangemode: "tozero" }, legend: { orientation: "h" },
  });
  const config = { displayModeBar: false, responsive: true };
  Plotly.react("depth-chart", series("pending"), layout("Queue depth (pending)", "requests"), config);
  Plotly.react("rate-chart", series("completed_per_s"), layout("Completions", "per second"), config);
}

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = isError ? "error" : "muted";
}

async function refresh() {
  let state;
  try {
    const response = await fetch("/api/state", { headers: tokenHeaders });
    if (!response.ok) {
      setStatus((await answerOf(response)).error, true);
      return;
    }
    state = await response.json();
  } catch (error) {
    setStatus(`dashboard unreachable: ${error}`, true);
    return;
  }
  if (state.view === null) {
    setStatus(state.error ? `no answer yet: ${state.error}` : "waiting for the first answer…",
              Boolean(state.error));
    return;
  }
  showWho(state.view);
  showServices(state.view);
  showSites(state.view);
  showFailed(state.failed, state.view);
  drawCharts(state.history);
  const when = new Date(state.updated * 1000).toLocaleTimeString();
  if (state.error) setStatus(`stale since ${when}: ${state.error}`, true);
  else if (!document.getElementById("status").classList.contains("error")) setStatus(`updated ${when}`, false);
  document.body.dataset.updated = String(state.updated);
}

refresh();
setInterval(refresh, refreshMs);

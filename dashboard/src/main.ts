// The dashboard: one WebSocket to the hub, a state the messages update, panels rendered once per frame.

import "./style.css";
import { api, checkAccess } from "./api";
import { renderChart } from "./chart";
import { Conn, type ConnState } from "./conn";
import { initContext, renderSavings } from "./context";
import { byId, setText } from "./dom";
import { fmtInt } from "./format";
import {
  renderAccuracy,
  renderAlerts,
  renderBreakdown,
  renderGauge,
  renderLog,
  renderPerf,
  renderTotals,
  showAllAlerts,
} from "./panels";
import { initSessions, renderSessionBar } from "./sessions";
import { apply, dirty, markAll, setSessionRequests, shownSessionId, state } from "./state";
import { initTheme } from "./theme";
import { initUsage } from "./usage";
import type { Envelope, Init } from "./types";

let frame = 0;
let chartRebuild = false;

function schedule(): void {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    render();
  });
}

function render(): void {
  if (dirty.sessions || dirty.totals) {
    renderSessionBar();
    renderGauge();
    renderTotals();
    renderSavings();
  }
  if (dirty.sessions) dirty.logAll = true; // session tags show names
  if (dirty.logAll || dirty.log.size > 0) renderLog();
  if (dirty.history || chartRebuild) {
    renderChart(chartRebuild);
    renderBreakdown();
  }
  if (dirty.accuracy) renderAccuracy();
  if (dirty.alerts) renderAlerts();
  if (dirty.stats) renderPerf();
  setText(byId("version"), state.version ? `v${state.version}` : "");
  dirty.sessions = dirty.totals = dirty.logAll = dirty.history = dirty.accuracy = dirty.alerts = dirty.stats = false;
  dirty.log.clear();
  chartRebuild = false;
}

// ---------------------------------------------------------------- the shown session's request history

let loadedFor: number | null = null;
let loadToken = 0;
/** The session the hub was last told about (its `init`s carry that session's requests). */
let hubSelected: number | null = null;

function shownChanged(): void {
  const id = shownSessionId();
  if (id !== hubSelected) {
    hubSelected = id;
    conn.send({ type: "select_session", session_id: id });
  }
  if (id === loadedFor) return;
  loadedFor = id;
  markAll();
  if (id === null) {
    state.sessionRequests = [];
    state.sessionRequestsFor = null;
    schedule();
    return;
  }
  const token = ++loadToken;
  api
    .sessionRequests(id)
    .then((records) => {
      if (token !== loadToken) return;
      setSessionRequests(id, records);
      schedule();
    })
    .catch(() => {
      // a session deleted meanwhile; the hub's events correct the view
    });
}

// ---------------------------------------------------------------- connection status

let lastConn: ConnState = { kind: "connecting", attempt: 0 };

function showConn(s: ConnState): void {
  lastConn = s;
  const el = byId("conn");
  const retry = byId<HTMLButtonElement>("conn-retry");
  el.dataset.state = s.kind;
  retry.hidden = s.kind !== "waiting";
  switch (s.kind) {
    case "connecting":
      setText(byId("conn-text"), s.attempt ? `reconnecting (attempt ${s.attempt + 1})…` : "connecting…");
      break;
    case "live":
      setText(byId("conn-text"), "live");
      el.title = `connected · event ${fmtInt(s.seq)}`;
      break;
    case "resyncing":
      setText(byId("conn-text"), "resynchronising…");
      break;
    case "waiting": {
      const seconds = Math.max(1, Math.ceil((s.until - Date.now()) / 1000));
      setText(byId("conn-text"), `${s.reason} · retry in ${seconds}s`);
      break;
    }
  }
}

const conn = new Conn(
  {
    onMessage(msg: Envelope) {
      const before = shownSessionId();
      apply(msg);
      if (msg.type === "init") {
        const init = msg.data as Init;
        hubSelected = init.selected_session_id ?? null;
        // the snapshot carries the selected session's requests when the hub knew the selection
        loadedFor = state.sessionRequestsFor !== null && state.sessionRequestsFor === hubSelected ? hubSelected : null;
        loadToken += 1;
        chartRebuild = true;
      }
      if (msg.type === "init" || shownSessionId() !== before) shownChanged();
      schedule();
    },
    onState: showConn,
    onRefused: () => void checkAccess(),
  },
  () => {
    const params = new URLSearchParams({ tz_offset_min: String(new Date().getTimezoneOffset()) });
    const id = shownSessionId();
    if (id !== null) params.set("session_id", String(id));
    return params;
  },
);

// ---------------------------------------------------------------- start

function start(): void {
  initTheme(() => {
    chartRebuild = true;
    schedule();
  });
  initSessions({ onShownChanged: shownChanged, render: () => { markAll(); schedule(); } });
  initContext(() => {
    dirty.totals = true;
    schedule();
  });
  initUsage();
  byId("conn-retry").addEventListener("click", () => conn.reconnectNow());
  byId("alerts-button").addEventListener("click", showAllAlerts);
  byId("log-session-only").addEventListener("change", () => {
    dirty.logAll = true;
    schedule();
  });
  // elapsed time of requests in flight, and the "retry in" countdown
  window.setInterval(() => {
    const now = Date.now();
    for (const e of state.log.values()) {
      if (!e.rec) {
        e.elapsed_ms = Math.max(e.elapsed_ms ?? 0, now - e.started_at_ms);
        dirty.log.add(e.id);
      }
    }
    if (dirty.log.size) schedule();
    if (lastConn.kind === "waiting") showConn(lastConn);
  }, 1000);
  markAll();
  render();
  conn.start();
}

start();

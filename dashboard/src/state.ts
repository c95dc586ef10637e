// Everything the page knows, updated by the hub's messages. Panels read it when they render.

import { type StoredRow, fromStored } from "./api";
import type { Accuracy, Alert, Envelope, Init, LiveReq, ModelInfo, Rec, Refusal, Session, Stats, Today } from "./types";

/** One row of the live log: a request in flight, then finished. */
export interface LogEntry {
  id: number;
  started_at_ms: number;
  model: string;
  provider: string;
  streaming: boolean;
  session_id: number | null;
  /** Running completion count while streaming. */
  completion_live: number;
  elapsed_ms: number | null;
  rec: Rec | null;
  failed: boolean;
  /** Set for a refused request (its id is the negative event number: it has no record). */
  refusal: Refusal | null;
}

const LOG_MAX = 200;
const SESSION_REQUESTS_MAX = 200;

export const state = {
  storeEnabled: true,
  version: "",
  sessions: new Map<number, Session>(),
  sessionsTotal: 0,
  activeSessionId: null as number | null,
  /** The user's choice in the selector; null follows the active session, else the latest activity. */
  chosenSessionId: null as number | null,
  today: null as Today | null,
  /** Saved by the context transforms over all stored sessions: the snapshot's figure plus requests since. */
  saved: null as { tokens: number; cost: number } | null,
  log: new Map<number, LogEntry>(),
  /** Finished requests of the shown session, oldest first. */
  sessionRequests: [] as Rec[],
  sessionRequestsFor: null as number | null,
  accuracy: new Map<string, Accuracy>(),
  models: [] as ModelInfo[],
  alerts: new Map<number, Alert>(),
  stats: null as Stats | null,
  statsAt: 0,
};

/** Which parts changed since the last render. */
export const dirty = {
  sessions: false,
  log: new Set<number>(),
  logAll: false,
  history: false,
  accuracy: false,
  alerts: false,
  stats: false,
  totals: false,
};

export function markAll(): void {
  dirty.sessions = dirty.logAll = dirty.history = dirty.accuracy = dirty.alerts = dirty.stats = dirty.totals = true;
}

/** The session the gauge and totals show. */
export function shownSessionId(): number | null {
  if (state.chosenSessionId !== null && state.sessions.has(state.chosenSessionId)) return state.chosenSessionId;
  if (state.activeSessionId !== null && state.sessions.has(state.activeSessionId)) return state.activeSessionId;
  let best: Session | null = null;
  for (const s of state.sessions.values()) {
    if (!best || s.last_activity_ms > best.last_activity_ms) best = s;
  }
  return best ? best.id : null;
}

export function shownSession(): Session | null {
  const id = shownSessionId();
  return id === null ? null : (state.sessions.get(id) ?? null);
}

function upsertSession(s: Session): void {
  state.sessions.set(s.id, s);
  if (s.active) state.activeSessionId = s.id;
  else if (state.activeSessionId === s.id) state.activeSessionId = null;
  dirty.sessions = dirty.totals = true;
}

function entryFromLive(l: LiveReq): LogEntry {
  return {
    id: l.id,
    started_at_ms: l.started_at_ms,
    model: l.model,
    provider: l.provider,
    streaming: l.streaming,
    session_id: null,
    completion_live: l.completion_tokens ?? 0,
    elapsed_ms: Date.now() - l.started_at_ms,
    rec: null,
    failed: false,
    refusal: null,
  };
}

function entryFromRec(r: Rec, failed: boolean): LogEntry {
  return {
    id: r.id,
    started_at_ms: r.started_at_ms,
    model: r.model,
    provider: r.provider,
    streaming: r.streaming,
    session_id: r.session_id ?? null,
    completion_live: r.completion_tokens ?? 0,
    elapsed_ms: null,
    rec: r,
    failed,
    refusal: null,
  };
}

function entryFromRefusal(seq: number, r: Refusal): LogEntry {
  return {
    id: -seq,
    started_at_ms: r.at_ms,
    model: `${r.method} ${r.path}`,
    provider: "refused by kimi-proxy",
    streaming: false,
    session_id: null,
    completion_live: 0,
    elapsed_ms: null,
    rec: null,
    failed: true,
    refusal: r,
  };
}

/** Newest first: by arrival time, then by id (a refusal's id is negative, so it sorts by time alone). */
export function newerFirst(a: LogEntry, b: LogEntry): number {
  return b.started_at_ms - a.started_at_ms || b.id - a.id;
}

export function isFailure(r: Rec): boolean {
  const status = r.status ?? 200;
  return status >= 400 || status === 0 || Boolean(r.error_kind);
}

function trimLog(): void {
  if (state.log.size <= LOG_MAX) return;
  const oldest = [...state.log.values()].sort(newerFirst).reverse();
  for (const entry of oldest.slice(0, state.log.size - LOG_MAX)) {
    if (entry.rec === null && entry.refusal === null) continue; // never drop a request still in flight
    state.log.delete(entry.id);
  }
  dirty.logAll = true;
}

function addSessionRequest(r: Rec): void {
  if (state.sessionRequests.some((x) => x.id === r.id)) return;
  state.sessionRequests.push(r);
  state.sessionRequests.sort((a, b) => a.started_at_ms - b.started_at_ms || a.id - b.id);
  if (state.sessionRequests.length > SESSION_REQUESTS_MAX) state.sessionRequests.shift();
  dirty.history = true;
}

/** Folds a finished request into the per-model accuracy (running mean, as the server's samples grow). */
function foldAccuracy(r: Rec): void {
  if (r.prompt_accuracy === null || r.prompt_accuracy === undefined) return;
  const a = state.accuracy.get(r.model) ?? { model: r.model, samples: 0, prompt_accuracy: null, completion_accuracy: null };
  const n = a.samples;
  const mean = (old: number | null | undefined, x: number | null | undefined) =>
    x === null || x === undefined ? (old ?? null) : old === null || old === undefined ? x : (old * n + x) / (n + 1);
  state.accuracy.set(r.model, {
    ...a,
    samples: n + 1,
    prompt_accuracy: mean(a.prompt_accuracy, r.prompt_accuracy),
    completion_accuracy: mean(a.completion_accuracy, r.completion_accuracy),
  });
  dirty.accuracy = true;
}

function applyInit(d: Init): void {
  state.storeEnabled = d.server?.store ?? true;
  state.version = d.server?.version ?? "";
  state.sessions.clear();
  state.activeSessionId = d.active_session_id ?? null;
  for (const s of d.sessions ?? []) state.sessions.set(s.id, s);
  state.sessionsTotal = d.sessions_total ?? state.sessions.size;
  state.today = d.today ?? null;
  state.saved = d.saved ? { tokens: d.saved.tokens_saved, cost: d.saved.cost_saved_usd } : null;
  state.log.clear();
  for (const r of d.recent ?? []) state.log.set(r.id, entryFromRec(r, isFailure(r)));
  for (const l of d.live ?? []) state.log.set(l.id, entryFromLive(l));
  trimLog();
  state.accuracy.clear();
  for (const a of d.accuracy ?? []) state.accuracy.set(a.model, a);
  if (d.models && d.models.length > 0) state.models = d.models;
  state.alerts.clear();
  for (const a of d.alerts ?? []) if (!a.resolved_at_ms) state.alerts.set(a.id, a);
  if (d.stats) {
    state.stats = d.stats;
    state.statsAt = Date.now();
  }
  const shown = shownSessionId();
  state.sessionRequests = [];
  state.sessionRequestsFor = null;
  if (shown !== null && d.selected_session_id === shown) {
    // stored rows, as GET /api/sessions/{id}/requests answers them
    const rows = ((d.session_requests ?? []) as unknown as StoredRow[]).map(fromStored);
    state.sessionRequests = rows.sort((a, b) => a.started_at_ms - b.started_at_ms || a.id - b.id);
    state.sessionRequestsFor = shown;
  }
  markAll();
}

/** Applies one message; returns false for a type this page does not know. */
export function apply(msg: Envelope): boolean {
  const d = msg.data as Record<string, unknown>;
  switch (msg.type) {
    case "init":
      applyInit(msg.data as Init);
      return true;
    case "request.started": {
      const l = d as unknown as LiveReq;
      if (!state.log.has(l.id)) state.log.set(l.id, entryFromLive(l));
      dirty.log.add(l.id);
      trimLog();
      return true;
    }
    case "request.progress": {
      const list = (d.requests ?? []) as { id: number; completion_tokens: number; elapsed_ms?: number }[];
      for (const p of list) {
        const e = state.log.get(p.id);
        if (!e || e.rec) continue;
        e.completion_live = p.completion_tokens;
        if (p.elapsed_ms !== undefined) e.elapsed_ms = p.elapsed_ms;
        dirty.log.add(p.id);
      }
      return true;
    }
    case "request.finished":
    case "request.failed": {
      const r = d as unknown as Rec;
      // Another instance's request: ids are numbered per instance, so it is kept under its stored row's id.
      const key = r.remote && r.row_id !== undefined ? -(1e12 + r.row_id) : r.id;
      const known = state.log.get(key);
      const entry = entryFromRec(r, msg.type === "request.failed");
      entry.id = key;
      if (known && known.session_id !== null && entry.session_id === null) entry.session_id = known.session_id;
      state.log.set(key, entry);
      dirty.log.add(key);
      trimLog();
      if (state.today && r.started_at_ms >= state.today.since_ms) {
        const t = state.today;
        t.requests += 1;
        t.prompt_tokens += r.prompt_tokens ?? 0;
        t.completion_tokens += r.completion_tokens ?? 0;
        t.cached_tokens += r.cached_reported ?? 0;
        t.cost_usd += r.cost_usd ?? 0;
        dirty.totals = true;
      }
      if (state.saved && (r.tokens_saved || r.cost_saved_usd)) {
        state.saved.tokens += r.tokens_saved ?? 0;
        state.saved.cost += r.cost_saved_usd ?? 0;
        dirty.totals = true;
      }
      foldAccuracy(r);
      if (entry.session_id !== null && entry.session_id === shownSessionId()) addSessionRequest(r);
      dirty.history = true;
      return true;
    }
    case "request.refused": {
      const entry = entryFromRefusal(msg.seq, d as unknown as Refusal);
      state.log.set(entry.id, entry);
      dirty.log.add(entry.id);
      trimLog();
      return true;
    }
    case "request.stored": {
      const list = (d.requests ?? []) as { id: number; session_id: number | null }[];
      const shown = shownSessionId();
      for (const s of list) {
        const e = state.log.get(s.id);
        if (!e) continue;
        e.session_id = s.session_id;
        if (e.rec) {
          e.rec.session_id = s.session_id;
          if (s.session_id !== null && s.session_id === shown) addSessionRequest(e.rec);
        }
        dirty.log.add(s.id);
      }
      return true;
    }
    case "session.created":
    case "session.updated":
      upsertSession(d.session as Session);
      return true;
    case "session.deleted": {
      for (const id of (d.ids ?? []) as number[]) {
        state.sessions.delete(id);
        if (state.activeSessionId === id) state.activeSessionId = null;
        if (state.chosenSessionId === id) state.chosenSessionId = null;
      }
      state.sessionsTotal = Math.max(state.sessions.size, state.sessionsTotal - ((d.ids as number[]) ?? []).length);
      dirty.sessions = dirty.totals = dirty.history = true;
      return true;
    }
    case "session.activated": {
      const id = (d.session_id ?? null) as number | null;
      for (const s of state.sessions.values()) s.active = s.id === id;
      state.activeSessionId = id;
      dirty.sessions = dirty.totals = true;
      return true;
    }
    case "alert": {
      const a = d.alert as Alert;
      if (d.event === "resolved" || a.resolved_at_ms) state.alerts.delete(a.id);
      else state.alerts.set(a.id, a);
      dirty.alerts = true;
      return true;
    }
    case "stats":
      state.stats = d as Stats;
      state.statsAt = Date.now();
      dirty.stats = true;
      return true;
    default:
      return false;
  }
}

/** Records of the shown session, or the recent requests of every session when there is none. */
export function historyRecords(): { scope: "session" | "recent"; records: Rec[] } {
  const shown = shownSessionId();
  if (shown !== null && state.sessionRequestsFor === shown) {
    return { scope: "session", records: state.sessionRequests };
  }
  const records: Rec[] = [];
  for (const e of state.log.values()) if (e.rec) records.push(e.rec);
  records.sort((a, b) => a.started_at_ms - b.started_at_ms || a.id - b.id);
  return { scope: "recent", records };
}

/** A session object from the REST API lands in the state right away (the hub's event follows). */
export function putSession(s: Session): void {
  upsertSession(s);
}

export function setSessionRequests(id: number, records: Rec[]): void {
  state.sessionRequests = [...records].sort((a, b) => a.started_at_ms - b.started_at_ms || a.id - b.id);
  state.sessionRequestsFor = id;
  // requests finished meanwhile and already tagged with this session
  for (const e of state.log.values()) if (e.rec && e.session_id === id) addSessionRequest(e.rec);
  dirty.history = true;
}

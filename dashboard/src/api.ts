// The REST calls the page makes (docs/api.md). Errors come back in the OpenAI shape; their message is shown.

import type { CompactionPreview, ContextToggles, ModelInfo, Rec, Session, UsageReport } from "./types";

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const init: RequestInit = { method, headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { accept: "application/json", "content-type": "application/json" };
  }
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError("the proxy cannot be reached", 0);
  }
  const text = await response.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (response.status === 401) {
    toLogin();
  }
  if (!response.ok) {
    const message =
      (json as { error?: { message?: string } } | null)?.error?.message ?? `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status);
  }
  return json as T;
}

/** With an admin token set, a page whose login session ended goes back to the login page. */
export function toLogin(): void {
  location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
}

/** After the WebSocket failed to open: is it because the login session is over? */
export async function checkAccess(): Promise<void> {
  try {
    const response = await fetch("/api/stats", { headers: { accept: "application/json" } });
    if (response.status === 401) toLogin();
  } catch {
    // the proxy is down: the reconnect loop goes on
  }
}

export const api = {
  usage: (q: { period: string; source?: string; project?: string; timezone?: string }) => {
    const params = new URLSearchParams({ period: q.period });
    if (q.source) params.set("source", q.source);
    if (q.project) params.set("project", q.project);
    if (q.timezone) params.set("timezone", q.timezone);
    return call<UsageReport>("GET", `/api/usage?${params.toString()}`);
  },
  listSessions: (limit = 200) =>
    call<{ data: Session[]; total: number }>("GET", `/api/sessions?limit=${limit}&sort=last_activity`),
  createSession: (name: string, model: string | null, activate: boolean) =>
    call<Session>("POST", "/api/sessions", model ? { name, model, activate } : { name, activate }),
  renameSession: (id: number, name: string) => call<Session>("PATCH", `/api/sessions/${id}`, { name }),
  activate: (id: number) => call<Session>("POST", `/api/sessions/${id}/activate`),
  deactivate: (id: number) => call<Session>("POST", `/api/sessions/${id}/deactivate`),
  deleteSession: (id: number) => call<{ deleted: number[] }>("DELETE", `/api/sessions/${id}`),
  deleteSessions: (ids: number[]) =>
    call<{ requested: number; deleted: number }>("DELETE", "/api/sessions", { ids }),
  /** A session's own context toggles; answers the settings as stored. */
  setContext: (id: number, toggles: ContextToggles) =>
    call<{ session_id: number; settings: ContextToggles; compact_next: boolean }>("PUT", `/api/sessions/${id}/context`, toggles),
  compactPreview: (id: number) =>
    call<{ session_id: number; preview: CompactionPreview }>("POST", `/api/sessions/${id}/compact/preview`),
  /** The session's next request is compacted. */
  compact: (id: number) => call<{ session_id: number; compact_next: boolean }>("POST", `/api/sessions/${id}/compact`),
  sessionRequests: async (id: number, limit = 200): Promise<Rec[]> => {
    const page = await call<{ data: StoredRow[] }>("GET", `/api/sessions/${id}/requests?limit=${limit}`);
    return page.data.map(fromStored);
  },
  /** The model catalog: the hub's `/api/models` when present, else the OpenAI-style `/v1/models`. */
  models: async (): Promise<ModelInfo[]> => {
    try {
      const list = await call<{ data?: ModelInfo[] } | ModelInfo[]>("GET", "/api/models");
      const data = Array.isArray(list) ? list : (list.data ?? []);
      if (data.length > 0) return data;
    } catch {
      // fall through to /v1/models
    }
    const list = await call<{ data: OpenAiModel[] }>("GET", "/v1/models");
    return list.data.map((m) => ({
      key: m.id,
      provider: m.owned_by,
      upstream_id: m.upstream_id,
      context_window: m.context_length ?? null,
      capabilities: m.capabilities ?? [],
    }));
  },
};

interface OpenAiModel {
  id: string;
  owned_by: string;
  upstream_id?: string;
  context_length?: number;
  capabilities?: string[];
}

/** A stored request row (`GET /api/sessions/{id}/requests`) in the hub's record shape. */
export interface StoredRow extends Omit<Rec, "id" | "started_at_ms" | "streaming" | "tokens_estimated" | "cache_hit"> {
  id: number;
  record_id: number;
  started_at: number;
  streaming: number | boolean;
  tokens_estimated?: number | boolean;
}

export function fromStored(row: StoredRow): Rec {
  return {
    ...row,
    id: row.record_id,
    started_at_ms: row.started_at,
    streaming: Boolean(row.streaming),
    tokens_estimated: Boolean(row.tokens_estimated),
  };
}

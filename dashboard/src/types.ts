// Shapes of the server's messages (docs/ws-protocol.md, docs/api.md). Fields the server may not send yet are
// optional: the page shows "—" for them rather than a made-up zero.

export interface Session {
  id: number;
  name: string;
  model: string | null;
  source: string;
  client_key: string | null;
  /** The application of the request that opened it. */
  client_app?: string | null;
  created_at_ms: number;
  last_activity_ms: number;
  active: boolean;
  request_count: number;
  error_count: number;
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens: number;
  total_tokens: number;
  cost_usd: number;
  context_tokens: number;
  context_window: number | null;
  context_used: number | null;
  /** Prompt tokens the context transforms removed from this session's requests, and their price. */
  tokens_saved?: number;
  cost_saved_usd?: number;
  /** The session's own context toggles (null: it follows the model and the config). */
  context_settings?: ContextToggles | null;
}

/** `true`/`false`, or `null`/absent to follow the model and `[context]`. */
export interface ContextToggles {
  masking?: boolean | null;
  observation?: boolean | null;
  compaction?: boolean | null;
}

/** `POST /api/sessions/{id}/compact/preview`. */
export interface CompactionPreview {
  record_id: number;
  model: string;
  context_window: number;
  can_compact: boolean;
  messages_before: number;
  messages_after: number;
  tokens_before: number;
  tokens_after: number;
  tokens_saved: number;
  summary?: string | null;
}

/** A finished request as the hub sends it (request.finished / request.failed, init.recent). */
export interface Rec {
  id: number;
  /** The instance that served it; `remote` (with the stored row's id) when another instance of the fleet did. */
  instance?: string | null;
  remote?: boolean;
  row_id?: number;
  session_id?: number | null;
  started_at_ms: number;
  model: string;
  provider: string;
  streaming: boolean;
  status?: number;
  error_kind?: string | null;
  prompt_tokens?: number;
  completion_tokens?: number;
  prompt_estimated?: number | null;
  prompt_reported?: number | null;
  completion_estimated?: number | null;
  completion_reported?: number | null;
  cached_reported?: number | null;
  tokens_estimated?: boolean;
  prompt_accuracy?: number | null;
  completion_accuracy?: number | null;
  cost_usd?: number | null;
  cache_hit?: boolean;
  latency_us?: number | null;
  ttft_us?: number | null;
  overhead_us?: number | null;
  finish_reason?: string | null;
  preview?: string | null;
  /** The application that sent it (from its User-Agent) and the API it spoke. */
  client_app?: string | null;
  client_api?: string;
  tokens_saved?: number;
  cost_saved_usd?: number;
}

/** A request refused before it had a model (request.refused): unknown route or model, unreadable body. */
export interface Refusal {
  at_ms: number;
  method: string;
  path: string;
  status: number;
  code: string;
  message: string;
  client_app: string | null;
}

export interface LiveReq {
  id: number;
  started_at_ms: number;
  model: string;
  provider: string;
  streaming: boolean;
  completion_tokens?: number;
}

export interface Today {
  since_ms: number;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens: number;
  cost_usd: number;
}

export interface Accuracy {
  model: string;
  samples: number;
  ratio?: number | null;
  prompt_accuracy?: number | null;
  completion_accuracy?: number | null;
}

export interface ModelInfo {
  key: string;
  provider: string;
  upstream_id?: string;
  context_window?: number | null;
  capabilities?: string[];
  prices?: { input?: number | null; output?: number | null; cached_input?: number | null } | null;
  key_ready?: boolean;
}

export interface Alert {
  id: number;
  kind: string;
  severity: string;
  session_id?: number | null;
  message: string;
  value?: number | null;
  threshold?: number | null;
  fired_at_ms: number;
  resolved_at_ms?: number | null;
}

export interface Percentiles {
  p50?: number;
  p95?: number;
  p99?: number;
  count?: number;
}

export interface Stats {
  uptime_s?: number;
  requests_total?: number;
  requests_per_s?: number;
  error_rate?: number;
  open_requests?: number;
  rss_bytes?: number;
  dashboard_clients?: number;
  store?: { queue_depth?: number; dropped?: number };
  latency_us?: Percentiles;
  overhead_us?: Percentiles;
  ttft_us?: Percentiles;
  cache?: { hits?: number; misses?: number };
}

export interface Init {
  server?: { version?: string; started_at_ms?: number; store?: boolean };
  active_session_id?: number | null;
  sessions?: Session[];
  sessions_total?: number;
  today?: Today | null;
  totals?: { requests?: number; prompt_tokens?: number; completion_tokens?: number; cost_usd?: number };
  saved?: { tokens_saved: number; cost_saved_usd: number };
  recent?: Rec[];
  selected_session_id?: number | null;
  session_requests?: unknown[];
  live?: LiveReq[];
  accuracy?: Accuracy[];
  models?: ModelInfo[];
  alerts?: Alert[];
  stats?: Stats;
}

export interface Envelope {
  type: string;
  seq: number;
  ts: number;
  data: unknown;
}

/** Token and cost sums of GET /api/usage. */
export interface UsageTotals {
  requests: number;
  input_tokens: number;
  output_tokens: number;
  cache_creation_tokens: number;
  cache_read_tokens: number;
  total_tokens: number;
  cost_usd: number;
  agent_cost_usd: number;
}

export interface UsageRow extends UsageTotals {
  key: string;
  sources: string[];
  models: string[];
}

export interface UsageReport {
  period: string;
  timezone: string;
  rows: UsageRow[];
  totals: UsageTotals;
}

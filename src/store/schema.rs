//! The versioned schema. `MIGRATIONS[i]` upgrades a database from version `i` to `i + 1`; version 0 is an
//! empty file. Migrations only ever get appended: a released one is never edited.

/// The schema version this build writes.
pub const LATEST_VERSION: i64 = MIGRATIONS.len() as i64;

pub const MIGRATIONS: &[&str] = &[
    // v1: sessions with incrementally maintained aggregates, one row per request.
    r#"
CREATE TABLE sessions (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    name              TEXT,
    model             TEXT,
    created_at        INTEGER NOT NULL,
    last_activity     INTEGER NOT NULL,
    source            TEXT NOT NULL CHECK (source IN ('manual', 'client', 'conversation', 'active')),
    client_key        TEXT UNIQUE,
    request_count     INTEGER NOT NULL DEFAULT 0,
    error_count       INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0,
    context_tokens    INTEGER NOT NULL DEFAULT 0,
    active            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_last_activity ON sessions (last_activity);

CREATE TABLE requests (
    id                   INTEGER PRIMARY KEY,
    record_id            INTEGER NOT NULL,
    session_id           INTEGER REFERENCES sessions (id) ON DELETE CASCADE,
    started_at           INTEGER NOT NULL,
    model                TEXT NOT NULL,
    provider             TEXT NOT NULL,
    upstream_model       TEXT NOT NULL,
    streaming            INTEGER NOT NULL,
    status               INTEGER NOT NULL,
    error_kind           TEXT,
    prompt_estimated     INTEGER NOT NULL,
    prompt_calibrated    INTEGER NOT NULL,
    calibration_ratio    REAL,
    prompt_reported      INTEGER,
    completion_estimated INTEGER NOT NULL,
    completion_reported  INTEGER,
    cached_reported      INTEGER,
    reasoning_estimated  INTEGER NOT NULL,
    reasoning_reported   INTEGER,
    prompt_tokens        INTEGER NOT NULL,
    completion_tokens    INTEGER NOT NULL,
    tokens_estimated     INTEGER NOT NULL,
    prompt_accuracy      REAL,
    completion_accuracy  REAL,
    tokenizer            TEXT NOT NULL,
    tokenizer_exact      INTEGER NOT NULL,
    cost_usd             REAL NOT NULL,
    cost_estimated       INTEGER NOT NULL,
    counting_us          INTEGER NOT NULL,
    latency_us           INTEGER NOT NULL,
    ttft_us              INTEGER,
    upstream_headers_us  INTEGER,
    attempts             INTEGER NOT NULL,
    tool_call_fixes      INTEGER NOT NULL,
    usage_injected       INTEGER NOT NULL,
    finish_reason        TEXT,
    response_bytes       INTEGER NOT NULL,
    preview              TEXT,
    client_session       TEXT,
    message_count        INTEGER NOT NULL
);
CREATE INDEX requests_by_session_time ON requests (session_id, started_at);
CREATE INDEX requests_by_time ON requests (started_at);
"#,
    // v2: the context gauge's denominator, sort orders of the session list, at most one active session, alerts,
    // the upstream/proxy time split.
    r#"
ALTER TABLE sessions ADD COLUMN context_window INTEGER;
ALTER TABLE requests ADD COLUMN upstream_us INTEGER;
ALTER TABLE requests ADD COLUMN overhead_us INTEGER;
CREATE INDEX sessions_by_created_at ON sessions (created_at);
CREATE INDEX sessions_by_cost ON sessions (cost_usd);
CREATE INDEX sessions_by_requests ON sessions (request_count);
UPDATE sessions SET active = 0 WHERE active = 1 AND id <> (SELECT max(id) FROM sessions WHERE active = 1);
CREATE UNIQUE INDEX sessions_one_active ON sessions (active) WHERE active = 1;

CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error')),
    session_id  INTEGER REFERENCES sessions (id) ON DELETE SET NULL,
    message     TEXT NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX alerts_by_time ON alerts (created_at);
CREATE INDEX alerts_by_session ON alerts (session_id);
"#,
    // v3: answers served from the response cache.
    r#"
ALTER TABLE requests ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;
"#,
    // v4: the name of the virtual key a request authenticated with.
    r#"
ALTER TABLE requests ADD COLUMN virtual_key TEXT;
"#,
    // v5: alerts from the alert engine: `critical` severity (SQLite cannot change a CHECK in place: the table is
    // rebuilt), the firing time named as such, what fired (value, threshold, subject), how it ended, its ack.
    // v2's context alerts fired at 90 %.
    r#"
CREATE TABLE alerts_v5 (
    id          INTEGER PRIMARY KEY,
    fired_at    INTEGER NOT NULL,
    resolved_at INTEGER,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    session_id  INTEGER REFERENCES sessions (id) ON DELETE SET NULL,
    subject     TEXT,
    message     TEXT NOT NULL,
    value       REAL,
    threshold   REAL,
    resolution  TEXT,
    acked_at    INTEGER
);
INSERT INTO alerts_v5 (id, fired_at, resolved_at, kind, severity, session_id, message, threshold)
    SELECT id, created_at, resolved_at, kind, CASE severity WHEN 'error' THEN 'critical' ELSE severity END,
           session_id, message, CASE kind WHEN 'context' THEN 0.9 END
    FROM alerts;
DROP TABLE alerts;
ALTER TABLE alerts_v5 RENAME TO alerts;
CREATE INDEX alerts_by_time ON alerts (fired_at);
CREATE INDEX alerts_by_session ON alerts (session_id);
CREATE INDEX alerts_unresolved ON alerts (resolved_at) WHERE resolved_at IS NULL;
"#,
    // v6: context transforms: tokens before and after each, savings per request and session, per-session
    // settings, and the originals of masked output (encrypted when a key is configured).
    r#"
ALTER TABLE requests ADD COLUMN ctx_transforms TEXT;
ALTER TABLE requests ADD COLUMN ctx_tokens_before INTEGER;
ALTER TABLE requests ADD COLUMN ctx_after_masking INTEGER;
ALTER TABLE requests ADD COLUMN ctx_after_observation INTEGER;
ALTER TABLE requests ADD COLUMN ctx_after_compaction INTEGER;
ALTER TABLE requests ADD COLUMN ctx_tokens_after INTEGER;
ALTER TABLE requests ADD COLUMN ctx_masked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN ctx_observed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN ctx_compacted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN ctx_compaction TEXT;
ALTER TABLE requests ADD COLUMN ctx_error TEXT;
ALTER TABLE requests ADD COLUMN tokens_saved INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN cost_saved_usd REAL NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN tokens_saved INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN cost_saved_usd REAL NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN context_settings TEXT;

CREATE TABLE masked_content (
    hash       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    role       TEXT NOT NULL,
    tool       TEXT,
    tokens     INTEGER NOT NULL,
    preview    TEXT,
    content    BLOB NOT NULL,
    encrypted  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX masked_content_by_time ON masked_content (created_at);
"#,
    // 6 → 7: which application sent each request and which API it spoke; a session keeps its first client's.
    r#"
ALTER TABLE requests ADD COLUMN client_app TEXT;
ALTER TABLE requests ADD COLUMN client_api TEXT NOT NULL DEFAULT 'chat';
ALTER TABLE sessions ADD COLUMN client_app TEXT;
"#,
    // 7 → 8: usage imported from the agents' own records (src/store/ledgers.rs).
    super::ledgers::MIGRATION,
    // 8 → 9: Responses API state (`store: true`): each response's object and the conversation up to it, for
    // `previous_response_id` and `GET /v1/responses/{id}`; the tools a translation dropped, per request.
    r#"
CREATE TABLE responses (
    id         TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    response   TEXT NOT NULL,
    items      TEXT NOT NULL,
    input_from INTEGER NOT NULL DEFAULT 0,
    input_to   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX responses_by_time ON responses (created_at);
ALTER TABLE requests ADD COLUMN dropped_tools INTEGER NOT NULL DEFAULT 0;
"#,
    // 9 → 10: what the proxy removed from a request for its provider (Anthropic fields and beta features it does
    // not take, Anthropic fields a translation has no equivalent for), and the cache writes the provider reported
    // (Anthropic's `cache_creation_input_tokens`), per request.
    r#"
ALTER TABLE requests ADD COLUMN dropped_fields INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN cache_write_reported INTEGER;
"#,
    // 10 → 11: each session's conversation tip (the hash of its latest request's whole message list), so that a
    // conversation continued on another instance, or after a restart, is found in the database when the
    // writer's in-memory index does not know it.
    r#"
ALTER TABLE sessions ADD COLUMN conversation_tip INTEGER;
CREATE INDEX sessions_by_conversation_tip ON sessions (conversation_tip);
"#,
];

/// The columns of `requests` in the order the writer binds them (`id` excluded).
pub const REQUEST_COLUMNS: &[&str] = &[
    "record_id",
    "session_id",
    "started_at",
    "model",
    "provider",
    "upstream_model",
    "streaming",
    "status",
    "error_kind",
    "prompt_estimated",
    "prompt_calibrated",
    "calibration_ratio",
    "prompt_reported",
    "completion_estimated",
    "completion_reported",
    "cached_reported",
    "reasoning_estimated",
    "reasoning_reported",
    "prompt_tokens",
    "completion_tokens",
    "tokens_estimated",
    "prompt_accuracy",
    "completion_accuracy",
    "tokenizer",
    "tokenizer_exact",
    "cost_usd",
    "cost_estimated",
    "counting_us",
    "latency_us",
    "ttft_us",
    "upstream_headers_us",
    "attempts",
    "tool_call_fixes",
    "usage_injected",
    "finish_reason",
    "response_bytes",
    "preview",
    "client_session",
    "message_count",
    "upstream_us",
    "overhead_us",
    "cache_hit",
    "virtual_key",
    "ctx_transforms",
    "ctx_tokens_before",
    "ctx_after_masking",
    "ctx_after_observation",
    "ctx_after_compaction",
    "ctx_tokens_after",
    "ctx_masked",
    "ctx_observed",
    "ctx_compacted",
    "ctx_compaction",
    "ctx_error",
    "tokens_saved",
    "cost_saved_usd",
    "client_app",
    "client_api",
    "dropped_tools",
    "dropped_fields",
    "cache_write_reported",
];

/// Columns read back as booleans.
pub const BOOLEAN_COLUMNS: &[&str] = &[
    "cache_hit",
    "streaming",
    "tokens_estimated",
    "tokenizer_exact",
    "cost_estimated",
    "usage_injected",
    "active",
];

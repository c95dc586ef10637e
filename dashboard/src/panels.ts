// The read-only panels: gauge, totals, performance, breakdown, accuracy, alerts, live log.

import { byId, fill, h, setText } from "./dom";
import {
  DASH,
  fmtBytes,
  fmtClock,
  fmtCompact,
  fmtInt,
  fmtMs,
  fmtPct,
  fmtRate,
  fmtUptime,
  fmtUs,
  fmtUsd,
  fmtWindow,
} from "./format";
import { type LogEntry, dirty, historyRecords, newerFirst, shownSession, shownSessionId, state } from "./state";
import type { Percentiles, Rec } from "./types";

// ---------------------------------------------------------------- gauge

export function gaugeLevel(used: number): "ok" | "warn" | "high" {
  return used < 0.5 ? "ok" : used < 0.8 ? "warn" : "high";
}

export function renderGauge(): void {
  const s = shownSession();
  const gauge = byId("gauge");
  const fill = byId("gauge-fill");
  if (!s) {
    setText(byId("gauge-session"), state.storeEnabled ? "no session yet" : "store disabled: no sessions");
    setText(byId("gauge-pct"), DASH);
    setText(byId("gauge-tokens"), "— / —");
    setText(byId("gauge-model"), "");
    fill.setAttribute("stroke-dasharray", "0 100");
    gauge.dataset.level = "none";
    gauge.setAttribute("aria-valuenow", "0");
    gauge.setAttribute("aria-valuetext", "no session");
    for (const b of byId("gauge-badges").querySelectorAll<HTMLElement>(".badge")) b.classList.remove("on");
    return;
  }
  const window = s.context_window ?? null;
  const used = s.context_used ?? (window ? s.context_tokens / window : null);
  setText(byId("gauge-session"), `#${s.id} ${s.name}${s.active ? " · active" : ""}`);
  setText(byId("gauge-tokens"), `${fmtInt(s.context_tokens)} / ${window ? fmtInt(window) : "unknown window"}`);
  setText(byId("gauge-model"), s.model ? `${s.model}${window ? ` · ${fmtWindow(window)} window` : ""}` : "");
  if (used === null) {
    setText(byId("gauge-pct"), DASH);
    fill.setAttribute("stroke-dasharray", "0 100");
    gauge.dataset.level = "none";
    gauge.setAttribute("aria-valuenow", "0");
    gauge.setAttribute("aria-valuetext", `${fmtInt(s.context_tokens)} tokens, window unknown`);
  } else {
    const pct = Math.min(100, used * 100);
    setText(byId("gauge-pct"), fmtPct(used));
    fill.setAttribute("stroke-dasharray", `${pct.toFixed(2)} 100`);
    gauge.dataset.level = gaugeLevel(used);
    gauge.setAttribute("aria-valuenow", pct.toFixed(1));
    gauge.setAttribute("aria-valuetext", `${fmtPct(used)}: ${fmtInt(s.context_tokens)} of ${fmtInt(window)} tokens`);
  }
  for (const b of byId("gauge-badges").querySelectorAll<HTMLElement>(".badge")) {
    const threshold = Number(b.dataset.threshold);
    b.classList.toggle("on", used !== null && used >= threshold);
  }
}

// ---------------------------------------------------------------- totals

export function renderTotals(): void {
  const s = shownSession();
  setText(byId("t-s-prompt"), s ? fmtInt(s.prompt_tokens) : DASH);
  setText(byId("t-s-completion"), s ? fmtInt(s.completion_tokens) : DASH);
  setText(byId("t-s-cached"), s ? fmtInt(s.cached_tokens) : DASH);
  setText(byId("t-s-requests"), s ? `${fmtInt(s.request_count)}${s.error_count ? ` (${s.error_count} err)` : ""}` : DASH);
  setText(byId("t-s-cost"), s ? fmtUsd(s.cost_usd) : DASH);
  const t = state.today;
  setText(byId("t-d-prompt"), t ? fmtInt(t.prompt_tokens) : DASH);
  setText(byId("t-d-completion"), t ? fmtInt(t.completion_tokens) : DASH);
  setText(byId("t-d-cached"), t ? fmtInt(t.cached_tokens) : DASH);
  setText(byId("t-d-requests"), t ? fmtInt(t.requests) : DASH);
  setText(byId("t-d-cost"), t ? fmtUsd(t.cost_usd) : DASH);
}

// ---------------------------------------------------------------- performance

function pcts(prefix: string, p: Percentiles | undefined): void {
  setText(byId(`${prefix}-50`), fmtUs(p?.p50));
  setText(byId(`${prefix}-95`), fmtUs(p?.p95));
  setText(byId(`${prefix}-99`), fmtUs(p?.p99));
}

export function renderPerf(): void {
  const s = state.stats;
  setText(byId("p-rps"), fmtRate(s?.requests_per_s));
  setText(byId("p-open"), s?.open_requests === undefined ? DASH : fmtInt(s.open_requests));
  setText(byId("p-rss"), fmtBytes(s?.rss_bytes));
  const dropped = s?.store?.dropped;
  const droppedEl = byId("p-dropped");
  setText(droppedEl, dropped === undefined ? (state.storeEnabled ? DASH : "no store") : fmtInt(dropped));
  droppedEl.classList.toggle("bad", (dropped ?? 0) > 0);
  pcts("p-lat", s?.latency_us);
  pcts("p-ttft", s?.ttft_us);
  pcts("p-ovh", s?.overhead_us);
  const parts: string[] = [];
  if (s?.latency_us?.count !== undefined) parts.push(`${fmtInt(s.latency_us.count)} req/min`);
  if (s?.error_rate !== undefined) parts.push(`errors ${fmtPct(s.error_rate)}`);
  if (s?.store?.queue_depth !== undefined) parts.push(`store queue ${fmtInt(s.store.queue_depth)}`);
  if (s?.cache && (s.cache.hits !== undefined || s.cache.misses !== undefined))
    parts.push(`cache ${fmtInt(s.cache.hits ?? 0)}/${fmtInt((s.cache.hits ?? 0) + (s.cache.misses ?? 0))}`);
  if (s?.dashboard_clients !== undefined) parts.push(`${s.dashboard_clients} dashboard${s.dashboard_clients === 1 ? "" : "s"}`);
  if (s?.uptime_s !== undefined) parts.push(`up ${fmtUptime(s.uptime_s)}`);
  setText(byId("perf-foot"), parts.join(" · "));
}

// ---------------------------------------------------------------- breakdown by model/provider

export function renderBreakdown(): void {
  const { scope, records } = historyRecords();
  const groups = new Map<string, { model: string; provider: string; requests: number; tokens: number; cost: number }>();
  for (const r of records) {
    const key = `${r.provider}\u0000${r.model}`;
    const g = groups.get(key) ?? { model: r.model, provider: r.provider, requests: 0, tokens: 0, cost: 0 };
    g.requests += 1;
    g.tokens += (r.prompt_tokens ?? 0) + (r.completion_tokens ?? 0);
    g.cost += r.cost_usd ?? 0;
    groups.set(key, g);
  }
  const list = [...groups.values()].sort((a, b) => b.tokens - a.tokens);
  const max = Math.max(1, ...list.map((g) => g.tokens));
  setText(byId("breakdown-sub"), scope === "session" ? "this session" : "recent requests");
  byId("breakdown-empty").hidden = list.length > 0;
  fill(
    byId("breakdown"),
    ...list.map((g) => {
      const bar = h("span", { class: "bar-fill" });
      bar.style.width = `${Math.max(1, (g.tokens / max) * 100).toFixed(1)}%`;
      return h(
        "li",
        { class: "bar-row" },
        h(
          "div",
          { class: "bar-label" },
          h("span", { class: "bar-model", title: g.model }, g.model),
          h("span", { class: `provider-chip`, "data-provider": g.provider }, g.provider),
        ),
        h("div", { class: "bar-track" }, bar),
        h(
          "div",
          { class: "bar-figures" },
          `${fmtCompact(g.tokens)} tok · ${g.requests} req · ${fmtUsd(g.cost)}`,
        ),
      );
    }),
  );
}

// ---------------------------------------------------------------- accuracy

function accuracyCell(value: number | null | undefined): HTMLTableCellElement {
  if (value === null || value === undefined) return h("td", { class: "num muted" }, DASH);
  // An accuracy above 1 means an over-estimate: the distance from 1 is what matters.
  const closeness = 1 - Math.abs(1 - value);
  const level = closeness >= 0.85 ? "ok" : closeness >= 0.7 ? "warn" : "high";
  return h("td", { class: `num acc acc-${level}` }, fmtPct(value));
}

export function renderAccuracy(): void {
  const rows = [...state.accuracy.values()].sort((a, b) => b.samples - a.samples);
  byId("accuracy-empty").hidden = rows.length > 0;
  fill(
    byId("accuracy"),
    ...rows.map((a) =>
      h(
        "tr",
        null,
        h("th", { scope: "row", class: "model-cell", title: a.model }, a.model),
        h("td", { class: "num" }, fmtInt(a.samples)),
        accuracyCell(a.prompt_accuracy),
        accuracyCell(a.completion_accuracy),
        h("td", { class: "num" }, a.ratio === null || a.ratio === undefined ? DASH : `×${a.ratio.toFixed(3)}`),
      ),
    ),
  );
}

// ---------------------------------------------------------------- alerts

const dismissed = new Set<number>();

export function renderAlerts(): void {
  const list = [...state.alerts.values()].filter((a) => !dismissed.has(a.id)).sort((a, b) => b.fired_at_ms - a.fired_at_ms);
  const button = byId<HTMLButtonElement>("alerts-button");
  button.hidden = state.alerts.size === 0;
  setText(byId("alerts-count"), String(state.alerts.size));
  fill(
    byId("alerts"),
    ...list.map((a) => {
      const close = h("button", { type: "button", class: "btn btn-icon btn-small", "aria-label": "Dismiss alert" }, "✕");
      close.addEventListener("click", () => {
        dismissed.add(a.id);
        renderAlerts();
      });
      return h(
        "div",
        { class: `alert alert-${a.severity}`, role: a.severity === "critical" ? "alert" : null },
        h("span", { class: "alert-kind" }, a.severity),
        h("span", { class: "alert-message" }, a.message),
        h("span", { class: "muted alert-time" }, fmtClock(a.fired_at_ms)),
        close,
      );
    }),
  );
}

export function showAllAlerts(): void {
  dismissed.clear();
  renderAlerts();
  byId("alerts").scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------- live log

const rows = new Map<number, HTMLTableRowElement>();

function sessionName(id: number | null): string {
  if (id === null) return "";
  const s = state.sessions.get(id);
  return s ? s.name : `#${id}`;
}

function tokenCell(value: number | undefined, estimated: number | null | undefined, reported: number | null | undefined): HTMLTableCellElement {
  const td = h("td", { class: "num" });
  td.appendChild(h("span", { class: "tok" }, fmtInt(value)));
  if (reported !== null && reported !== undefined && estimated !== null && estimated !== undefined) {
    td.appendChild(h("span", { class: "est", title: "our estimate (before the provider's usage)" }, `est ${fmtInt(estimated)}`));
  } else if (estimated !== null && estimated !== undefined) {
    td.appendChild(h("span", { class: "est est-only", title: "the provider reported no usage: estimated" }, "estimated"));
  }
  return td;
}

function statusCell(e: LogEntry): HTMLTableCellElement {
  if (e.refusal) {
    return h("td", null, h("span", { class: "pill pill-bad", title: e.refusal.message }, `${e.refusal.status} ${e.refusal.code}`));
  }
  if (!e.rec) {
    return h("td", null, h("span", { class: "pill pill-live" }, h("span", { class: "pulse", "aria-hidden": "true" }), e.streaming ? "streaming" : "waiting"));
  }
  const r = e.rec;
  const status = r.status ?? 0;
  const label = r.error_kind ? `${status || ""} ${r.error_kind}`.trim() : String(status);
  const kind = e.failed ? "pill-bad" : r.cache_hit ? "pill-cache" : "pill-ok";
  return h("td", null, h("span", { class: `pill ${kind}`, title: r.finish_reason ? `finish: ${r.finish_reason}` : null }, r.cache_hit ? `${label} cache` : label));
}

function buildRow(e: LogEntry): HTMLTableRowElement {
  const r: Rec | null = e.rec;
  const tr = h("tr", {
    "data-id": e.id,
    "data-at": e.started_at_ms,
    class: e.rec || e.refusal ? (e.failed ? "row-failed" : "") : "row-live",
  });
  const app = r?.client_app ?? e.refusal?.client_app ?? null;
  tr.appendChild(h("td", { class: "time" }, fmtClock(e.started_at_ms)));
  tr.appendChild(
    h(
      "td",
      { class: "model-cell" },
      h("span", { class: "model-name", title: e.model }, e.model),
      h("span", { class: "sub" }, `${e.provider}${e.streaming ? " · stream" : ""}${app ? ` · ${app}` : ""}`),
    ),
  );
  tr.appendChild(h("td", { class: "session-cell" }, e.session_id === null ? "" : h("span", { class: "tag", title: `session #${e.session_id}` }, sessionName(e.session_id))));
  tr.appendChild(statusCell(e));
  if (r) {
    tr.appendChild(tokenCell(r.prompt_tokens, r.prompt_estimated, r.prompt_reported));
    tr.appendChild(tokenCell(r.completion_tokens, r.completion_estimated, r.completion_reported));
    tr.appendChild(h("td", { class: "num" }, r.cached_reported ? fmtInt(r.cached_reported) : ""));
    tr.appendChild(h("td", { class: "num" }, fmtUs(r.ttft_us)));
    tr.appendChild(h("td", { class: "num" }, fmtUs(r.latency_us)));
    tr.appendChild(h("td", { class: "num" }, fmtUsd(r.cost_usd)));
    tr.appendChild(h("td", { class: "preview", title: r.preview ?? "" }, r.preview ?? ""));
  } else if (e.refusal) {
    for (let i = 0; i < 6; i++) tr.appendChild(h("td", { class: "num" }, ""));
    tr.appendChild(h("td", { class: "preview", title: e.refusal.message }, e.refusal.message));
  } else {
    tr.appendChild(h("td", { class: "num muted" }, "…"));
    tr.appendChild(h("td", { class: "num" }, h("span", { class: "tok live-count" }, fmtInt(e.completion_live))));
    tr.appendChild(h("td", { class: "num" }, ""));
    tr.appendChild(h("td", { class: "num muted" }, ""));
    tr.appendChild(h("td", { class: "num muted elapsed" }, fmtMs(e.elapsed_ms)));
    tr.appendChild(h("td", { class: "num" }, ""));
    tr.appendChild(h("td", { class: "preview" }, ""));
  }
  return tr;
}

function visibleEntries(): LogEntry[] {
  const only = byId<HTMLInputElement>("log-session-only").checked;
  const shown = shownSessionId();
  const list = [...state.log.values()].filter((e) => !only || (shown !== null && e.session_id === shown));
  return list.sort(newerFirst);
}

export function renderLog(): void {
  const body = byId("log");
  if (dirty.logAll) {
    rows.clear();
    const entries = visibleEntries();
    fill(body, ...entries.map((e) => {
      const tr = buildRow(e);
      rows.set(e.id, tr);
      return tr;
    }));
  } else {
    const only = byId<HTMLInputElement>("log-session-only").checked;
    for (const id of dirty.log) {
      const e = state.log.get(id);
      const old = rows.get(id);
      if (!e) {
        old?.remove();
        rows.delete(id);
        continue;
      }
      if (only && e.session_id !== shownSessionId()) {
        old?.remove();
        rows.delete(id);
        continue;
      }
      if (old && !e.rec && !e.refusal && old.classList.contains("row-live")) {
        // in-place count-up, no rebuild
        const count = old.querySelector(".live-count");
        if (count) setText(count, fmtInt(e.completion_live));
        const elapsed = old.querySelector(".elapsed");
        if (elapsed) setText(elapsed, fmtMs(e.elapsed_ms));
        continue;
      }
      const tr = buildRow(e);
      rows.set(id, tr);
      if (old) {
        old.replaceWith(tr);
      } else {
        // newest first: insert before the first older row
        let before: Element | null = null;
        for (const child of body.children) {
          const row = child as HTMLElement;
          const at = Number(row.dataset.at);
          if (at < e.started_at_ms || (at === e.started_at_ms && Number(row.dataset.id) < id)) {
            before = child;
            break;
          }
        }
        body.insertBefore(tr, before);
      }
    }
    // the state drops old rows; mirror that
    for (const [id, tr] of rows) {
      if (!state.log.has(id)) {
        tr.remove();
        rows.delete(id);
      }
    }
  }
  const live = [...state.log.values()].filter((e) => !e.rec && !e.refusal).length;
  setText(byId("log-sub"), `${rows.size} shown${live ? ` · ${live} in flight` : ""}`);
  byId("log-empty").hidden = rows.size > 0;
}

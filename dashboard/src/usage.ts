// "Usage by source": the proxied traffic and the usage the coding agents recorded on disk (imported with
// `kimi-proxy import` or followed by `serve`), per source, or per project of one source; filters by source and
// project. Reads GET /api/usage (docs/api.md) on load, on a filter change and every 30 s.

import { api } from "./api";
import { byId, fill, h, setText } from "./dom";
import { fmtCompact, fmtInt, fmtUsd } from "./format";
import type { UsageReport } from "./types";

const REFRESH_MS = 30_000;
let token = 0;

function zone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone ?? "";
  } catch {
    return "";
  }
}

async function load(): Promise<void> {
  const source = byId<HTMLSelectElement>("usage-source").value;
  const project = byId<HTMLInputElement>("usage-project").value.trim();
  const mine = ++token;
  let report: UsageReport;
  try {
    report = await api.usage({ period: source ? "project" : "source", source, project, timezone: zone() });
  } catch (e) {
    if (mine === token) setText(byId("usage-sub"), e instanceof Error ? e.message : String(e));
    return;
  }
  if (mine !== token) return;
  setText(byId("usage-sub"), source ? `${source}, by project` : "all sources");
  byId("usage-empty").hidden = report.rows.length > 0;
  const rows = report.rows.map((r) =>
    h(
      "tr",
      null,
      h("th", { scope: "row", title: r.key }, r.key),
      h("td", { class: "num" }, fmtInt(r.requests)),
      h("td", { class: "num" }, fmtCompact(r.input_tokens)),
      h("td", { class: "num" }, fmtCompact(r.output_tokens)),
      h("td", { class: "num" }, fmtCompact(r.cache_creation_tokens)),
      h("td", { class: "num" }, fmtCompact(r.cache_read_tokens)),
      h("td", { class: "num" }, fmtUsd(r.cost_usd)),
    ),
  );
  if (report.rows.length > 1) {
    const t = report.totals;
    rows.push(
      h(
        "tr",
        { class: "total-row" },
        h("th", { scope: "row" }, "total"),
        h("td", { class: "num" }, fmtInt(t.requests)),
        h("td", { class: "num" }, fmtCompact(t.input_tokens)),
        h("td", { class: "num" }, fmtCompact(t.output_tokens)),
        h("td", { class: "num" }, fmtCompact(t.cache_creation_tokens)),
        h("td", { class: "num" }, fmtCompact(t.cache_read_tokens)),
        h("td", { class: "num" }, fmtUsd(t.cost_usd)),
      ),
    );
  }
  fill(byId("usage"), ...rows);
  // Offer the sources seen (the agents' names come from the data).
  if (!source) {
    const select = byId<HTMLSelectElement>("usage-source");
    const known = new Set(Array.from(select.options).map((o) => o.value));
    for (const r of report.rows) {
      if (!known.has(r.key)) select.appendChild(h("option", { value: r.key }, r.key));
    }
  }
}

export function initUsage(): void {
  byId("usage-source").addEventListener("change", () => void load());
  let typing = 0;
  byId("usage-project").addEventListener("input", () => {
    window.clearTimeout(typing);
    typing = window.setTimeout(() => void load(), 300);
  });
  void load();
  window.setInterval(() => void load(), REFRESH_MS);
}

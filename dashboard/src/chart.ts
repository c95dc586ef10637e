// Token history: prompt tokens (bars, left axis) and completion tokens (line, right axis) per request, with uPlot.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { byId, setText } from "./dom";
import { fmtClock, fmtCompact, fmtInt } from "./format";
import { historyRecords } from "./state";
import type { Rec } from "./types";

const MAX_POINTS = 60;

let plot: uPlot | null = null;
let shown: Rec[] = [];
let observer: ResizeObserver | null = null;

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

function build(container: HTMLElement): uPlot {
  const prompt = cssVar("--chart-prompt");
  const completion = cssVar("--chart-completion");
  const grid = cssVar("--chart-grid");
  const text = cssVar("--muted");
  const axis = (side: 1 | 3, scale: string, label: string): uPlot.Axis => ({
    scale,
    side,
    label,
    labelSize: 14,
    labelFont: "11px system-ui, sans-serif",
    font: "11px system-ui, sans-serif",
    stroke: text,
    size: 48,
    grid: side === 3 ? { stroke: grid, width: 1 } : { show: false },
    ticks: { show: false },
    values: (_u, splits) => splits.map((v) => fmtCompact(v)),
  });
  const opts: uPlot.Options = {
    width: Math.max(200, container.clientWidth),
    height: 220,
    legend: { show: true, live: true },
    cursor: { points: { size: 6 }, drag: { x: false, y: false } },
    scales: {
      x: { time: false },
      tok: { range: (_u, _min, max) => [0, Math.max(10, max * 1.1)] },
      out: { range: (_u, _min, max) => [0, Math.max(10, max * 1.1)] },
    },
    axes: [
      {
        stroke: text,
        font: "11px system-ui, sans-serif",
        grid: { show: false },
        ticks: { show: false },
        size: 28,
        values: (_u, splits) => splits.map((i) => {
          const r = shown[Math.round(i) - 1];
          return Number.isInteger(i) && r ? fmtClock(r.started_at_ms).slice(0, 5) : "";
        }),
      },
      axis(3, "tok", "prompt"),
      axis(1, "out", "completion"),
    ],
    series: [
      { label: "request", value: (_u, i) => {
        const r = i === null ? undefined : shown[Math.round(i) - 1];
        return r ? `${fmtClock(r.started_at_ms)} ${r.model}` : "—";
      } },
      {
        label: "prompt",
        scale: "tok",
        stroke: prompt,
        fill: `${prompt}55`,
        width: 1,
        paths: uPlot.paths.bars?.({ size: [0.7, 28], align: 0 }),
        points: { show: false },
        value: (_u, v) => (v === null ? "—" : fmtInt(v)),
      },
      {
        label: "completion",
        scale: "out",
        stroke: completion,
        width: 2,
        points: { show: true, size: 5, fill: completion },
        value: (_u, v) => (v === null ? "—" : fmtInt(v)),
      },
    ],
  };
  return new uPlot(opts, [[], [], []], container);
}

export function renderChart(rebuild = false): void {
  const container = byId("chart");
  const { scope, records } = historyRecords();
  shown = records.slice(-MAX_POINTS);
  setText(byId("chart-sub"), `${scope === "session" ? "this session" : "recent requests"} · last ${shown.length}`);
  byId("chart-empty").hidden = shown.length > 0;
  container.dataset.points = String(shown.length);
  if (rebuild && plot) {
    plot.destroy();
    plot = null;
  }
  if (!plot) {
    plot = build(container);
    observer?.disconnect();
    observer = new ResizeObserver(() => {
      if (plot && container.clientWidth > 0) plot.setSize({ width: container.clientWidth, height: 220 });
    });
    observer.observe(container);
  }
  const xs = shown.map((_, i) => i + 1);
  plot.setData([xs, shown.map((r) => r.prompt_tokens ?? null), shown.map((r) => r.completion_tokens ?? null)]);
  if (xs.length > 0) plot.setScale("x", { min: 0.5, max: Math.max(xs.length, 8) + 0.5 });
}

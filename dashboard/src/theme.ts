// Light, dark, or the system's choice (prefers-color-scheme), remembered in localStorage.

import { byId } from "./dom";

type Mode = "auto" | "light" | "dark";
const KEY = "kimi-proxy.theme";
const ORDER: Mode[] = ["auto", "light", "dark"];

function stored(): Mode {
  try {
    const v = localStorage.getItem(KEY);
    return v === "light" || v === "dark" ? v : "auto";
  } catch {
    return "auto";
  }
}

function apply(mode: Mode): void {
  if (mode === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = mode;
  const label = `Colour theme: ${mode === "auto" ? "automatic" : mode} (click to change)`;
  const button = byId("theme-toggle");
  button.setAttribute("aria-label", label);
  button.title = label;
}

export function initTheme(onChange: () => void): void {
  let mode = stored();
  apply(mode);
  byId("theme-toggle").addEventListener("click", () => {
    mode = ORDER[(ORDER.indexOf(mode) + 1) % ORDER.length] ?? "auto";
    try {
      localStorage.setItem(KEY, mode);
    } catch {
      // private mode: the choice lasts for this page
    }
    apply(mode);
    onChange();
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", onChange);
}

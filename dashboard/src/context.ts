// Context savings: what the transforms saved (the shown session and all sessions), the session's own toggles
// (PUT /api/sessions/{id}/context) and a manual compaction with its before/after preview.

import { api, ApiError } from "./api";
import { byId, setText } from "./dom";
import { fmtInt, fmtUsd } from "./format";
import { open, restoreFocus, toast, wireDialog } from "./sessions";
import { putSession, shownSession, state } from "./state";
import type { ContextToggles, Session } from "./types";

const DASH = "—";
const KEYS = ["masking", "observation", "compaction"] as const;
type Key = (typeof KEYS)[number];

let render: () => void = () => {};
/** The session the compaction dialog is about. */
let compacting: Session | null = null;

function select(key: Key): HTMLSelectElement {
  return byId<HTMLSelectElement>(`ctx-${key}`);
}

function toValue(v: boolean | null | undefined): string {
  return v === true ? "on" : v === false ? "off" : "";
}

function fromValue(v: string): boolean | null {
  return v === "on" ? true : v === "off" ? false : null;
}

export function renderSavings(): void {
  const s = shownSession();
  setText(byId("savings-session"), s ? s.name : "no session");
  setText(byId("sv-s-tokens"), s && s.tokens_saved !== undefined ? fmtInt(s.tokens_saved) : DASH);
  setText(byId("sv-s-cost"), s && s.cost_saved_usd !== undefined ? fmtUsd(s.cost_saved_usd) : DASH);
  setText(byId("sv-a-tokens"), state.saved ? fmtInt(state.saved.tokens) : DASH);
  setText(byId("sv-a-cost"), state.saved ? fmtUsd(state.saved.cost) : DASH);
  const settings = s?.context_settings ?? null;
  for (const key of KEYS) {
    const el = select(key);
    el.disabled = !s || !state.storeEnabled;
    const value = toValue(settings?.[key]);
    if (el.value !== value) el.value = value;
  }
  byId<HTMLButtonElement>("btn-compact").disabled = !s || !state.storeEnabled;
}

async function saveToggles(changed: Key): Promise<void> {
  const s = shownSession();
  if (!s) return;
  const before = s.context_settings ?? null;
  const toggles: ContextToggles = {};
  for (const key of KEYS) toggles[key] = fromValue(select(key).value);
  // shown at once; put back if the server refuses
  s.context_settings = toggles;
  try {
    const answer = await api.setContext(s.id, toggles);
    const now = state.sessions.get(s.id);
    if (now) putSession({ ...now, context_settings: answer.settings });
    const label = select(changed).selectedOptions[0]?.textContent ?? "";
    toast(`${select(changed).closest("label")?.querySelector("span")?.textContent ?? changed}: ${label} for “${s.name}”.`);
  } catch (error) {
    s.context_settings = before;
    toast(`Saving the context settings failed: ${error instanceof ApiError ? error.message : String(error)}`, "error");
  }
  render();
}

function showPreviewState(text: string): void {
  setText(byId("compact-status"), text);
}

async function openCompact(): Promise<void> {
  const s = shownSession();
  if (!s) return;
  compacting = s;
  const confirmButton = byId<HTMLButtonElement>("compact-confirm");
  confirmButton.disabled = true;
  byId("compact-figures").hidden = true;
  byId("cp-summary-box").hidden = true;
  setText(byId("compact-error"), "");
  setText(byId("dlg-compact-title"), `Compact “${s.name}”`);
  showPreviewState("Computing the preview…");
  open(byId<HTMLDialogElement>("dlg-compact"), byId("compact-status"));
  try {
    const { preview: p } = await api.compactPreview(s.id);
    if (compacting !== s) return;
    setText(byId("cp-tokens-before"), fmtInt(p.tokens_before));
    setText(byId("cp-tokens-after"), fmtInt(p.tokens_after));
    setText(byId("cp-messages-before"), fmtInt(p.messages_before));
    setText(byId("cp-messages-after"), fmtInt(p.messages_after));
    byId("compact-figures").hidden = false;
    if (p.summary) {
      setText(byId("cp-summary"), p.summary);
      byId("cp-summary-box").hidden = false;
    }
    if (p.can_compact) {
      const share = p.tokens_before > 0 ? Math.round((100 * p.tokens_saved) / p.tokens_before) : 0;
      showPreviewState(
        `Compacting request #${p.record_id} (${p.model}) would save ${fmtInt(p.tokens_saved)} prompt tokens (${share}%). Confirm to compact the session's next request.`,
      );
      confirmButton.disabled = false;
      confirmButton.focus();
    } else {
      showPreviewState(`Nothing to compact in request #${p.record_id}: too few exchanges before the ones kept.`);
    }
  } catch (error) {
    showPreviewState("No preview.");
    setText(byId("compact-error"), error instanceof ApiError ? error.message : String(error));
  }
}

async function confirmCompact(): Promise<void> {
  const s = compacting;
  if (!s) return;
  const confirmButton = byId<HTMLButtonElement>("compact-confirm");
  confirmButton.disabled = true;
  try {
    await api.compact(s.id);
    byId<HTMLDialogElement>("dlg-compact").close();
    toast(`The next request of “${s.name}” will be compacted.`);
  } catch (error) {
    setText(byId("compact-error"), error instanceof ApiError ? error.message : String(error));
    confirmButton.disabled = false;
  }
}

export function initContext(rerender: () => void): void {
  render = rerender;
  for (const key of KEYS) select(key).addEventListener("change", () => void saveToggles(key));
  byId("btn-compact").addEventListener("click", () => void openCompact());
  const dialog = byId<HTMLDialogElement>("dlg-compact");
  wireDialog(dialog);
  dialog.addEventListener("close", () => {
    compacting = null;
    restoreFocus(dialog);
  });
  byId("form-compact").addEventListener("submit", (event) => {
    event.preventDefault();
    void confirmCompact();
  });
}

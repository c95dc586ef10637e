// Session selector, activation, export links and the dialogs: new session (model picker), manage (rename,
// delete one, delete several), confirm.

import { api, ApiError } from "./api";
import { byId, fill, h, setText } from "./dom";
import { fmtAgo, fmtCompact, fmtInt, fmtPrice, fmtUsd, fmtWindow } from "./format";
import { putSession, shownSession, shownSessionId, state } from "./state";
import type { ModelInfo, Session } from "./types";

export interface SessionHooks {
  /** The shown session changed (load its requests, tell the hub). */
  onShownChanged(): void;
  render(): void;
}

let hooks: SessionHooks;

/** Toasts shown at once; older ones give way. */
const TOASTS_MAX = 3;

/** A short message in the corner: newest on top, at most a few, each fading out after a while. */
export function toast(message: string, kind: "info" | "error" = "info"): void {
  const box = byId("toasts");
  const el = h("div", { class: `toast toast-${kind}` }, message);
  box.prepend(el);
  while (box.children.length > TOASTS_MAX) box.lastElementChild?.remove();
  window.setTimeout(() => {
    el.classList.add("toast-leaving");
    window.setTimeout(() => el.remove(), 400);
  }, kind === "error" ? 8000 : 4000);
}

function failed(error: unknown, what: string): void {
  const message = error instanceof ApiError ? error.message : String(error);
  toast(`${what}: ${message}`, "error");
}

// ---------------------------------------------------------------- selector and header buttons

const AUTO = "auto";

function sortedSessions(): Session[] {
  return [...state.sessions.values()].sort((a, b) => b.last_activity_ms - a.last_activity_ms || b.id - a.id);
}

export function renderSessionBar(): void {
  const select = byId<HTMLSelectElement>("session-select");
  const shown = shownSession();
  const wanted = state.chosenSessionId !== null && state.sessions.has(state.chosenSessionId) ? String(state.chosenSessionId) : AUTO;
  const options: HTMLOptionElement[] = [
    h("option", { value: AUTO }, shown && state.chosenSessionId === null ? `Follow activity (${shown.name})` : "Follow activity"),
  ];
  for (const s of sortedSessions()) {
    options.push(h("option", { value: String(s.id) }, `${s.active ? "● " : ""}${s.name}${s.client_app ? ` · ${s.client_app}` : ""} · #${s.id}`));
  }
  // rebuild only when the list changed, so an open native menu is not disturbed on every event
  const signature = options.map((o) => `${o.value}:${o.textContent}`).join("|");
  if (select.dataset.signature !== signature) {
    fill(select, ...options);
    select.dataset.signature = signature;
  }
  select.value = wanted;
  select.disabled = !state.storeEnabled;

  const activate = byId<HTMLButtonElement>("btn-activate");
  activate.disabled = !shown;
  setText(activate, shown?.active ? "Deactivate" : "Activate");
  activate.title = shown?.active
    ? "Stop routing requests without a client id to this session"
    : "Route requests without a client id to this session";
  byId<HTMLButtonElement>("btn-new-session").disabled = !state.storeEnabled;
  byId<HTMLButtonElement>("btn-manage").disabled = !state.storeEnabled;

  const id = shownSessionId();
  const csv = byId<HTMLAnchorElement>("export-csv");
  const json = byId<HTMLAnchorElement>("export-json");
  if (id === null) {
    csv.href = "/api/export?format=csv";
    json.href = "/api/export?format=json";
    csv.download = "kimi-proxy-requests.csv";
    json.download = "kimi-proxy-requests.json";
    setText(byId("export-label"), "Export all");
  } else {
    csv.href = `/api/sessions/${id}/export?format=csv`;
    json.href = `/api/sessions/${id}/export?format=json`;
    csv.download = `kimi-proxy-session-${id}.csv`;
    json.download = `kimi-proxy-session-${id}.json`;
    setText(byId("export-label"), `Export #${id}`);
  }
  for (const a of [csv, json]) {
    a.classList.toggle("disabled", !state.storeEnabled);
    if (!state.storeEnabled) a.removeAttribute("href");
  }
  if (byId<HTMLDialogElement>("dlg-manage").open) renderManage();
}

function choose(id: number | null): void {
  state.chosenSessionId = id;
  hooks.onShownChanged();
  hooks.render();
}

// ---------------------------------------------------------------- dialogs: shared behaviour

/** Closes on the ✕/Cancel buttons; Escape and the focus trap come with showModal(). Focus returns to the opener. */
export function wireDialog(dialog: HTMLDialogElement): void {
  for (const b of dialog.querySelectorAll<HTMLButtonElement>("[data-close]")) {
    b.addEventListener("click", () => dialog.close());
  }
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // click on the backdrop
  });
}

const openers = new WeakMap<HTMLDialogElement, Element | null>();
export function open(dialog: HTMLDialogElement, focus?: HTMLElement): void {
  openers.set(dialog, document.activeElement);
  dialog.showModal();
  focus?.focus();
}
export function restoreFocus(dialog: HTMLDialogElement): void {
  const opener = openers.get(dialog);
  if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
}

let confirmAction: (() => Promise<void>) | null = null;
function confirm(title: string, text: string, action: () => Promise<void>): void {
  setText(byId("dlg-confirm-title"), title);
  setText(byId("confirm-text"), text);
  confirmAction = action;
  open(byId<HTMLDialogElement>("dlg-confirm"), byId("confirm-ok"));
}

// ---------------------------------------------------------------- new session with the model picker

let chosenModel: string | null = null;

function modelMatches(m: ModelInfo, filter: string): boolean {
  if (!filter) return true;
  const hay = `${m.key} ${m.provider} ${m.upstream_id ?? ""} ${(m.capabilities ?? []).join(" ")}`.toLowerCase();
  return filter
    .toLowerCase()
    .split(/\s+/)
    .filter(Boolean)
    .every((word) => hay.includes(word));
}

function renderPicker(): void {
  const filter = byId<HTMLInputElement>("model-filter").value.trim();
  const picker = byId("model-picker");
  const byProvider = new Map<string, ModelInfo[]>();
  for (const m of state.models) {
    if (!modelMatches(m, filter)) continue;
    const list = byProvider.get(m.provider) ?? [];
    list.push(m);
    byProvider.set(m.provider, list);
  }
  const groups = [...byProvider.entries()].sort(([a], [b]) => a.localeCompare(b));
  if (groups.length === 0) {
    fill(picker, h("p", { class: "muted empty" }, state.models.length ? "No model matches the filter." : "Loading models…"));
    return;
  }
  fill(
    picker,
    ...groups.map(([provider, models]) =>
      h(
        "fieldset",
        { class: "provider-group" },
        h("legend", null, h("span", { class: "provider-chip", "data-provider": provider }, provider), ` ${models.length} model${models.length === 1 ? "" : "s"}`),
        ...models.map((m) => {
          const id = `model-${m.key.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
          const input = h("input", { type: "radio", name: "model", id, value: m.key, class: "visually-hidden" });
          input.checked = m.key === chosenModel;
          input.addEventListener("change", () => {
            chosenModel = m.key;
            setText(byId("model-chosen"), `Model: ${m.key}`);
          });
          const prices = m.prices;
          return h(
            "label",
            { class: "model-card", for: id },
            input,
            h("span", { class: "model-card-head" }, h("span", { class: "model-key" }, m.key), h("span", { class: "ctx" }, fmtWindow(m.context_window))),
            h(
              "span",
              { class: "model-card-meta" },
              ...(m.capabilities ?? []).map((c) => h("span", { class: "chip" }, c)),
              m.key_ready === false ? h("span", { class: "chip chip-warn", title: "the provider's key is not set" }, "no key") : null,
            ),
            prices ? h("span", { class: "price", title: "USD per million tokens: input / output (cached input)" }, priceText(prices)) : null,
          );
        }),
      ),
    ),
  );
}

function priceText(p: NonNullable<ModelInfo["prices"]>): string {
  if (!p.input && !p.output && !p.cached_input) return "no charge";
  const cached = p.cached_input !== undefined && p.cached_input !== null ? ` · ${fmtPrice(p.cached_input)} cached` : "";
  return `${fmtPrice(p.input)} in · ${fmtPrice(p.output)} out${cached} /M`;
}

async function openNew(): Promise<void> {
  chosenModel = null;
  byId<HTMLInputElement>("new-name").value = "";
  byId<HTMLInputElement>("model-filter").value = "";
  setText(byId("new-error"), "");
  setText(byId("model-chosen"), "No model: the session takes the model of its requests.");
  renderPicker();
  open(byId<HTMLDialogElement>("dlg-new"), byId("new-name"));
  if (state.models.length === 0) {
    try {
      state.models = await api.models();
    } catch (error) {
      failed(error, "Loading the models failed");
    }
    renderPicker();
  }
}

async function submitNew(): Promise<void> {
  const name = byId<HTMLInputElement>("new-name").value.trim();
  if (!name) {
    setText(byId("new-error"), "A name is required.");
    byId("new-name").focus();
    return;
  }
  const activate = byId<HTMLInputElement>("new-activate").checked;
  const submit = byId<HTMLButtonElement>("new-submit");
  submit.disabled = true;
  try {
    const session = await api.createSession(name, chosenModel, activate);
    putSession(session);
    if (activate) {
      for (const s of state.sessions.values()) if (s.id !== session.id) s.active = false;
      state.activeSessionId = session.id;
    }
    byId<HTMLDialogElement>("dlg-new").close();
    toast(`Session “${session.name}” created${activate ? " and active" : ""}.`);
    choose(session.id);
  } catch (error) {
    setText(byId("new-error"), error instanceof ApiError ? error.message : String(error));
  } finally {
    submit.disabled = false;
  }
}

// ---------------------------------------------------------------- manage: rename, delete one, delete several

let manageList: Session[] = [];
const selected = new Set<number>();
let renaming: Session | null = null;

function renderManageToolbar(): void {
  setText(byId("manage-count"), `${manageList.length} session${manageList.length === 1 ? "" : "s"}`);
  const all = byId<HTMLInputElement>("manage-all");
  all.checked = manageList.length > 0 && selected.size === manageList.length;
  all.indeterminate = selected.size > 0 && selected.size < manageList.length;
  const del = byId<HTMLButtonElement>("manage-delete");
  del.disabled = selected.size === 0;
  setText(del, selected.size ? `Delete selected (${selected.size})` : "Delete selected");
}

function renderManage(): void {
  // rows are rebuilt on every session event: keep the keyboard focus on the same control of the same row
  const focused = document.activeElement as HTMLElement | null;
  const focusRow = focused?.closest<HTMLElement>("#manage-rows tr")?.dataset.id;
  const focusAction = focused?.dataset.action;
  // the hub's view is fresher than the list fetched when the dialog opened
  const merged = new Map(manageList.map((s) => [s.id, s]));
  for (const s of state.sessions.values()) merged.set(s.id, s);
  for (const id of [...merged.keys()]) if (!state.sessions.has(id) && deletedIds.has(id)) merged.delete(id);
  manageList = [...merged.values()].sort((a, b) => b.last_activity_ms - a.last_activity_ms || b.id - a.id);
  for (const id of [...selected]) if (!merged.has(id)) selected.delete(id);
  renderManageToolbar();
  fill(
    byId("manage-rows"),
    ...manageList.map((s) => {
      const box = h("input", { type: "checkbox", "aria-label": `Select ${s.name}`, "data-action": "select" });
      box.checked = selected.has(s.id);
      box.addEventListener("change", () => {
        if (box.checked) selected.add(s.id);
        else selected.delete(s.id);
        renderManageToolbar();
      });
      const show = h("button", { type: "button", class: "btn btn-small", "data-action": "show" }, "Show");
      show.addEventListener("click", () => {
        byId<HTMLDialogElement>("dlg-manage").close();
        choose(s.id);
      });
      const rename = h("button", { type: "button", class: "btn btn-small", "data-action": "rename" }, "Rename");
      rename.addEventListener("click", () => {
        renaming = s;
        byId<HTMLInputElement>("rename-name").value = s.name;
        setText(byId("rename-error"), "");
        open(byId<HTMLDialogElement>("dlg-rename"), byId("rename-name"));
        byId<HTMLInputElement>("rename-name").select();
      });
      const del1 = h("button", { type: "button", class: "btn btn-small btn-danger-quiet", "data-action": "delete" }, "Delete");
      del1.addEventListener("click", () =>
        confirm("Delete session", `Delete “${s.name}” (#${s.id}) and its ${fmtInt(s.request_count)} requests?`, async () => {
          await api.deleteSession(s.id);
          removed([s.id]);
          toast(`Session “${s.name}” deleted.`);
        }),
      );
      return h(
        "tr",
        { "data-id": s.id, class: s.id === shownSessionId() ? "row-current" : null },
        h("td", null, box),
        h("th", { scope: "row", class: "name-cell" }, s.active ? h("span", { class: "active-dot", title: "active" }, "●") : null, s.name, h("span", { class: "muted" }, ` #${s.id}`)),
        h("td", { class: "model-cell" }, s.model ?? ""),
        h("td", null, s.source, s.client_app ? h("span", { class: "sub" }, s.client_app) : null),
        h("td", { class: "num" }, fmtInt(s.request_count)),
        h("td", { class: "num" }, fmtCompact(s.total_tokens)),
        h("td", { class: "num" }, fmtUsd(s.cost_usd)),
        h("td", null, fmtAgo(s.last_activity_ms)),
        h("td", null, h("div", { class: "actions" }, show, rename, del1)),
      );
    }),
  );
  if (focusRow && focusAction) {
    byId("manage-rows").querySelector<HTMLElement>(`tr[data-id="${focusRow}"] [data-action="${focusAction}"]`)?.focus();
  }
}

const deletedIds = new Set<number>();
function removed(ids: number[]): void {
  for (const id of ids) {
    deletedIds.add(id);
    state.sessions.delete(id);
    selected.delete(id);
    if (state.chosenSessionId === id) state.chosenSessionId = null;
    if (state.activeSessionId === id) state.activeSessionId = null;
  }
  manageList = manageList.filter((s) => !ids.includes(s.id));
  hooks.onShownChanged();
  hooks.render();
  if (byId<HTMLDialogElement>("dlg-manage").open) renderManage();
}

async function openManage(): Promise<void> {
  selected.clear();
  deletedIds.clear();
  manageList = sortedSessions();
  renderManage();
  open(byId<HTMLDialogElement>("dlg-manage"), byId("manage-all"));
  try {
    const page = await api.listSessions(500);
    manageList = page.data;
    renderManage();
  } catch (error) {
    failed(error, "Loading the sessions failed");
  }
}

// ---------------------------------------------------------------- wiring

export function initSessions(h0: SessionHooks): void {
  hooks = h0;
  const select = byId<HTMLSelectElement>("session-select");
  select.addEventListener("change", () => choose(select.value === AUTO ? null : Number(select.value)));

  byId("btn-activate").addEventListener("click", async () => {
    const s = shownSession();
    if (!s) return;
    try {
      const updated = s.active ? await api.deactivate(s.id) : await api.activate(s.id);
      for (const other of state.sessions.values()) if (other.id !== updated.id && updated.active) other.active = false;
      putSession(updated);
      if (updated.active) state.chosenSessionId = updated.id;
      hooks.render();
    } catch (error) {
      failed(error, "Activation failed");
    }
  });

  for (const id of ["dlg-new", "dlg-manage", "dlg-rename", "dlg-confirm"]) {
    const dialog = byId<HTMLDialogElement>(id);
    wireDialog(dialog);
    dialog.addEventListener("close", () => restoreFocus(dialog));
  }

  byId("btn-new-session").addEventListener("click", () => void openNew());
  byId("model-filter").addEventListener("input", renderPicker);
  byId("form-new").addEventListener("submit", (event) => {
    event.preventDefault();
    void submitNew();
  });

  byId("btn-manage").addEventListener("click", () => void openManage());
  byId("manage-all").addEventListener("change", (event) => {
    const checked = (event.target as HTMLInputElement).checked;
    selected.clear();
    if (checked) for (const s of manageList) selected.add(s.id);
    for (const box of byId("manage-rows").querySelectorAll<HTMLInputElement>('input[data-action="select"]')) box.checked = checked;
    renderManageToolbar();
  });
  byId("manage-delete").addEventListener("click", () => {
    const ids = [...selected];
    if (ids.length === 0) return;
    confirm("Delete sessions", `Delete ${ids.length} session${ids.length === 1 ? "" : "s"} and all their requests?`, async () => {
      const result = await api.deleteSessions(ids);
      removed(ids);
      toast(`${result.deleted} session${result.deleted === 1 ? "" : "s"} deleted.`);
    });
  });

  byId("form-rename").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = byId<HTMLInputElement>("rename-name").value.trim();
    if (!renaming || !name) {
      setText(byId("rename-error"), "A name is required.");
      return;
    }
    try {
      const updated = await api.renameSession(renaming.id, name);
      putSession(updated);
      manageList = manageList.map((s) => (s.id === updated.id ? updated : s));
      byId<HTMLDialogElement>("dlg-rename").close();
      hooks.render();
      if (byId<HTMLDialogElement>("dlg-manage").open) renderManage();
      toast(`Renamed to “${updated.name}”.`);
    } catch (error) {
      setText(byId("rename-error"), error instanceof ApiError ? error.message : String(error));
    }
  });

  byId("form-confirm").addEventListener("submit", async (event) => {
    event.preventDefault();
    const action = confirmAction;
    confirmAction = null;
    byId<HTMLDialogElement>("dlg-confirm").close();
    if (!action) return;
    try {
      await action();
    } catch (error) {
      failed(error, "Delete failed");
    }
  });
}

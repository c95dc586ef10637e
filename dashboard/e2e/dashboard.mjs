// End-to-end test of the dashboard in headless Chromium, run by tests/dashboard.rs against the real proxy binary
// in front of the mock upstream. Never downloads a browser: it drives the one at $CHROMIUM.
//
// env: PROXY_URL (http://127.0.0.1:PORT), CHROMIUM (executable), SHOTS (screenshot directory), MODEL (catalog key)
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = must("PROXY_URL");
const SHOTS = must("SHOTS");
const MODEL = process.env.MODEL ?? "mock/model";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** With an admin token the page is reached through the login page, and API calls carry the token. */
const TOKEN = process.env.ADMIN_TOKEN ?? "";
const AUTH = TOKEN ? { authorization: `Bearer ${TOKEN}` } : {};
/** What "updates within one second" means, measured from the moment the proxy answered. */
const UPDATE_MS = 1000;

function must(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const consoleErrors = [];
const timings = {};
let step = "start";
let page;

function log(message) {
  console.log(`[e2e] ${message}`);
}

function check(condition, message) {
  if (!condition) throw new Error(`${step}: ${message}`);
}

/** Polls `probe` (run in Node against the page) until it returns a truthy value or `ms` pass. */
async function until(ms, what, probe) {
  const start = Date.now();
  for (;;) {
    const value = await probe();
    if (value) return { value, ms: Date.now() - start };
    if (Date.now() - start > ms) throw new Error(`${step}: ${what} did not happen within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function api(method, path, body) {
  const response = await fetch(`${BASE}${path}`, {
    method,
    headers: body === undefined ? { ...AUTH } : { ...AUTH, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : null };
}

function chatBody(stream, text) {
  return {
    model: MODEL,
    stream,
    messages: [
      { role: "system", content: "You are terse." },
      { role: "user", content: text },
    ],
  };
}

/** An agent's conversation: six file reads of about 5,000 tokens each, then a new user turn naming `marker`. */
function agentBody(marker) {
  const messages = [
    { role: "system", content: "You are a coding agent." },
    { role: "user", content: "Fix the failing test." },
  ];
  for (let t = 0; t < 6; t++) {
    const id = `call_${t}`;
    messages.push({
      role: "assistant",
      content: null,
      tool_calls: [{ id, type: "function", function: { name: "read_file", arguments: JSON.stringify({ path: `src/f${t}.rs` }) } }],
    });
    const lines = [];
    for (let i = 0; i < 250; i++) lines.push(`src/f${t}.rs:${i}: let value_${i} = compute_${t}(input_${i}, ${i * 7});`);
    messages.push({ role: "tool", tool_call_id: id, content: lines.join("\n") });
  }
  messages.push({ role: "assistant", content: "I have read the files." });
  messages.push({ role: "user", content: `Go on (${marker}).` });
  return { model: MODEL, stream: false, messages };
}

async function sendAgent(marker) {
  const r = await fetch(`${BASE}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(agentBody(marker)),
  });
  check(r.status === 200, `${marker}: status ${r.status}`);
  await r.text();
}

const figure = async (id) => Number(((await page.locator(`#${id}`).textContent()) ?? "").replace(/[^0-9.]/g, "") || "NaN");

const gaugeText = () => page.locator("#gauge-tokens").textContent();
const chartPoints = async () => Number(await page.locator("#chart").getAttribute("data-points"));
const logRows = () => page.locator("#log tr").count();

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function sessionIdByName(name) {
  const { json } = await api("GET", "/api/sessions?limit=1000");
  return json.data.find((s) => s.name === name)?.id ?? null;
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  rmSync(join(SHOTS, "failure.png"), { force: true });
  const profile = mkdtempSync(join(tmpdir(), "kimi-e2e-"));
  const downloads = mkdtempSync(join(tmpdir(), "kimi-e2e-dl-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    downloadsPath: downloads,
    viewport: { width: 1440, height: 960 },
    colorScheme: "light",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(10_000);
    page.on("console", (m) => {
      if (m.type() !== "error" && m.type() !== "warning") return;
      const where = m.location().url || page.url();
      // the login page is not the dashboard's (its own favicon request answers 401 before login)
      if (new URL(page.url()).pathname === "/login") {
        log(`on the login page: ${m.type()}: ${m.text()} (${where})`);
        return;
      }
      consoleErrors.push(`${m.type()}: ${m.text()} (${where})`);
    });
    page.on("pageerror", (e) => consoleErrors.push(`pageerror: ${e.message}`));
    await page.addInitScript(() => {
      window.__csp = [];
      document.addEventListener("securitypolicyviolation", (e) =>
        window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`),
      );
    });

    step = "warm-up";
    // The first record of a fresh (debug) binary waits for the tokenizer to load, once: warm it up so the timed
    // checks below measure the live path. This request lands in a conversation session of its own.
    const warm = await fetch(`${BASE}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(chatBody(false, "warm-up")),
    });
    check(warm.status === 200, `warm-up status ${warm.status}`);
    await warm.text();

    step = "load";
    await page.goto(BASE);
    if (TOKEN) {
      check(new URL(page.url()).pathname === "/login", `sent to the login page, not ${page.url()}`);
      await page.fill("#token", TOKEN);
      await Promise.all([page.waitForURL(`${BASE}/`), page.click("button[type=submit]")]);
      log("logged in");
    }
    await until(5000, "the WebSocket going live", async () => (await page.locator("#conn").getAttribute("data-state")) === "live");
    check((await page.locator("#conn-text").textContent()) === "live", "status text");
    log("page loaded, socket live");

    // ------------------------------------------------------------------ create a session with the model picker
    step = "create";
    await page.click("#btn-new-session");
    await page.locator("#dlg-new[open]").waitFor();
    await page.fill("#new-name", "e2e one");
    await page.fill("#model-filter", "mock");
    const card = page.locator(".model-card", { hasText: MODEL });
    await card.waitFor();
    check((await page.locator(".model-card").count()) >= 1, "the filter leaves the mock model");
    check((await card.textContent()).includes("100K"), `context size shown: ${await card.textContent()}`);
    await page.fill("#model-filter", "no-such-model-xyz");
    await until(1000, "the filter hiding every model", async () => (await page.locator(".model-card").count()) === 0);
    await page.fill("#model-filter", "mock");
    await card.click();
    await shot("new-session-dialog");
    await page.click("#new-submit");
    await page.locator("#dlg-new").waitFor({ state: "hidden" });
    const one = await sessionIdByName("e2e one");
    check(one !== null, "the session exists");
    await until(UPDATE_MS, "the gauge showing the new session", async () =>
      (await page.locator("#gauge-session").textContent()).includes("e2e one"),
    );
    check((await gaugeText()).includes("/ 100,000"), `gauge window: ${await gaugeText()}`);
    log(`session ${one} created with ${MODEL}`);

    // ------------------------------------------------------------------ a request without streaming
    step = "non-streaming request";
    const rowsBefore = await logRows();
    const pointsBefore = await chartPoints();
    const gaugeBefore = await gaugeText();
    const response = await fetch(`${BASE}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(chatBody(false, "The end-to-end test says hello.")),
    });
    check(response.status === 200, `status ${response.status}`);
    await response.json();
    timings.log_nonstream_ms = (
      await until(UPDATE_MS, "the log row", async () => (await page.locator("#log tr:not(.row-live) .pill-ok").count()) > 0 && (await logRows()) > rowsBefore)
    ).ms;
    timings.chart_nonstream_ms = (await until(UPDATE_MS, "the chart point", async () => (await chartPoints()) > pointsBefore)).ms;
    timings.gauge_nonstream_ms = (await until(UPDATE_MS, "the gauge", async () => (await gaugeText()) !== gaugeBefore)).ms;
    const firstRow = page.locator("#log tr").first();
    check((await firstRow.textContent()).includes(MODEL), "the row names the model");
    await until(UPDATE_MS, "the row tagged with its session", async () => (await firstRow.locator(".tag").count()) === 1);
    check((await firstRow.locator(".tag").textContent()) === "e2e one", "session tag");
    log(`non-streaming: log ${timings.log_nonstream_ms} ms, chart ${timings.chart_nonstream_ms} ms, gauge ${timings.gauge_nonstream_ms} ms`);

    // ------------------------------------------------------------------ a streaming request of about 3 s
    step = "streaming request";
    const pointsMid = await chartPoints();
    const gaugeMid = await gaugeText();
    const sent = Date.now();
    const streaming = fetch(`${BASE}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-mock-chunks": "60", "x-mock-chunk-delay-ms": "50" },
      body: JSON.stringify({
        model: MODEL,
        stream: true,
        messages: [
          { role: "system", content: "You are terse." },
          { role: "user", content: "The end-to-end test says hello." },
          { role: "assistant", content: "Hello." },
          { role: "user", content: "Now stream a longer answer." },
        ],
      }),
    }).then(async (r) => {
      check(r.status === 200, `stream status ${r.status}`);
      await r.text();
      return Date.now();
    });
    const live = page.locator("#log tr.row-live");
    timings.log_started_ms = (await until(UPDATE_MS, "the in-flight row", async () => (await live.count()) > 0)).ms;
    const count = async () => Number(((await live.first().locator(".live-count").textContent()) ?? "0").replace(/,/g, ""));
    await until(2000, "the completion count moving", async () => (await count()) > 0);
    const c1 = await count();
    await page.waitForTimeout(700);
    const c2 = await count();
    check(c2 > c1, `completion tokens count up while streaming (${c1} then ${c2})`);
    await shot("streaming");
    const finished = await streaming;
    check(finished - sent > 2000, `the stream lasted ${finished - sent} ms`);
    timings.log_finished_ms = (await until(UPDATE_MS, "the row finishing", async () => (await live.count()) === 0)).ms;
    timings.chart_stream_ms = (await until(UPDATE_MS, "the chart point", async () => (await chartPoints()) > pointsMid)).ms;
    timings.gauge_stream_ms = (await until(UPDATE_MS, "the gauge", async () => (await gaugeText()) !== gaugeMid)).ms;
    const streamRow = page.locator("#log tr").first();
    const rowText = await streamRow.textContent();
    check(rowText.includes("stream") && rowText.includes("200"), `finished row: ${rowText}`);
    check((await streamRow.locator(".tok").count()) === 2, "prompt and completion figures");
    log(`streaming: counted ${c1} → ${c2}; started ${timings.log_started_ms} ms, finished ${timings.log_finished_ms} ms, chart ${timings.chart_stream_ms} ms, gauge ${timings.gauge_stream_ms} ms`);
    const session = (await api("GET", `/api/sessions/${one}`)).json;
    check(session.request_count === 2, `the session has both requests (${session.request_count})`);
    const pct = await page.locator("#gauge-pct").textContent();
    check(pct.endsWith("%") && (await page.locator("#gauge").getAttribute("data-level")) === "ok", `gauge ${pct}`);
    check((await page.locator("#t-s-requests").textContent()).startsWith("2"), "session totals");
    check((await page.locator("#p-rps").textContent()) !== "—", "the performance panel has figures");

    // A client speaking an API the proxy does not serve is refused, and the refusal shows in the log.
    const refusedStatus = await fetch(`${BASE}/v1/not-an-api`, {
      method: "POST",
      headers: { "content-type": "application/json", "user-agent": "claude-cli/2.1.197 (external, sdk-cli)" },
      body: "{}",
    }).then((r) => r.status);
    check(refusedStatus === 404, `a refused request gets 404 (${refusedStatus})`);
    const refusedRow = page.locator("#log tr.row-failed", { hasText: "not_found" });
    await until(UPDATE_MS, "the refusal in the log", async () => (await refusedRow.count()) > 0);
    const refusedText = await refusedRow.first().textContent();
    check(refusedText.includes("Claude Code 2.1.197") && refusedText.includes("/v1/not-an-api"), `refusal row: ${refusedText}`);
    await shot("dashboard-light");
    await page.click("#theme-toggle"); // auto → light
    await page.click("#theme-toggle"); // light → dark
    check((await page.evaluate(() => document.documentElement.dataset.theme)) === "dark", "dark theme");
    await page.waitForTimeout(100);
    await shot("dashboard-dark");
    await page.click("#theme-toggle"); // back to auto

    // ------------------------------------------------------------------ export: a real download
    step = "export";
    for (const format of ["csv", "json"]) {
      const [download] = await Promise.all([page.waitForEvent("download"), page.click(`#export-${format}`)]);
      check(download.suggestedFilename().endsWith(`.${format}`), `file name ${download.suggestedFilename()}`);
      const path = await download.path();
      const text = readFileSync(path, "utf8");
      if (format === "csv") {
        const lines = text.trim().split(/\r?\n/);
        check(lines.length === 3, `a header and two rows (${lines.length} lines)`);
        check(lines[0].includes("model") && lines[0].includes("prompt_tokens"), `header: ${lines[0]}`);
        check(lines.slice(1).every((l) => l.includes(MODEL)), "rows of the model");
      } else {
        const rows = JSON.parse(text);
        check(Array.isArray(rows) && rows.length === 2, `two rows (${rows.length})`);
        check(rows.every((r) => r.session_id === one && r.model === MODEL), "rows of the session");
      }
      log(`export ${format}: ${download.suggestedFilename()} ok`);
    }

    // ------------------------------------------------------------------ a second session, switch, rename
    step = "switch";
    await page.click("#btn-new-session");
    await page.fill("#new-name", "e2e two");
    await page.click("#new-submit");
    await page.locator("#dlg-new").waitFor({ state: "hidden" });
    const two = await sessionIdByName("e2e two");
    await until(UPDATE_MS, "the gauge showing session two", async () => (await page.locator("#gauge-session").textContent()).includes("e2e two"));
    await page.selectOption("#session-select", String(one));
    await until(UPDATE_MS, "the gauge back on session one", async () => (await page.locator("#gauge-session").textContent()).includes("e2e one"));
    check((await page.locator("#t-s-requests").textContent()).startsWith("2"), "session one's totals");
    await until(2000, "session one's history in the chart", async () => (await chartPoints()) === 2);
    log("switched between sessions");

    step = "rename";
    await page.click("#btn-manage");
    await page.locator("#dlg-manage[open]").waitFor();
    const rowTwo = page.locator(`#manage-rows tr[data-id="${two}"]`);
    await rowTwo.getByRole("button", { name: "Rename" }).click();
    await page.fill("#rename-name", "e2e renamed");
    await page.keyboard.press("Enter");
    await until(UPDATE_MS, "the renamed row", async () => (await rowTwo.textContent()).includes("e2e renamed"));
    check((await api("GET", `/api/sessions/${two}`)).json.name === "e2e renamed", "renamed on the server");
    await until(UPDATE_MS, "the selector showing the new name", async () =>
      (await page.locator("#session-select").textContent()).includes("e2e renamed"),
    );
    await shot("manage-sessions");
    log("renamed");

    step = "delete one";
    await rowTwo.getByRole("button", { name: "Delete" }).click();
    await page.locator("#dlg-confirm[open]").waitFor();
    await page.click("#confirm-ok");
    await until(UPDATE_MS, "the row gone", async () => (await rowTwo.count()) === 0);
    check((await api("GET", `/api/sessions/${two}`)).status === 404, "deleted on the server");
    log("deleted one");

    step = "delete several";
    const extra = [];
    for (const name of ["e2e bulk a", "e2e bulk b"]) {
      const created = await api("POST", "/api/sessions", { name, activate: false });
      check(created.status === 201, `created ${name}`);
      extra.push(created.json.id);
    }
    for (const id of extra) {
      const row = page.locator(`#manage-rows tr[data-id="${id}"]`);
      await until(UPDATE_MS, `session ${id} listed (from the hub's event)`, async () => (await row.count()) === 1);
      await row.locator("input[type=checkbox]").check();
    }
    check((await page.locator("#manage-delete").textContent()).includes("(2)"), "two selected");
    await page.click("#manage-delete");
    await page.locator("#dlg-confirm[open]").waitFor();
    await page.click("#confirm-ok");
    for (const id of extra) {
      await until(UPDATE_MS, `session ${id} gone`, async () => (await page.locator(`#manage-rows tr[data-id="${id}"]`).count()) === 0);
      check((await api("GET", `/api/sessions/${id}`)).status === 404, `session ${id} deleted on the server`);
    }
    log("deleted several");

    // ------------------------------------------------------------------ keyboard: Escape closes, focus returns
    step = "keyboard";
    await page.keyboard.press("Escape");
    await page.locator("#dlg-manage").waitFor({ state: "hidden" });
    check((await page.evaluate(() => document.activeElement?.id)) === "btn-manage", "focus back on the opener");
    await page.keyboard.press("Enter"); // the focused button opens the dialog again
    await page.locator("#dlg-manage[open]").waitFor();
    for (let i = 0; i < 12; i++) await page.keyboard.press("Tab");
    check(await page.evaluate(() => document.getElementById("dlg-manage").contains(document.activeElement)), "focus stays in the dialog");
    await page.keyboard.press("Escape");
    log("keyboard ok");

    // ------------------------------------------------------------------ context savings, toggles, compaction
    // The proxy's upstream requests marked ctx-turn-* are checked by tests/dashboard.rs from the mock's log.
    step = "context savings";
    await page.click("#btn-new-session");
    await page.locator("#dlg-new[open]").waitFor();
    await page.fill("#new-name", "e2e context");
    await page.click("#new-submit"); // activated: requests without a client id go to it
    await page.locator("#dlg-new").waitFor({ state: "hidden" });
    const ctx = await sessionIdByName("e2e context");
    await until(UPDATE_MS, "the savings card on the new session", async () => (await page.locator("#savings-session").textContent()) === "e2e context");
    check((await figure("sv-s-tokens")) === 0, `nothing saved yet (${await page.locator("#sv-s-tokens").textContent()})`);
    const allBefore = await figure("sv-a-tokens");
    check(Number.isFinite(allBefore), "a total of all sessions");
    // masking on from the page, with the keyboard
    await page.focus("#ctx-masking");
    await page.selectOption("#ctx-masking", "on");
    await until(2000, "masking stored for the session", async () => (await api("GET", `/api/sessions/${ctx}/context`)).json.settings.masking === true);
    await sendAgent("ctx-turn-masked");
    const saved = (await until(3000, "the session's savings", async () => (await figure("sv-s-tokens")) > 0)).ms;
    await until(3000, "the total's savings", async () => (await figure("sv-a-tokens")) >= allBefore + (await figure("sv-s-tokens")));
    const savedTokens = await figure("sv-s-tokens");
    check(savedTokens > 20000, `six masked reads save over 20,000 tokens (${savedTokens})`);
    const stored = (await api("GET", `/api/sessions/${ctx}`)).json;
    check(stored.tokens_saved === savedTokens, `the page shows the store's figure (${stored.tokens_saved} vs ${savedTokens})`);
    log(`masking on: ${savedTokens} tokens saved, shown ${saved} ms after the answer`);
    await shot("context-light");
    await page.emulateMedia({ colorScheme: "dark" });
    await page.waitForTimeout(100);
    await shot("context-dark");
    await page.emulateMedia({ colorScheme: "light" });

    step = "context toggle off";
    await page.selectOption("#ctx-masking", "off");
    await until(2000, "masking off for the session", async () => (await api("GET", `/api/sessions/${ctx}/context`)).json.settings.masking === false);
    await sendAgent("ctx-turn-plain");
    await until(3000, "the plain request stored", async () => (await api("GET", `/api/sessions/${ctx}`)).json.request_count === 2);
    check((await figure("sv-s-tokens")) === savedTokens, "nothing more saved with masking off");
    log("masking off from the page");

    step = "compaction preview";
    await page.focus("#btn-compact");
    await page.keyboard.press("Enter");
    await page.locator("#dlg-compact[open]").waitFor();
    await until(3000, "the preview's figures", async () => !(await page.locator("#compact-figures").isHidden()));
    const before = await figure("cp-tokens-before");
    const after = await figure("cp-tokens-after");
    check(before > 30000 && after > 0 && after < before, `before ${before}, after ${after}`);
    check((await figure("cp-messages-after")) < (await figure("cp-messages-before")), "fewer messages after");
    check(!(await page.locator("#compact-confirm").isDisabled()), "confirm enabled");
    await shot("compact-preview-light");
    await page.emulateMedia({ colorScheme: "dark" });
    await page.waitForTimeout(100);
    await shot("compact-preview-dark");
    await page.emulateMedia({ colorScheme: "light" });
    check((await page.evaluate(() => document.activeElement?.id)) === "compact-confirm", "focus on confirm");
    await page.keyboard.press("Enter");
    await page.locator("#dlg-compact").waitFor({ state: "hidden" });
    check((await api("GET", `/api/sessions/${ctx}/context`)).json.compact_next === true, "compaction due");
    await sendAgent("ctx-turn-compacted");
    log(`compaction preview ${before} → ${after} tokens, confirmed`);

    step = "console";
    const csp = await page.evaluate(() => window.__csp);
    check(csp.length === 0, `CSP violations: ${csp.join("; ")}`);
    check(consoleErrors.length === 0, `console errors: ${consoleErrors.join(" | ")}`);
    console.log(`[e2e] timings ${JSON.stringify(timings)}`);
    console.log("[e2e] ok");
  } catch (error) {
    console.error(`[e2e] FAILED at ${step}: ${error.message}`);
    if (consoleErrors.length) console.error(`[e2e] console: ${consoleErrors.join(" | ")}`);
    if (page) {
      await page.screenshot({ path: join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
      const visible = await page
        .evaluate(() => [...document.querySelectorAll(".toast, .form-error, #conn-text")].map((e) => e.textContent).join(" | "))
        .catch(() => "");
      console.error(`[e2e] page messages: ${visible}`);
    }
    process.exitCode = 1;
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    rmSync(downloads, { recursive: true, force: true });
  }
}

await main();

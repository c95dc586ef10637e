// The WebSocket client's logic (src/conn.ts) with a fake socket and fake timers: sequence checks, resync on a
// gap, reconnect with backoff. Run with `node --test test/` (tests/dashboard.rs does).
import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const source = fileURLToPath(new URL("../src/conn.ts", import.meta.url));
const bundle = await esbuild.build({ entryPoints: [source], bundle: true, format: "esm", write: false });
const url = `data:text/javascript;base64,${Buffer.from(bundle.outputFiles[0].text).toString("base64")}`;

/** Fake timers, sockets and page globals; `load()` imports a fresh copy of conn.ts against them. */
function world() {
  const timers = [];
  const sockets = [];
  let now = 1_000_000;
  class FakeSocket {
    static OPEN = 1;
    static CLOSED = 3;
    constructor(u) {
      this.url = u;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    // driven by the test
    open() {
      this.readyState = 1;
      this.onopen?.();
    }
    receive(msg) {
      this.onmessage?.({ data: JSON.stringify(msg) });
    }
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  globalThis.WebSocket = FakeSocket;
  globalThis.location = { protocol: "http:", host: "127.0.0.1:8000" };
  globalThis.window = {
    setTimeout: (fn, ms) => timers.push({ fn, at: now + ms, repeat: 0 }) ,
    setInterval: (fn, ms) => timers.push({ fn, at: now + ms, repeat: ms }),
    clearTimeout: (id) => {
      if (timers[id - 1]) timers[id - 1].fn = null;
    },
  };
  const realNow = Date.now;
  Date.now = () => now;
  return {
    sockets,
    /** Advances the clock, firing due timers in order. */
    advance(ms) {
      const end = now + ms;
      for (;;) {
        const due = timers.filter((t) => t.fn && t.at <= end).sort((a, b) => a.at - b.at)[0];
        if (!due) break;
        now = due.at;
        const fn = due.fn;
        if (due.repeat) due.at += due.repeat;
        else due.fn = null;
        fn();
      }
      now = end;
    },
    restore() {
      Date.now = realNow;
    },
  };
}

async function start() {
  const w = world();
  const { Conn } = await import(`${url}#${Math.random()}`);
  const messages = [];
  const states = [];
  let refused = 0;
  const conn = new Conn(
    { onMessage: (m) => messages.push(m), onState: (s) => states.push(s), onRefused: () => refused++ },
    () => new URLSearchParams({ tz_offset_min: "0" }),
  );
  conn.start();
  return { w, conn, messages, states, refused: () => refused };
}

const init = (seq) => ({ type: "init", seq, ts: 0, data: {} });
const event = (seq, type = "stats") => ({ type, seq, ts: 0, data: {} });

test("events in sequence are delivered; a gap asks for a resync and waits for the snapshot", async () => {
  const { w, messages, states } = await start();
  const ws = w.sockets[0];
  assert.equal(ws.url, "ws://127.0.0.1:8000/ws?tz_offset_min=0");
  ws.open();
  ws.receive(event(4)); // before init: ignored
  ws.receive(init(10));
  ws.receive(event(11));
  ws.receive(event(12, "request.started"));
  assert.deepEqual(messages.map((m) => m.seq), [10, 11, 12]);
  assert.equal(states.at(-1).kind, "live");
  ws.receive(event(12)); // a duplicate
  ws.receive(event(14)); // 13 is missing
  assert.deepEqual(ws.sent, [{ type: "resync" }]);
  assert.equal(states.at(-1).kind, "resyncing");
  ws.receive(event(15)); // still before the new snapshot: dropped
  ws.receive(init(20));
  ws.receive(event(21));
  assert.deepEqual(messages.map((m) => m.seq), [10, 11, 12, 20, 21]);
  w.restore();
});

test("a closed socket reconnects with growing, jittered backoff, reset by a snapshot", async () => {
  const { w, states, refused } = await start();
  w.sockets[0].drop(1006);
  assert.equal(refused(), 1, "closed before any snapshot");
  const first = states.at(-1);
  assert.equal(first.kind, "waiting");
  assert.equal(first.attempt, 1);
  const delay1 = first.until - Date.now();
  assert.ok(delay1 >= 250 && delay1 <= 500, `first delay ${delay1}`);
  w.advance(delay1);
  assert.equal(w.sockets.length, 2, "reconnected");
  w.sockets[1].drop(1006);
  const delay2 = states.at(-1).until - Date.now();
  assert.ok(delay2 >= 500 && delay2 <= 1000, `second delay ${delay2}`);
  w.advance(delay2);
  const ws = w.sockets[2];
  ws.open();
  ws.receive(init(1));
  ws.drop(1008, "too slow");
  const cut = states.at(-1);
  assert.equal(cut.reason, "cut off: too slow");
  assert.equal(cut.attempt, 1, "the snapshot reset the backoff");
  assert.equal(refused(), 2, "a socket that had its snapshot was not refused");
  w.restore();
});

test("a silent socket is closed and replaced", async () => {
  const { w } = await start();
  const ws = w.sockets[0];
  ws.open();
  ws.receive(init(1));
  w.advance(14_000);
  assert.equal(ws.readyState, 1, "14 s of silence is tolerated");
  w.advance(4_000);
  assert.equal(ws.readyState, 3, "closed after 15 s without a message");
  w.advance(1_000);
  assert.equal(w.sockets.length, 2, "and replaced");
  w.restore();
});

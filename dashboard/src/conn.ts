// The WebSocket to /ws: reconnects with exponential backoff and jitter, watches sequence numbers and asks for a
// fresh snapshot (`resync`) when one is missing.

import type { Envelope } from "./types";

export type ConnState =
  | { kind: "connecting"; attempt: number }
  | { kind: "live"; seq: number }
  | { kind: "resyncing" }
  | { kind: "waiting"; attempt: number; until: number; reason: string };

export interface ConnHandlers {
  onMessage(msg: Envelope): void;
  onState(state: ConnState): void;
  /** The socket closed before the snapshot arrived (refused, or the server is down). */
  onRefused(): void;
}

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15_000;
/** The hub sends `stats` every second; this long without any message means the socket is dead. */
const SILENCE_MS = 15_000;

export class Conn {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private lastSeq: number | null = null;
  private awaitingInit = true;
  private timer: number | undefined;
  private lastMessageAt = 0;
  private params: () => URLSearchParams;

  constructor(
    private readonly handlers: ConnHandlers,
    params: () => URLSearchParams,
  ) {
    this.params = params;
  }

  start(): void {
    this.open();
    window.setInterval(() => {
      if (this.ws?.readyState === WebSocket.OPEN && Date.now() - this.lastMessageAt > SILENCE_MS) {
        this.ws.close(4000, "silent");
      }
    }, 2000);
  }

  send(message: object): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /** Asks the server for a fresh `init`; events are ignored until it arrives. */
  resync(): void {
    this.awaitingInit = true;
    this.handlers.onState({ kind: "resyncing" });
    this.send({ type: "resync" });
  }

  /** Closes and reconnects at once (the retry button). */
  reconnectNow(): void {
    window.clearTimeout(this.timer);
    this.attempt = 0;
    if (this.ws && this.ws.readyState !== WebSocket.CLOSED) {
      this.ws.close(4001, "reconnect");
    } else {
      this.open();
    }
  }

  private open(): void {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${proto}//${location.host}/ws?${this.params().toString()}`;
    this.awaitingInit = true;
    this.lastSeq = null;
    this.handlers.onState({ kind: "connecting", attempt: this.attempt });
    let ws: WebSocket;
    try {
      ws = new WebSocket(url);
    } catch {
      this.scheduleReconnect("cannot open a WebSocket");
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.lastMessageAt = Date.now();
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.lastMessageAt = Date.now();
      if (typeof event.data !== "string") return;
      let msg: Envelope;
      try {
        msg = JSON.parse(event.data) as Envelope;
      } catch {
        return;
      }
      this.receive(msg);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const reason =
        event.code === 1008 && event.reason ? `cut off: ${event.reason}` : event.code === 1000 ? "closed" : "disconnected";
      if (this.awaitingInit) this.handlers.onRefused();
      this.scheduleReconnect(reason);
    };
  }

  private receive(msg: Envelope): void {
    if (typeof msg.type !== "string" || typeof msg.seq !== "number") return;
    if (msg.type === "init") {
      this.awaitingInit = false;
      this.lastSeq = msg.seq;
      this.attempt = 0;
      this.handlers.onMessage(msg);
      this.handlers.onState({ kind: "live", seq: msg.seq });
      return;
    }
    if (this.awaitingInit) return;
    if (this.lastSeq !== null && msg.seq !== this.lastSeq + 1) {
      if (msg.seq <= this.lastSeq) return; // a duplicate or older message
      this.resync();
      return;
    }
    this.lastSeq = msg.seq;
    this.handlers.onMessage(msg);
    this.handlers.onState({ kind: "live", seq: msg.seq });
  }

  private scheduleReconnect(reason: string): void {
    this.attempt += 1;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.attempt - 1));
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.handlers.onState({ kind: "waiting", attempt: this.attempt, until: Date.now() + delay, reason });
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.open(), delay);
  }
}

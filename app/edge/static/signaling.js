// The signaling connection: one WebSocket to /ws/{room}/{peer}, reopened with backoff.
//
// Events (CustomEvent, frame in `detail`): every frame type the node sends ("welcome",
// "new-peer", "peer-left", "offer", "answer", "ice", "chat", "error", "pong") and
// "status" ({state, code, retryIn}) when the connection opens, closes or gives up.
//
// Reconnects: after a 1001 close (the node drains: another node takes us), a network loss
// or a refused upgrade, with exponential backoff and jitter, under the same peer id so the
// room sees the same peer come back. Never after 4001 (this peer id connected again, in
// another tab: the newer one wins and we must not fight it), 4002 (kicked), 4003 (room
// closed by an operator) or 4004 (the token expired: the same token cannot get back in).
// Each reconnect sends the newest welcome's resume token (`?resume=`): if the node still
// holds the session, its welcome says `resumed: true`, what was sent to us meanwhile
// follows, and the room saw nothing (the calls go on); otherwise it is a fresh join.

const FINAL_CODES = new Map([
  [4001, "this peer id connected again elsewhere (another tab?)"],
  [4002, "removed by an operator"],
  [4003, "the room was closed by an operator"],
  [4004, "the token expired: open the page again with a new one"],
]);
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10000;
// The node pings every WS_HEARTBEAT_SECONDS, but a browser cannot see those pings; our own
// ping finds a dead path (a laptop that slept, a lost Wi-Fi) long before TCP would.
const PING_EVERY_MS = 10000;
const PONG_WITHIN_MS = 5000;

export class Signaling extends EventTarget {
  constructor({ room, peer, token = null, base = location.href }) {
    super();
    this.room = room;
    this.peer = peer;
    this.token = token;
    this.base = base;
    this.ws = null;
    this.attempt = 0;
    this.stopped = false;
    this.timers = new Set();
    this.resumeToken = null;  // from the newest welcome
    addEventListener("online", () => this.#retryNow());
  }

  url() {
    const url = new URL(`/ws/${encodeURIComponent(this.room)}/${encodeURIComponent(this.peer)}`,
                        this.base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.token) url.searchParams.set("token", this.token);
    if (this.resumeToken) url.searchParams.set("resume", this.resumeToken);
    return url.href;
  }

  start() {
    if (this.stopped || this.ws) return;
    this.#status("connecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    let lastSeen = Date.now();
    ws.onmessage = (msg) => {
      lastSeen = Date.now();
      let frame;
      try { frame = JSON.parse(msg.data); } catch { return; }
      if (frame.type === "welcome") {
        this.attempt = 0;
        this.resumeToken = frame.data?.resume ?? null;
        this.#status("open");
      }
      this.dispatchEvent(new CustomEvent(frame.type, { detail: frame }));
    };
    const done = (code, reason) => {
      clearInterval(pinger);
      ws.onmessage = ws.onclose = null;
      if (this.ws === ws) this.ws = null;
      this.#closed(code, reason);
    };
    const pinger = setInterval(() => {
      if (ws.readyState !== WebSocket.OPEN) return;
      if (Date.now() - lastSeen > PING_EVERY_MS + PONG_WITHIN_MS) {
        // A dead path may never finish a closing handshake: give up on it at once.
        ws.close(4000, "no pong");
        done(1006, "no pong");
      } else {
        ws.send(JSON.stringify({ type: "ping" }));
      }
    }, PING_EVERY_MS);
    ws.onclose = (ev) => done(ev.code, ev.reason);
  }

  send(type, to, data) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    const frame = to === undefined || to === null ? { type, data } : { type, to, data };
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // Close for good (leaving the page): no reconnect.
  stop() {
    this.stopped = true;
    this.resumeToken = null;
    for (const t of this.timers) clearTimeout(t);
    this.ws?.close(1000, "bye");
  }

  #closed(code, reason) {
    if (FINAL_CODES.has(code)) {
      this.stopped = true;
      this.#status("stopped", { code, reason: FINAL_CODES.get(code) });
      return;
    }
    if (this.stopped) return;
    // Equal jitter: half the delay fixed, half random, so a whole room whose node drained
    // does not come back in one burst.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt++);
    const delay = ceiling / 2 + Math.random() * ceiling / 2;
    this.#status("closed", { code, reason, retryIn: delay });
    const timer = setTimeout(() => { this.timers.delete(timer); this.start(); }, delay);
    this.timers.add(timer);
  }

  #retryNow() {
    if (this.stopped || this.ws) return;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.start();
  }

  #status(state, extra = {}) {
    this.dispatchEvent(new CustomEvent("status", { detail: { state, ...extra } }));
  }
}

// The signaling WebSocket: hello/auth, typed JSON messages (docs/protocol.md), a
// heartbeat, and reconnection with back-off when the connection drops.
//
// Events (EventTarget): 'message' (detail: server message), 'down' (connection lost,
// reconnecting), 'up' (detail: {welcome, reconnected}), 'fatal' (detail: error message:
// authentication refused, stop).

export const PROTOCOL_VERSION = 1;
const PING_EVERY_MS = 15000;
const PONG_TIMEOUT_MS = 10000;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];

export class Signaling extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.ws = null;
    this.closing = false;   // we closed on purpose: do not reconnect
    this.attempt = 0;
    this.everUp = false;
    this.timer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.nonce = 1;
  }

  url() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}/ws`;
  }

  connect() {
    this.closing = false;
    clearTimeout(this.timer);
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let welcomed = false;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'hello', version: PROTOCOL_VERSION, token: this.token }));
    };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (!msg || typeof msg.type !== 'string') return;
      if (msg.type === 'pong') { clearTimeout(this.pongTimer); return; }
      if (!welcomed) {
        if (msg.type === 'welcome') {
          welcomed = true;
          const reconnected = this.everUp;
          this.everUp = true;
          this.attempt = 0;
          this.startHeartbeat();
          this.dispatchEvent(new CustomEvent('up', { detail: { welcome: msg, reconnected } }));
          return;
        }
        if (msg.type === 'error' && ['auth_failed', 'session_expired', 'unsupported_version', 'not_authenticated'].includes(msg.code)) {
          this.closing = true;
          this.dispatchEvent(new CustomEvent('fatal', { detail: msg }));
          ws.close();
          return;
        }
      }
      this.dispatchEvent(new CustomEvent('message', { detail: msg }));
    };
    ws.onclose = () => {
      this.stopHeartbeat();
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.closing) return;
      this.dispatchEvent(new Event('down'));
      this.scheduleReconnect();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  scheduleReconnect() {
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { if (!this.closing) this.connect(); }, delay);
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.pingTimer = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      this.ws.send(JSON.stringify({ type: 'ping', nonce: this.nonce++ }));
      clearTimeout(this.pongTimer);
      // No answer: the connection is dead even if the socket has not noticed.
      this.pongTimer = setTimeout(() => this.drop(), PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  stopHeartbeat() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
  }

  /** Close the current socket and reconnect (used when media failed for good). */
  drop() {
    if (this.ws) this.ws.close();
  }

  get open() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  send(msg) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Close for good (left, ended, denied): no reconnection. */
  close() {
    this.closing = true;
    clearTimeout(this.timer);
    this.stopHeartbeat();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close();
    }
  }
}

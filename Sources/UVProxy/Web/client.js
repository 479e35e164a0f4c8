// The uvproxyd web client (served at /client.js; the page is index.html, the style client.css).
// Plain JavaScript with no build step; docs/DESIGN.md ("The web client") explains it, and
// scripts/browser-test drives it. The Content-Security-Policy allows no inline script or style:
// styles go through classes or the CSSOM (element.style), handlers through addEventListener.
"use strict";
(() => {
const SCROLLBACK_LINES = 5000;  // oldest lines are dropped past this
const POLL_WAIT = 25;           // seconds a long-poll read may be held by the proxy
const SSE_MAX_FAILURES = 3;     // stream failures in a row before a plain read, and before staying on long-poll
const WS_MAX_FAILURES = 3;      // WebSocket connections in a row that fail to open before SSE is used
const SEND_ATTEMPTS = 8;        // tries of one command on network errors and 503
const HISTORY_SIZE = 200;
const GMCP_MAX_PACKAGES = 200;  // the GMCP panel keeps the most recently updated packages

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const target = params.get("target") || "";
// ?transport=long-poll or sse: that transport (for testing, or a network that breaks the others);
// by default WebSocket, then SSE, then long-poll, each when the one before keeps failing.
const forcedTransport = params.get("transport");
const forceLongPoll = forcedTransport === "long-poll";

/** sessionStorage that never throws (it can be disabled or full). */
const store = {
  get(key) { try { return sessionStorage.getItem(key); } catch { return null; } },
  set(key, value) {
    try { value == null ? sessionStorage.removeItem(key) : sessionStorage.setItem(key, value); } catch {}
  },
};
const SESSION_KEY = "uvproxyd.session." + (target || "default");
const TOKEN_KEY = "uvproxyd.token";
const HISTORY_KEY = "uvproxyd.history";

/** 250 ms, 500 ms, 1 s, … up to 15 s. */
const backoff = (previous) => Math.min(previous ? previous * 2 : 250, 15000);

// ---------------------------------------------------------------- ANSI terminal

const BASE16 = [
  "#2e3436", "#cc3b3b", "#4e9a06", "#c4a000", "#3465a4", "#a347ba", "#06989a", "#d3d7cf",
  "#6f7679", "#ef5959", "#8ae234", "#fce94f", "#729fcf", "#ce8ddb", "#34e2e2", "#ffffff",
];

/** The CSS colour of xterm's 256-colour palette entry n. */
function paletteColor(n) {
  if (n < 16) return BASE16[n];
  if (n < 232) {
    const level = (c) => (c ? c * 40 + 55 : 0);
    n -= 16;
    return `rgb(${level(Math.floor(n / 36))}, ${level(Math.floor(n / 6) % 6)}, ${level(n % 6)})`;
  }
  const grey = (n - 232) * 10 + 8;
  return `rgb(${grey}, ${grey}, ${grey})`;
}

const plainStyle = () => ({ fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false });

/**
 * Renders a stream of text with ANSI escape sequences into an element, one <div> per line.
 * SGR (colours, bold, …) is applied; every other escape sequence is dropped. State survives
 * between write() calls, so a sequence split across two chunks works. A bare \r returns to the
 * start of the line: the text that follows replaces the line.
 */
class Terminal {
  constructor(element, maxLines) {
    this.element = element;
    this.maxLines = maxLines;
    this.style = plainStyle();
    this.escape = null;      // characters after an ESC while inside a sequence
    this.carriageReturn = false;
    this.line = null;
    this.newLine();
  }

  write(text) {
    const stick = this.atBottom();
    let run = 0;  // start of the printable text not yet added
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (this.escape !== null) {
        this.escape += text[i];
        if (this.escapeComplete()) { this.endEscape(); run = i + 1; }
        continue;
      }
      if (c >= 0x20 && c !== 0x7f || c === 0x09) continue;
      this.addText(text.slice(run, i));
      run = i + 1;
      if (c === 0x1b) this.escape = "";
      else if (c === 0x0a) this.newLine();
      else if (c === 0x0d) this.carriageReturn = true;
      // other control characters (BEL, BS, …) are dropped
    }
    if (this.escape === null) this.addText(text.slice(run));
    this.trim();
    if (stick) this.scrollToBottom();
  }

  /** A line of the page's own (a notice), on a line of its own. */
  notice(text) {
    if (this.line.firstChild) this.newLine();
    this.line.className = "notice";
    this.line.textContent = text;
    this.newLine();
    this.trim();
    this.scrollToBottom();
  }

  /** The player's command, dim, after the prompt on the current line. */
  echo(text) {
    const span = document.createElement("span");
    span.className = "local";
    span.textContent = text;
    this.line.append(span);
    this.newLine();
    this.trim();
    this.scrollToBottom();
  }

  get currentLineText() { return this.line.textContent; }

  clear() {
    this.element.replaceChildren();
    this.style = plainStyle();
    this.escape = null;
    this.newLine();
  }

  atBottom() {
    const e = this.element;
    return e.scrollHeight - e.scrollTop - e.clientHeight < 8;
  }

  scrollToBottom() { this.element.scrollTop = this.element.scrollHeight; }

  // -- internals

  newLine() {
    this.carriageReturn = false;
    this.line = document.createElement("div");
    this.element.append(this.line);
  }

  trim() {
    while (this.element.childElementCount > this.maxLines) this.element.firstElementChild.remove();
  }

  addText(text) {
    if (!text) return;
    if (this.carriageReturn) {
      this.carriageReturn = false;
      this.line.textContent = "";
    }
    const s = this.style;
    if (s.fg === null && s.bg === null && !s.bold && !s.dim && !s.italic && !s.underline && !s.inverse) {
      this.line.append(text);
      return;
    }
    const span = document.createElement("span");
    let fg = s.fg, bg = s.bg;
    if (s.bold && typeof fg === "number" && fg < 8) fg += 8;  // bold brightens, as MUD clients show it
    if (s.inverse) [fg, bg] = [bg ?? "var(--bg)", fg ?? "var(--fg)"];
    if (fg !== null) span.style.color = typeof fg === "number" ? paletteColor(fg) : fg;
    if (bg !== null) span.style.backgroundColor = typeof bg === "number" ? paletteColor(bg) : bg;
    const classes = [s.bold && "b", s.dim && "d", s.italic && "i", s.underline && "u"].filter(Boolean);
    if (classes.length) span.className = classes.join(" ");
    span.textContent = text;
    this.line.append(span);
  }

  /** Whether this.escape (what follows ESC so far) is a whole sequence. */
  escapeComplete() {
    const s = this.escape, last = s.charCodeAt(s.length - 1);
    if (s.length > 256) return true;  // runaway: give up on it
    switch (s[0]) {
      case "[": return s.length > 1 && last >= 0x40 && last <= 0x7e;           // CSI … final byte
      case "]": case "P": case "X": case "^": case "_":                        // strings: to BEL or ESC \
        return last === 0x07 || s.endsWith("\x1b\\");
      default: return last >= 0x30 && last <= 0x7e;                            // ESC (intermediates) final
    }
  }

  endEscape() {
    const s = this.escape;
    this.escape = null;
    const sgr = /^\[([0-9;:]*)m$/.exec(s);
    if (sgr) this.applySgr(sgr[1]);
  }

  applySgr(text) {
    const p = text.split(/[;:]/).map((x) => (x === "" ? 0 : Number(x)));
    const s = this.style;
    for (let i = 0; i < p.length; i++) {
      const n = p[i];
      if (n === 0) Object.assign(s, plainStyle());
      else if (n === 1) s.bold = true;
      else if (n === 2) s.dim = true;
      else if (n === 3) s.italic = true;
      else if (n === 4) s.underline = true;
      else if (n === 7) s.inverse = true;
      else if (n === 22) s.bold = s.dim = false;
      else if (n === 23) s.italic = false;
      else if (n === 24) s.underline = false;
      else if (n === 27) s.inverse = false;
      else if (n >= 30 && n <= 37) s.fg = n - 30;
      else if (n === 39) s.fg = null;
      else if (n >= 40 && n <= 47) s.bg = n - 40;
      else if (n === 49) s.bg = null;
      else if (n >= 90 && n <= 97) s.fg = n - 90 + 8;
      else if (n >= 100 && n <= 107) s.bg = n - 100 + 8;
      else if (n === 38 || n === 48) {
        const key = n === 38 ? "fg" : "bg";
        if (p[i + 1] === 5 && i + 2 < p.length) {
          s[key] = Math.min(p[i + 2], 255);
          i += 2;
        } else if (p[i + 1] === 2 && i + 4 < p.length) {
          const [r, g, b] = p.slice(i + 2, i + 5).map((v) => Math.min(v, 255));
          s[key] = `rgb(${r}, ${g}, ${b})`;
          i += 4;
        }
      }
    }
  }
}

/** Length of the longest prefix of UTF-8 bytes that does not end inside a character. */
function completeUtf8Length(bytes) {
  const n = bytes.length;
  for (let back = 1; back <= Math.min(3, n); back++) {
    const b = bytes[n - back];
    if ((b & 0xc0) === 0x80) continue;  // continuation byte: look further back
    const size = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return size > back ? n - back : n;
  }
  return n;
}

/**
 * Reads a text/event-stream body to its end, parsed as EventSource parses it: fields `data`,
 * `event`, `id` and `retry`, comments, an event dispatched by a blank line (one without data is
 * not), lines ended by \r\n, \n or \r. Calls onEvent(type, data, lastId) and onRetry(ms).
 * A chunk may end anywhere: inside a line, between \r and \n, inside a UTF-8 character.
 * Throws when the body is cut (network error, abort); an unfinished last event is dropped.
 */
async function readEventStream(body, onEvent, onRetry) {
  const reader = body.getReader();
  const decoder = new TextDecoder();  // with stream: true it holds a split character back
  let partial = "", afterCR = false, type = "", data = [], lastId = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    const text = decoder.decode(value, { stream: true });
    if (!text) continue;
    const skip = afterCR && text[0] === "\n" ? 1 : 0;  // the \n of a \r\n split between chunks
    afterCR = text.endsWith("\r");
    const lines = (partial + text.slice(skip)).split(/\r\n|\r|\n/);
    partial = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) onEvent(type || "message", data.join("\n"), lastId);
        type = "";
        data = [];
      } else if (line[0] !== ":") {  // ":" starts a comment (the keep-alive)
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + (line[colon + 1] === " " ? 2 : 1));
        if (name === "data") data.push(value);
        else if (name === "event") type = value;
        else if (name === "id" && !value.includes("\0")) lastId = value;
        else if (name === "retry" && /^[0-9]+$/.test(value)) onRetry(Number(value));
      }
    }
  }
}

/**
 * The byte offset in an event's id: `<offset>`, or `<offset>:<next GMCP seq>` on a GMCP session
 * (SPEC §7). NaN when the id has neither form. The whole id is what resumes a stream
 * (Last-Event-ID); only its offset is the page's cursor.
 */
function eventOffset(id) {
  const m = /^([0-9]+)(?::[0-9]+)?$/.exec(id);
  return m ? Number(m[1]) : NaN;
}

// ---------------------------------------------------------------- GMCP panel

/**
 * The latest data of each GMCP package (`Package.Message` → its JSON, pretty-printed), sorted
 * by name. Filled from GET /sessions/{id}/gmcp/state and kept current by the stream's `gmcp`
 * events. Hidden until the session has GMCP. Data only ever becomes text nodes.
 */
class GmcpPanel {
  constructor(box, list, maxPackages) {
    this.box = box;
    this.list = list;
    this.maxPackages = maxPackages;
    this.entries = new Map();  // lower-case name -> {name, element, pre, stamp}; oldest update first
    this.stamp = 0;            // counts updates, so that a state fetched earlier never undoes a newer event
  }

  /** Empties and hides the panel (a new session). */
  clear() {
    this.entries.clear();
    this.list.replaceChildren();
    this.box.hidden = true;
  }

  /** The session has no GMCP (404 or 409 for its state): hidden, as after clear(). */
  hide() { this.clear(); }

  /** One message: `{package, data}` (or `raw` for a payload that is not JSON). */
  update(name, message) {
    const key = String(name).toLowerCase();
    let entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key);  // to the end: the most recently updated
    } else {
      const element = document.createElement("div");
      element.className = "gmcp-package";
      const title = document.createElement("div");
      title.className = "gmcp-name";
      const pre = document.createElement("pre");
      element.append(title, pre);
      entry = { name: "", element, title, pre, stamp: 0 };
    }
    entry.name = String(name);
    entry.title.textContent = entry.name;
    entry.pre.textContent = GmcpPanel.format(message);
    entry.stamp = ++this.stamp;
    this.entries.set(key, entry);
    while (this.entries.size > this.maxPackages) {
      const [oldest, dropped] = this.entries.entries().next().value;
      this.entries.delete(oldest);
      dropped.element.remove();
    }
    if (!entry.element.isConnected) this.place(entry);
    this.box.hidden = false;
  }

  /**
   * A whole state (package → data), fetched when the stream (re)opened: the session has GMCP, so
   * the panel shows, even empty. It replaces the panel's packages, except those updated by an
   * event after `since` (a stamp taken before the fetch): the event is newer.
   */
  reset(state, since) {
    for (const [key, entry] of [...this.entries]) {
      if (entry.stamp > since) continue;
      this.entries.delete(key);
      entry.element.remove();
    }
    for (const [name, data] of Object.entries(state)) {
      if (!(this.entries.get(name.toLowerCase())?.stamp > since)) this.update(name, { data });
    }
    this.box.hidden = false;
  }

  get packages() { return [...this.list.children].map((e) => e.firstChild.textContent); }

  // -- internals

  /** Inserts a new entry's element in name order. */
  place(entry) {
    const name = entry.name.toLowerCase();
    const next = [...this.list.children].find((e) => e.firstChild.textContent.toLowerCase() > name);
    this.list.insertBefore(entry.element, next ?? null);
  }

  static format(message) {
    if (message && "data" in message) return JSON.stringify(message.data ?? null, null, 2);
    if (message && typeof message.raw === "string") return message.raw;
    return "null";
  }
}

// ---------------------------------------------------------------- page parts

const output = $("output"), lineInput = $("line"), statusBox = $("status");
const terminal = new Terminal(output, SCROLLBACK_LINES);
const gmcpPanel = new GmcpPanel($("gmcp"), $("gmcp-packages"), GMCP_MAX_PACKAGES);

const STATE_LABELS = {
  connecting: "connecting", open: "open", reconnecting: "reconnecting", closed: "closed", error: "error",
  replaced: "open in another window",
};

function showState(state, detail) {
  statusBox.dataset.state = state;
  statusBox.textContent = STATE_LABELS[state] + (detail ? ` (${detail})` : "");
  $("new-session").hidden = !(state === "closed" || state === "error");
}

function showTransport(name) {
  $("transport").textContent = name ? "via " + name : "";
}

/** The token: asked for when the proxy answers 401, kept for this tab in sessionStorage. */
let token = store.get(TOKEN_KEY);
let tokenAsked = null;

function askToken(message) {
  if (!tokenAsked) {
    tokenAsked = new Promise((resolve) => {
      const form = $("token");
      $("token-message").textContent = message;
      showState("connecting", "waiting for the access token");
      form.hidden = false;
      $("token-input").focus();
      form.onsubmit = (event) => {
        event.preventDefault();
        token = $("token-input").value.trim();
        store.set(TOKEN_KEY, token);
        form.hidden = true;
        tokenAsked = null;
        lineInput.focus();
        resolve();
      };
    });
  }
  return tokenAsked;
}

/** fetch() on the proxy with the token; on 401 asks for a token and tries again. */
async function api(method, path, { body, timeout, signal, headers: extra } = {}) {
  for (;;) {
    const headers = { ...extra };
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/x-www-form-urlencoded";
    if (timeout) signal = AbortSignal.timeout(timeout);
    const response = await fetch(path, { method, headers, body, signal, cache: "no-store" });
    if (response.status !== 401) return response;
    await askToken(token ? "Token refused; access token" : "Access token");
  }
}

async function errorText(response) {
  try { return (await response.json()).error || response.statusText; } catch { return response.statusText; }
}

// ---------------------------------------------------------------- the session

/**
 * One game session: creates or resumes it, keeps one output stream open (a WebSocket, else SSE,
 * else long-poll), and sends commands in order with `seq`. `offset` is the offset of the first byte
 * not yet shown: every (re)connection starts there, so nothing is lost or shown twice.
 */
class Client {
  constructor() {
    this.generation = 0;   // bumped for each new session: stale loops and callbacks stop
    this.wakers = new Set();  // each ends a backoff pause early (the browser came back online)
    this.queue = [];       // commands waiting to be sent, in order
    this.sending = false;
  }

  get streamPath() { return "/sessions/" + encodeURIComponent(this.id); }

  start() {
    const saved = JSON.parse(store.get(SESSION_KEY) || "null");
    if (saved && saved.id) this.attach(saved.id, saved.seq || 0);
    else this.create();
  }

  reset() {
    this.generation++;
    this.stopStream?.();
    this.id = null;
    this.closed = false;
    this.queue = [];
  }

  async create() {
    this.reset();
    const generation = this.generation;
    showState("connecting", "creating a session");
    showTransport("");
    let response;
    try {
      response = await api("POST", "/sessions", { body: target ? "target=" + encodeURIComponent(target) : "" });
    } catch {
      return showState("error", "cannot reach the proxy");
    }
    if (generation !== this.generation) return;
    if (response.status !== 201) return showState("error", await errorText(response));
    const { id } = await response.json();
    this.attach(id, 0);
  }

  /** Starts showing session `id` from its first byte still held (a reload replays the screen). */
  attach(id, seq) {
    this.reset();
    this.id = id;
    this.seq = seq;
    this.offset = 0;            // first byte not yet shown
    this.pollOffset = 0;        // next long-poll cursor: offset + bytes of a split character held
    this.held = new Uint8Array(0);
    this.sseFailures = 0;
    this.wsFailures = 0;
    this.save();
    gmcpPanel.clear();
    showState("connecting");
    this.connect();
  }

  save() { store.set(SESSION_KEY, JSON.stringify({ id: this.id, seq: this.seq })); }

  connect() {
    if (this.closed) return;
    this.refreshGmcp();
    if (forceLongPoll || this.sseFailures >= SSE_MAX_FAILURES) return this.poll(false);
    if ("WebSocket" in window && forcedTransport !== "sse" && this.wsFailures < WS_MAX_FAILURES) {
      return this.openWebSocket();
    }
    // EventSource where it can; it cannot send an Authorization header, so with a token the
    // same stream is read with fetch().
    if ("EventSource" in window && !token) this.openEventSource();
    else this.stream();
  }

  /**
   * The output over a WebSocket (SPEC §8, subprotocol `gmcp.mudstandards.org`): the session's
   * bytes in binary frames, so the offset is a byte count and a reconnection resumes exactly
   * (`since`); GMCP messages as text frames, for the panel. Commands still go by POST with
   * `seq`: exactly once even across a drop, which a frame sent on a dying socket cannot promise.
   * Close codes: 1000 the session ended (its reason); 4000 another window took over the
   * session; 1008 its offset was evicted, and a connection that never opened (no session,
   * refused): a plain read says why, then connect again; anything else (1001 the proxy is
   * upgrading, 1006 a network drop): reconnect from the offset.
   */
  openWebSocket() {
    const generation = this.generation;
    showTransport("WebSocket");
    this.pollOffset = this.offset;
    this.held = new Uint8Array(0);
    const url = new URL(`${this.streamPath}/ws`, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("since", this.offset);
    if (token) url.searchParams.set("token", token);  // a browser cannot set headers on one
    let ws;
    try {
      ws = new WebSocket(url, ["gmcp.mudstandards.org"]);
    } catch {  // refused by the browser (a Content-Security-Policy, a bad URL)
      this.wsFailures = WS_MAX_FAILURES;
      return this.connect();
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.stopStream = () => { if (this.ws === ws) this.ws = null; ws.close(1000); };
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.wsFailures = 0;
      this.wsDelay = 0;
      showState("open");
    };
    ws.onmessage = (event) => {
      if (generation !== this.generation || this.ws !== ws) return;
      if (typeof event.data === "string") return this.gmcpFrame(event.data);
      const bytes = new Uint8Array(event.data);
      this.received(bytes, this.pollOffset + bytes.length);
    };
    ws.onclose = async (event) => {
      if (generation !== this.generation || this.ws !== ws) return;
      this.ws = null;
      if (event.code === 1000) return this.ended(event.reason);
      if (event.code === 4000) {
        terminal.notice("[another window is reading this session: reload this page to read it here again]");
        return showState("replaced");
      }
      if (!opened) this.wsFailures++;
      if (!opened || event.code === 1008) return this.poll(true);
      this.wsDelay = backoff(this.wsDelay);
      showState("reconnecting", `retry in ${(this.wsDelay / 1000).toFixed(1)} s`);
      await this.pause(this.wsDelay);
      if (generation === this.generation && !this.closed) this.connect();
    };
  }

  /** A GMCP text frame: `Package.Message[ <JSON>]` (SPEC §8). */
  gmcpFrame(text) {
    const space = text.indexOf(" ");
    const name = space < 0 ? text : text.slice(0, space);
    if (space < 0) return gmcpPanel.update(name, { data: null });
    try {
      gmcpPanel.update(name, { data: JSON.parse(text.slice(space + 1)) });
    } catch {
      gmcpPanel.update(name, { raw: text.slice(space + 1) });
    }
  }

  /** Server-Sent Events with EventSource, which resumes by itself with Last-Event-ID. */
  openEventSource() {
    const generation = this.generation;
    showTransport("SSE");
    this.pollOffset = this.offset;  // an SSE chunk never ends inside a character
    this.held = new Uint8Array(0);
    const es = new EventSource(`${this.streamPath}/events?since=${this.offset}`);
    this.es = es;
    this.stopStream = () => { es.close(); if (this.es === es) this.es = null; };
    let errors = 0;
    let reopened = false;  // the browser reconnected by itself: GMCP events resume, the state is fetched anyway
    es.onopen = () => {
      errors = 0;
      this.sseFailures = 0;
      showState("open");
      if (reopened) this.refreshGmcp();
      reopened = true;
    };
    es.onmessage = (event) => {
      this.show(JSON.parse(event.data));
      this.textEvent(event.lastEventId);
    };
    es.addEventListener("gmcp", (event) => this.gmcpEvent(event.data));
    es.addEventListener("close", (event) => {
      es.close();
      let reason = "";
      try { reason = JSON.parse(event.data).reason; } catch {}
      this.ended(reason);
    });
    es.onerror = () => {
      if (generation !== this.generation || this.es !== es) return;
      // While CONNECTING the browser retries by itself and sends Last-Event-ID: we resume exactly.
      if (es.readyState === EventSource.CONNECTING && ++errors < SSE_MAX_FAILURES) {
        return showState("reconnecting");
      }
      // The browser gave up (an answer that is not a stream: 204, 404, 409, …) or retries keep
      // failing: a plain read says why (closed, evicted, gone) and the session goes on from there.
      es.close();
      this.es = null;
      this.sseFailures++;
      this.poll(true);
    };
  }

  /**
   * Server-Sent Events read with fetch(), when a token must be sent (so that the target's
   * charset still applies: the proxy decodes SSE text, long-poll bytes are UTF-8 here). As EventSource does, it
   * reconnects after a drop once `retry` ms have passed (doubling while it keeps failing), with
   * the last event's id as Last-Event-ID. An answer that is not a stream (204, 404, 409, …), or
   * SSE_MAX_FAILURES failures running, is followed by a plain read that says why.
   */
  async stream() {
    const generation = this.generation;
    showTransport("SSE");
    this.pollOffset = this.offset;  // an SSE chunk never ends inside a character
    this.held = new Uint8Array(0);
    let retry = 1000, delay = 0, errors = 0;
    let lastId = "";  // the last event's whole id: as EventSource, it resumes with it (offset and GMCP seq)
    for (let resuming = false; ; resuming = true) {
      const abort = new AbortController();
      this.stopStream = () => abort.abort();
      const headers = { Accept: "text/event-stream" };
      if (resuming) headers["Last-Event-ID"] = lastId || String(this.offset);
      try {
        const response = await api("GET", `${this.streamPath}/events?since=${this.offset}`,
                                   { headers, signal: abort.signal });
        if (response.status !== 200 || !response.headers.get("Content-Type")?.startsWith("text/event-stream")) {
          abort.abort();
          if (generation !== this.generation) return;
          this.sseFailures++;
          return this.poll(true);
        }
        errors = delay = 0;
        this.sseFailures = 0;
        showState("open");
        if (resuming) this.refreshGmcp();
        await readEventStream(response.body, (type, data, id) => {
          if (id) lastId = id;
          if (type === "message") {
            this.show(JSON.parse(data));
            this.textEvent(id);
          } else if (type === "gmcp") {
            this.gmcpEvent(data);
          } else if (type === "close") {
            let reason = "";
            try { reason = JSON.parse(data).reason; } catch {}
            this.ended(reason);
          }
        }, (ms) => { retry = ms; });
      } catch {}  // a network error, or the stream was cut
      // The stream ended or failed: reconnect, unless the session closed or was left.
      if (generation !== this.generation || this.closed) return;
      if (++errors >= SSE_MAX_FAILURES) {
        this.sseFailures++;
        return this.poll(true);
      }
      delay = delay ? backoff(delay) : retry;
      showState("reconnecting", `retry in ${(delay / 1000).toFixed(1)} s`);
      await this.pause(delay);
      if (generation !== this.generation) return;
    }
  }

  /** After a text event's chunk: the cursor is its id's offset (SPEC §2, §7). */
  textEvent(id) {
    const offset = eventOffset(id);
    if (!Number.isNaN(offset)) this.offset = this.pollOffset = offset;
  }

  /** An `event: gmcp` of the stream: `{"seq", "package", "data"}` (SPEC §7). */
  gmcpEvent(data) {
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (message && typeof message.package === "string") gmcpPanel.update(message.package, message);
  }

  /**
   * Fills the GMCP panel from GET /sessions/{id}/gmcp/state (package → data), at each
   * (re)connection. 404 or 409: the session has no GMCP, the panel hides; other failures leave
   * it as it is (the next reconnection asks again). Over long-poll the panel shows the state of
   * the last (re)connection: GMCP events come only with the event stream.
   */
  async refreshGmcp() {
    const generation = this.generation;
    const ask = this.gmcpAsk = (this.gmcpAsk || 0) + 1;  // only the latest answer counts
    const since = gmcpPanel.stamp;
    let response, state;
    try {
      response = await api("GET", `${this.streamPath}/gmcp/state`, { timeout: 15000 });
      if (response.status === 200) state = await response.json();
    } catch {
      return;
    }
    if (generation !== this.generation || ask !== this.gmcpAsk) return;
    if (response.status === 404 || response.status === 409) return gmcpPanel.hide();
    if (state && typeof state === "object" && !Array.isArray(state)) gmcpPanel.reset(state, since);
  }

  /** Long-poll reads from pollOffset. With `probe`, reads once without waiting, then reconnects. */
  async poll(probe) {
    const generation = this.generation;
    let delay = 0;
    if (!probe) showTransport("long-poll");
    while (generation === this.generation && !this.closed) {
      const wait = probe ? 0 : POLL_WAIT;
      let response, bytes;
      try {
        response = await api("GET", `${this.streamPath}?since=${this.pollOffset}&wait=${wait}`,
                             { timeout: (wait + 15) * 1000 });
        if (response.status === 200) bytes = new Uint8Array(await response.arrayBuffer());
      } catch {
        response = null;  // network error, or the answer was cut: the same read again
      }
      if (generation !== this.generation) return;
      if (response === null || response.status >= 500) {
        delay = backoff(delay);
        showState("reconnecting", `retry in ${(delay / 1000).toFixed(1)} s`);
        await this.pause(delay);
        continue;
      }
      delay = 0;
      if (response.status === 409) {
        const base = Number(response.headers.get("X-Offset-Base"));
        terminal.notice(`[${base - this.offset} bytes of output are no longer held by the proxy and were skipped]`);
        this.offset = this.pollOffset = base;
        this.held = new Uint8Array(0);
        continue;
      }
      if (response.status === 404) return this.ended("the session no longer exists", true);
      if (response.status !== 200) return showState("error", await errorText(response));
      this.received(bytes, Number(response.headers.get("X-Next-Offset")));
      const open = response.headers.get("X-Session-State") === "open";
      if (!open && bytes.length === 0) return this.ended(response.headers.get("X-Close-Reason"));
      if (open) showState("open");
      if (probe && open) return this.connect();
    }
  }

  /** Bytes from a long-poll: shows the whole characters, holds back a split one. */
  received(bytes, nextOffset) {
    let all = bytes;
    if (this.held.length) {
      all = new Uint8Array(this.held.length + bytes.length);
      all.set(this.held);
      all.set(bytes, this.held.length);
    }
    const whole = completeUtf8Length(all);
    this.show(new TextDecoder().decode(all.subarray(0, whole)));
    this.held = all.slice(whole);
    this.pollOffset = nextOffset;
    this.offset = nextOffset - this.held.length;
  }

  show(text) {
    terminal.write(text);
    // A password prompt: no echo, no history, masked input.
    lineInput.type = /pass(word|phrase)?\s*:?\s*$/i.test(terminal.currentLineText) ? "password" : "text";
  }

  ended(reason, gone = false) {
    if (this.closed) return;
    this.closed = true;
    this.stopStream?.();
    if (gone) store.set(SESSION_KEY, null);  // a reload then starts a new session
    terminal.notice(gone ? `[${reason}]` : `[connection closed${reason ? ": " + reason : ""}]`);
    showState("closed", reason);
    $("new-session").focus();
  }

  pause(ms) {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); this.wakers.delete(done); resolve(); };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  /** The browser is back online: retry now rather than when the backoff says. */
  wake() {
    for (const done of [...this.wakers]) done();
    if (this.es?.readyState === EventSource.CONNECTING) {  // waiting out its own retry delay
      this.es.close();
      this.openEventSource();
    }
  }

  // -- input

  send(command) {
    this.queue.push(command);
    if (!this.sending) this.sendQueued();
  }

  /** Sends one command at a time, so that they reach the game in order. */
  async sendQueued() {
    this.sending = true;
    const generation = this.generation;
    while (this.queue.length && generation === this.generation) {
      await this.deliver(this.queue[0], generation);
      this.queue.shift();
    }
    this.sending = false;
    $("sending").textContent = "";
  }

  /** POSTs one command; a retry reuses its seq, so the proxy never runs it twice. */
  async deliver(command, generation) {
    let seq = this.nextSeq();
    let delay = 0;
    for (let attempt = 1; generation === this.generation; attempt++) {
      let response = null;
      try {
        response = await api("POST", `${this.streamPath}/input`,
                             { body: `cmd=${encodeURIComponent(command)}&seq=${seq}`, timeout: 15000 });
      } catch {}
      if (response?.status === 204) {
        if (attempt === 1 && response.headers.get("X-Duplicate")) {
          // This seq was used before by another page on this session (a copied tab): skip ahead.
          seq = this.nextSeq(Date.now());
          attempt = 0;
          continue;
        }
        return;
      }
      if (response && response.status !== 503 && response.status < 500) {
        return terminal.notice(`[not sent: ${await errorText(response)}]`);
      }
      if (attempt >= SEND_ATTEMPTS) return terminal.notice(`[not sent after ${attempt} tries: ${command}]`);
      delay = backoff(delay);
      $("sending").textContent = `sending… (try ${attempt + 1})`;
      await this.pause(delay);
    }
  }

  nextSeq(atLeast = 0) {
    this.seq = Math.max(this.seq + 1, atLeast);
    this.save();
    return this.seq;
  }
}

// ---------------------------------------------------------------- command line

class History {
  constructor() {
    this.items = JSON.parse(store.get(HISTORY_KEY) || "[]");
    this.position = this.items.length;
    this.draft = "";
  }

  add(command) {
    if (command && command !== this.items[this.items.length - 1]) {
      this.items.push(command);
      this.items.splice(0, this.items.length - HISTORY_SIZE);
      store.set(HISTORY_KEY, JSON.stringify(this.items));
    }
    this.position = this.items.length;
    this.draft = "";
  }

  previous(current) {
    if (this.position === this.items.length) this.draft = current;
    if (this.position > 0) this.position--;
    return this.items[this.position] ?? current;
  }

  next() {
    if (this.position < this.items.length) this.position++;
    return this.position === this.items.length ? this.draft : this.items[this.position];
  }
}

const client = new Client();
const history = new History();

$("command").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!client.id || client.closed) {
    terminal.notice("[no open session: use New session to start another]");
    return;
  }
  const command = lineInput.value;
  const secret = lineInput.type === "password";
  if (!secret) history.add(command);
  terminal.echo(secret ? "" : command);
  client.send(command);
  lineInput.value = "";
  lineInput.type = "text";
});

lineInput.addEventListener("keydown", (event) => {
  if (event.key !== "ArrowUp" && event.key !== "ArrowDown") return;
  event.preventDefault();
  lineInput.value = event.key === "ArrowUp" ? history.previous(lineInput.value) : history.next();
  lineInput.setSelectionRange(lineInput.value.length, lineInput.value.length);
});

// Clicking the output (without selecting text) goes back to the command line.
output.addEventListener("mouseup", () => {
  if (!getSelection().toString()) lineInput.focus();
});

$("new-session").addEventListener("click", () => {
  terminal.clear();
  client.create();
  lineInput.focus();
});

window.addEventListener("online", () => client.wake());

/** Read-only state for scripts/browser-test and for debugging from the console. */
window.uvproxy = Object.freeze({
  get sessionId() { return client.id; },
  get state() { return statusBox.dataset.state; },
  get transport() { return $("transport").textContent.replace(/^via /, ""); },
  get offset() { return client.offset; },
  get gmcpPackages() { return gmcpPanel.packages; },
  Terminal,
  GmcpPanel,
  readEventStream,
  eventOffset,
});

client.start();
})();

/* traind dashboard: the REST API and the live event stream, for dashboard.js.
 *
 * The token lives in sessionStorage (this tab only, gone when it closes) and goes in an
 * Authorization header, never in a URL. The event stream is read with fetch rather than
 * EventSource, which cannot send a header; a broken stream reconnects by itself with
 * Last-Event-ID, backing off, and after three failures in a row says "polling" so the page
 * polls while it keeps trying. Every URL is relative, so the page works behind a reverse
 * proxy that serves traind under a prefix.
 */
"use strict";

(function () {
  const TOKEN_KEY = "traind.token";
  const RETRY_MAX_MS = 15000;
  const FAILURES_BEFORE_POLLING = 3;

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  let token = sessionStorage.getItem(TOKEN_KEY);

  /** The token entered in this tab, or null. */
  function currentToken() {
    return token;
  }

  /** Keep ``value`` as the token of this tab; null forgets it. */
  function setToken(value) {
    token = value || null;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  function headers(extra) {
    const out = Object.assign({ Accept: "application/json" }, extra || {});
    if (token) out.Authorization = `Bearer ${token}`;
    return out;
  }

  /** The JSON answer of ``path``; an ApiError whose message a person can act on. */
  async function request(path, options) {
    const opts = options || {};
    const response = await fetch(path, { method: opts.method || "GET", headers: headers(), body: opts.body, cache: "no-store" });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      let detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
      if (response.status === 401) {
        detail = token ? "the server refused this token: check it and enter it again" : "this needs the API token: enter it at the top of the page";
      }
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  /** Call onEvent(type, data) for each event of one SSE response body, until it ends. */
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let id = null, type = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("id:")) id = line.slice(3).trim();
          else if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trimStart();
        }
        if (id !== null) onEvent(Number(id), type, data); // else a keep-alive comment
      }
    }
  }

  /**
   * Follows GET v1/events from an event id on, for as long as the page lives.
   * ``onEvent(type, data)`` gets each event (data parsed); ``onMode(mode)`` hears
   * "live", "reconnecting" or "polling". ``lastId`` is the newest event id received.
   */
  class EventFollower {
    constructor({ onEvent, onMode }) {
      this.onEvent = onEvent;
      this.onMode = onMode;
      this.lastId = 0;
      this.failures = 0;
      this.generation = 0;
      this.abort = null;
    }

    /** (Re)start following after event ``after``, dropping any stream in progress. */
    start(after) {
      if (this.abort) this.abort.abort();
      this.lastId = after;
      this.connect();
    }

    async connect() {
      const generation = ++this.generation;
      const abort = this.abort = new AbortController();
      try {
        const response = await fetch(`v1/events?after=${this.lastId}`, {
          headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(this.lastId) }),
          signal: abort.signal,
          cache: "no-store",
        });
        if (!response.ok) throw new ApiError(response.status, `HTTP ${response.status}`);
        this.failures = 0;
        this.onMode("live");
        await readEvents(response, (id, type, data) => {
          this.lastId = id;
          try { this.onEvent(type, JSON.parse(data)); } catch (error) { console.warn("traind: event", id, error); }
        });
      } catch (error) {
        // A refused connection or a cut stream: tried again below.
      }
      if (abort.signal.aborted || generation !== this.generation) return;
      this.failures += 1;
      this.onMode(this.failures >= FAILURES_BEFORE_POLLING ? "polling" : "reconnecting");
      const wait = Math.min(RETRY_MAX_MS, 500 * Math.pow(2, this.failures));
      setTimeout(() => { if (generation === this.generation) this.connect(); }, wait);
    }
  }

  window.TraindApi = { ApiError, EventFollower, currentToken, request, setToken };
})();

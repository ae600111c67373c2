/* traind dashboard: draws the page from the REST API and the live event stream
 * (api.js), and sends the actions of a user who entered the token.
 *
 * History comes from GET v1/history (downsampled series and markers up to the event id
 * it names), then grows from the events after that id, so nothing is missed or shown
 * twice; while the stream is down the page polls the history, the queue and gold.
 */
"use strict";

(function () {
  const { Plot, formatValue } = window.TraindPlot;
  const { ApiError, EventFollower, currentToken, request, setToken } = window.TraindApi;
  const TraindHistory = window.TraindHistory;
  const STATUS_EVERY_MS = 2000;
  const POLL_EVERY_MS = 5000;
  const QUEUE_ROWS = 200;
  const RETRYABLE = new Set(["failed", "cancelled", "rolled_back", "rejected"]);
  const CANCELLABLE = new Set(["queued", "training"]);
  const QUEUE_EVENTS = new Set([
    "file_queued", "file_rejected", "file_duplicate", "file_failed", "file_cancelled",
    "file_requeued", "file_rolled_back", "file_reopened", "file_start", "file_complete",
    "file_parked", "file_resumed", "ledger_rebuilt",
  ]);
  const STATUS_EVENTS = new Set(["paused", "resumed", "training_start", "training_complete", "file_start", "file_complete"]);
  const ROLLBACK_TEXT = "Newer checkpoints are kept under checkpoints/rolled-back/; files finished after gold become rolled_back, and the file in training is cancelled.";
  const COLORS = ["var(--s3)", "var(--s4)", "var(--s5)", "var(--s6)"];

  const $ = (id) => document.getElementById(id);
  const page = {
    history: TraindHistory.empty(),
    mode: "connecting",
    pendingUploads: new Map(),
    timers: {},
  };
  window.traindPage = page; // for the browser tests and curious users

  const plots = {
    loss: new Plot($("plot-loss"), {
      markers: true,
      // The deciding set's loss is drawn last, over its own eval_<set> line.
      lines: [
        { key: "eval_*", colors: COLORS },
        { key: "train_loss", label: "train", color: "var(--s1)" },
        { key: "val_loss", label: "val (deciding set)", color: "var(--s2)", width: 2.4 },
      ],
      empty: "No loss yet: points appear as steps pass.",
    }),
    lr: new Plot($("plot-lr"), { lines: [{ key: "lr", label: "lr", color: "var(--s5)" }] }),
    speed: new Plot($("plot-speed"), { lines: [{ key: "tokens_per_s", label: "tokens/s", color: "var(--s4)" }] }),
  };

  // --- requests -------------------------------------------------------------------------

  function later(key, ms, fn) {
    if (page.timers[key]) return;
    page.timers[key] = setTimeout(() => { page.timers[key] = null; fn(); }, ms);
  }

  function showError(text) {
    const banner = $("error-banner");
    banner.hidden = !text;
    banner.textContent = text || "";
  }

  function result(text, kind) {
    const out = $("action-result");
    out.textContent = text;
    out.dataset.kind = kind || "";
  }

  // --- token ----------------------------------------------------------------------------

  function renderAuth() {
    const writable = Boolean(currentToken());
    document.querySelectorAll(".action").forEach((node) => { node.disabled = !writable; });
    $("readonly-note").hidden = writable;
    $("token-forget").hidden = !writable;
    $("token-input").placeholder = writable ? "token set for this tab" : "to pause, upload, …";
    document.body.dataset.writable = String(writable);
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    $("token-input").value = "";
    if (!value) return;
    setToken(value);
    renderAuth();
    result("Token set for this tab.", "ok");
    refreshAll();
  });
  $("token-forget").addEventListener("click", () => {
    setToken(null);
    renderAuth();
    result("Token forgotten: the page is read-only.", "");
  });

  // --- status ---------------------------------------------------------------------------

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
    if (d > 0) return `${d} d ${h % 24} h`;
    if (h > 0) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
    return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  }

  function renderStatus(status) {
    page.status = status;
    const state = $("state");
    state.dataset.state = status.state;
    state.textContent = status.state;
    $("global-step").textContent = status.global_step === null ? "–" : String(status.global_step);
    showError(status.state === "error" ? `The service stopped on an error: ${status.error || "see its log"}` : "");
    const current = status.current_file;
    const bar = $("file-progress");
    if (current) {
      $("current-file").textContent = `#${current.id} ${current.name || ""}`;
      const progress = current.progress === null ? 0 : current.progress;
      bar.value = progress;
      bar.dataset.progress = String(progress);
      $("file-percent").textContent = `${(progress * 100).toFixed(1)} %`;
      const step = status.global_step === null ? "–" : status.global_step;
      $("file-steps").textContent = current.target_step === null ? "–" : `${step} of ${current.start_step}–${current.target_step}`;
    } else {
      $("current-file").textContent = status.state === "paused" ? "Paused, no file in training." : "No file in training.";
      bar.value = 0;
      bar.dataset.progress = "0";
      $("file-percent").textContent = "–";
      $("file-steps").textContent = "–";
    }
    $("file-eta").textContent = duration(status.eta_s);
    $("queue-eta").textContent = duration(status.eta_queue_s);
    $("tokens-per-s").textContent = status.tokens_per_s === null ? "–" : Math.round(status.tokens_per_s).toLocaleString("en");
    $("lr").textContent = formatValue(status.lr);
    $("train-loss").textContent = formatValue(status.train_loss);
    $("val-loss").textContent = status.last_eval ? formatValue(status.last_eval.val_loss) : "–";
    const counts = Object.entries(status.queue || {}).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`);
    $("queue-counts").textContent = counts.length ? `(${counts.join(", ")})` : "";
    if (status.last_eval && status.last_eval.samples) renderSamples(status.last_eval.step, status.last_eval.samples);
    renderGoldSummary(status.gold);
  }

  async function refreshStatus() {
    try {
      renderStatus(await request("v1/status"));
    } catch (error) {
      if (error instanceof ApiError) showError(`Status: ${error.message}`);
      else showError("The service does not answer; retrying.");
    }
  }

  function renderSamples(step, samples) {
    $("samples-step").textContent = samples.length ? `At step ${step}:` : `At step ${step}: no prompts (eval.prompts) are set.`;
    const list = $("sample-list");
    list.textContent = "";
    for (const sample of samples) {
      const item = document.createElement("div");
      item.className = "sample";
      const pre = document.createElement("pre");
      const prompt = document.createElement("b");
      prompt.textContent = sample.prompt;
      pre.append(prompt, sample.completion);
      item.appendChild(pre);
      list.appendChild(item);
    }
  }

  // --- queue ----------------------------------------------------------------------------

  async function refreshQueue() {
    try {
      let body = await request(`v1/queue?limit=${QUEUE_ROWS}`);
      if (body.total > QUEUE_ROWS) body = await request(`v1/queue?limit=${QUEUE_ROWS}&offset=${body.total - QUEUE_ROWS}`);
      renderQueue(body.items, body.total);
      settleUploads(body.items);
    } catch (error) {
      if (error instanceof ApiError) showError(`Queue: ${error.message}`);
    }
  }

  function rowButton(label, file, verb) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "action";
    button.textContent = label;
    button.dataset.verb = verb;
    button.dataset.file = String(file.id);
    button.setAttribute("aria-label", `${label} file #${file.id} ${file.name}`);
    button.disabled = !currentToken();
    button.addEventListener("click", () => act(`v1/files/${file.id}/${verb}`, `${label} #${file.id}`));
    return button;
  }

  function renderQueue(items, total) {
    const body = $("queue-rows");
    body.textContent = "";
    if (!items.length) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = 6;
      cell.className = "muted";
      cell.textContent = "No files yet: drop JSONL files into the inbox, or upload one.";
      return;
    }
    for (const file of items.slice().reverse()) {
      const row = body.insertRow();
      row.dataset.file = String(file.id);
      row.dataset.name = file.name;
      row.dataset.state = file.state;
      row.insertCell().textContent = String(file.id);
      const name = row.insertCell();
      name.textContent = file.name;
      const state = row.insertCell();
      state.className = "state-cell";
      state.dataset.state = file.state;
      state.textContent = file.state.replace("_", " ");
      const steps = row.insertCell();
      steps.className = "num";
      const end = file.end_step !== null ? file.end_step : file.target_step;
      steps.textContent = file.start_step === null ? "–" : `${file.start_step}–${end === null ? "…" : end}`;
      const reason = row.insertCell();
      reason.className = "reason";
      let text = file.error || "";
      if (file.state === "duplicate" && file.duplicate_of !== null) text = `same content as #${file.duplicate_of}`;
      if (!text && file.invalid_lines && file.invalid_lines.length) {
        const lines = file.invalid_lines.slice(0, 3).map((p) => (p.line === null ? p.reason : `line ${p.line}: ${p.reason}`));
        text = lines.join(" · ");
      }
      reason.textContent = text;
      const actions = row.insertCell();
      actions.className = "row-actions";
      if (RETRYABLE.has(file.state)) actions.appendChild(rowButton("Retry", file, "retry"));
      if (CANCELLABLE.has(file.state)) actions.appendChild(rowButton("Cancel", file, "cancel"));
    }
    if (total > items.length) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = 6;
      cell.className = "muted";
      cell.textContent = `The newest ${items.length} of ${total} files (GET /v1/queue pages through all).`;
    }
  }

  // --- gold -----------------------------------------------------------------------------

  function renderGoldSummary(gold) {
    $("gold-summary").textContent = gold && gold.step !== null
      ? `Gold is step ${gold.step}, val loss ${formatValue(gold.val_loss)}.`
      : "No gold checkpoint yet: gold is written when an evaluation finds a new best validation loss that passes the guards.";
    $("rollback").dataset.gold = gold && gold.step !== null ? "yes" : "no";
  }

  async function refreshGold() {
    try {
      const body = await request("v1/gold");
      renderGoldSummary(body.gold);
      const list = $("gold-decisions");
      list.textContent = "";
      for (const decision of body.history.slice(-20).reverse()) {
        const item = document.createElement("li");
        const kind = document.createElement("span");
        const blocked = decision.event === "gold_blocked";
        kind.className = blocked ? "blocked" : "gold";
        kind.textContent = blocked ? "blocked" : "gold";
        item.append(kind, ` at step ${decision.step}, val loss ${formatValue(decision.val_loss)}`);
        if (blocked && decision.reason) item.append(`: ${decision.reason}`);
        item.dataset.event = decision.event;
        list.appendChild(item);
      }
      if (!body.history.length) {
        const item = document.createElement("li");
        item.className = "muted";
        item.textContent = "None yet.";
        list.appendChild(item);
      }
    } catch (error) {
      if (error instanceof ApiError) showError(`Gold: ${error.message}`);
    }
  }

  $("rollback").addEventListener("click", () => {
    const dialog = $("confirm-rollback");
    const gold = page.status && page.status.gold;
    const first = gold && gold.step !== null
      ? `The lineage continues from gold (step ${gold.step}): its weights, optimizer and step.`
      : "There is no gold checkpoint yet: the service will refuse.";
    $("confirm-text").textContent = `${first} ${ROLLBACK_TEXT}`;
    dialog.showModal();
  });
  $("confirm-rollback").addEventListener("close", () => {
    if ($("confirm-rollback").returnValue === "confirm") act("v1/gold/rollback", "Roll back to gold");
  });

  // --- actions --------------------------------------------------------------------------

  async function act(path, label) {
    result(`${label}: sending…`, "");
    try {
      await request(path, { method: "POST" });
      result(`${label}: accepted.`, "ok");
      refreshStatus();
      later("queue", 300, refreshQueue);
    } catch (error) {
      result(`${label}: ${error.message}`, "error");
    }
  }

  document.querySelectorAll("button[data-post]").forEach((button) => {
    button.addEventListener("click", () => act(button.dataset.post, button.textContent));
  });

  $("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("upload-file");
    if (!input.files.length) { result("Choose a JSONL file first.", "error"); return; }
    const file = input.files[0];
    const form = new FormData();
    form.append("file", file, file.name);
    result(`Uploading ${file.name}…`, "");
    try {
      const body = await request("v1/files", { method: "POST", body: form });
      page.pendingUploads.set(body.name, file.name);
      result(`${file.name}: received as ${body.name}, being checked…`, "");
      input.value = "";
      later("queue", 500, refreshQueue);
    } catch (error) {
      result(`${file.name}: ${error.message}`, "error");
    }
  });

  /** Say what became of an uploaded file, from an event or a queue row with its name. */
  function settleUpload(name, outcome, kind) {
    const label = page.pendingUploads.get(name);
    if (label === undefined) return;
    page.pendingUploads.delete(name);
    result(`${label}: ${outcome}`, kind);
  }

  function settleUploads(items) {
    for (const file of items) {
      if (!page.pendingUploads.has(file.name)) continue;
      if (file.state === "rejected") settleUpload(file.name, `rejected: ${file.error}`, "error");
      else if (file.state === "duplicate") settleUpload(file.name, `a duplicate of file #${file.duplicate_of}, not queued`, "error");
      else settleUpload(file.name, `queued as file #${file.id}.`, "ok");
    }
  }

  // --- history and plots ----------------------------------------------------------------

  function drawPlots() {
    for (const plot of Object.values(plots)) plot.setData(page.history);
  }

  async function loadHistory() {
    const body = await request("v1/history?points=1000");
    page.history = TraindHistory.fromResponse(body);
    drawPlots();
    return body.last_event_id;
  }

  function onEvent(type, data) {
    const plotted = TraindHistory.apply(page.history, type, data);
    if (plotted === "reload") later("history", 0, restartStream);
    else if (plotted === "changed") later("draw", 250, drawPlots);
    switch (type) {
      case "progress":
        later("status", 200, refreshStatus);
        break;
      case "eval":
        if (data.trigger !== "checkpoint" && Array.isArray(data.samples)) renderSamples(data.step, data.samples);
        break;
      case "gold_checkpoint":
      case "gold_blocked":
      case "rolled_back_to_gold":
        later("gold", 200, refreshGold);
        break;
      case "file_queued":
        settleUpload(data.file, `queued as file #${data.id}.`, "ok");
        break;
      case "file_rejected":
        settleUpload(data.file, `rejected: ${data.reason}`, "error");
        break;
      case "file_duplicate":
        settleUpload(data.file, `a duplicate of file #${data.duplicate_of}, not queued`, "error");
        break;
      default:
        break;
    }
    if (QUEUE_EVENTS.has(type)) later("queue", 300, refreshQueue);
    if (STATUS_EVENTS.has(type)) later("status", 100, refreshStatus);
  }

  // --- the live stream, and polling when it fails ---------------------------------------

  function setMode(mode) {
    page.mode = mode;
    const node = $("connection");
    node.dataset.mode = mode;
    node.textContent = { live: "live", reconnecting: "reconnecting…", polling: "polling (live stream unavailable)", connecting: "connecting" }[mode];
  }

  const follower = new EventFollower({ onEvent, onMode: setMode });
  Object.defineProperty(page, "lastId", { get: () => follower.lastId }); // for the tests

  /** Load the history, then follow the events after it. */
  function restartStream() {
    loadHistory()
      .then((lastId) => follower.start(lastId))
      .catch((error) => {
        drawPlots();
        if (error instanceof ApiError) showError(`History: ${error.message}`);
        follower.start(follower.lastId);
      });
  }

  /** While the stream is down: the history again (it names the event id it reached). */
  function poll() {
    if (page.mode === "polling") {
      // The history names the event it reached: the stream, once back, goes on from there.
      loadHistory().then((lastId) => { follower.lastId = Math.max(follower.lastId, lastId); }).catch(() => {});
      refreshQueue();
      refreshGold();
    }
  }

  function refreshAll() {
    refreshStatus();
    refreshQueue();
    refreshGold();
  }

  // --- start ----------------------------------------------------------------------------

  renderAuth();
  refreshAll();
  restartStream();
  setInterval(() => { if (!document.hidden) refreshStatus(); }, STATUS_EVERY_MS);
  setInterval(poll, POLL_EVERY_MS);
  let width = window.innerWidth;
  window.addEventListener("resize", () => {
    if (window.innerWidth !== width) { width = window.innerWidth; later("draw", 100, drawPlots); }
  });
})();

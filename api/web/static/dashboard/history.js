/* traind dashboard: the lineage's plotted history in the browser, grown by live events
 * the way the server's store (api/web/series.py) grows it, so that the page shows what a
 * fresh GET v1/history would: a point at or before a series' last step replaces those
 * from its step on; a training_start cuts what came after the step training resumes at;
 * a rollback to gold or a new lineage asks for the history again.
 */
"use strict";

(function () {
  const PROGRESS = { train_loss: "loss", lr: "lr", tokens_per_s: "tokens_per_s" };
  const LIVE_POINTS_MAX = 5000;
  const COLUMNS = ["step", "value", "min", "max"];

  function empty() {
    return { series: {}, files: [], gold: [], gold_blocked: [], rollbacks: [] };
  }

  /** The page's history from a GET v1/history answer. */
  function fromResponse(body) {
    return {
      series: body.series,
      files: body.files,
      gold: body.gold,
      gold_blocked: body.gold_blocked,
      rollbacks: body.rollbacks,
    };
  }

  function keep(series, n) {
    for (const key of COLUMNS) series[key].length = n;
  }

  /** Add a point; false when the series has grown past what the page keeps live. */
  function addPoint(history, name, step, value) {
    if (typeof value !== "number" || !isFinite(value) || typeof step !== "number") return true;
    let series = history.series[name];
    if (!series) series = history.series[name] = { step: [], value: [], min: [], max: [], total: 0 };
    let n = series.step.length;
    while (n > 0 && series.step[n - 1] >= step) n -= 1;
    keep(series, n);
    series.step.push(step);
    series.value.push(value);
    series.min.push(value);
    series.max.push(value);
    series.total = series.step.length;
    return series.step.length <= LIVE_POINTS_MAX;
  }

  /** Forget what the history holds past ``step``. */
  function cut(history, step) {
    if (typeof step !== "number") return;
    for (const series of Object.values(history.series)) {
      let n = series.step.length;
      while (n > 0 && series.step[n - 1] > step) n -= 1;
      keep(series, n);
    }
    history.files = history.files.filter((f) => f.start_step <= step);
    for (const f of history.files) if (f.end_step !== null && f.end_step > step) f.end_step = null;
    history.gold = history.gold.filter((g) => g.step <= step);
    history.gold_blocked = history.gold_blocked.filter((g) => g.step <= step);
  }

  function openSpan(history, data, start) {
    history.files.push({ file: data.file, sha256: data.sha256, start_step: start, target_step: data.target_step, end_step: null });
  }

  function closeSpan(history, data, end) {
    for (const f of history.files) if (f.sha256 === data.sha256 && f.end_step === null) f.end_step = end;
  }

  /**
   * Apply one event to ``history``: "changed", "reload" (take GET v1/history again), or
   * null when it is not a plotted event.
   */
  function apply(history, type, data) {
    let fits = true;
    switch (type) {
      case "progress":
        for (const [name, field] of Object.entries(PROGRESS)) fits = addPoint(history, name, data.step, data[field]) && fits;
        break;
      case "eval":
        if (data.trigger === "checkpoint") return null; // a saved checkpoint's, not the lineage's
        fits = addPoint(history, "val_loss", data.step, data.val_loss);
        for (const [key, value] of Object.entries(data)) {
          if (key.startsWith("eval_") && key !== "eval_duration_s") fits = addPoint(history, key, data.step, value) && fits;
        }
        break;
      case "file_start":
        history.files = history.files.filter((f) => f.start_step < data.start_step);
        openSpan(history, data, data.start_step);
        break;
      case "file_resumed":
        openSpan(history, data, data.step);
        break;
      case "file_complete":
        closeSpan(history, data, data.end_step);
        break;
      case "file_parked":
        closeSpan(history, data, data.step);
        break;
      case "gold_checkpoint":
        history.gold.push({ step: data.step, val_loss: data.val_loss });
        break;
      case "gold_blocked":
        history.gold_blocked.push({ step: data.step, val_loss: data.val_loss, reason: data.reason, guards: data.guards });
        break;
      case "training_start":
        cut(history, data.global_step); // a resumed worker trains the steps after it again
        break;
      case "rolled_back_to_gold":
      case "lineage_retired":
        return "reload"; // what came after gold is no longer the lineage's
      default:
        return null;
    }
    return fits ? "changed" : "reload";
  }

  window.TraindHistory = { apply, empty, fromResponse };
})();

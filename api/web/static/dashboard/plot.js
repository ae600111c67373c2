/* traind dashboard: line plots over the global step, drawn as SVG (no library).
 *
 * A Plot draws series of {step[], value[], min[], max[]} (min/max: the envelope of a
 * downsampled bucket, drawn faintly when it differs from the mean), and markers: file
 * starts (dashed lines), rollbacks to gold (solid lines), gold checkpoints (diamonds) and
 * blocked gold decisions (crosses); the markers are focusable, their meaning in a tooltip. Everything a label shows is set as text, never
 * as markup, since file names come from users.
 */
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const PAD = { left: 52, right: 10, top: 16, bottom: 22 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  function titled(node, text) {
    el("title", {}, node).textContent = text;
    node.setAttribute("aria-label", text);
    return node;
  }

  /** About n round-numbered ticks covering [lo, hi], at least minStep apart. */
  function ticks(lo, hi, n, minStep) {
    const span = hi - lo || Math.abs(hi) || 1;
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    const step = Math.max(minStep || 0, (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return out;
  }

  function formatStep(v) {
    if (Math.abs(v) >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (Math.abs(v) >= 1e4) return +(v / 1e3).toPrecision(3) + "k";
    return String(Math.round(v));
  }

  function formatValue(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    if (a >= 1e4) return Math.round(v).toLocaleString("en");
    return String(+v.toPrecision(4));
  }

  /** Index of the last step <= x (binary search), or -1. */
  function lastAtOrBefore(steps, x) {
    let lo = 0, hi = steps.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (steps[mid] <= x) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return found;
  }

  class Plot {
    /**
     * @param {HTMLElement} container
     * @param {{lines: {key: string, label: string, color: string}[], markers?: boolean,
     *          format?: (v: number) => string, empty?: string}} options
     */
    constructor(container, options) {
      this.container = container;
      this.options = Object.assign({ markers: false, format: formatValue, empty: "No points yet." }, options);
      this.data = { series: {}, files: [], gold: [], gold_blocked: [], rollbacks: [] };
      this.legend = document.createElement("ul");
      this.legend.className = "legend";
      container.insertAdjacentElement("afterend", this.legend);
      this.readout = document.createElement("div");
      this.readout.className = "readout";
      this.readout.setAttribute("aria-hidden", "true");
      container.addEventListener("mousemove", (e) => this.showReadout(e));
      container.addEventListener("mouseleave", () => { this.readout.textContent = ""; });
    }

    /** Lines of this plot present in ``series`` (a name may be a prefix ending in "*"). */
    lines() {
      const out = [];
      for (const line of this.options.lines) {
        if (line.key.endsWith("*")) {
          const prefix = line.key.slice(0, -1);
          Object.keys(this.data.series).filter((k) => k.startsWith(prefix)).sort()
            .forEach((k, i) => out.push({ key: k, label: k.slice(prefix.length), color: line.colors[i % line.colors.length] }));
        } else if (this.data.series[line.key]) {
          out.push(line);
        }
      }
      return out.filter((line) => (this.data.series[line.key].step || []).length > 0);
    }

    setData(data) {
      this.data = data;
      this.render();
    }

    /** Points drawn now (for tests and the page's own checks). */
    pointCount() {
      return this.lines().reduce((n, line) => n + this.data.series[line.key].step.length, 0);
    }

    extent() {
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (const line of this.lines()) {
        const s = this.data.series[line.key];
        x0 = Math.min(x0, s.step[0]);
        x1 = Math.max(x1, s.step[s.step.length - 1]);
        for (let i = 0; i < s.value.length; i++) {
          const lo = s.min ? s.min[i] : s.value[i], hi = s.max ? s.max[i] : s.value[i];
          if (isFinite(lo)) y0 = Math.min(y0, lo);
          if (isFinite(hi)) y1 = Math.max(y1, hi);
        }
      }
      if (this.options.markers) {
        for (const f of this.data.files) {
          if (isFinite(x0)) { x0 = Math.min(x0, f.start_step); x1 = Math.max(x1, f.start_step); }
        }
      }
      if (!isFinite(x0)) return null;
      if (x1 === x0) { x0 -= 1; x1 += 1; }
      if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
      const pad = (y1 - y0) * 0.05;
      return { x0, x1, y0: y0 - pad, y1: y1 + pad };
    }

    render() {
      const box = this.container.getBoundingClientRect();
      const width = Math.max(200, Math.floor(box.width)), height = Math.max(120, Math.floor(box.height));
      this.container.textContent = "";
      this.container.appendChild(this.readout);
      const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
      this.container.insertBefore(svg, this.readout);
      this.renderLegend();
      const extent = this.extent();
      this.scale = null;
      if (!extent) {
        el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, svg).textContent = this.options.empty;
        return;
      }
      const plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;
      const sx = (x) => PAD.left + ((x - extent.x0) / (extent.x1 - extent.x0)) * plotW;
      const sy = (y) => PAD.top + (1 - (y - extent.y0) / (extent.y1 - extent.y0)) * plotH;
      this.scale = { sx, extent, plotW };
      for (const t of ticks(extent.y0, extent.y1, Math.max(2, Math.floor(plotH / 45)))) {
        el("line", { x1: PAD.left, x2: width - PAD.right, y1: sy(t), y2: sy(t), class: "grid" }, svg);
        el("text", { x: PAD.left - 6, y: sy(t) + 4, "text-anchor": "end" }, svg).textContent = this.options.format(t);
      }
      for (const t of ticks(extent.x0, extent.x1, Math.max(2, Math.floor(plotW / 90)), 1)) {
        el("text", { x: sx(t), y: height - 6, "text-anchor": "middle" }, svg).textContent = formatStep(t);
      }
      el("line", { x1: PAD.left, x2: width - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH, class: "axis" }, svg);
      if (this.options.markers) {
        this.renderFiles(svg, sx, extent, plotH);
        this.renderRollbacks(svg, sx, extent, plotH);
      }
      for (const line of this.lines()) this.renderLine(svg, line, sx, sy);
      if (this.options.markers) this.renderDecisions(svg, sx, sy, extent);
    }

    renderLegend() {
      this.legend.textContent = "";
      for (const line of this.lines()) {
        const item = document.createElement("li");
        const swatch = document.createElement("i");
        swatch.style.background = line.color;
        item.append(swatch, line.label);
        this.legend.appendChild(item);
      }
    }

    renderLine(svg, line, sx, sy) {
      const s = this.data.series[line.key];
      if (s.min && s.max && s.min.some((v, i) => v !== s.max[i])) {
        const upper = s.step.map((x, i) => `${sx(x).toFixed(1)},${sy(s.max[i]).toFixed(1)}`);
        const lower = s.step.map((x, i) => `${sx(x).toFixed(1)},${sy(s.min[i]).toFixed(1)}`).reverse();
        el("polygon", { points: upper.concat(lower).join(" "), fill: line.color, opacity: "0.15", stroke: "none" }, svg);
      }
      const points = s.step.map((x, i) => `${sx(x).toFixed(1)},${sy(s.value[i]).toFixed(1)}`).join(" ");
      const path = el("polyline", { points, fill: "none", stroke: line.color, "stroke-width": String(line.width || 1.6), "data-series": line.key }, svg);
      if (s.step.length === 1) el("circle", { cx: sx(s.step[0]), cy: sy(s.value[0]), r: 2.5, fill: line.color }, svg);
      return path;
    }

    renderFiles(svg, sx, extent, plotH) {
      let lastLabelX = -Infinity;
      for (const f of this.data.files) {
        if (f.start_step < extent.x0 || f.start_step > extent.x1) continue;
        const x = sx(f.start_step);
        const mark = el("line", { x1: x, x2: x, y1: PAD.top, y2: PAD.top + plotH, class: "file-mark" }, svg);
        const end = f.end_step !== null && f.end_step !== undefined ? f.end_step : "…";
        titled(mark, `${f.file}: steps ${f.start_step}–${end}`);
        if (x - lastLabelX > 70) {
          const label = el("text", { x: x + 3, y: PAD.top - 4, class: "file-label" }, svg);
          label.textContent = f.file.length > 16 ? f.file.slice(0, 15) + "…" : f.file;
          lastLabelX = x;
        }
      }
    }

    renderRollbacks(svg, sx, extent, plotH) {
      for (const r of this.data.rollbacks || []) {
        if (r.gold_step < extent.x0 || r.gold_step > extent.x1) continue;
        const x = sx(r.gold_step);
        const mark = el("line", { x1: x, x2: x, y1: PAD.top, y2: PAD.top + plotH, class: "rollback-mark marker", tabindex: "0", "data-kind": "rollback" }, svg);
        titled(mark, `rolled back to gold at step ${r.gold_step} (from step ${r.from_step}): the steps after it were trained again`);
      }
    }

    renderDecisions(svg, sx, sy, extent) {
      const inside = (d) => d.step >= extent.x0 && d.step <= extent.x1 && isFinite(d.val_loss);
      for (const g of this.data.gold.filter(inside)) {
        const x = sx(g.step), y = sy(g.val_loss);
        const mark = el("polygon", {
          points: `${x},${y - 6} ${x + 6},${y} ${x},${y + 6} ${x - 6},${y}`,
          class: "marker gold-mark", tabindex: "0", "data-kind": "gold",
        }, svg);
        titled(mark, `gold at step ${g.step}: val loss ${formatValue(g.val_loss)}`);
      }
      for (const b of this.data.gold_blocked.filter(inside)) {
        const x = sx(b.step), y = sy(b.val_loss);
        const mark = el("path", {
          d: `M${x - 5},${y - 5}L${x + 5},${y + 5}M${x + 5},${y - 5}L${x - 5},${y + 5}`,
          class: "marker blocked-mark", tabindex: "0", "data-kind": "gold_blocked",
        }, svg);
        // A wide transparent stroke makes the cross easy to hover.
        titled(mark, `gold blocked at step ${b.step} (val loss ${formatValue(b.val_loss)}): ${b.reason || (b.guards || []).join(", ")}`);
      }
    }

    showReadout(event) {
      if (!this.scale) return;
      const box = this.container.getBoundingClientRect();
      const { extent, plotW } = this.scale;
      const x = extent.x0 + ((event.clientX - box.left - PAD.left) / plotW) * (extent.x1 - extent.x0);
      if (x < extent.x0 || x > extent.x1) { this.readout.textContent = ""; return; }
      const parts = [`step ${Math.round(x)}`];
      for (const line of this.lines()) {
        const s = this.data.series[line.key];
        const i = lastAtOrBefore(s.step, x);
        if (i >= 0) parts.push(`${line.label} ${this.options.format(s.value[i])}`);
      }
      this.readout.textContent = parts.join(" · ");
    }
  }

  window.TraindPlot = { Plot, formatValue, formatStep, ticks };
})();

// Small time-series charts on <canvas>: a line with a filled area, a y-axis maximum and a time window.

const css = (name, fallback) =>
  getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;

export class TimeChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{windowMs: number, format: (v: number) => string, fixedMax?: number, color?: string}} options
   */
  constructor(canvas, options) {
    this.canvas = canvas;
    this.options = options;
    this.points = []; // [t, value]
    this.limit = null; // optional horizontal line (e.g. the memory limit)
    const redraw = () => this.draw();
    new ResizeObserver(redraw).observe(canvas);
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redraw);
  }

  reset() {
    this.points = [];
    this.limit = null;
    this.draw();
  }

  push(value, t = Date.now()) {
    if (value === undefined || value === null || Number.isNaN(Number(value))) return;
    this.points.push([t, Number(value)]);
    const cutoff = t - this.options.windowMs;
    while (this.points.length && this.points[0][0] < cutoff) this.points.shift();
    this.draw();
  }

  setLimit(value) {
    this.limit = value ? Number(value) : null;
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 90;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const grid = css("--chart-grid", "#8884");
    const text = css("--muted", "#888");
    const color = css(this.options.color || "--accent", "#3b82f6");
    const pad = { left: 4, right: 4, top: 14, bottom: 4 };
    const w = width - pad.left - pad.right;
    const hgt = height - pad.top - pad.bottom;

    const values = this.points.map((p) => p[1]);
    const peak = Math.max(this.options.minMax ?? 1e-9, ...values);
    // A limit far above the usage (a whole machine's memory) would flatten the line: leave it out of scale.
    const showLimit = this.limit && this.limit <= peak * 1.6;
    let max = this.options.fixedMax ?? Math.max(peak, showLimit ? this.limit : 0);
    if (!this.options.fixedMax) max *= 1.15;

    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    for (let i = 0; i <= 2; i += 1) {
      const y = Math.round(pad.top + (hgt * i) / 2) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, y);
      ctx.lineTo(pad.left + w, y);
      ctx.stroke();
    }
    ctx.fillStyle = text;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    let used = 0;
    if (this.points.length) {
      const peakLabel = `peak ${this.options.format(Math.max(...values))}`;
      ctx.fillText(peakLabel, pad.left + 2, 0);
      used = ctx.measureText(peakLabel).width + 12;
    }
    const now = Date.now();
    // The x axis spans what we have (at least a minute), up to the full window.
    const first = this.points.length ? this.points[0][0] : now;
    const span = Math.min(this.options.windowMs, Math.max(60000, now - first));
    const label = `${Math.round(span / 60000)} min`;
    const labelWidth = ctx.measureText(label).width;
    if (used + labelWidth < w) ctx.fillText(label, pad.left + w - labelWidth - 2, 0);

    const x = (t) => pad.left + w - ((now - t) / span) * w;
    const y = (v) => pad.top + hgt - (Math.min(v, max) / max) * hgt;

    if (showLimit) {
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = css("--warn", "#d97706");
      ctx.beginPath();
      ctx.moveTo(pad.left, y(this.limit) + 0.5);
      ctx.lineTo(pad.left + w, y(this.limit) + 0.5);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    if (!this.points.length) {
      ctx.fillStyle = text;
      ctx.textBaseline = "middle";
      const msg = "no samples";
      ctx.fillText(msg, pad.left + (w - ctx.measureText(msg).width) / 2, pad.top + hgt / 2);
      return;
    }
    ctx.beginPath();
    this.points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.stroke();
    const last = this.points[this.points.length - 1];
    ctx.lineTo(x(last[0]), pad.top + hgt);
    ctx.lineTo(x(this.points[0][0]), pad.top + hgt);
    ctx.closePath();
    ctx.globalAlpha = 0.15;
    ctx.fillStyle = color;
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.beginPath();
    ctx.arc(x(last[0]), y(last[1]), 3, 0, Math.PI * 2);
    ctx.fillStyle = color;
    ctx.fill();
  }
}

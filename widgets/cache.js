// CacheView front-end (anywidget ES module; no build step, no network).
// Python pushes one snapshot (`state`) at most ~10 times a second; the buttons send
// {action, key} back, and the Python cache does the pinning or evicting.

const MARK_COLOURS = { hit: "#55a868", miss: "#dd8452", evict: "#c44e52" };

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function human(n) {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`;
}

function render({ model, el: host }) {
  const root = el("div", "mlmf-view mlmf-cache", host);
  root.dataset.view = "cache";
  root.dataset.drawn = "0";
  const header = el("div", "mlmf-header", root);
  const charts = el("div", "mlmf-charts", root);
  const held = el("canvas", "mlmf-held", charts);
  const marks = el("canvas", "mlmf-marks", charts);
  const legend = el("div", "mlmf-legend", root);
  legend.textContent = "line: bytes held · dashed: budget · ticks: hit (green), " +
    "miss (orange), eviction (red)";
  const error = el("div", "mlmf-error", root);
  const table = el("table", "mlmf-entries", root);
  const head = el("tr", "", el("thead", "", table));
  for (const h of ["key", "bytes", "hits", "last use", "pinned", ""]) el("th", "", head).textContent = h;
  const tbody = el("tbody", "", table);

  function send(action, key) {
    model.send({ action, key });
  }

  function drawCharts(s) {
    const W = 560, H1 = 120, H2 = 36;
    const t1 = Math.max(s.now, ...s.series.map((p) => p[0]), 1e-9);
    const x = (t) => 40 + (t / t1) * (W - 50);
    held.width = W; held.height = H1;
    let ctx = held.getContext("2d");
    ctx.clearRect(0, 0, W, H1);
    const top = s.budget * 1.1 || 1;
    const y = (b) => H1 - 8 - (b / top) * (H1 - 16);
    ctx.strokeStyle = "#c44e52";
    ctx.setLineDash([5, 4]);
    ctx.beginPath(); ctx.moveTo(40, y(s.budget)); ctx.lineTo(W - 10, y(s.budget)); ctx.stroke();
    ctx.setLineDash([]);
    ctx.strokeStyle = "#4c72b0";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let prev = y(0);
    ctx.moveTo(40, prev);
    for (const [t, b] of s.series) { ctx.lineTo(x(t), prev); prev = y(b); ctx.lineTo(x(t), prev); }
    ctx.lineTo(W - 10, prev);
    ctx.stroke();
    ctx.fillStyle = "#555";
    ctx.font = "10px sans-serif";
    ctx.fillText(human(s.budget), 2, y(s.budget) + 3);
    ctx.fillText("0", 2, y(0));
    marks.width = W; marks.height = H2;
    ctx = marks.getContext("2d");
    ctx.clearRect(0, 0, W, H2);
    const row = { hit: 8, miss: 18, evict: 28 };
    for (const [t, ev] of s.marks) {
      ctx.fillStyle = MARK_COLOURS[ev] || "#888";
      ctx.fillRect(x(t) - 1, row[ev] - 4, 2, 8);
    }
    ctx.fillStyle = "#555";
    for (const [k, v] of Object.entries(row)) ctx.fillText(k, 2, v + 3);
  }

  function drawTable(s) {
    tbody.textContent = "";
    for (const e of s.entries) {
      const tr = el("tr", e.pinned ? "pinned" : "", tbody);
      tr.dataset.key = e.key;
      el("td", "mlmf-key", tr).textContent = e.name;
      tr.title = e.key;
      el("td", "", tr).textContent = human(e.bytes);
      el("td", "", tr).textContent = String(e.hits);
      el("td", "", tr).textContent = e.last_use === null ? "never" :
        `${Math.max(0, s.now - e.last_use).toFixed(1)} s ago`;
      el("td", "", tr).textContent = e.pinned ? "yes" : "";
      const cell = el("td", "mlmf-actions", tr);
      for (const action of [e.pinned ? "unpin" : "pin", "evict"]) {
        const b = el("button", `mlmf-${action}`, cell);
        b.type = "button";
        b.textContent = action;
        b.dataset.action = action;
        b.dataset.key = e.key;
        b.addEventListener("click", () => send(action, e.key));
      }
    }
    if (!s.entries.length) el("td", "mlmf-empty", el("tr", "", tbody)).textContent = "empty";
  }

  function draw() {
    const s = model.get("state");
    if (!s || !s.counts) return;
    const c = s.counts;
    const pct = s.budget ? (100 * s.held / s.budget).toFixed(1) : "0";
    header.textContent = `${model.get("title")}: ${human(s.held)} of ${human(s.budget)} ` +
      `(${pct}%) · ${s.entries.length} entries · ${c.hits} hits, ${c.misses} misses, ` +
      `${c.evictions} evictions`;
    error.textContent = model.get("error");
    drawCharts(s);
    drawTable(s);
    root.dataset.drawn = String(Number(root.dataset.drawn) + 1);
  }

  model.on("change:state", draw);
  model.on("change:error", draw);
  draw();
  return () => { model.off("change:state", draw); model.off("change:error", draw); };
}

export default { render };

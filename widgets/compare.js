// CompareView front-end (anywidget ES module; no build step, no network).
// Every number comes from Python (ml.compare); this file draws per-layer bars, the CKA
// heatmap, the KL distribution and the selected tensor's histograms and ΔW spectrum, and
// syncs `metric`, `layer` and `tensor` when they are chosen.

// The SVG namespace as the HTML parser assigns it (no address written in the page).
const SVG = (() => { const d = document.createElement("div"); d.innerHTML = "<svg></svg>";
  return d.firstChild.namespaceURI; })();

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function svg(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function floats(view) { // a DataView of float32 bytes -> Float32Array
  if (!view || !view.byteLength) return new Float32Array(0);
  return new Float32Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(4);
}

function bars(parent, values, { w = 300, h = 90, colour = "#4c78a8", log = false, cls = "" } = {}) {
  const s = svg("svg", { width: w, height: h, class: `mlmf-bars ${cls}` }, parent);
  const vals = values.map((v) => (log ? Math.log10(1 + v) : v));
  const top = Math.max(1e-30, ...vals);
  const bw = w / Math.max(1, vals.length);
  vals.forEach((v, i) => {
    const bh = (Math.max(0, v) / top) * (h - 4);
    svg("rect", { x: i * bw, y: h - bh, width: Math.max(1, bw - 1), height: bh, fill: colour }, s);
  });
  return s;
}

function render({ model, el: host }) {
  const root = el("div", "mlmf-view mlmf-compare", host);
  root.dataset.view = "compare";
  root.dataset.drawn = "0";
  const header = el("div", "mlmf-header", root);
  const summary = el("div", "mlmf-summary", root);
  const controls = el("div", "mlmf-controls", root);
  el("span", "", controls).textContent = "metric: ";
  const select = el("select", "mlmf-metric", controls);
  const top = el("div", "mlmf-row", root);
  const layerBox = el("div", "mlmf-panel mlmf-layers", top);
  const ckaBox = el("div", "mlmf-panel mlmf-cka-box", top);
  const klBox = el("div", "mlmf-panel mlmf-kl-box", top);
  const bottom = el("div", "mlmf-row", root);
  const listBox = el("div", "mlmf-panel mlmf-tensors", bottom);
  const detail = el("div", "mlmf-panel mlmf-detail", bottom);
  const offline = model.standalone && model.standalone.layers ? model.standalone : null;

  select.addEventListener("change", () => { model.set("metric", select.value); model.save_changes(); });

  function chooseLayer(label) {
    model.set("layer", label);
    if (offline) { // no kernel: the saved page carries every layer's tensors and details
      const rows = offline.layers[label] || [];
      model.set("tensors", rows);
      if (rows.length) chooseTensor(rows.reduce((a, b) => ((b.rel_change || 0) > (a.rel_change || 0) ? b : a)).name);
    }
    model.save_changes();
  }

  function chooseTensor(name) {
    model.set("tensor", name);
    if (offline && offline.details[name]) {
      for (const [k, v] of Object.entries(offline.details[name])) model.set(k, v);
    }
    model.save_changes();
  }

  function drawLayers() {
    layerBox.textContent = "";
    const metric = model.get("metric");
    const label = (model.get("metrics").find((m) => m[0] === metric) || [metric, metric])[1];
    el("div", "mlmf-caption", layerBox).textContent = `per layer: ${label} (click a bar)`;
    const layers = model.get("layers");
    const W = 360, H = 140, bw = W / Math.max(1, layers.length);
    const vals = layers.map((x) => x[metric] ?? 0);
    const hi = Math.max(1e-30, ...vals.map((v) => Math.abs(v)));
    const s = svg("svg", { width: W, height: H + 16, class: "mlmf-layer-bars" }, layerBox);
    layers.forEach((x, i) => {
      const v = Math.abs(vals[i]);
      const bh = (v / hi) * (H - 4);
      const g = svg("g", { class: "mlmf-bar" }, s);
      g.dataset.layer = x.label;
      g.classList.toggle("selected", x.label === model.get("layer"));
      svg("rect", { x: i * bw, y: 0, width: Math.max(2, bw - 2), height: H, class: "mlmf-hit" }, g);
      svg("rect", { x: i * bw, y: H - bh, width: Math.max(2, bw - 2), height: bh, class: "mlmf-fill" }, g);
      const t = svg("text", { x: i * bw + bw / 2, y: H + 12, "text-anchor": "middle" }, g);
      t.textContent = x.label.replace("layer ", "");
      svg("title", {}, g).textContent = `${x.label}: ${fmt(vals[i])}` + (x.cka !== undefined ? `, CKA ${fmt(x.cka)}` : "");
      g.addEventListener("click", () => chooseLayer(x.label));
    });
  }

  function drawCka() {
    ckaBox.textContent = "";
    const shape = model.get("cka_shape");
    if (!shape.length) { ckaBox.style.display = "none"; return; }
    ckaBox.style.display = "";
    el("div", "mlmf-caption", ckaBox).textContent = "linear CKA (rows: a, columns: b)";
    const [n, m] = shape, cell = Math.max(8, Math.min(24, Math.floor(160 / Math.max(n, m))));
    const c = el("canvas", "mlmf-cka", ckaBox);
    c.width = m * cell; c.height = n * cell;
    const ctx = c.getContext("2d"), v = floats(model.get("cka"));
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < m; j++) {
        const x = Math.max(0, Math.min(1, v[i * m + j]));
        ctx.fillStyle = `rgb(${Math.round(255 * (1 - x))},${Math.round(120 + 100 * x)},${Math.round(255 * x)})`;
        ctx.fillRect(j * cell, (n - 1 - i) * cell, cell, cell);
      }
    }
  }

  function drawKl() {
    klBox.textContent = "";
    const counts = model.get("kl_counts");
    if (!counts.length) { klBox.style.display = "none"; return; }
    klBox.style.display = "";
    const [lo, hi] = model.get("kl_range");
    el("div", "mlmf-caption", klBox).textContent = `KL(a ‖ b) per token, log10 from ${fmt(lo)} to ${fmt(hi)}`;
    bars(klBox, counts, { w: 240, h: 100, colour: "#e45756", cls: "mlmf-kl" });
  }

  function drawTensors() {
    listBox.textContent = "";
    el("div", "mlmf-caption", listBox).textContent = `${model.get("layer") || "no layer"}: tensors`;
    const list = el("div", "mlmf-list", listBox);
    for (const r of model.get("tensors")) {
      const item = el("div", "mlmf-tensor", list);
      item.dataset.tensor = r.name;
      item.classList.toggle("selected", r.name === model.get("tensor"));
      item.textContent = `${r.name}  ‖ΔW‖/‖W‖ ${fmt(r.rel_change)}`;
      item.addEventListener("click", () => chooseTensor(r.name));
    }
  }

  function drawDetail() {
    detail.textContent = "";
    const name = model.get("tensor");
    detail.dataset.tensor = name;
    if (!name) return;
    el("div", "mlmf-caption", detail).textContent = name;
    const h = floats(model.get("hist")), ranges = model.get("hist_ranges");
    const bins = ranges.length ? h.length / ranges.length : 0;
    const row = el("div", "mlmf-row", detail);
    ["a", "b", "ΔW = b − a"].forEach((title, k) => {
      if (k >= ranges.length) return;
      const box = el("div", "mlmf-hist", row);
      el("div", "mlmf-small", box).textContent = `${title} [${fmt(ranges[k][0])}, ${fmt(ranges[k][1])}]`;
      bars(box, Array.from(h.slice(k * bins, (k + 1) * bins)), { w: 150, h: 70, log: true, colour: k === 2 ? "#e45756" : "#4c78a8" });
    });
    const spec = model.get("spectrum");
    const box = el("div", "mlmf-hist", row);
    const rank = model.get("energy_rank");
    el("div", "mlmf-small", box).textContent = `ΔW spectrum, 99% rank ${rank < 0 ? "> " + spec.length : rank}`;
    bars(box, spec, { w: 150, h: 70, colour: "#72b7b2", cls: "mlmf-spectrum" });
  }

  function draw() {
    header.textContent = model.get("title");
    summary.textContent = model.get("summary");
    select.textContent = "";
    for (const [k, label] of model.get("metrics")) {
      const o = el("option", "", select);
      o.value = k; o.textContent = label;
    }
    select.value = model.get("metric");
    drawLayers(); drawCka(); drawKl(); drawTensors(); drawDetail();
    root.dataset.layer = model.get("layer");
    root.dataset.tensor = model.get("tensor");
    root.dataset.drawn = String(Number(root.dataset.drawn) + 1);
  }

  const events = ["change:metric", "change:layer", "change:tensors", "change:tensor", "change:hist",
    "change:spectrum", "change:layers"];
  for (const ev of events) model.on(ev, draw);
  if (offline && model.get("layer")) chooseLayer(model.get("layer"));
  draw();
  return () => { for (const ev of events) model.off(ev, draw); };
}

export default { render };

// LineageView front-end (anywidget ES module; no build step, no network).
// Positions, records and relatives all come from Python; this file draws them as SVG,
// pans and zooms, and syncs `selected` when a node is clicked.

// The SVG namespace as the HTML parser assigns it (no address written in the page).
const SVG = (() => { const d = document.createElement("div"); d.innerHTML = "<svg></svg>";
  return d.firstChild.namespaceURI; })();
const COLOURS = {
  weights: "#8fb3de", adapter: "#b7d7a8", checkpoint: "#f6d28b", folder: "#d9d9d9",
  file: "#d9d9d9", model: "#e8a3a3", state_dict: "#f2c4c4", tensor: "#f2c4c4", object: "#eeeeee",
};
const DX = 190, DY = 64, BOX_W = 160, BOX_H = 34;

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

function render({ model, el: host }) {
  const root = el("div", "mlmf-view mlmf-lineage", host);
  root.dataset.view = "lineage";
  root.dataset.drawn = "0";
  const header = el("div", "mlmf-header", root);
  const body = el("div", "mlmf-body", root);
  const stage = el("div", "mlmf-stage", body);
  const canvas = svg("svg", { class: "mlmf-graph", width: 640, height: 360 }, stage);
  const world = svg("g", { class: "mlmf-world" }, canvas);
  const panel = el("div", "mlmf-record", body);
  const hint = el("div", "mlmf-hint", panel);
  hint.textContent = "click a node to see its record; drag to pan, wheel to zoom";
  const text = el("pre", "mlmf-record-text", panel);
  let view = { x: 0, y: 0, k: 1 };

  function place(n) { // layout units -> pixels, data flowing left to right (or down)
    return model.get("vertical") ? [n.x * DX, -n.y * DY * 1.3] : [n.x * DX, -n.y * DY];
  }

  function transform() {
    world.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
  }

  function fit() {
    const nodes = model.get("nodes");
    if (!nodes.length) return;
    const ps = nodes.map(place);
    const xs = ps.map((p) => p[0]), ys = ps.map((p) => p[1]);
    const w = Math.max(...xs) - Math.min(...xs) + BOX_W + 40;
    const h = Math.max(...ys) - Math.min(...ys) + BOX_H + 40;
    const W = Number(canvas.getAttribute("width")), H = Number(canvas.getAttribute("height"));
    view.k = Math.min(1.2, W / w, H / h);
    view.x = (W - (Math.max(...xs) + Math.min(...xs)) * view.k) / 2;
    view.y = (H - (Math.max(...ys) + Math.min(...ys)) * view.k) / 2;
    transform();
  }

  function draw() {
    world.textContent = "";
    const nodes = model.get("nodes");
    const at = {};
    for (const n of nodes) at[n.id] = place(n);
    const edges = svg("g", { class: "mlmf-edges" }, world);
    for (const [u, v, rel] of model.get("edges")) {
      if (!at[u] || !at[v]) continue;
      const [x1, y1] = at[u], [x2, y2] = at[v];
      const path = svg("path", {
        d: `M${x1 + BOX_W / 2},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2 - BOX_W / 2},${y2}`,
        class: rel === "same content" ? "mlmf-edge dashed" : "mlmf-edge",
      }, edges);
      path.dataset.from = u;
      path.dataset.to = v;
    }
    for (const n of nodes) {
      const [x, y] = at[n.id];
      const g = svg("g", { class: `mlmf-node ${n.node}`, transform: `translate(${x},${y})` }, world);
      g.dataset.node = n.id;
      const activity = n.node === "activity";
      svg("rect", {
        x: -BOX_W / 2, y: -BOX_H / 2, width: BOX_W, height: BOX_H, rx: activity ? 14 : 4,
        fill: activity ? "#ffffff" : COLOURS[n.kind] || "#eeeeee",
      }, g);
      const label = svg("text", { "text-anchor": "middle", y: 4 }, g);
      label.textContent = n.label.length > 26 ? n.label.slice(0, 25) + "…" : n.label;
      svg("title", {}, g).textContent = n.label;
      g.addEventListener("click", (ev) => {
        ev.stopPropagation();
        model.set("selected", model.get("selected") === n.id ? "" : n.id);
        model.save_changes();
        highlight();
      });
    }
    header.textContent = `${model.get("title")}: ${nodes.filter((n) => n.node === "entity").length} ` +
      `entities, ${nodes.filter((n) => n.node === "activity").length} activities`;
    highlight();
    root.dataset.drawn = String(Number(root.dataset.drawn) + 1);
  }

  function highlight() {
    const sel = model.get("selected");
    const rel = (sel && model.get("related")[sel]) || { up: [], down: [] };
    const up = new Set(rel.up), down = new Set(rel.down);
    for (const g of world.querySelectorAll(".mlmf-node")) {
      const id = g.dataset.node;
      g.classList.toggle("selected", id === sel);
      g.classList.toggle("ancestor", up.has(id));
      g.classList.toggle("descendant", down.has(id));
      g.classList.toggle("faded", Boolean(sel) && id !== sel && !up.has(id) && !down.has(id));
    }
    const on = (id) => id === sel || up.has(id) || down.has(id);
    for (const p of world.querySelectorAll(".mlmf-edge")) {
      p.classList.toggle("faded", Boolean(sel) && !(on(p.dataset.from) && on(p.dataset.to)));
    }
    text.textContent = sel ? model.get("records")[sel] || "" : "";
    panel.dataset.node = sel || "";
  }

  // pan and zoom
  let drag = null;
  canvas.addEventListener("mousedown", (ev) => { drag = [ev.clientX - view.x, ev.clientY - view.y]; });
  window.addEventListener("mouseup", () => { drag = null; });
  canvas.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    view.x = ev.clientX - drag[0];
    view.y = ev.clientY - drag[1];
    transform();
  });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const f = ev.deltaY < 0 ? 1.15 : 1 / 1.15;
    view.x = mx - (mx - view.x) * f;
    view.y = my - (my - view.y) * f;
    view.k *= f;
    transform();
  }, { passive: false });
  canvas.addEventListener("dblclick", fit);

  const redraw = () => { draw(); fit(); };
  model.on("change:nodes", redraw);
  model.on("change:selected", highlight);
  draw();
  fit();
  return () => { model.off("change:nodes", redraw); model.off("change:selected", highlight); };
}

export default { render };

// AttentionView front-end (anywidget ES module; no build step, no network).
// Python sends one head at a time as uint8 bytes (head_map, top_idx/top_w) and all
// thumbnails once; this file only draws them and reports clicks (layer, head, query).

const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (STOPS.length - 1), j = Math.min(Math.floor(x), STOPS.length - 2);
    const f = x - j;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = STOPS[j][c] * (1 - f) + STOPS[j + 1][c] * f;
  }
  return lut;
})();
const ROW = 16; // pixels per token in the lines panel

function bytes(v) {
  if (!v) return new Uint8Array(0);
  if (v instanceof DataView) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  return new Uint8Array(v);
}

function u16(v) {
  const b = bytes(v);
  const copy = new Uint8Array(b); // aligned copy
  return new Uint16Array(copy.buffer, 0, copy.byteLength >> 1);
}

function paint(canvas, data, rows, cols, alpha) {
  canvas.width = cols;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    const v = data[i];
    img.data[i * 4] = LUT[v * 3];
    img.data[i * 4 + 1] = LUT[v * 3 + 1];
    img.data[i * 4 + 2] = LUT[v * 3 + 2];
    img.data[i * 4 + 3] = alpha === undefined ? 255 : Math.round(alpha * v);
  }
  ctx.putImageData(img, 0, 0);
}

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function render({ model, el: host }) {
  const started = performance.now();
  const offline = model.standalone && model.standalone.heads ? model.standalone : null;
  const root = el("div", "mlmf-view mlmf-attention", host);
  root.dataset.view = "attention";
  root.dataset.drawn = "0";
  const header = el("div", "mlmf-header", root);
  const body = el("div", "mlmf-body", root);
  const thumbs = el("div", "mlmf-thumbs", body);
  const main = el("div", "mlmf-main", body);
  const heat = el("canvas", "mlmf-heatmap", main);
  const side = el("div", "mlmf-side", main);
  const imageBox = el("div", "mlmf-image", side);
  const imageCanvas = el("canvas", "mlmf-image-canvas", imageBox);
  const lines = el("div", "mlmf-lines", side);
  const left = el("div", "mlmf-tokens mlmf-queries", lines);
  const linkCanvas = el("canvas", "mlmf-links", lines);
  const right = el("div", "mlmf-tokens mlmf-keys", lines);
  const tip = el("div", "mlmf-tip", root);
  let hover = -1;
  let picture = null;

  function shape() { return model.get("shape"); }

  function applyOffline() {
    if (!offline) return;
    const [, H, Q] = shape();
    const h = offline.heads[model.get("layer") * H + model.get("head")];
    model.set("head_map", h.map);
    model.set("head_scale", h.scale);
    model.set("top_idx", h.idx);
    model.set("top_w", h.w);
    if (h.patches.length) model.set("patch", h.patches[model.get("query") + 1]);
    if (offline.windows.length) {
      model.set("window", offline.windows[model.get("query") + 1]);
      model.set("key_window", offline.windows[model.get("query") + 1]);
    }
  }

  function select(layer, head) {
    model.set("layer", layer);
    model.set("head", head);
    applyOffline();
    model.save_changes();
  }

  function pickQuery(q) {
    model.set("query", q);
    applyOffline();
    model.save_changes();
  }

  // -- thumbnails: one canvas per layer and head, built once -------------------------------
  function buildThumbs() {
    thumbs.textContent = "";
    const [L, H] = shape();
    const [th, tw] = model.get("thumb_shape");
    const all = bytes(model.get("thumbs"));
    thumbs.style.gridTemplateColumns = `auto repeat(${H}, 1fr)`;
    el("span", "mlmf-axis", thumbs);
    for (let h = 0; h < H; h++) el("span", "mlmf-axis", thumbs).textContent = `h${h}`;
    for (let l = 0; l < L; l++) {
      el("span", "mlmf-axis", thumbs).textContent = `L${l}`;
      for (let h = 0; h < H; h++) {
        const c = el("canvas", "mlmf-thumb", thumbs);
        c.dataset.layer = String(l);
        c.dataset.head = String(h);
        c.title = `layer ${l}, head ${h}`;
        const off = (l * H + h) * th * tw;
        paint(c, all.subarray(off, off + th * tw), th, tw);
        c.addEventListener("click", () => select(l, h));
      }
    }
    markThumb();
  }

  function markThumb() {
    const l = String(model.get("layer")), h = String(model.get("head"));
    for (const c of thumbs.querySelectorAll(".mlmf-thumb")) {
      const on = c.dataset.layer === l && c.dataset.head === h;
      c.classList.toggle("selected", on);
      c.setAttribute("aria-pressed", on ? "true" : "false");
    }
  }

  // -- the selected head ----------------------------------------------------------------
  function drawHeat() {
    const [, , Q, K] = shape();
    paint(heat, bytes(model.get("head_map")), Q, K);
    const px = Math.max(1, Math.floor(360 / Math.max(Q, K)));
    heat.style.width = `${Math.min(360, K * px)}px`;
    heat.style.height = `${Math.min(360, Q * px)}px`;
  }

  function tokenList(box, labels, [start, stop], side) {
    box.textContent = "";
    for (let i = start; i < stop; i++) {
      const s = el("span", "mlmf-token", box);
      s.textContent = labels[i];
      s.dataset.token = String(i);
      s.style.height = `${ROW}px`;
      if (side === "query") {
        s.addEventListener("mouseenter", () => { hover = i; drawLinks(); });
        s.addEventListener("mouseleave", () => { hover = -1; drawLinks(); });
        s.addEventListener("click", () => pickQuery(model.get("query") === i ? -1 : i));
      }
    }
  }

  function drawLinks() {
    const [, , Q] = shape();
    const win = model.get("window"), kwin = model.get("key_window");
    const k = model.get("top_k");
    const idx = u16(model.get("top_idx")), w = bytes(model.get("top_w"));
    const rows = Math.max(win[1] - win[0], kwin[1] - kwin[0]);
    linkCanvas.width = 140;
    linkCanvas.height = rows * ROW;
    const ctx = linkCanvas.getContext("2d");
    ctx.clearRect(0, 0, linkCanvas.width, linkCanvas.height);
    const focus = hover >= 0 ? hover : model.get("query");
    const lit = new Set();
    for (let q = win[0]; q < Math.min(win[1], Q); q++) {
      for (let j = 0; j < k; j++) {
        const key = idx[q * k + j], weight = w[q * k + j] / 255;
        if (key < kwin[0] || key >= kwin[1]) continue;
        const on = focus < 0 || focus === q;
        if (on && focus >= 0) lit.add(key);
        ctx.strokeStyle = on ? `rgba(33, 102, 172, ${0.15 + 0.85 * weight})` : "rgba(0,0,0,0.05)";
        ctx.lineWidth = on ? 1 + 2 * weight : 1;
        ctx.beginPath();
        ctx.moveTo(0, (q - win[0] + 0.5) * ROW);
        ctx.lineTo(linkCanvas.width, (key - kwin[0] + 0.5) * ROW);
        ctx.stroke();
      }
    }
    for (const s of left.children) s.classList.toggle("active", Number(s.dataset.token) === focus);
    for (const s of right.children) s.classList.toggle("active", lit.has(Number(s.dataset.token)));
  }

  function drawImage() {
    const grid = model.get("grid");
    imageBox.style.display = grid.length ? "" : "none";
    if (!grid.length || !picture) return;
    const [gh, gw] = grid;
    const scale = Math.max(1, Math.floor(220 / Math.max(picture.width, picture.height)));
    imageCanvas.width = picture.width * scale;
    imageCanvas.height = picture.height * scale;
    const ctx = imageCanvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(picture, 0, 0, imageCanvas.width, imageCanvas.height);
    const cells = bytes(model.get("patch"));
    const cw = imageCanvas.width / gw, ch = imageCanvas.height / gh;
    for (let r = 0; r < gh; r++) {
      for (let c = 0; c < gw; c++) {
        const v = cells[r * gw + c];
        ctx.fillStyle = `rgba(${LUT[v * 3]}, ${LUT[v * 3 + 1]}, ${LUT[v * 3 + 2]}, ${0.15 + 0.5 * v / 255})`;
        ctx.fillRect(c * cw, r * ch, cw, ch);
      }
    }
  }

  function drawHeader() {
    const [L, H, Q, K] = shape();
    const q = model.get("query");
    const tokens = model.get("tokens");
    header.textContent = `${model.get("title")} · ${L}×${H} heads, ${Q}×${K} tokens · ` +
      `layer ${model.get("layer")}, head ${model.get("head")}` +
      (q >= 0 ? ` · query ${q} "${tokens[q]}"` : " · hover or click a query token");
  }

  function drawSelected() {
    drawHeat();
    tokenList(left, model.get("tokens"), model.get("window"), "query");
    tokenList(right, model.get("key_tokens"), model.get("key_window"), "key");
    drawLinks();
    drawImage();
    drawHeader();
    markThumb();
    root.dataset.layer = String(model.get("layer"));
    root.dataset.head = String(model.get("head"));
    root.dataset.drawn = String(Number(root.dataset.drawn) + 1);
  }

  heat.addEventListener("mousemove", (ev) => {
    const [, , Q, K] = shape();
    const r = heat.getBoundingClientRect();
    const q = Math.floor(((ev.clientY - r.top) / r.height) * Q);
    const k = Math.floor(((ev.clientX - r.left) / r.width) * K);
    if (q < 0 || q >= Q || k < 0 || k >= K) return;
    const v = bytes(model.get("head_map"))[q * K + k] / 255 * model.get("head_scale");
    tip.textContent = `${model.get("tokens")[q]} → ${model.get("key_tokens")[k]}: ${v.toFixed(3)}`;
  });
  heat.addEventListener("click", (ev) => {
    const [, , Q] = shape();
    const r = heat.getBoundingClientRect();
    const q = Math.floor(((ev.clientY - r.top) / r.height) * Q);
    if (q >= 0 && q < Q) pickQuery(q);
  });

  async function loadPicture() {
    const png = bytes(model.get("image_png"));
    picture = png.length ? await createImageBitmap(new Blob([png], { type: "image/png" })) : null;
    drawImage();
  }

  const redraw = () => drawSelected();
  model.on("change:head_map", redraw);
  model.on("change:window", redraw);
  model.on("change:patch", drawImage);
  model.on("change:layer", markThumb);
  model.on("change:head", markThumb);
  model.on("change:query", () => { drawHeader(); drawLinks(); });
  model.on("change:thumbs", buildThumbs);
  buildThumbs();
  drawSelected();
  root.dataset.renderMs = (performance.now() - started).toFixed(1); // read by the benchmark
  return loadPicture().then(() => () => {
    model.off("change:head_map", redraw);
    model.off("change:window", redraw);
  });
}

export default { render };

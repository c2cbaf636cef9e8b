// AttentionView front-end (anywidget ES module; no build step, no network).
// Python sends one head at a time as uint8 bytes (head_map, top_idx/top_w) and all
// thumbnails once; this file only draws them and reports clicks (layer, head, query).
// A head switch costs one pass over the map's bytes (a 32-bit colour per byte into a kept
// ImageData) and a redraw of the lines; the thumbnails and the token lists stay as they are.
// All thumbnails are drawn on one canvas under plain elements that take the clicks: every
// canvas is a compositor layer of its own, and with 144 of them each frame of the page
// (JupyterLab's included) spent 10-30 ms laying out layers on the main thread.

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
// the same colours as whole RGBA pixels, in the platform's byte order (ImageData is bytes)
const RGBA = (() => {
  const px = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    px.set(LUT.subarray(i * 3, i * 3 + 3), i * 4);
    px[i * 4 + 3] = 255;
  }
  return new Uint32Array(px.buffer);
})();
const ROW = 16; // pixels per token in the lines panel
const CELL = 24, EDGE = 2, PITCH = CELL + 2 * EDGE + 2; // a thumbnail, its border, its pitch

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

// uint8 values -> colours on a canvas of rows x cols; its ImageData is kept for the next call
function paint(canvas, data, rows, cols) {
  if (canvas.width !== cols || canvas.height !== rows || !canvas.mlmfImage) {
    canvas.width = cols;
    canvas.height = rows;
    canvas.mlmfImage = canvas.getContext("2d").createImageData(cols, rows);
  }
  const img = canvas.mlmfImage;
  const px = new Uint32Array(img.data.buffer);
  const n = Math.min(rows * cols, data.length);
  for (let i = 0; i < n; i++) px[i] = RGBA[data[i]];
  canvas.getContext("2d").putImageData(img, 0, 0);
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
  let thumbEls = []; // index layer * heads + head
  let marked = null;
  let top = { idx: new Uint16Array(0), w: new Uint8Array(0) }; // the drawn head's top keys
  const listed = { left: "", right: "" }; // which labels and window each token list shows

  function shape() { return model.get("shape"); }

  // [layer, head] of the bytes in head_map (the saved page sets it with the map)
  function shown() {
    const s = model.get("head_shown");
    return s && s.length === 2 ? s : [model.get("layer"), model.get("head")];
  }

  function applyOffline() {
    if (!offline) return;
    const [, H] = shape();
    const h = offline.heads[model.get("layer") * H + model.get("head")];
    model.set("head_map", h.map);
    model.set("head_scale", h.scale);
    model.set("top_idx", h.idx);
    model.set("top_w", h.w);
    model.set("head_shown", [model.get("layer"), model.get("head")]);
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

  // -- thumbnails: one canvas for all of them, built once -------------------------------
  function buildThumbs() {
    thumbs.textContent = "";
    thumbEls = [];
    marked = null;
    const [L, H] = shape();
    const [th, tw] = model.get("thumb_shape");
    const all = bytes(model.get("thumbs"));
    // every head's pixels on one sheet, head (l, h) at row l * th and column h * tw
    const sheet = document.createElement("canvas");
    sheet.width = H * tw;
    sheet.height = L * th;
    const img = sheet.getContext("2d").createImageData(H * tw, L * th);
    const px = new Uint32Array(img.data.buffer);
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        const off = (l * H + h) * th * tw;
        for (let y = 0; y < th; y++) {
          const row = (l * th + y) * H * tw + h * tw;
          for (let x = 0; x < tw; x++) px[row + x] = RGBA[all[off + y * tw + x]];
        }
      }
    }
    sheet.getContext("2d").putImageData(img, 0, 0);

    const grid = el("div", "mlmf-thumb-grid");
    el("span", "mlmf-axis", grid);
    const headAxis = el("div", "mlmf-axis-row", grid);
    for (let h = 0; h < H; h++) {
      const a = el("span", "mlmf-axis", headAxis);
      a.textContent = `h${h}`;
      a.style.width = `${PITCH}px`;
    }
    const layerAxis = el("div", "mlmf-axis-col", grid);
    for (let l = 0; l < L; l++) {
      const a = el("span", "mlmf-axis", layerAxis);
      a.textContent = `L${l}`;
      a.style.height = a.style.lineHeight = `${PITCH}px`;
    }
    const cells = el("div", "mlmf-cells", grid);
    cells.style.width = `${H * PITCH}px`;
    cells.style.height = `${L * PITCH}px`;
    const canvas = el("canvas", "mlmf-thumb-sheet", cells);
    canvas.width = H * PITCH;
    canvas.height = L * PITCH;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        ctx.drawImage(sheet, h * tw, l * th, tw, th, h * PITCH + EDGE, l * PITCH + EDGE, CELL, CELL);
        const c = el("div", "mlmf-thumb", cells);
        c.dataset.layer = String(l);
        c.dataset.head = String(h);
        c.title = `layer ${l}, head ${h}`;
        c.setAttribute("role", "button");
        c.setAttribute("aria-pressed", "false");
        Object.assign(c.style, { left: `${h * PITCH}px`, top: `${l * PITCH}px`,
          width: `${CELL}px`, height: `${CELL}px`, borderWidth: `${EDGE}px` });
        thumbEls.push(c);
      }
    }
    thumbs.appendChild(grid);
    markThumb();
  }

  // one listener for the whole grid
  thumbs.addEventListener("click", (ev) => {
    const c = ev.target.closest(".mlmf-thumb");
    if (c) select(Number(c.dataset.layer), Number(c.dataset.head));
  });

  function markThumb() {
    const [, H] = shape();
    const c = thumbEls[model.get("layer") * H + model.get("head")] || null;
    if (c === marked) return;
    if (marked) {
      marked.classList.remove("selected");
      marked.setAttribute("aria-pressed", "false");
    }
    if (c) {
      c.classList.add("selected");
      c.setAttribute("aria-pressed", "true");
    }
    marked = c;
  }

  // -- the selected head ----------------------------------------------------------------
  function sizeHeat() {
    const [, , Q, K] = shape();
    const px = Math.max(1, Math.floor(360 / Math.max(Q, K)));
    heat.style.width = `${Math.min(360, K * px)}px`;
    heat.style.height = `${Math.min(360, Q * px)}px`;
  }

  function drawHeat() {
    const [, , Q, K] = shape();
    paint(heat, bytes(model.get("head_map")), Q, K);
  }

  // rebuilt only when its window or labels change, not on a head switch
  function tokenList(box, which, labels, [start, stop]) {
    const key = `${start}:${stop}`;
    if (listed[which] === key && box.mlmfLabels === labels) return;
    listed[which] = key;
    box.mlmfLabels = labels;
    const items = document.createDocumentFragment();
    for (let i = start; i < stop; i++) {
      const s = el("span", "mlmf-token", items);
      s.textContent = labels[i];
      s.dataset.token = String(i);
      s.style.height = `${ROW}px`;
    }
    box.textContent = "";
    box.appendChild(items);
  }

  function token(ev) {
    const s = ev.target.closest(".mlmf-token");
    return s ? Number(s.dataset.token) : -1;
  }
  left.addEventListener("mouseover", (ev) => {
    const q = token(ev);
    if (q >= 0 && q !== hover) { hover = q; drawLinks(); }
  });
  left.addEventListener("mouseleave", () => { hover = -1; drawLinks(); });
  left.addEventListener("click", (ev) => {
    const q = token(ev);
    if (q >= 0) pickQuery(model.get("query") === q ? -1 : q);
  });

  function drawLinks() {
    const [, , Q] = shape();
    const win = model.get("window"), kwin = model.get("key_window");
    const k = model.get("top_k");
    const { idx, w } = top;
    const rows = Math.max(win[1] - win[0], kwin[1] - kwin[0]);
    if (linkCanvas.width !== 140 || linkCanvas.height !== rows * ROW) {
      linkCanvas.width = 140;
      linkCanvas.height = rows * ROW;
    }
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
    const [layer, head] = shown();
    const q = model.get("query");
    const tokens = model.get("tokens");
    header.textContent = `${model.get("title")} · ${L}×${H} heads, ${Q}×${K} tokens · ` +
      `layer ${layer}, head ${head}` +
      (q >= 0 ? ` · query ${q} "${tokens[q]}"` : " · hover or click a query token");
  }

  function drawSelected() {
    drawHeat();
    top = { idx: u16(model.get("top_idx")), w: bytes(model.get("top_w")) };
    tokenList(left, "left", model.get("tokens"), model.get("window"));
    tokenList(right, "right", model.get("key_tokens"), model.get("key_window"));
    drawLinks();
    drawImage();
    drawHeader();
    markThumb();
    // what the page shows, for tests and the benchmark: the head whose bytes were drawn
    const [layer, head] = shown();
    root.dataset.layer = String(layer);
    root.dataset.head = String(head);
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

  // One message from the kernel changes several traits (map, top keys, windows), each with
  // its own event: draw once, after the last of them (a microtask runs after the batch).
  let queued = false;
  const redraw = () => {
    if (queued) return;
    queued = true;
    queueMicrotask(() => { queued = false; drawSelected(); });
  };
  const onQuery = () => { drawHeader(); drawLinks(); };
  const onThumbs = () => { buildThumbs(); sizeHeat(); };
  const handlers = [
    ["change:head_map", redraw], ["change:head_shown", redraw], ["change:top_idx", redraw],
    ["change:window", redraw], ["change:key_window", redraw], ["change:patch", drawImage],
    ["change:layer", markThumb], ["change:head", markThumb], ["change:query", onQuery],
    ["change:thumbs", onThumbs],
  ];
  for (const [name, f] of handlers) model.on(name, f);
  buildThumbs();
  sizeHeat();
  drawSelected();
  root.dataset.renderMs = (performance.now() - started).toFixed(1); // read by the benchmark
  return loadPicture().then(() => () => {
    for (const [name, f] of handlers) model.off(name, f);
  });
}

export default { render };

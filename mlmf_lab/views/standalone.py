"""One self-contained HTML page running a view's ES module against saved state.

The page holds the CSS, the module's source, the state as JSON (bytes as base64) and a
small stand-in for anywidget's model (``get``/``set``/``on``/``save_changes``/``send``).
The module is imported from a ``blob:`` URL made from its own text, so the file opens from
disk with no server and makes no request to any host.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

_SHIM = """
const STATE = JSON.parse(document.getElementById("mlmf-state").textContent);
function revive(v) {
  if (v && typeof v === "object" && !Array.isArray(v)) {
    if ("__bytes__" in v) {
      const raw = atob(v.__bytes__), u8 = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) u8[i] = raw.charCodeAt(i);
      return new DataView(u8.buffer);
    }
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = revive(x);
    return out;
  }
  return Array.isArray(v) ? v.map(revive) : v;
}
const state = revive(STATE.state);
const handlers = {};
const model = {
  standalone: revive(STATE.extra),
  get: (k) => state[k],
  set: (k, v) => { state[k] = v; (handlers["change:" + k] || []).forEach((f) => f()); },
  on: (ev, f) => { (handlers[ev] = handlers[ev] || []).push(f); },
  off: (ev, f) => { handlers[ev] = (handlers[ev] || []).filter((g) => g !== f); },
  save_changes: () => {},
  send: () => {},
};
const src = document.getElementById("mlmf-esm").textContent;
const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
const mod = await import(url);
const widget = mod.default || mod;
await widget.render({ model, el: document.getElementById("mlmf-root") });
"""


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _script_text(text: str) -> str:
    """Text that cannot close its ``<script>`` element early."""
    return text.replace("</", "<\\/")


def standalone_html(esm: str, css: str, state: dict[str, Any], extra: dict[str, Any],
                    title: str) -> str:
    """The page: CSS, the ES module, the state (and ``extra`` data for offline clicks)."""
    data = json.dumps({"state": _plain(state), "extra": _plain(extra)}, separators=(",", ":"))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "script-src 'unsafe-inline' blob:; style-src 'unsafe-inline'; img-src data: blob:\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{css}\n</style></head>\n"
        "<body><div id='mlmf-root'></div>\n"
        f"<script type='application/json' id='mlmf-state'>{_script_text(data)}</script>\n"
        f"<script type='text/plain' id='mlmf-esm'>{_script_text(esm)}</script>\n"
        f"<script type='module'>{_SHIM}</script>\n</body></html>\n"
    )


__all__ = ["standalone_html"]

"""The views in a real browser: Debian's chromium (Playwright) against a JupyterLab we start.

The test starts JupyterLab on 127.0.0.1 with a random port and token and its own config,
data and runtime folders, opens a notebook that shows each view, runs it, and checks: each
``.mlmf-view`` rendered with content; clicking a head thumbnail changes ``layer``/``head`` in
the kernel; a pin button pins the entry in the Python cache; clicking a lineage node shows
its record; clicking a layer's bar in CompareView selects it in the kernel and draws its
tensor's histograms; no "Error displaying widget"; no console error; no request to any host but
127.0.0.1 (``blob:``/``data:`` allowed). The kernel writes its views' state to a JSON file
that the test reads. In the same JupyterLab, the real ``notebooks/09_model_comparison.ipynb``
runs from top to bottom: no error output, its CompareView drawn, a bar click answered by the
kernel. Screenshots go to ``.scratch/``. Every wait is bounded; the server is always stopped.
Needs ``apt-get install chromium`` (``.ci/run`` does it); no browser is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MLMF_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SCRATCH = Path(os.environ.get("MLMF_SCRATCH", ROOT / ".scratch"))
# the tutorial, as nbval runs it (cwd notebooks/); it reads no file next to it (its data come
# from ml.examples, its work goes to a temporary folder), so the notebook alone is copied
NB09 = ROOT / "notebooks" / "09_model_comparison.ipynb"
# a canvas has painted something that is neither blank nor white
PAINTED = ("c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
           ".some(v => v > 0 && v < 255)")
# JupyterLab shows notebook `path` and its kernel is idle
KERNEL_IDLE = ("path => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
               " return !!w && w.context?.path === path"
               " && w.sessionContext?.session?.kernel?.status === 'idle'; }")
# run-all is over: the cells' error outputs as soon as there is one (the cells after it never
# run), else [] once the kernel is idle and every code cell has an execution count. Read from
# the notebook's model: JupyterLab draws an error as stderr text, and offscreen cells
# (content-visibility) have no innerText
RUN_STATE = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.content.widgets.filter((c) => c.model.type === "code");
  const errors = cells.flatMap((c, i) => c.model.outputs.toJSON()
    .filter((o) => o.output_type === "error")
    .map((o) => `code cell ${i + 1}: ${o.ename}: ${o.evalue}`));
  if (errors.length) return errors;
  return w.sessionContext.session?.kernel?.status === "idle"
    && cells.every((c) => c.model.executionCount !== null) ? [] : null;
}"""

SETUP = '''
import json, threading, time, torch
from pathlib import Path
import mlmf_lab as ml
from mlmf_lab.models import MiniLM

lm = MiniLM.from_pretrained(ml.examples.minilm_dir())
batch = lm.tokenize(["A cat sleeps on the sofa."])
tokens = [lm.tokenizer.id_to_token(int(i)) for i in batch["input_ids"][0]]
att = ml.views.AttentionView(ml.views.capture_attentions(lm, **batch), tokens=tokens)

cache = ml.ModelCache("1MiB")
cache.put("alpha", torch.zeros(1000))
cache.put("beta", torch.zeros(20000))
cache.get("alpha"); cache.get("gamma")
cache_view = ml.views.CacheView(cache)

work = Path("story"); work.mkdir(exist_ok=True)
lineage = ml.Lineage(work / "lineage.db")
with lineage:
    ml.save_state_dict({"w": torch.arange(16.0).reshape(4, 4)}, work / "a.safetensors")
    for _ in range(3):
        ml.load_state_dict(work / "a.safetensors")
    ml.convert(work / "a.safetensors", work / "b.gguf", quant="q8_0")
lin_view = ml.views.LineageView(lineage)
gguf_id = lineage.entity(work / "b.gguf").id

import copy
lm_q = copy.deepcopy(lm)
ml.quant.quantize_model(lm_q, "q4_0")
cmp_view = ml.views.CompareView(ml.compare(lm, lm_q, inputs=[
    "A cat sleeps on the sofa.", "Dogs bark at night.", "The market fell.", "A kitten naps."]))

def report(stop=time.monotonic() + 240):
    while time.monotonic() < stop:
        state = {"layer": att.layer, "head": att.head, "selected": lin_view.selected,
                 "pinned": [r["key"] for r in cache.rows() if r["pinned"]],
                 "entries": len(cache), "gguf": gguf_id,
                 "cmp_layer": cmp_view.layer, "cmp_tensor": cmp_view.tensor}
        Path("state.json.tmp").write_text(json.dumps(state))
        Path("state.json.tmp").replace("state.json")
        time.sleep(0.1)

threading.Thread(target=report, daemon=True).start()
'''
CELLS = [SETUP, "att", "cache_view",
         # a background warm-up while the view is shown: the page must follow it
         "job = cache.warm([f'w{i}' for i in range(10)], "
         "loader=lambda k: (time.sleep(0.05), torch.zeros(100))[1], progress=False)",
         "lin_view", "cmp_view",
         # the benchmark: 12 layers x 12 heads x 512 tokens
         "big = ml.views.AttentionView(torch.rand(12, 12, 512, 512, generator=torch.Generator()"
         ".manual_seed(0)).softmax(-1), title='bench')",
         "big"]

# nine heads of the benchmark view, each new to the page: 9 clicks, median and max reported
SWITCHES = (17, 40, 77, 101, 130, 5, 62, 94, 139)
# click -> the kernel sets layer/head and sends that head's bytes -> the page draws them: done
# when the page's draw counter moves and the drawn bytes are that head's (data-layer/-head
# come from the head the kernel says the map belongs to, not from the click)
SWITCH = """async ([layer, head]) => {
  const root = document.querySelectorAll("[data-view='attention']")[1];
  const drawn = Number(root.dataset.drawn);
  const t0 = performance.now();
  root.querySelector(`.mlmf-thumb[data-layer='${layer}'][data-head='${head}']`).click();
  while (Number(root.dataset.drawn) === drawn || root.dataset.layer !== String(layer)
         || root.dataset.head !== String(head)) {
    await new Promise((r) => requestAnimationFrame(r));
    if (performance.now() - t0 > 10000) throw new Error("head switch never drew");
  }
  return performance.now() - t0;
}"""


class Lab(NamedTuple):
    """The JupyterLab the tests share: its address, token and root folder."""

    base: str
    token: str
    root: Path

    def tree(self, name: str) -> str:
        """The address that opens notebook ``name`` in a fresh workspace (no tab restored)."""
        return f"{self.base}/lab/tree/{name}?token={self.token}&reset"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y "
                    "chromium) or set MLMF_CHROMIUM; the browser test never downloads one")
    root = tmp_path_factory.mktemp("lab")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, root / "views.ipynb")
    shutil.copy(NB09, root / NB09.name)
    # no "get Jupyter news?" prompt over the views (and no news fetched)
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / "config"),
               JUPYTER_DATA_DIR=str(root / "data"), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
               IPYTHONDIR=str(root / "ipython"), MPLBACKEND="Agg", TQDM_DISABLE="1",
               JUPYTER_PLATFORM_DIRS="1")
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={root / 'settings'}",
            f"--LabApp.workspaces_dir={root / 'workspaces'}",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class="
            "jupyterlab.NeverCheckForUpdate", "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}",
                                            timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (
                        root / "server.log").read_text(errors="replace")[-3000:]) from None
                time.sleep(0.5)
        yield Lab(f"http://127.0.0.1:{port}", token, root)
    finally:
        server.send_signal(signal.SIGINT)  # shuts its kernels down, then exits
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()


def wait_state(root: Path, check, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        try:
            state = json.loads((root / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        if state and check(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"the kernel's state never got there: {state}")


def watch(page) -> tuple[list[str], list[str]]:
    """Record the page's console errors, and abort (and record) any request that would leave
    127.0.0.1 (``blob:`` and ``data:`` stay in the page). Returns (errors, foreign requests)."""
    errors: list[str] = []
    foreign: list[str] = []

    def route(r) -> None:
        parsed = urlparse(r.request.url)
        if parsed.scheme in ("blob", "data") or parsed.hostname == "127.0.0.1":
            r.continue_()
        else:
            foreign.append(r.request.url)
            r.abort()

    page.set_default_timeout(60_000)
    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    return errors, foreign


def test_views_render_and_clicks_reach_the_kernel(lab) -> None:
    from playwright.sync_api import sync_playwright

    url, root = lab.tree("views.ipynb"), lab.root
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors, foreign = watch(page)
            page.goto(url)
            page.wait_for_function(KERNEL_IDLE, arg="views.ipynb", timeout=90_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            for name in ("attention", "cache", "lineage", "compare"):
                page.wait_for_selector(f".mlmf-view[data-view='{name}']", timeout=120_000)
            page.wait_for_function("() => document.querySelectorAll(\"[data-view='attention']\")"
                                   ".length === 2", timeout=120_000)

            # rendered with content: thumbnails and a painted heatmap, rows, SVG nodes
            att = page.locator(".mlmf-view[data-view='attention']").first
            assert att.locator(".mlmf-thumb").count() == 6 * 12
            assert att.locator(".mlmf-heatmap").evaluate(PAINTED)
            cache = page.locator(".mlmf-view[data-view='cache']")
            lin = page.locator(".mlmf-view[data-view='lineage']")
            assert lin.locator(".mlmf-node[data-node]").count() == 7

            # a thumbnail click changes layer/head in the kernel
            att.locator(".mlmf-thumb[data-layer='4'][data-head='7']").click()
            wait_state(root, lambda s: (s["layer"], s["head"]) == (4, 7))
            page.wait_for_function("() => document.querySelector(\"[data-view='attention']\")"
                                   ".dataset.layer === '4'")

            # the benchmark row: first render and head switch at 12 x 12 x 512
            big = page.locator(".mlmf-view[data-view='attention']").nth(1)
            first_render = float(big.get_attribute("data-render-ms") or "nan")
            switches = sorted(page.evaluate(SWITCH, [lh // 12, lh % 12]) for lh in SWITCHES)
            bench = {"case": "AttentionView 12 layers x 12 heads x 512 tokens",
                     "first_render_ms": first_render, "head_switches": len(switches),
                     "head_switch_ms_median": switches[len(switches) // 2],
                     "head_switch_ms_max": switches[-1],
                     "load_average_1min": os.getloadavg()[0]}
            (SCRATCH / "views-bench.json").write_text(json.dumps(bench, indent=1))
            print(bench)

            # the warm-up in the background reached the page (12 entries), then pin alpha
            page.wait_for_function(
                "() => document.querySelectorAll(\"[data-view='cache'] tr[data-key]\").length "
                "=== 12", timeout=30_000)
            cache.locator("button[data-action='pin'][data-key=\"'alpha'\"]").click()
            wait_state(root, lambda s: s["pinned"] == ["'alpha'"])
            cache.locator("button[data-action='unpin'][data-key=\"'alpha'\"]").wait_for()

            # a lineage node click shows its record and selects it in the kernel
            state = wait_state(root, lambda s: "gguf" in s)
            lin.locator(f".mlmf-node[data-node='{state['gguf']}']").click()
            record = lin.locator(".mlmf-record-text").inner_text()
            assert "b.gguf" in record and "sha256:" in record and "convert(" in record
            wait_state(root, lambda s: s["selected"] == s["gguf"])

            # a layer's bar click reaches the kernel, which sends that layer's most changed
            # tensor: its histograms and ΔW spectrum are drawn; a tensor click switches it
            cmp = page.locator(".mlmf-view[data-view='compare']")
            assert cmp.locator(".mlmf-bar[data-layer]").count() == 7
            assert cmp.locator("canvas.mlmf-cka").evaluate(PAINTED)
            cmp.locator(".mlmf-bar[data-layer='layer 2']").click()
            state = wait_state(root, lambda s: s["cmp_layer"] == "layer 2"
                               and s["cmp_tensor"].startswith("encoder.layer.2."))
            page.wait_for_function("t => document.querySelector(\"[data-view='compare'] "
                                   ".mlmf-detail\").dataset.tensor === t",
                                   arg=state["cmp_tensor"])
            assert cmp.locator(".mlmf-detail svg").count() == 4
            other = cmp.locator(".mlmf-tensor[data-tensor]").nth(0)
            picked = other.get_attribute("data-tensor")
            other.click()
            wait_state(root, lambda s: s["cmp_tensor"] == picked)

            for label, view in (("attention", att), ("cache", cache), ("lineage", lin),
                                ("compare", cmp)):
                view.screenshot(path=str(SCRATCH / f"view-{label}.png"))
            page.screenshot(path=str(SCRATCH / "views-lab.png"), full_page=True)
            assert "Error displaying widget" not in (page.locator("body").text_content() or "")
        finally:
            browser.close()
    assert foreign == [], f"requests to other hosts: {foreign}"
    assert errors == [], f"console errors: {errors}"


def shown_views(path: Path) -> list[str]:
    """The views a notebook displays (``data-view`` names), read from the outputs it stores."""
    plain = [out["data"].get("text/plain", "") for cell in nbformat.read(path, as_version=4).cells
             for out in cell.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    return [m[1].lower() for m in map(re.compile(r"(\w+)View\(").match, plain) if m]


def test_notebook_09_runs_in_the_lab(lab) -> None:
    """The real tutorial 09, run from top to bottom in JupyterLab, shows a working CompareView."""
    from playwright.sync_api import sync_playwright

    expected = shown_views(NB09)
    assert "compare" in expected, f"{NB09} stores no CompareView output"
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors, foreign = watch(page)
            page.goto(lab.tree(NB09.name))
            page.wait_for_function(KERNEL_IDLE, arg=NB09.name, timeout=90_000)
            # the stored outputs go first, so every execution count seen later is this run's
            page.evaluate("() => window.jupyterapp.commands.execute("
                          "'notebook:clear-all-cell-outputs')")
            page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.widgets"
                                   ".every((c) => c.model.type !== 'code' || "
                                   "c.model.executionCount === null)")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            failed = page.wait_for_function(RUN_STATE, timeout=300_000).json_value()
            assert failed == [], f"{NB09.name} failed in the lab: {failed}"

            # every view the notebook shows is drawn, with content
            views = page.locator(".mlmf-view")
            assert [v.get_attribute("data-view") for v in views.all()] == expected
            for view in views.all():
                assert view.evaluate("e => e.childElementCount > 0 && "
                                     "e.textContent.trim().length > 0")
            cmp = page.locator(".mlmf-view[data-view='compare']")
            assert cmp.locator(".mlmf-bar[data-layer]").count() == 7  # 6 layers + "other"
            assert cmp.locator("canvas.mlmf-cka").evaluate(PAINTED)

            # a bar click: the page only sets `layer`; the tensor list and the tensor whose
            # histograms are drawn come from the kernel, so seeing them proves the round trip
            target = "layer 4" if cmp.get_attribute("data-layer") != "layer 4" else "layer 5"
            prefix = f"encoder.layer.{target[-1]}."
            cmp.locator(f".mlmf-bar[data-layer='{target}']").click()
            page.wait_for_function(
                "p => { const d = document.querySelector(\"[data-view='compare'] .mlmf-detail\");"
                " return d.dataset.tensor.startsWith(p); }", arg=prefix, timeout=30_000)
            tensors = cmp.locator(".mlmf-tensor[data-tensor]").evaluate_all(
                "es => es.map((e) => e.dataset.tensor)")
            assert tensors and all(t.startswith(prefix) for t in tensors), tensors
            assert cmp.locator(".mlmf-detail svg").count() == 4
            cmp.screenshot(path=str(SCRATCH / "view-compare-09.png"))
            assert "Error displaying widget" not in (page.locator("body").text_content() or "")
        finally:
            browser.close()
    assert foreign == [], f"requests to other hosts: {foreign}"
    assert errors == [], f"console errors: {errors}"


def test_saved_pages_open_offline_in_the_browser(tmp_path) -> None:
    """``save_html``: the same module against saved state, from a file, no request at all."""
    import torch
    from playwright.sync_api import sync_playwright

    import mlmf_lab as ml

    view = ml.views.AttentionView(torch.rand(2, 3, 5, 5).softmax(-1), tokens=list("abcde"))
    path = view.save_html(tmp_path / "attention.html")
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            root = page.locator(".mlmf-view[data-view='attention']")
            root.locator(".mlmf-thumb[data-layer='1'][data-head='2']").click()
            page.wait_for_function("() => document.querySelector('.mlmf-view').dataset.head"
                                   " === '2'", timeout=10_000)
            assert root.locator(".mlmf-thumb.selected").get_attribute("data-layer") == "1"
        finally:
            browser.close()
    assert [u for u in requests if not u.startswith(("file:", "blob:", "data:"))] == []
    assert errors == []


def test_saved_compare_page_answers_clicks_offline(tmp_path) -> None:
    """The saved CompareView carries every layer's tensors: a bar click works with no kernel."""
    import torch
    from playwright.sync_api import sync_playwright

    import mlmf_lab as ml

    g = torch.Generator().manual_seed(0)
    a = {f"layers.{i}.w": torch.randn(8, 8, generator=g) for i in range(3)}
    b = {k: v + 0.1 * i * torch.randn(8, 8, generator=g) for i, (k, v) in enumerate(a.items())}
    path = ml.views.CompareView(ml.compare(a, b)).save_html(tmp_path / "compare.html")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            root = page.locator(".mlmf-view[data-view='compare']")
            root.locator(".mlmf-bar[data-layer='layer 1']").click()
            page.wait_for_function("() => document.querySelector('.mlmf-view').dataset.tensor"
                                   " === 'layers.1.w'", timeout=10_000)
            assert root.locator(".mlmf-detail svg").count() == 4
        finally:
            browser.close()
    assert errors == []


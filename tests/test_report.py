"""The report: every figure is drawn from known inputs, and `snakemake --report` of a finished smoke
run opens in a real headless browser (Debian's chromium) with every image rendered."""
import html as html_module
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import clone_project

from dery import report as RP
from dery import tracking as T

PARTITION = {"sets": [[], []], "stage_alignment": 1.0, "blocks": [
    {"model": "a", "start": 1, "end": 2, "set": 0, "stage": 0},
    {"model": "a", "start": 3, "end": 4, "set": 1, "stage": 1},
    {"model": "b", "start": 1, "end": 1, "set": 0, "stage": 0},
    {"model": "b", "start": 2, "end": 3, "set": 1, "stage": 1}]}
NAMES = {"a": ["<stem>", "l1", "l2", "l3", "l4"], "b": ["<stem>", "s1", "s2", "s3"]}
TABLE = pd.DataFrame({
    "kind": ["assembly"] * 3 + ["scratch", "zoo", "zoo"], "budget": ["small"] * 4 + ["zoo", "zoo"],
    "name": ["rank0", "rank1", "rank2", "scratch", "za", "zb"], "params_M": [1.0, 1.2, 0.8, 1.0, 5.0, 0.5],
    "MACs_M": [10, 12, 8, 10, 20, 1], "proxy": [30.0, 20.0, 10.0, np.nan, np.nan, np.nan],
    "FZ_test_acc": [0.7, 0.6, 0.5, np.nan, np.nan, np.nan], "FT_test_acc": [0.8, 0.7, 0.6, 0.4, 0.85, 0.55]})


def png_size(path: Path) -> tuple[int, int]:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.std() > 0, f"{path} is blank"
    return img.shape[1], img.shape[0]


def test_the_pareto_front_keeps_only_networks_nothing_smaller_beats():
    params = [1.0, 2.0, 0.5, 3.0, 2.0]
    acc = [0.7, 0.9, 0.6, 0.8, 0.5]
    assert RP.pareto_front(params, acc) == [2, 0, 1]


def test_cka_heatmap_and_partition_figures(tmp_path):
    cka = np.linspace(0, 1, 20).reshape(5, 4)
    RP.cka_heatmap(cka, NAMES["a"], NAMES["b"], "a", "b", PARTITION, tmp_path / "cka.png")
    RP.partition_figure(PARTITION, NAMES, tmp_path / "partition.png")
    for f in ("cka.png", "partition.png"):
        w, h = png_size(tmp_path / f)
        assert w > 200 and h > 150


def test_table_figures_from_the_summary_csv(tmp_path):
    TABLE.to_csv(tmp_path / "summary.csv", index=False)
    RP.table_figures(str(tmp_path / "summary.csv"), str(tmp_path / "proxy.png"), str(tmp_path / "pareto.png"))
    assert png_size(tmp_path / "proxy.png")[0] > 400 and png_size(tmp_path / "pareto.png")[0] > 400


def test_training_curves_skip_records_without_epochs(tmp_path):
    recs = [T.record("finetune/small/rank0/FT", {"stage": "finetune", "kind": "assembly"}, {}, {"test_acc": 0.8},
                     {"epoch_val_acc": [0.5, 0.7, 0.8], "epoch_train_loss": [2.0, 1.2, 0.9]}),
            T.record("pretrain/a", {"stage": "pretrain"}, {}, {}, {"epoch_val_acc": [0.6], "epoch_train_loss": [1.0]}),
            T.record("partition", {"stage": "partition"}, {}, {"objective": 1.0}),
            {"skip": True, "key": "finetune/small/rank5/FT"}]
    files = []
    for i, r in enumerate(recs):
        files.append(tmp_path / f"{i}.metrics.json")
        files[-1].write_text(json.dumps(r))
    RP.training_curves_files([str(f) for f in files], str(tmp_path / "curves.png"))
    assert png_size(tmp_path / "curves.png")[0] > 600


# --- the report of a finished smoke run, in a real browser --------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it when run as root)")
    return exe


@pytest.fixture(scope="module")
def smoke_report(smoke_project, tmp_path_factory) -> Path:
    """The README's report block, pasted as written, in a private copy of the session's finished smoke run whose
    default params are the smoke params."""
    work = clone_project(smoke_project, tmp_path_factory.mktemp("report") / "project")
    (work / "params" / "default.yaml").write_text((work / "params" / "smoke.yaml").read_text())
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("\n## The report", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(work)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


# Runs inside the report page: opens every category from the menu, clicks every result's view
# button as a reader would, and records what the page then shows (JSON in a <pre> read from the DOM).
PROBE_JS = """
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const out = { loaded: false, categories: [], images: [], errors: window.__deryErrors || [] };
  try {
    out.loaded = document.querySelector('#loading-screen').style.display === 'none' && !!document.querySelector('#app nav');
    for (const category of Object.keys(categories)) {
      app.setView({ navbarMode: 'menu' });
      await sleep(200);
      const item = [...document.querySelectorAll('nav a')].find((a) => a.textContent.trim() === category);
      if (!item) { out.errors.push('no menu item for ' + category); continue; }
      item.click();
      await sleep(300);
      const rows = [...document.querySelectorAll('nav table tr')].filter((tr) => tr.querySelector('a'));
      out.categories.push({ category, results: rows.length });
      for (let i = 0; i < rows.length; i++) {
        const row = [...document.querySelectorAll('nav table tr')].filter((tr) => tr.querySelector('a'))[i];
        app.setView({ content: 'text', contentText: ' ' });  // clear the last figure: nothing stale is counted
        await sleep(100);
        row.querySelector('td:last-child a').click();
        await sleep(500);
        const img = [...document.querySelectorAll('img')].find((im) => im.src.startsWith('data:image/png'));
        if (!img) { out.images.push({ category, row: row.textContent, shown: false }); continue; }
        if (!img.complete) await new Promise((r) => { img.onload = r; img.onerror = r; setTimeout(r, 3000); });
        const name = (img.src.match(/filename=([^;]+);/) || [])[1];
        out.images.push({ category, name, shown: true, width: img.naturalWidth, height: img.naturalHeight,
                          box: [img.getBoundingClientRect().width, img.getBoundingClientRect().height] });
      }
    }
  } catch (err) { out.errors.push(String(err)); }
  const pre = document.createElement('pre');
  pre.id = 'dery-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
"""  # noqa: E501 - JavaScript run in the page; the string is kept byte for byte
ERROR_HOOK = ('<script>window.__deryErrors=[];window.addEventListener("error",'
              'e=>window.__deryErrors.push(String(e.message)));</script>')


def browse(report: Path, wait_ms: int = 2000) -> dict:
    """Open the report in headless chromium and click through it; what the page showed, as a dict."""
    html = report.read_text()
    end = html.rfind("</body>")  # the page's own; earlier ones sit inside embedded strings
    head, tail = html[:end], html[end:]
    probe = report.with_name("browse.html")
    probe.write_text(head.replace("<head>", "<head>" + ERROR_HOOK, 1)
                     + f"<script>setTimeout(() => {{ {PROBE_JS} }}, {wait_ms});</script>" + tail)
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               "--virtual-time-budget=120000", "--dump-dom", probe.as_uri()],
                              capture_output=True, text=True, timeout=300)
    m = re.search(r'<pre id="dery-probe">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert m, f"the page never finished the probe:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(html_module.unescape(m.group(1)))


@pytest.mark.slow
def test_the_report_opens_in_a_browser_and_every_figure_renders(smoke_report):
    models = len(yaml.safe_load((smoke_report / "params" / "smoke.yaml").read_text())["zoo"])
    figures = sorted((smoke_report / "results" / "report").rglob("*.png"))
    assert len(figures) == models * (models + 1) // 2 + 4, "a CKA map per model pair + partition, proxy, Pareto, curves"
    seen = browse(smoke_report / "results" / "report.html")
    assert seen["loaded"] and seen["errors"] == [], seen["errors"]
    assert {c["category"] for c in seen["categories"]} == {
        "1. Block similarity (CKA)", "2. Partition", "3. Proxy vs accuracy", "4. Accuracy vs size",
        "5. Training curves", "6. Result table"}
    shown = [i for i in seen["images"] if i["shown"]]
    assert sorted(i["name"] for i in shown) == sorted(f.name for f in figures), "each figure shown once, none missing"
    for img in shown:
        on_disk = png_size(next(f for f in figures if f.name == img["name"]))
        assert (img["width"], img["height"]) == on_disk, f"{img['name']}: decoded by the browser at its real size"
        assert img["box"][0] > 100 and img["box"][1] > 100, f"{img['name']} is laid out visibly on the page"

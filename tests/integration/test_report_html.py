"""``flq-audit report`` writes a self-contained index.html and metrics.nc (checked in Chromium)."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from html import unescape
from pathlib import Path

import pytest
import xarray as xr

from flq_audit import __version__, api
from flq_audit.reading import render_page
from tests._helpers.cli import run_cli
from tests._helpers.requires import missing, require_module
from tests._helpers.runs import make_run

STEPS = (0, 10, 20, 40)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint folder, store, report folder) of a real audit and a real ``report`` run."""
    root = tmp_path_factory.mktemp("html")
    run = make_run(root / "run", steps=STEPS)
    store = root / "run.zarr"
    api.audit(str(run), out=store)
    result = run_cli("report", store, "--out", root / "rep")
    assert result.returncode == 0, result.stderr
    assert f"page    {root / 'rep' / 'index.html'}" in result.stdout
    return run, store, root / "rep"


def test_page_is_self_contained(report):
    _, _, folder = report
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 3
    pngs = {path.read_bytes() for path in folder.glob("*.png")}
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) in pngs


def test_page_links_the_netcdf_export(report):
    _, store, folder = report
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert '<a href="metrics.nc">' in html
    exported = xr.open_dataset(folder / "metrics.nc", engine="h5netcdf")
    stored = api.open_store(store)
    assert list(exported["step"].values) == list(STEPS)
    assert float(abs(exported["target_linearity"] - stored["target_linearity"]).max()) == 0.0
    exported.close()


def test_page_holds_verdict_table_and_provenance(report):
    run, store, folder = report
    html = (folder / "index.html").read_text(encoding="utf-8")
    ds = api.open_store(store)
    assert "sequential linearization" in html
    for layer in ds["layer"].values:
        assert f'<td class="name">{layer}</td>' in html
    assert str(run) in html and f"flq-audit {__version__}" in html
    assert ds.attrs["probe_fingerprint"] in html
    for step in STEPS:
        sha = hashlib.sha256((run / f"step_{step}.safetensors").read_bytes()).hexdigest()
        assert sha[:12] in html
    assert '"activation_dtype": "float32"' in unescape(html)


def test_report_runs_again_into_its_own_folder(report):
    _, store, folder = report
    before = (folder / "metrics.nc").stat().st_mtime_ns
    result = run_cli("report", store, "--out", folder)
    assert result.returncode == 0, result.stderr
    assert (folder / "metrics.nc").stat().st_mtime_ns > before


def test_page_escapes_what_it_shows(report):
    _, store, folder = report
    ds = api.open_store(store)
    ds.attrs["source"] = "<script>alert(1)</script>"
    metrics = api.compute_metrics(store, metrics=["tl", "dynamics"])
    html = render_page(metrics=metrics, store=ds, verdict="a < b", figures=[], netcdf=None,
                       notes=["x & y"], folder=folder)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "a &lt; b" in html and "x &amp; y" in html


def _browser():
    """A headless Chromium driven by chromedriver, or a skip saying what is missing."""
    webdriver = require_module("selenium.webdriver", "selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing("Chromium or chromedriver not found (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_page_renders_in_a_headless_browser(report):
    _, _, folder = report
    browser = _browser()
    try:
        browser.get((folder / "index.html").as_uri())
        state = browser.execute_script(
            "return {ready: document.readyState, images: Array.from(document.images).map("
            "i => [i.complete, i.naturalWidth, i.naturalHeight]), heading: "
            "document.querySelector('h1').textContent, rows: "
            "document.querySelectorAll('table tbody tr').length};")
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert state["ready"] == "complete" and state["heading"] == "flq-audit report"
    assert len(state["images"]) == 3
    assert all(done and width > 0 and height > 0 for done, width, height in state["images"])
    assert state["rows"] >= 3 + len(STEPS)
    assert errors == []


def test_page_and_stdout_say_what_the_data_says(report):
    _, store, folder = report
    html = unescape((folder / "index.html").read_text(encoding="utf-8"))
    assert '<h2 id="findings">What the data says</h2>' in html
    tl = api.open_store(store)["target_linearity"].transpose("step", "layer").values
    holding = [step for step, row in zip(STEPS, tl, strict=True) if (row[1:] >= row[:-1]).all()]
    if holding == list(STEPS):
        assert f"holds at every step ({STEPS[0]} to {STEPS[-1]})" in html
    else:
        assert "the depth order of TL" in html
    assert "t50/t90 (first step with TL ≥ 50 %/90 % of the layer's maximum)" in html
    assert "numerical floor of the stored Gram" in html  # the spectrum's caption

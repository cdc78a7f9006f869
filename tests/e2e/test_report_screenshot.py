"""The HTML search report opens in a real browser (headless Chromium, offline): the screenshot is not blank
and the DOM holds every plot as SVG. Skipped without chromium, unless AUTODP_REQUIRE_CHROMIUM=1 (CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from coordinator.report_html import write_html
from tests.unit.coordinator.test_report_html import FIGURES, baselines, sample_report

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


def _chromium() -> str:
    found = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                  if p and os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("AUTODP_REQUIRE_CHROMIUM") == "1":
            pytest.fail("AUTODP_REQUIRE_CHROMIUM=1 but chromium is not installed")
        pytest.skip("chromium is not installed")
    return found


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 90 s: {' '.join(args[:-1])}")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    page = write_html(tmp_path / "report.html", sample_report(), baselines())
    png = tmp_path / "report.png"

    shot = _run(chromium, tmp_path / "profile-shot", "--window-size=1280,4000", f"--screenshot={png}",
                page.resolve().as_uri())
    assert png.is_file() and png.stat().st_size > 0, shot.stderr[-2000:]

    from PIL import Image

    with Image.open(png) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 4000)
        small = rgb.resize((320, 1000))
    pixels = np.asarray(small, dtype=np.uint8).reshape(-1, 3)
    ink = int((pixels.min(axis=1) < 235).sum())
    assert ink > 0.03 * len(pixels), f"only {ink} of {len(pixels)} pixels are not white"
    colours = {tuple(c) for c in (pixels // 32).tolist()}
    assert len(colours) >= 8, f"only {len(colours)} distinct colours: the plots did not render"
    if os.environ.get("AUTODP_REPORT_SCREENSHOT"):  # to refresh docs/report-example.png
        shutil.copyfile(png, os.environ["AUTODP_REPORT_SCREENSHOT"])

    dom = _run(chromium, tmp_path / "profile-dom", "--dump-dom", page.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for fig_id in FIGURES:
        start = dom.stdout.find(f'<figure id="{fig_id}">')
        assert start >= 0, fig_id
        end = dom.stdout.find("</figure>", start)
        assert "<svg" in dom.stdout[start:end], fig_id

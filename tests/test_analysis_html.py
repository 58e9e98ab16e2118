"""The analysis report rendered by a real browser (Debian's Chromium, headless): the page loads, with its
sections and its pictures.  .ci/run installs chromium; this skips only where it is absent."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from analysis_models import SENSITIVE, spiky_net
from tinymodels import samples

from opendlc.analysis import analyze
from opendlc.analysis.render import write_report
from opendlc.container import Container

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)"
)
SECTIONS = ["summary", "verdict", "layers", "sensitivity", "histograms", "encodings", "method"]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--hide-scrollbars",
]


class _Dom(HTMLParser):
    """What the rendered page holds: section ids, pictures, external references."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.svg_classes: list[str] = []
        self.external: list[str] = []
        self.figures = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "svg":
            self.svg_classes.append(a.get("class", ""))
        if tag == "figure":
            self.figures += 1
        for key in ("src", "href"):
            if key in a and a[key] and ("://" in a[key] or a[key].startswith("//")):
                self.external.append(a[key])
        if tag == "link" or tag == "script" and "src" in a:
            self.external.append(str(a))

    def handle_data(self, data):
        self.text.append(data)


def _chromium(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(cwd)}  # chromium writes its profile under HOME
    return subprocess.run(
        [CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=env
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    d = tmp_path_factory.mktemp("report_html")
    report = analyze(Container(spiky_net()), samples(12), heldout=samples(3, seed=7), progress=False)
    files = write_report(report, d / "report.html")
    return d, files, report


def test_the_page_loads_with_its_sections_and_pictures(page):
    d, files, report = page
    done = _chromium("--dump-dom", files.html.as_uri(), cwd=d)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    assert dom.sections == SECTIONS
    # one histogram per activation, and the SQNR profile
    assert dom.svg_classes.count("hist") == len(report.histograms) == len(report.layers)
    assert dom.svg_classes.count("profile") == 1 and dom.figures == len(report.histograms)
    assert dom.external == []  # self-contained: no CDN, no external asset
    text = " ".join(dom.text)
    assert SENSITIVE in text and "Keep " in text and "gain (measured)" in text


def test_the_pictures_are_drawn(page):
    """A screenshot holds the histograms' encoding bands and the profile line in their colours."""
    d, files, _ = page
    shot = d / "shot.png"
    done = _chromium("--window-size=1280,6000", f"--screenshot={shot}", files.html.as_uri(), cwd=d)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from skimage import io

    rgb = io.imread(shot)[..., :3].astype(int)

    def pixels(color: tuple[int, int, int], tol: int = 6) -> int:
        return int(np.sum(np.all(np.abs(rgb - np.array(color)) <= tol, axis=-1)))

    assert pixels((0xDB, 0xE8, 0xFB)) > 20_000  # the blue encoding bands of the histograms
    assert pixels((0x55, 0x55, 0x55)) > 5_000  # the histogram bars
    assert pixels((0x1F, 0x5F, 0xBF)) > 1_000  # the SQNR profile and the band edges
    assert pixels((0xDD, 0x33, 0x33)) > 200  # the sensitivity bars (#d33)

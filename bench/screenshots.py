"""Screenshots of every dashboard page on the real demo model, for the README (docs/screenshots/*.png).

Starts ``streamlit run`` on 127.0.0.1, drives headless Chromium through the pages as a user would and
captures each page at full height. The rank explorer is captured as a new user first sees it, without a
click: the headline that ``fwsvd demo`` measured at the default ranks. With ``--evaluate`` the rank explorer
then optimizes the ranks for the weights the paper's 0.33 rank ratio keeps and evaluates SVD and FWSVD there
(``3_rank_explorer_optimized.png``), and the Compare page runs its default sweep, uniform and allocated (minutes
on a CPU). Needs the demo built (``fwsvd demo``); computes the default Fisher (exact and batch, for the
comparison) into the cache first if it is missing. Run from the repository root:

    python bench/screenshots.py [--evaluate]   # writes docs/screenshots/*.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "app"), str(ROOT / "tests")]

from app_support import CHROMIUM, CHROMIUM_ARGS, streamlit_server, wait_for_rerun  # noqa: E402

WIDTH = 1440


def _prepare() -> None:
    """The demo must be built; the Fisher the pages use by default is computed once if absent."""
    from fwsvd.config import FisherConfig
    from fwsvd.data.tasks import task_of
    from fwsvd.storage.locations import demo_is_built
    from fwsvd.view.explorer import Source
    from fwsvd.io.models import load_any_model
    from fwsvd.fisher.task import task_fisher

    source = Source.from_environment()
    if source.model == "demo" and not demo_is_built():
        raise SystemExit("build the demo model first (Model & task page, or fwsvd.io.demo.ensure_demo_model())")
    task = task_of(source)
    model, tokenizer, _ = load_any_model(source.model, task)
    for mode in ("per_example", "batch"):
        result = task_fisher(model, tokenizer, task, FisherConfig(mode=mode))
        print(f"Fisher {mode}: {'cached' if result.from_cache else f'computed in {result.seconds:.0f} s'}")


def _capture(page, path: Path) -> None:
    """The whole page: the viewport grows to the content's height (Streamlit scrolls inside its main area)."""
    height = page.evaluate("document.querySelector(\"[data-testid='stMainBlockContainer']\").scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": int(height) + 120})
    page.wait_for_timeout(1500)  # plotly re-lays out to the new size
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": WIDTH, "height": 1000})
    print(f"wrote {path.relative_to(ROOT)}")


def _go(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a").filter(has_text=title).click()
    wait_for_rerun(page, timeout_ms=600_000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--evaluate", action="store_true",
                        help="also optimize, evaluate and sweep (minutes on a CPU) before capturing")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}")
    _prepare()
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    log = ROOT / "cache" / "screenshots_streamlit.log"
    with streamlit_server({}, log, timeout=300) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.wait_for_selector(".js-plotly-plot >> text=Reconstruction error per layer")
            wait_for_rerun(page)
            _capture(page, args.out / "3_rank_explorer.png")  # at first sight: the headline, no click
            if args.evaluate:
                page.get_by_role("button", name="Optimize ranks for this budget").click()
                page.wait_for_selector("text=Layers kept dense")
                wait_for_rerun(page)
                page.get_by_role("button", name="Evaluate SVD and FWSVD").click()
                page.wait_for_selector(".js-plotly-plot >> text=at the current ranks")
                wait_for_rerun(page)
                _capture(page, args.out / "3_rank_explorer_optimized.png")

            _go(page, "Fisher")
            page.wait_for_selector(".js-plotly-plot >> text=Exact per-example Fisher vs the batch shortcut")
            _capture(page, args.out / "2_fisher.png")

            _go(page, "Compare")
            page.wait_for_selector(".js-plotly-plot >> text=Error against size")
            if args.evaluate:
                page.get_by_role("button", name="Run sweep").click()
                page.wait_for_selector(".js-plotly-plot >> text=against model size")
                wait_for_rerun(page)
            _capture(page, args.out / "4_compare.png")

            _go(page, "Model & task")
            page.wait_for_selector("text=Architecture")
            _capture(page, args.out / "1_model_and_task.png")

            _go(page, "Export")
            page.wait_for_selector("text=Compression config")
            _capture(page, args.out / "5_export.png")
        finally:
            browser.close()


if __name__ == "__main__":
    main()

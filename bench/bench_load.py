"""Load on one dashboard server: N browser sessions at once (headless Chromium, one context each) on a
``streamlit run`` started here on 127.0.0.1, freshly started, as when several people open it together.

Each session opens the rank explorer, changes ranks (its own layer, by keyboard, several times) and evaluates
both methods on a small subset. Reported: errors (tracebacks, error boxes, failed steps: must be 0), whether
each session's ranks are its own at the end (untouched by the others), and the time of a rank change (key
press to the end of the rerun it causes) over all sessions, p50 and p95.

    python bench/bench_load.py                  # 8 sessions on the tiny test app (a random BERT, a CSV task)
    python bench/bench_load.py --write          # also write docs/BENCH_LOAD.md

Needs Chromium (/usr/bin/chromium) and playwright; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from app_support import CHROMIUM, CHROMIUM_ARGS, prepare_app_environment, streamlit_server  # noqa: E402

SCRIPT_STATE = "document.querySelector(\"[data-testid='stApp']\")?.getAttribute('data-test-script-state')"
LAYERS = ["attention.self.query (32×32)", "attention.self.key (32×32)", "attention.self.value (32×32)",
          "attention.output.dense (32×32)", "intermediate.dense (48×32)", "output.dense (32×48)"]
BASE_RANK = 11  # every layer at the rank ratio 0.33 of 32


async def wait_for_rerun(page, timeout_ms: float = 300_000) -> None:
    """Until the rerun an action caused has finished (it may start a moment after the action)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(f"{SCRIPT_STATE} === 'running'", timeout=1_500)
    except PlaywrightTimeout:
        pass
    await page.wait_for_function(f"{SCRIPT_STATE} === 'notRunning'", timeout=timeout_ms)


async def slider_values(page) -> dict[str, str]:
    return await page.evaluate("""() => Object.fromEntries([...document.querySelectorAll("[data-testid='stSlider']")]
        .map(slider => [slider.querySelector("[data-testid='stWidgetLabel']").innerText.trim(),
                        slider.querySelector("input[type='range']").getAttribute('aria-valuetext')]))""")


async def problems(page) -> list[str]:
    """Tracebacks and error boxes on the page."""
    found = [f"traceback: {text[:200]}" for text in
             await page.locator("[data-testid='stException']").all_inner_texts()]
    found += [f"error box: {text[:200]}" for text in
              await page.locator("[data-testid='stAlertContentError']").all_inner_texts()]
    return found


async def session(browser, url: str, number: int, changes: int) -> dict:
    """One person: open, change their layer's rank ``changes`` times, evaluate; what went wrong and when."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1100})
    page = await context.new_page()
    page.set_default_timeout(300_000)
    layer = LAYERS[number % len(LAYERS)]
    result = {"session": number, "layer": layer, "errors": [], "rank_changes": [], "open_s": None}
    try:
        start = time.perf_counter()
        await page.goto(url)
        await wait_for_rerun(page)
        await page.wait_for_selector(".js-plotly-plot")
        result["open_s"] = time.perf_counter() - start
        expected = BASE_RANK
        slider = page.locator("[data-testid='stSlider']").filter(
            has=page.get_by_text(layer, exact=True)).first.locator("input[type='range']")
        for change in range(changes):
            key = "ArrowLeft" if (number + change) % 3 == 0 else "ArrowRight"  # each session its own path
            expected += -1 if key == "ArrowLeft" else 1
            await slider.focus()
            start = time.perf_counter()
            await slider.press(key)
            await wait_for_rerun(page)
            result["rank_changes"].append(time.perf_counter() - start)
        limit = page.locator("[data-testid='stNumberInput']").filter(has_text="Validation examples").locator("input")
        await limit.fill("16")
        await limit.press("Enter")
        await wait_for_rerun(page)
        await page.get_by_role("button", name="Evaluate SVD and FWSVD").click()
        await wait_for_rerun(page)
        await page.wait_for_selector(".js-plotly-plot >> text=at the current ranks")
        shown = await slider_values(page)
        result["ranks_own"] = (shown[layer] == str(expected)
                               and all(value == str(BASE_RANK) for label, value in shown.items()
                                       if label in LAYERS and label != layer))
        if not result["ranks_own"]:
            result["errors"].append(f"ranks shown {shown}, expected {layer} at {expected}, the others at "
                                    f"{BASE_RANK}")
        result["errors"] += await problems(page)
    except Exception as error:  # a step that timed out or failed counts as an error of this session
        result["errors"].append(f"{type(error).__name__}: {str(error)[:300]}")
        result.setdefault("ranks_own", False)
    finally:
        await context.close()
    return result


async def run_sessions(url: str, sessions: int, changes: int) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            return await asyncio.gather(*(session(browser, url, number, changes) for number in range(sessions)))
        finally:
            await browser.close()


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--changes", type=int, default=5, help="rank changes per session")
    parser.add_argument("--write", action="store_true", help="write docs/BENCH_LOAD.md")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"no Chromium at {CHROMIUM}")

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        env = prepare_app_environment(root)
        with streamlit_server(env, root / "streamlit.log") as url:
            start = time.perf_counter()
            results = asyncio.run(run_sessions(url, args.sessions, args.changes))
            wall = time.perf_counter() - start
        log_errors = [line for line in (root / "streamlit.log").read_text(errors="replace").splitlines()
                      if "Traceback" in line or "ImportError" in line]

    changes = [seconds for result in results for seconds in result["rank_changes"]]
    errors = sum(len(result["errors"]) for result in results) + len(log_errors)
    own = sum(bool(result.get("ranks_own")) for result in results)
    opens = [result["open_s"] for result in results if result["open_s"] is not None]
    lines = [
        f"sessions at once: {args.sessions} (one Chromium, one context each), {args.changes} rank changes and one "
        f"evaluation (SVD and FWSVD, 16 examples) each; wall time {wall:.1f} s",
        f"errors: {errors} (tracebacks, error boxes, failed steps; server log tracebacks: {len(log_errors)})",
        f"sessions whose ranks are their own at the end: {own} of {args.sessions}",
        f"rank change, key press to end of rerun, over {len(changes)} changes: p50 {percentile(changes, 0.5):.2f} s, "
        f"p95 {percentile(changes, 0.95):.2f} s" if changes else "rank changes: none completed",
        f"first open (page load to first full draw): median {statistics.median(opens):.1f} s, max "
        f"{max(opens):.1f} s" if opens else "opens: none completed",
    ]
    for result in results:
        for error in result["errors"]:
            lines.append(f"session {result['session']}: {error}")
    lines += [f"server log: {line}" for line in log_errors[:10]]
    print("\n".join(lines))
    if args.write:
        command = "python bench/bench_load.py" + (f" --sessions {args.sessions}" if args.sessions != 8 else "") \
            + (f" --changes {args.changes}" if args.changes != 5 else "") + " --write"
        (ROOT / "docs" / "BENCH_LOAD.md").write_text(
            "# Load: several browser sessions at once on one server\n\n"
            f"`{command}` (machine: {platform.machine()}, {platform.python_version()}; a shared 2-core CPU: the "
            "times include the 8 Chromium sessions' own work and vary from run to run)\n\n"
            "A freshly started `streamlit run` of the dashboard on 127.0.0.1, on the tiny test app (a random "
            "2-block BERT and a CSV task, see tests/app_support.py). Every session opens the rank explorer at the "
            "same moment, moves its own layer's slider by keyboard, and evaluates SVD and FWSVD; at the end its "
            "sliders must show its own ranks and every other layer at the default.\n\n"
            + "\n".join(f"- {line}" for line in lines) + "\n")


if __name__ == "__main__":
    main()

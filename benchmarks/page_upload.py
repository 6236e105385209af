"""Benchmark the shopper's page on a phone's network: bytes sent and seconds from choosing a 12 MP photo to seeing
results, with the page as it is and as it was (another commit's app.js, served in its place), in Chromium with
DevTools' network throttling (`Network.emulateNetworkConditions`).

The photo is `phone_photos.phone_photo` of a catalog photo of the index (12 MP, 3 to 5 MB, stored sideways with
EXIF orientation 6). The time runs in the page, from the file input's change event to the status line saying how
many products were found (a MutationObserver), so Playwright's own round trips are not in it; bytes are those of
the photo the page put in its request. Each profile and page alternate, round after round.

    python -m benchmarks.page_upload --index DIR [--before 41dc0d0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import ROOT, free_port, start_gunicorn, stop
from benchmarks.phone_photos import phone_photo
from runtime import artifacts
from runtime.items import read_items
from runtime.layout import ITEMS_FILE

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
# name -> (round-trip latency ms, download bytes/s, upload bytes/s). "3G" is DevTools' "Fast 3G" preset (150 ms x
# 3.75, 1.6 Mbit/s and 750 kbit/s x 0.9); "4G" is a modest 4G link.
PROFILES = {"3G": (562.5, 1.6e6 * 0.9 / 8, 750e3 * 0.9 / 8), "4G": (150.0, 9e6 / 8, 1.5e6 / 8)}
# Kept in the page from its first script on: when the photo was chosen, when results were announced, what was sent.
PROBE = """
window.probe = {chosen: null, shown: null, sent: 0};
document.addEventListener("change", (e) => { if (e.target.id === "file") window.probe.chosen = performance.now(); },
                          true);
const pageFetch = window.fetch;
window.fetch = (url, options) => {
  if (options && options.body instanceof FormData && options.body.get("image")) {
    window.probe.sent = options.body.get("image").size;
  }
  return pageFetch(url, options);
};
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  new MutationObserver(() => {
    if (window.probe.chosen !== null && window.probe.shown === null && /similar products/.test(status.textContent)) {
      window.probe.shown = performance.now();
    }
  }).observe(status, {childList: true, characterData: true, subtree: true});
});
"""


def one_search(browser, base: str, photo: Path, profile: tuple[float, float, float], script: str | None) -> tuple:
    """Open the page on a throttled link, choose the photo, wait for results; return (seconds, bytes sent)."""
    page = browser.new_page(viewport={"width": 412, "height": 915}, has_touch=True, is_mobile=True)
    try:
        if script is not None:
            page.route("**/static/app.js", lambda route: route.fulfill(body=script,
                                                                       content_type="text/javascript"))
        page.add_init_script(PROBE)
        page.goto(base + "/", wait_until="networkidle")
        cdp = page.context.new_cdp_session(page)
        latency, down, up = profile
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": latency,
                                                      "downloadThroughput": down, "uploadThroughput": up})
        page.set_input_files("#file", str(photo))
        page.wait_for_function("window.probe.shown !== null", timeout=300_000)
        probe = page.evaluate("window.probe")
        return (probe["shown"] - probe["chosen"]) / 1000, int(probe["sent"])
    finally:
        page.close()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True, help="an index folder (or a data dir)")
    parser.add_argument("--before", default="41dc0d0", help="the commit whose app.js is 'before' (default 41dc0d0)")
    parser.add_argument("--rounds", type=int, default=2, help="searches per profile and page (default 2)")
    args = parser.parse_args(argv)
    folder = artifacts.resolve_index(args.index)
    items = read_items(folder / ITEMS_FILE)
    old_script = subprocess.run(["git", "show", f"{args.before}:service/static/app.js"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    pages = {"now": None, f"before ({args.before})": old_script}
    results: dict[tuple[str, str], list[tuple[float, int]]] = {(p, v): [] for p in PROFILES for v in pages}
    with tempfile.TemporaryDirectory() as scratch:
        photo = Path(scratch) / "IMG_0001.jpg"
        photo.write_bytes(phone_photo(Image.open(folder / items[len(items) // 2]["thumbnail"])))
        port = free_port()
        server, _ = start_gunicorn(folder, port, 2, Path(scratch) / "cache")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
                try:
                    one_search(browser, f"http://127.0.0.1:{port}", photo, (0, -1, -1), None)  # warm-up
                    for round_ in range(args.rounds):
                        order = [(p_, v) for p_ in PROFILES for v in pages]
                        for profile, variant in order if round_ % 2 == 0 else order[::-1]:
                            results[(profile, variant)].append(one_search(
                                browser, f"http://127.0.0.1:{port}", photo, PROFILES[profile], pages[variant]))
                finally:
                    browser.close()
        finally:
            stop(server)
        size = photo.stat().st_size

    print(f"\npage_upload: a 12 MP photo of {size / 2**20:.1f} MB, index {folder.name}, {args.rounds} rounds")
    print(f"{'link':4s} {'page':22s} {'bytes sent':>12s} {'seconds, median':>16s} {'each':>20s}")
    for (profile, variant), runs in results.items():
        seconds = [s for s, _ in runs]
        print(f"{profile:4s} {variant:22s} {runs[0][1]:12,d} {np.median(seconds):16.2f} "
              f"{' '.join(f'{s:.2f}' for s in seconds):>20s}")


if __name__ == "__main__":
    main()

"""A screenshot of a page of the results site (make site: the index the README shows), taken by Debian's
chromium, headless, through Selenium, once the page's charts are drawn.

    python scripts/site_screenshot.py site/index.html results/site-index.png [--width 1300 --height 1000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1300)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args(argv)
    if not args.page.is_file():
        raise SystemExit(f"{args.page}: no such page (make site builds it)")
    driver = shutil.which("chromedriver")
    if not (shutil.which("chromium") and driver):
        raise SystemExit("chromium and chromedriver are not installed (make browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        f"--window-size={args.width},{args.height}",
    ):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        browser.get(args.page.resolve().as_uri())
        for _ in range(50):
            charts = browser.find_elements(By.CSS_SELECTOR, ".chart")
            if all(c.find_elements(By.CSS_SELECTOR, "svg, canvas") for c in charts):
                break
            time.sleep(0.1)
        args.png.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(args.png))
    finally:
        browser.quit()
    print(f"{args.png}: {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

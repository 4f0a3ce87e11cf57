"""The dashboard's pages in a real headless browser (Debian's chromium through Selenium and chromedriver):
how long each takes to draw its data, what error it shows, a screenshot. The browser test and the
dashboard benchmark use it; it needs ``chromium`` and ``chromium-driver`` (``scripts/setup.sh``)."""

from __future__ import annotations

import shutil
import time

#: Elements each page draws once its data is there (Streamlit's test ids).
EXPECTED = {"at-risk": ["stMetric", "stDataFrame"], "customer": ["stMetric", "stVegaLiteChart"],
            "model": ["stMetric", "stDataFrame", "stImage"], "pipeline": ["stMetric"]}
PAGES = list(EXPECTED)
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def chromium(width: int = 1440, height: int = 900):
    """A headless chromium driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def rendered(driver, page: str) -> bool:
    """The page's script has run to its end and its data elements are drawn."""
    from selenium.webdriver.common.by import By

    if any(not driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{t}"]') for t in EXPECTED[page]):
        return False
    running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
    return not any("Running" in e.text for e in running)


def load(driver, base_url: str, page: str, timeout_s: float = 30.0) -> float:
    """Open ``page``; seconds until it has drawn its data (TimeoutError past ``timeout_s``)."""
    t0 = time.perf_counter()
    driver.get(f"{base_url}/?page={page}")
    while not rendered(driver, page):
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"page {page} not drawn in {timeout_s:.0f} s")
        time.sleep(0.05)
    return time.perf_counter() - t0


def errors(driver) -> list[str]:
    """The text of every exception or error element on the page."""
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ERRORS)]


def heading(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "h2").text


def screenshot(driver, path, width: int = 1440) -> None:
    """The whole page (the window grown to the content's height for the shot)."""
    height = driver.execute_script(
        'return document.querySelector(\'[data-testid="stMainBlockContainer"]\').scrollHeight')
    size = driver.get_window_size()
    driver.set_window_size(width, max(900, min(int(height) + 120, 4000)))
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])

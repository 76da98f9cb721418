"""The web page in a real browser: headless Chromium from Debian's packages, driven by selenium.

Generates from the page and checks that the images and the evidence appear, captions an uploaded image, searches and adds to the memory,
shows an API error to the person, and saves a screenshot (to $RAMM_TEST_ARTIFACTS, else the test's tmp dir).
"""
import os
from pathlib import Path

import pytest

from ramm.corpus.document import encode_png
from serve_helpers import LiveServer, make_app

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def browser():
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    if not CHROMIUM.exists() or not DRIVER.exists():
        pytest.skip(f"Chromium is absent ({CHROMIUM}, {DRIVER}): apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1300,1400"):
        options.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(DRIVER)), options=options)


def test_the_page_generates_shows_evidence_captions_and_reports_errors(facade, tmp_path):
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    upload = tmp_path / "red.png"
    pixels = np.full((16, 16, 3), 255, np.uint8)
    pixels[3:-3, 3:-3] = (220, 30, 30)
    upload.write_bytes(encode_png(pixels))
    driver = browser()
    try:
        with LiveServer(make_app(facade)) as server:
            wait = WebDriverWait(driver, 30)
            driver.get(server.url + "/")
            driver.find_element(By.ID, "caption").send_keys("a emoji: red square")
            driver.find_element(By.ID, "n").clear()
            driver.find_element(By.ID, "n").send_keys("3")
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#images img")) == 3)
            evidence = driver.find_elements(By.CSS_SELECTOR, "#image-evidence .card")
            assert len(evidence) == 2 and all(e.find_element(By.TAG_NAME, "img") for e in evidence)
            assert "square" in evidence[0].text and "sim" in evidence[0].text
            assert all(img.get_attribute("naturalWidth") == "16"
                       for img in driver.find_elements(By.CSS_SELECTOR, "#images img"))

            driver.find_element(By.ID, "caption-file").send_keys(str(upload))
            driver.find_element(By.ID, "caption-go").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#captions li")) == 4)
            assert driver.find_elements(By.CSS_SELECTOR, "#caption-evidence .card")

            driver.find_element(By.ID, "query").send_keys("b emoji: blue square")
            driver.find_element(By.ID, "search-go").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-results .card")) == 5)
            driver.find_element(By.ID, "doc-text").send_keys("browser emoji: teal kite")
            driver.find_element(By.ID, "doc-image").send_keys(str(upload))
            driver.find_element(By.ID, "add-go").click()
            wait.until(EC.text_to_be_present_in_element((By.ID, "add-result"), "added 1"))
            shot = Path(os.environ.get("RAMM_TEST_ARTIFACTS", tmp_path)) / "serve_page.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0

            # an API error reaches the person: the page's own n limit bypassed, the API's 422 shown
            driver.execute_script("document.getElementById('n').removeAttribute('max');"
                                  "document.getElementById('n').value = '99';")
            driver.find_element(By.ID, "generate").click()
            wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "422"))
            assert "n:" in driver.find_element(By.ID, "error").text
    finally:
        driver.quit()

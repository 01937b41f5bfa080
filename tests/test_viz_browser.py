"""The attention explorer in a real browser: headless Chromium, driven by Selenium.

The test opens the page from `qkv attention --out FILE.html`, selects a layer and a head,
hovers a query token and reads back what the page highlights, which must be the model's own
weights; then it saves a screenshot. It needs Debian's `chromium` and `chromium-driver`
(`.ci/run` installs them). Without them it is skipped, except in CI (the CI variable set),
where it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from qkv.checkpoint import load_checkpoint
from qkv.viz.maps import gpt_attention_maps

CHROMIUM = os.environ.get("QKV_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("QKV_CHROMEDRIVER", "/usr/bin/chromedriver")
TEXT = "To be, or not"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,800",
]


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} is missing (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is missing (pip install -e ".[test]")'
    return None


@pytest.fixture
def browser(tmp_path: Path):
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(f"no headless browser: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_hovering_a_token_highlights_the_models_weights(browser, cli, trained_run, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = tmp_path / "attn.html"
    result = cli("attention", "--checkpoint", trained_run.run_dir, "--text", TEXT, "--out", page)
    assert result.code == 0, result.err
    model, tokenizer, _ = load_checkpoint(trained_run.run_dir)
    (attention,) = gpt_attention_maps(model, tokenizer, TEXT)
    layer, head, query = attention.n_layer - 1, attention.n_head - 1, 9

    browser.get(page.as_uri())
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
    Select(browser.find_element(By.ID, "layer-select")).select_by_value(str(layer))
    Select(browser.find_element(By.ID, "head-select")).select_by_value(str(head))
    token = browser.find_element(By.CSS_SELECTOR, f'.token.query[data-index="{query}"]')
    ActionChains(browser).move_to_element(token).perform()

    status = browser.find_element(By.ID, "status").text
    assert status == f'self-attention, layer {layer}, head {head} | query {query} "{TEXT[query]}"'
    keys = browser.find_elements(By.CSS_SELECTOR, ".token.key")
    shown = np.array([float(k.get_attribute("data-weight")) for k in keys])
    np.testing.assert_allclose(shown, attention.weights[layer, head, query], atol=1e-5)
    assert shown.sum() == pytest.approx(1.0, abs=1e-4)
    assert (shown[query + 1 :] == 0).all()  # the future gets nothing, on the page too
    lines = browser.find_elements(By.CSS_SELECTOR, "#lines line")
    assert len(lines) == np.count_nonzero(attention.weights[layer, head, query] > 0.005)
    accessor = browser.execute_script("return JSON.stringify(window.qkvExplorer.highlighted())")
    np.testing.assert_allclose(json.loads(accessor)[0], shown)

    # all heads at once: every head's weights for the same query, one colour each
    Select(browser.find_element(By.ID, "head-select")).select_by_value("all")
    every = [json.loads(k.get_attribute("data-weights")) for k in keys]
    expected = attention.weights[layer, :, query].T  # (T_k, H)
    np.testing.assert_allclose(np.array(every), expected, atol=1e-5)

    screenshot = tmp_path / "explorer.png"
    assert browser.save_screenshot(str(screenshot))
    width, height = struct.unpack(">II", screenshot.read_bytes()[16:24])
    assert (width, height) == tuple(browser.execute_script("return [innerWidth, innerHeight]"))


def test_clicking_a_query_shows_its_computation_with_the_models_numbers(
    browser, cli, trained_run, tmp_path
):
    """The step view: q_i . k_j for every key, the scaling, the mask, the softmax and the
    weighted values, computed in the page from the model's q, k, v, equal the model's."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from qkv.viz.explain import checkpoint_attention_steps

    page = tmp_path / "steps.html"
    result = cli("attention", "--checkpoint", trained_run.run_dir, "--text", TEXT, "--out", page)
    assert result.code == 0, result.err
    _, steps = checkpoint_attention_steps(trained_run.run_dir, TEXT)
    layer, head, query = 0, 1, 9
    expected = steps["self-attention"][layer][head]

    browser.get(page.as_uri())
    assert browser.find_element(By.ID, "steps").get_attribute("hidden") is not None
    Select(browser.find_element(By.ID, "head-select")).select_by_value(str(head))
    browser.find_element(By.CSS_SELECTOR, f'.token.query[data-index="{query}"]').click()

    shown = browser.execute_script("return window.qkvExplorer.steps()")
    assert shown["query"] == query
    np.testing.assert_allclose(shown["q"], expected.q[query], atol=1e-5)
    np.testing.assert_allclose(shown["scores"], expected.scores[query], atol=1e-4)
    np.testing.assert_allclose(shown["scaled"], expected.scaled[query], atol=1e-4)
    assert shown["scale"] == pytest.approx(1 / np.sqrt(expected.head_size))
    assert shown["visible"] == expected.mask[query].tolist()
    np.testing.assert_allclose(shown["weights"], expected.weights[query], atol=1e-5)
    np.testing.assert_allclose(shown["out"], expected.out[query], atol=1e-4)

    rows = browser.find_elements(By.CSS_SELECTOR, "#steps-table tr.key-step")
    assert len(rows) == len(TEXT)
    for j, row in enumerate(rows):
        cells = row.find_elements(By.TAG_NAME, "td")
        assert cells[5].text == ("visible" if j <= query else "-inf")
        weight = float(cells[6].get_attribute("data-value"))
        assert weight == pytest.approx(float(expected.weights[query, j]), abs=1e-5)
    title = browser.find_element(By.ID, "steps-title").text
    assert (
        title == f'How query {query} "{TEXT[query]}" weighs the keys: self-attention, '
        f"layer {layer}, head {head}"
    )

    # all heads at once has no single computation to show
    Select(browser.find_element(By.ID, "head-select")).select_by_value("all")
    assert browser.find_element(By.ID, "steps").get_attribute("hidden") is not None


def test_the_over_training_slider_shows_each_recorded_steps_weights(
    browser, cli, trained_run, tmp_path
):
    """`qkv attention --over-training`: moving the slider (arrow keys) shows the probe record
    of that step, its heatmaps' weights and the head statistics under each of them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from qkv.viz.head_stats import head_stats
    from qkv.viz.probe import read_records

    page = tmp_path / "heads.html"
    result = cli("attention", "--over-training", trained_run.run_dir, "--out", page)
    assert result.code == 0, result.err
    records = read_records(trained_run.run_dir)
    assert len(records) >= 2

    browser.get(page.as_uri())
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
    slider = browser.find_element(By.ID, "step-slider")
    for n, record in enumerate(records):
        if n:
            slider.send_keys(Keys.ARROW_RIGHT)
        shown = browser.execute_script("return window.qkvOverTraining.shown()")
        assert shown["step"] == record.step
        weights = record.maps[0].weights  # (L, H, T, T)
        np.testing.assert_allclose(np.array(shown["weights"]), weights, atol=1e-3)
        label = browser.find_element(By.ID, "step-label").text
        assert label == f"step {record.step} ({n + 1} of {len(records)})"
        cells = browser.find_elements(By.CSS_SELECTOR, "#grid .cell")
        assert len(cells) == weights.shape[0] * weights.shape[1]
        entropy = head_stats(weights, record.maps[0].keys)["entropy"]
        for cell in cells:
            layer, head = (
                int(cell.get_attribute("data-layer")),
                int(cell.get_attribute("data-head")),
            )
            caption = cell.find_element(By.CLASS_NAME, "stats").text.split()
            assert caption[0] == "H"
            assert float(caption[1]) == pytest.approx(entropy[layer, head], abs=0.0051)

"""The web page at /: its files and headers through Flask, and the page itself in headless
Chromium against real gunicorn serving the shipped models (Debian's chromium and
chromium-driver, driven by Selenium; scripts/test installs them).

The browser tests compare what the page shows with what the API returns, pixel for pixel:
each image is decoded by the browser itself (drawn on a canvas) and checked against
``/generate`` or ``/interpolate`` as fetched here and decoded by Pillow.

``PAGE_SCREENSHOT=docs/images/page.png`` also writes the screenshot the last test takes there
(the README's picture).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from flask.testing import FlaskClient
from helpers.server import ROOT, Server
from PIL import Image

from serve.app import create_app
from serve.config import VARIABLES
from serve.imaging import GRID_PADDING, grid_shape
from serve.page import CONTENT_SECURITY_POLICY, FILES, STATIC_DIR

WAIT = 60  # seconds a condition may take to come true: a bound on a failure, not a timing
TOKEN = "page-test-token-0123456789"
FASHION, MNIST = "fashion-mnist-dcgan", "mnist-dcgan"


# --- The files, through Flask ------------------------------------------------------------


@pytest.mark.parametrize("path", list(FILES))
def test_files_are_served_with_their_type_and_revalidated(client: FlaskClient, path: str) -> None:
    name, content_type = FILES[path]
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.data == (STATIC_DIR / name).read_bytes()
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    etag = response.headers["ETag"]
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag
    assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    head = client.head(path)
    assert head.status_code == 200 and head.data == b""


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for name, _ in FILES.values():
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"https?:|@import|(?<![\w.])url\(|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), name
        for link in re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", text):
            assert link.startswith(("/", "#", "data:")), (name, link)
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'none'"
    assert {policy[k] for k in ("script-src", "style-src", "connect-src")} == {"'self'"}


def test_openapi_documents_the_page(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").json["paths"]
    for path, (_, content_type) in FILES.items():
        assert content_type.split(";")[0] in paths[path]["get"]["responses"]["200"]["content"]


needs_auth = pytest.mark.skipif(
    "GAN_API_TOKEN" not in VARIABLES, reason="this service has no GAN_API_TOKEN setting"
)


@needs_auth
def test_the_page_needs_no_token_when_the_api_does(models_dir: Path) -> None:
    client = create_app(
        {"GAN_MODELS_DIR": str(models_dir), "GAN_RELOAD_INTERVAL": "0", "GAN_API_TOKEN": TOKEN}
    ).test_client()
    for path in FILES:
        assert client.get(path).status_code == 200, path
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


# --- The page in Chromium ----------------------------------------------------------------


def browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver; skips (fails under CI) naming whatever is missing."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -r requirements-dev.txt)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing.append("Chromium (Debian's chromium package)")
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        missing.append("chromedriver (Debian's chromium-driver package)")
    if missing:
        message = "the browser tests need " + ", ".join(missing) + "; scripts/test installs them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert chromium is not None and chromedriver is not None
    return chromium, chromedriver


@dataclass
class Browser:
    """A headless Chromium, the directory its downloads go to, and the service it shows."""

    driver: Any
    downloads: Path
    url: str

    def open(self, fragment: str = "", base: str | None = None) -> None:
        """Load the page afresh (from a blank page, so even a fragment-only change reloads);
        ``base``: a whole link, loaded as it is."""
        self.driver.get("about:blank")
        self.driver.get(base or f"{self.url}/{'#' + fragment if fragment else ''}")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def el(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def wait(self, condition: str, *args: Any) -> Any:
        """Wait until the JavaScript expression ``condition`` is truthy; return its value."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT).until(
            lambda d: d.execute_script(f"return {condition};", *args),
            f"the page never got to: {condition} (error box: {self.error_text()!r})",
        )

    def wait_ready(self, element_id: str, key_part: str = "") -> None:
        """Wait until a panel (grid, detail, strip) shows a response whose key contains
        ``key_part`` and all of its images are decoded."""
        self.wait(
            "(() => { const e = document.getElementById(arguments[0]);"
            " return e.dataset.status === 'ready' && (e.dataset.key || '').includes(arguments[1])"
            " && [...e.querySelectorAll('img')].every((i) => i.complete && i.naturalWidth > 0); })()",
            element_id,
            key_part,
        )

    def error_text(self) -> str:
        return self.driver.execute_script(
            "const e = document.getElementById('error'); return e && !e.hidden ? e.textContent : '';"
        )

    def pixels(self, css: str) -> list[np.ndarray]:
        """The images matching ``css``, decoded by the browser: uint8 gray [H, W] each."""
        encoded = self.js(
            "return [...document.querySelectorAll(arguments[0])].map((img) => {"
            " const c = document.createElement('canvas');"
            " c.width = img.naturalWidth; c.height = img.naturalHeight;"
            " const g = c.getContext('2d'); g.drawImage(img, 0, 0);"
            " const d = g.getImageData(0, 0, c.width, c.height).data;"
            " let s = ''; for (let i = 0; i < d.length; i++) s += String.fromCharCode(d[i]);"
            " return [c.height, c.width, btoa(s)]; });",
            css,
        )
        out = []
        for height, width, data in encoded:
            rgba = np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(height, width, 4)
            assert (rgba[..., 3] == 255).all()  # opaque
            assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()
            out.append(rgba[..., 0].copy())
        return out

    def select(self, element_id: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.el(element_id)).select_by_value(value)

    def type_into(self, element_id: str, text: str, enter: bool = True) -> None:
        from selenium.webdriver.common.keys import Keys

        field = self.el(element_id)
        field.clear()
        field.send_keys(text, *([Keys.ENTER] if enter else []))


@pytest.fixture(scope="module")
def server(gunicorn: Callable[..., Server]) -> Server:
    """The shipped models (models/), two workers, as scripts/demo serves them."""
    return gunicorn(GAN_WORKERS="2", GAN_ACCESS_LOG="off")


@pytest.fixture(scope="module")
def browser(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium, chromedriver = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root, as CI runs
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        "--no-first-run",
        "--disable-background-networking",  # no update checks or other traffic of its own
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield Browser(driver, downloads, server.url)
    finally:
        driver.quit()


def api_grid(server: Server, **query: Any) -> list[np.ndarray]:
    """The tiles of ``GET /generate``'s PNG grid (the grid rule of docs/serving.md), by Pillow."""
    response = requests.get(f"{server.url}/generate", params=query, timeout=60)
    assert response.status_code == 200, response.text
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    n = int(query.get("n", 1))
    nrow, ncol = grid_shape(n)
    h = (image.shape[0] - GRID_PADDING) // nrow - GRID_PADDING
    w = (image.shape[1] - GRID_PADDING) // ncol - GRID_PADDING
    tiles = []
    for i in range(n):
        top = GRID_PADDING + (i // ncol) * (h + GRID_PADDING)
        left = GRID_PADDING + (i % ncol) * (w + GRID_PADDING)
        tiles.append(image[top : top + h, left : left + w])
    return tiles


def api_frames(server: Server, body: dict[str, Any]) -> list[np.ndarray]:
    """The frames of ``POST /interpolate``, decoded by Pillow."""
    response = requests.post(f"{server.url}/interpolate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in response.json()["images"]]


def assert_same_images(shown: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(shown) == len(expected)
    for i, (a, b) in enumerate(zip(shown, expected, strict=True)):
        assert a.shape == b.shape and np.array_equal(a, b), f"image {i} differs"


def test_page_lists_the_models_and_shows_generates_images(browser: Browser, server: Server) -> None:
    browser.open()
    browser.wait_ready("grid", ":0:64")
    listing = requests.get(f"{server.url}/models", timeout=30).json()
    options = browser.js("return [...document.getElementById('model').options].map((o) => o.value)")
    assert options == [m["name"] for m in listing["models"]] == [FASHION, MNIST]
    assert browser.el("model").get_attribute("value") == listing["default"]
    default_version = listing["models"][0]["default_version"]
    assert browser.el("version").get_attribute("value") == str(default_version)
    assert not browser.el("token-form").is_displayed()  # no auth: nothing extra
    assert browser.error_text() == ""
    seeds = browser.js("return [...document.querySelectorAll('#grid .tile')].map((t) => t.dataset.seed)")
    assert seeds == [str(s) for s in range(64)]  # 8 x 8 by default
    shown = browser.pixels("#grid .tile img")
    assert_same_images(shown, api_grid(server, model=FASHION, version=default_version, seed=0, n=64))


def test_a_new_seed_shows_the_images_of_its_seeds(browser: Browser, server: Server) -> None:
    browser.open()
    browser.wait_ready("grid", ":0:64")
    before = browser.pixels("#grid .tile img")
    browser.type_into("seed", "1000")
    browser.wait_ready("grid", ":1000:64")
    after = browser.pixels("#grid .tile img")
    assert not any(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert_same_images(after, api_grid(server, model=FASHION, seed=1000, n=64))

    browser.el("random").click()
    seed = browser.wait("(() => { const v = document.getElementById('seed').value;"
                        " return v !== '1000' && v; })()")
    browser.wait_ready("grid", f":{seed}:64")
    assert f"seed={seed}" in browser.js("return location.hash")
    assert_same_images(browser.pixels("#grid .tile img"), api_grid(server, model=FASHION, seed=seed, n=64))


def test_a_class_of_the_conditional_model(browser: Browser, server: Server) -> None:
    browser.open()
    browser.wait_ready("grid", ":0:64")
    browser.select("model", MNIST)
    browser.wait_ready("grid", f"{MNIST}:7:any:0:64")
    assert browser.el("label-field").is_displayed()
    names = browser.js("return [...document.getElementById('label').options].map((o) => o.text)")
    assert names == ["any", *[str(d) for d in range(10)]]
    browser.select("label", "7")
    browser.wait_ready("grid", f"{MNIST}:7:7:0:64")
    assert "class 7" in browser.el("grid-title").text
    sevens = api_grid(server, model=MNIST, version=7, seed=0, n=64, labels=7)
    assert_same_images(browser.pixels("#grid .tile img"), sevens)
    assert not np.array_equal(sevens[3], api_grid(server, model=MNIST, version=7, seed=3)[0])

    browser.js("document.querySelector('#grid .tile[data-seed=\"12\"]').click()")
    browser.wait_ready("detail", f"{MNIST}:7:7:12")
    assert browser.el("detail-seed").text == "12"
    assert browser.el("detail-class").text == "class 7"
    assert_same_images(browser.pixels("#detail-image"), [sevens[12]])


def test_an_interpolation_starts_and_ends_at_its_seeds(browser: Browser, server: Server) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.open(f"model={MNIST}&version=7&label=3")
    browser.wait_ready("grid", f"{MNIST}:7:3:0:64")
    browser.type_into("walk-a", "3", enter=False)
    browser.type_into("walk-b", "10", enter=False)
    browser.type_into("walk-steps", "12", enter=False)
    browser.select("walk-method", "slerp")
    browser.el("walk-form").submit()
    browser.wait_ready("strip", f"{MNIST}:7:3:3:10:12:slerp")
    frames = browser.pixels("#strip img")
    assert len(frames) == 12
    ends = api_grid(server, model=MNIST, version=7, seed=3, n=8, labels=3)
    assert_same_images([frames[0], frames[-1]], [ends[0], ends[7]])  # seeds 3 and 10
    body = {"model": MNIST, "version": 7, "seeds": [3, 10], "steps": 12, "method": "slerp", "labels": 3}
    assert_same_images(frames, api_frames(server, body))
    assert not np.array_equal(frames[5], frames[0])

    browser.el("slider").send_keys(Keys.END)  # the slider, as a person drags it
    browser.wait("document.getElementById('frame-image').dataset.index === '11'")
    assert_same_images(browser.pixels("#frame-image"), [frames[-1]])
    browser.el("slider").send_keys(Keys.HOME, Keys.RIGHT, Keys.RIGHT)
    browser.wait("document.getElementById('frame-image').dataset.index === '2'")
    assert_same_images(browser.pixels("#frame-image"), [frames[2]])
    assert "Frame 3 of 12" in browser.el("frame-caption").text


def test_two_clicked_tiles_give_the_walk_between_them(browser: Browser, server: Server) -> None:
    browser.open()
    browser.wait_ready("grid", ":0:64")
    browser.el("pick").click()
    browser.js("document.querySelector('#grid .tile[data-seed=\"2\"]').click()")
    browser.js("document.querySelector('#grid .tile[data-seed=\"5\"]').click()")
    browser.wait_ready("strip", ":2:5:10:slerp")
    assert browser.el("walk-a").get_attribute("value") == "2"
    assert browser.el("walk-b").get_attribute("value") == "5"
    frames = browser.pixels("#strip img")
    # No class picked: each end is its seed's own image (class s % 10), as /generate draws it.
    tiles = api_grid(server, model=FASHION, seed=2, n=4)
    assert_same_images([frames[0], frames[-1]], [tiles[0], tiles[3]])
    assert not browser.el("detail").is_displayed()  # picking opened no tile


def test_a_shared_link_reopens_the_view(browser: Browser, server: Server) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.open()
    browser.wait_ready("grid", ":0:64")
    browser.select("model", MNIST)
    browser.wait_ready("grid", f"{MNIST}:7:any:0:64")
    browser.select("label", "3")
    browser.type_into("seed", "40")
    browser.wait_ready("grid", f"{MNIST}:7:3:40:64")
    browser.js("document.querySelector('#grid .tile[data-seed=\"45\"]').click()")
    browser.wait_ready("detail", f"{MNIST}:7:3:45")
    browser.el("as-a").click()
    browser.type_into("walk-b", "50", enter=False)
    browser.type_into("walk-steps", "8", enter=False)
    browser.select("walk-method", "lerp")
    browser.el("walk-form").submit()
    browser.wait_ready("strip", f"{MNIST}:7:3:45:50:8:lerp")
    browser.el("slider").send_keys(Keys.RIGHT, Keys.RIGHT, Keys.RIGHT)
    browser.wait("document.getElementById('frame-image').dataset.index === '3'")
    browser.el("copy").click()
    link = browser.el("share").get_attribute("value")
    assert link.startswith(f"{server.url}/#")

    browser.open(base=link)  # a fresh load of the link alone
    assert browser.driver.current_url == link
    browser.wait_ready("grid", f"{MNIST}:7:3:40:64")
    browser.wait_ready("detail", f"{MNIST}:7:3:45")
    browser.wait_ready("strip", f"{MNIST}:7:3:45:50:8:lerp")
    browser.wait("document.getElementById('frame-image').dataset.index === '3'")
    values = {i: browser.el(i).get_attribute("value") for i in ("model", "version", "label", "seed",
                                                                 "walk-a", "walk-b", "walk-method", "slider")}
    assert values == {"model": MNIST, "version": "7", "label": "3", "seed": "40", "walk-a": "45",
                      "walk-b": "50", "walk-method": "lerp", "slider": "3"}
    assert browser.el("detail-seed").text == "45" and browser.el("detail-class").text == "class 3"
    tile = api_grid(server, model=MNIST, version=7, seed=45, labels=3)
    assert_same_images(browser.pixels("#detail-image"), tile)
    body = {"model": MNIST, "version": 7, "seeds": [45, 50], "steps": 8, "method": "lerp", "labels": 3}
    assert_same_images(browser.pixels("#frame-image"), [api_frames(server, body)[3]])


def test_the_model_card_shows_model_json(browser: Browser, server: Server) -> None:
    browser.open(f"model={FASHION}&version=4")
    browser.wait_ready("grid", f"{FASHION}:4:any:0:64")
    browser.wait("document.getElementById('card-grid').naturalWidth > 0")
    meta = next(m for m in requests.get(f"{server.url}/models/{FASHION}", timeout=30).json()["metadata"]
                if m["version"] == 4)
    card = dict(zip(
        browser.js("return [...document.querySelectorAll('#card dt')].map((e) => e.textContent)"),
        browser.js("return [...document.querySelectorAll('#card dd')].map((e) => e.textContent)"),
        strict=True,
    ))
    assert card["Created"] == meta["created"]
    assert card["Dataset"] == f"{meta['dataset']['name']}, {meta['dataset']['size']:,} images"
    assert card["FID"].startswith(f"{meta['metrics']['fid']:.2f} ")
    assert card["Recall"].startswith(f"{meta['metrics']['recall']:.3f} ")
    assert card["Trained with"] == meta["training"]["command"]
    assert card["Classes"] == ", ".join(meta["classes"])
    card_grid = browser.pixels("#card-grid")[0]
    expected = np.asarray(Image.open(io.BytesIO(requests.get(
        f"{server.url}/generate", params={"model": FASHION, "version": 4, "seed": 0, "n": 64}, timeout=60
    ).content)))
    assert np.array_equal(card_grid, expected)


def test_another_version_of_an_unconditional_model(
    browser: Browser, gunicorn: Callable[..., Server], models_dir: Path
) -> None:
    """The shipped models are conditional; the tiny repository's ``tiny`` is not."""
    tiny = gunicorn(GAN_MODELS_DIR=str(models_dir), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny",
                    GAN_ACCESS_LOG="off")
    page = Browser(browser.driver, browser.downloads, tiny.url)
    page.open("model=tiny")
    page.wait_ready("grid", "tiny:2:any:0:64")
    page.select("version", "1")
    page.wait_ready("grid", "tiny:1:any:0:64")
    assert not page.el("label-field").is_displayed()
    page.wait("document.querySelector('#card dd:nth-of-type(4)').textContent.includes('unconditional')")
    assert_same_images(page.pixels("#grid .tile img"), api_grid(tiny, model="tiny", version=1, seed=0, n=64))


def test_download_saves_the_grid_png(browser: Browser, server: Server) -> None:
    browser.open(f"model={MNIST}&version=7&label=5&seed=77&size=6")
    browser.wait_ready("grid", f"{MNIST}:7:5:77:36")
    browser.el("download").click()
    target = browser.downloads / f"{MNIST}-v7-seed77-n36.png"
    from selenium.webdriver.support.ui import WebDriverWait

    # Chromium writes a .crdownload file and renames it to the name once it is complete.
    WebDriverWait(browser.driver, WAIT).until(lambda _: target.exists(), f"no {target.name}")
    expected = requests.get(f"{server.url}/generate", timeout=60,
                            params={"model": MNIST, "version": 7, "seed": 77, "n": 36, "labels": 5})
    assert target.read_bytes() == expected.content


def test_api_errors_are_shown_readably(browser: Browser) -> None:
    browser.open()
    browser.wait_ready("grid", ":0:64")
    browser.type_into("seed", str(2**63 - 1))  # seed + 63 is past the last seed
    browser.wait("document.getElementById('grid').dataset.status === 'error'")
    text = browser.error_text()
    assert text.startswith("Samples: 422 seed_out_of_range: ") and "2**63 - 1" in text
    browser.type_into("seed", "12x")
    browser.wait("document.getElementById('error').textContent.includes('not an integer')")
    browser.type_into("seed", "5")
    browser.wait_ready("grid", ":5:64")
    assert browser.error_text() == ""


def test_a_phone_sized_screen_needs_no_sideways_scrolling(browser: Browser) -> None:
    browser.driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        browser.open(f"model={MNIST}&version=7&open=3&a=1&b=2&steps=16")
        browser.wait_ready("grid", f"{MNIST}:7:any:0:64")
        browser.wait_ready("strip", ":1:2:16:slerp")
        widths = browser.js(
            "return [document.documentElement.scrollWidth, window.innerWidth,"
            " document.getElementById('grid').getBoundingClientRect().right,"
            " document.getElementById('strip').scrollWidth, document.getElementById('strip').clientWidth]"
        )
        page, viewport, grid_right, strip_scroll, strip_client = widths
        assert viewport == 390 and page <= viewport and grid_right <= viewport
        assert strip_scroll <= strip_client  # all 16 frames fit
    finally:
        browser.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@needs_auth
def test_a_token_field_appears_only_when_the_api_answers_401(
    browser: Browser, gunicorn: Callable[..., Server]
) -> None:
    secured = gunicorn(GAN_WORKERS="1", GAN_ACCESS_LOG="off", GAN_API_TOKEN=TOKEN)
    browser.open(base=secured.url)
    browser.wait("document.getElementById('token-form').hidden === false")
    assert "401 missing_token" in browser.error_text()
    browser.type_into("token", "wrong-token-0123456789")
    browser.wait("document.getElementById('error').textContent.includes('401 invalid_token')")
    browser.type_into("token", TOKEN)
    browser.wait_ready("grid", ":0:64")
    assert not browser.el("token-form").is_displayed() and browser.error_text() == ""
    assert TOKEN not in browser.js("return location.href")  # the token stays out of links


def test_screenshot_is_not_blank(browser: Browser, tmp_path: Path) -> None:
    browser.driver.set_window_size(1280, 1240)  # the last test: no other sees this size
    browser.open(f"model={MNIST}&version=7&label=7&seed=0&a=7&b=17&steps=12&method=slerp&frame=5")
    for panel in ("grid", "strip"):
        browser.wait_ready(panel)
    browser.wait("document.getElementById('card-grid').naturalWidth > 0")
    path = tmp_path / "page.png"
    assert browser.driver.save_screenshot(str(path))
    shot = np.asarray(Image.open(path).convert("L"))
    assert shot.shape[1] >= 1000
    assert len(np.unique(shot)) > 64 and shot.std() > 30  # text, controls and digits, not one colour
    rect = browser.js("const r = document.getElementById('grid').getBoundingClientRect();"
                      " return [r.top, r.left, r.bottom, r.right].map(Math.round)")
    grid = shot[rect[0] : rect[2], rect[1] : rect[3]]
    assert (grid < 30).mean() > 0.4 and (grid > 200).mean() > 0.05  # white digits on black
    target = os.environ.get("PAGE_SCREENSHOT")
    if target:
        shutil.copyfile(path, ROOT / target)

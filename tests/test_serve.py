"""digits.serve: the JSON endpoint labels drawings as the model labels the arrays, answers
bad requests with a 4xx JSON error and keeps serving, listens on 127.0.0.1 by default, and
the page works end to end in headless Chromium (a stroke in, a prediction shown)."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import free_port
from PIL import Image

from digits import serve

pytestmark = pytest.mark.slow  # every test serves a trained model


@pytest.fixture(scope="module")
def server(digits_model):
    import uvicorn

    port = free_port()
    app = serve.make_app(digits_model.model, "test model <b>")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def post(url, body: bytes):
    request = urllib.request.Request(f"{url}/api/predict", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_drawing_gets_the_label_the_model_gives_the_array(server, digits_model, mnist):
    digits = mnist.x_test[:8]
    expected = digits_model.model.predict(digits[..., None], verbose=0).argmax(axis=1)
    for digit, label in zip(digits, expected):
        canvas = Image.fromarray(255 - digit).resize((280, 280))  # dark ink on a white pad, as drawn
        status, body = post(server, json.dumps({"image": png_url(canvas)}).encode())
        assert status == 200
        assert body["label"] == label and len(body["probabilities"]) == 10
        assert sum(body["probabilities"]) == pytest.approx(1, abs=1e-3)
        assert body["model_input"].startswith("data:image/png;base64,")


BAD_REQUESTS = {
    "not JSON": (b"{not json", "expected a JSON object"),
    "no image field": (b'{"picture": "x"}', "expected a JSON object"),
    "not base64": (json.dumps({"image": "data:image/png;base64,@@@@"}).encode(), "not valid base64"),
    "an empty image": (json.dumps({"image": "data:image/png;base64,"}).encode(), "the image is empty"),
    "not an image": (json.dumps({"image": base64.b64encode(b"hello there").decode()}).encode(), "not a readable PNG or JPEG"),
    "a blank pad": (json.dumps({"image": png_url(Image.new("L", (280, 280), 255))}).encode(), "no digit found"),
    "a data URL without a comma": (json.dumps({"image": "data:image/png;base64"}).encode(), "has no comma"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_gets_a_400_json_error_and_the_server_keeps_serving(server, case, mnist):
    body, message = BAD_REQUESTS[case]
    status, answer = post(server, body)
    assert status == 400 and message in answer["error"]
    status, _ = post(server, json.dumps({"image": png_url(Image.fromarray(mnist.x_test[0]))}).encode())
    assert status == 200


def test_the_page_is_self_contained_and_escapes_the_model_name(server):
    with urllib.request.urlopen(server, timeout=10) as response:
        page = response.read().decode()
    assert "test model &lt;b&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network


def test_the_command_listens_on_loopback_by_default(digits_model):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "digits.serve", "--model", str(digits_model.path),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    try:
        line = process.stdout.readline()
        assert line.startswith(f"Serving {digits_model.path} on http://127.0.0.1:{port}/")
        for _ in range(50):  # uvicorn binds just after the line
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                break
            except urllib.error.URLError:
                time.sleep(0.2)
        else:
            pytest.fail("the server did not answer")
        assert listening_addresses(port) == ["127.0.0.1"]
    finally:
        process.terminate()
        process.wait(10)


def listening_addresses(port):
    """IPv4 and IPv6 addresses with a socket listening on ``port``, from /proc/net."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                                 if len(address) == 8 else f"ipv6 {address}")
    return found


def test_serving_on_a_busy_port_is_one_line_and_exit_code_2(digits_model, run_command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = run_command(serve.main, ["--model", digits_model.path, "--port", busy.getsockname()[1]])
    assert code == 2 and err.count("\n") == 1 and "choose another --port" in err


def test_drawing_on_the_page_in_chromium_shows_the_prediction(server, chromium, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium
    driver.get(server)
    pad = driver.find_element(By.ID, "pad")
    assert driver.find_element(By.ID, "prediction").text == "–"
    # A "7": the top bar, then the long diagonal (offsets from the pad's centre).
    ActionChains(driver).move_to_element_with_offset(pad, -70, -90).click_and_hold() \
        .move_by_offset(70, 0).move_by_offset(70, 0) \
        .move_by_offset(-30, 60).move_by_offset(-30, 60).move_by_offset(-30, 60).release().perform()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "prediction").text.isdigit()
                                    and d.find_element(By.ID, "seen").get_attribute("src"))
    # The page comes to show what the endpoint says for the pad as drawn (its last stroke's
    # answer may still be on its way: waited for, not slept on).
    drawing = driver.execute_script("return document.getElementById('pad').toDataURL('image/png');")
    status, answer = post(server, json.dumps({"image": drawing}).encode())
    assert status == 200

    def shown_percentages(d):
        return [float(d.find_element(By.ID, f"p-{digit}").text.rstrip("%")) for digit in range(10)]

    WebDriverWait(driver, 30).until(lambda d: all(
        abs(shown - 100 * p) <= 0.05 + 1e-6 for shown, p in zip(shown_percentages(d), answer["probabilities"])))
    percentages = shown_percentages(driver)
    assert int(driver.find_element(By.ID, "prediction").text) == answer["label"] == int(np.argmax(percentages))
    assert sum(percentages) == pytest.approx(100, abs=0.6)
    assert driver.save_screenshot(str(tmp_path / "page.png"))
    assert Image.open(tmp_path / "page.png").size[0] > 500
    driver.find_element(By.ID, "clear").click()
    assert driver.find_element(By.ID, "prediction").text == "–"

"""Tests of the web demo's predictor and JSON API (``cifar_dvc.serve``) on a tiny model built here.

Good input (multipart upload, URL from a loopback server), every bad input (too large, not an
image, decompression bomb, bad JSON, missing field, other schemes, timeouts, internal URLs), and
no stack trace in any answer. ``tiny_model`` is also used by the browser test.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from cifar_dvc import images
from cifar_dvc.custom_set import CustomParams
from cifar_dvc.errors import DataError
from cifar_dvc.modelinfo import ModelInfo, save_info
from cifar_dvc.normalization import NormStats, normalize
from cifar_dvc.serve import app as serve_app
from cifar_dvc.serve.app import create_app
from cifar_dvc.serve.predictor import Prediction, Predictor, Preprocessing
from cifar_dvc.serve.urlfetch import UrlFetcher
from tests.test_serve_fetch import PUBLIC_HOST, PhotoServer, SimulatedInternet, jpeg_bytes

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STATS = NormStats("standardize", (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def build_tiny_model(path: Path, shape: tuple[int, int, int] = (32, 32, 3), name: str = "tiny") -> Path:
    """Save a small untrained CNN at ``path`` (.keras) with its sidecar; weights fixed by a seed."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    keras.Model(inputs, outputs).save(path)
    channels = shape[2]
    stats = STATS if channels == 3 else NormStats("scale", (0.0,), (1.0,))
    save_info(path, ModelInfo(name, "synthetic", CLASSES, shape, stats))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("serve") / "tiny.keras")


@pytest.fixture(scope="module")
def predictor(tiny_model: Path) -> Predictor:
    return Predictor(tiny_model)


@pytest.fixture(scope="module")
def server() -> Iterator[PhotoServer]:
    with PhotoServer(jpeg_bytes(300, 200)) as srv:
        yield srv


MAX_UPLOAD = 256 * 1024


def make_client(predictor: Predictor, **fetch: object) -> FlaskClient:
    fetcher = UrlFetcher(**{"timeout": 10.0, "max_bytes": 200_000, **fetch})  # type: ignore[arg-type]
    return create_app(predictor, fetcher, max_upload_bytes=MAX_UPLOAD).test_client()


@contextlib.contextmanager
def serve_in_thread(app: Flask, max_upload_bytes: int = MAX_UPLOAD) -> Iterator[str]:
    """Serve ``app`` with the command's own waitress setup on 127.0.0.1; yields the base URL."""
    server = serve_app.make_server(app, "127.0.0.1", 0, 2, max_upload_bytes)
    stopping = threading.Event()

    def run() -> None:
        try:
            server.run()
        except (OSError, ValueError):  # close() from this thread's caller ends waitress' select loop
            if not stopping.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stopping.set()
        server.close()
        thread.join(timeout=5)


def http_post(base: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    """POST over a real socket: status, Content-Type and body."""
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        conn.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def multipart_body(data: bytes) -> tuple[bytes, str]:
    boundary = "testboundary7MA4YWxkTrZu0gW"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> FlaskClient:
    return make_client(predictor, allow_private=True)


@pytest.fixture(scope="module")
def impatient_client(predictor: Predictor) -> FlaskClient:
    return make_client(predictor, allow_private=True, timeout=0.5)


@pytest.fixture(scope="module")
def strict_client(predictor: Predictor) -> FlaskClient:
    return make_client(predictor)  # the production setting: internal addresses refused


def upload(client: FlaskClient, data: bytes, name: str = "photo.jpg") -> TestResponse:
    return client.post("/api/predict", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def post_url(client: FlaskClient, url: str) -> TestResponse:
    return client.post("/api/predict", json={"url": url})


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny body: decoding would blow up."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def assert_error(response: TestResponse, status: int, contains: str = "") -> dict:
    """A JSON error answer with ``status``, no traceback, mentioning ``contains``."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text and ".py" not in text
    assert contains.lower() in body["error"].lower()
    return body


# --- predictor -------------------------------------------------------------------------------


def test_predictor_uses_the_custom_stage_code_and_the_compiled_model(predictor: Predictor,
                                                                      tiny_model: Path) -> None:
    import keras

    data = jpeg_bytes(300, 200)
    result = predictor.predict(data)
    photo = images.open_image(data)
    expected_resized = images.to_model_input(photo, 32)
    expected_blurred = images.to_model_input(photo, 32, blur_divisor=75)
    np.testing.assert_array_equal(result.resized, expected_resized)
    np.testing.assert_array_equal(result.blurred, expected_blurred)
    assert result.blur_kernel == images.blur_kernel_size(200, 75) == 3  # the square's side is 200
    # The compiled call gives what the saved model gives on the normalized input.
    model = keras.models.load_model(tiny_model)
    batch = normalize(np.stack([expected_blurred, expected_resized]), STATS)
    probs = model.predict(batch, verbose=0)
    for ranked, row in ((result.top, probs[0]), (result.top_unblurred, probs[1])):
        assert ranked is not None and len(ranked) == 5
        assert [label for label, _ in ranked] == [CLASSES[i] for i in np.argsort(-row)[:5]]
        np.testing.assert_allclose([p for _, p in ranked], np.sort(row)[::-1][:5], rtol=1e-4, atol=1e-6)


def test_small_photo_is_not_blurred(predictor: Predictor) -> None:
    result = predictor.predict(jpeg_bytes(40, 40))  # s = round(40 / 75) = 1: no blur
    assert result.blur_kernel == 1 and result.blurred is None and result.top_unblurred is None
    np.testing.assert_array_equal(result.model_input, result.resized)


def test_blur_can_be_switched_off_and_square_padded(tiny_model: Path) -> None:
    pre = Preprocessing(square="pad", blur_divisor=None)
    result = Predictor(tiny_model, pre).predict(jpeg_bytes(300, 200))
    assert result.blurred is None
    expected = images.to_model_input(images.open_image(jpeg_bytes(300, 200)), 32, square="pad")
    np.testing.assert_array_equal(result.resized, expected)


def test_grayscale_model(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "gray.keras", (28, 28, 1), name="gray")
    result = Predictor(path).predict(jpeg_bytes(300, 300))
    assert result.resized.shape == (28, 28, 1) and result.blurred is not None
    assert len(result.top) == 5


def test_predictor_refuses_a_missing_model_or_a_mismatched_sidecar(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="model file not found"):
        Predictor(tmp_path / "nothing.keras")
    copy = tmp_path / "copy.keras"
    copy.write_bytes(tiny_model.read_bytes())
    save_info(copy, ModelInfo("copy", "synthetic", CLASSES, (28, 28, 3), STATS))
    with pytest.raises(DataError, match="does not match"):
        Predictor(copy)


# --- API: good input -------------------------------------------------------------------------


def test_page_model_and_health(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b"/static/vendor/d3/d3.min.js" in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/static/vendor/d3/d3.min.js").status_code == 200
    assert client.get("/static/vendor/d3/LICENSE").status_code == 200
    assert client.get("/api/health").get_json() == {"status": "ok", "model": "tiny"}
    info = client.get("/api/model").get_json()
    assert info["model"] == "tiny" and info["classes"] == CLASSES and info["image_shape"] == [32, 32, 3]
    assert info["preprocessing"] == {"square": "crop", "resample": "lanczos", "blur_divisor": 75.0}


def test_predict_an_upload(client: FlaskClient, predictor: Predictor) -> None:
    data = jpeg_bytes(300, 200)
    response = upload(client, data)
    assert response.status_code == 200
    body = response.get_json()
    assert list(body)[:2] == ["model", "predictions"]
    assert body["model"] == "tiny"
    expected = predictor.predict(data)
    assert [p["label"] for p in body["predictions"]] == [label for label, _ in expected.top]
    probs = [p["probability"] for p in body["predictions"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
    assert isinstance(body["elapsed_ms"], float) and body["elapsed_ms"] > 0
    assert body["input"] == {"width": 300, "height": 200, "blur_kernel": 3, "blurred": True}
    np.testing.assert_array_equal(decode_data_url(body["images"]["resized"]), expected.resized)
    np.testing.assert_array_equal(decode_data_url(body["images"]["blurred"]), expected.blurred)
    assert len(body["predictions_unblurred"]) == 5
    assert "photo" not in body  # the uploader has the photo already


def test_predict_a_url_from_a_loopback_server(client: FlaskClient, server: PhotoServer,
                                              predictor: Predictor) -> None:
    response = post_url(client, server.url("/redirect/2"))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    expected = predictor.predict(server.photo)
    assert [p["label"] for p in body["predictions"]] == [label for label, _ in expected.top]
    thumb = decode_data_url(body["photo"])
    assert max(thumb.shape[:2]) == 256  # a thumbnail of the fetched 300x200 photo


def test_predict_a_simulated_public_url_without_the_allow_flag(predictor: Predictor,
                                                               server: PhotoServer) -> None:
    net = SimulatedInternet(server)
    fetcher = net.fetcher(timeout=2.0)
    client = create_app(predictor, fetcher).test_client()
    assert post_url(client, f"http://{PUBLIC_HOST}/photo.jpg").status_code == 200
    assert_error(post_url(client, f"http://{PUBLIC_HOST}/go?to=http://127.0.0.1:{server.port}/photo.jpg"),
                 400, "loopback")


def test_the_real_server_answers_and_caps_bodies(predictor: Predictor) -> None:
    app = create_app(predictor, UrlFetcher(), max_upload_bytes=MAX_UPLOAD)
    with serve_in_thread(app) as base:
        status, ctype, body = http_post(base, *multipart_body(jpeg_bytes()))
        assert status == 200 and ctype == "application/json"
        assert len(json.loads(body)["predictions"]) == 5
        # Over the cap: the app's JSON 413 (the body is not parsed).
        status, ctype, body = http_post(base, *multipart_body(b"\0" * (MAX_UPLOAD + 1)))
        assert (status, ctype) == (413, "application/json")
        assert "upload limit" in json.loads(body)["error"]
        # Far over it: waitress answers 413 from the headers alone, before any body is sent.
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: %d\r\n\r\n" % (2 * MAX_UPLOAD + 2 * 1024 * 1024))
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413") and b"Traceback" not in answer


# --- API: bad input --------------------------------------------------------------------------


def test_too_large_upload_is_413(client: FlaskClient) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > MAX_UPLOAD
    assert_error(upload(client, buffer.getvalue(), "big.png"), 413, "upload limit")
    assert_error(client.post("/api/predict", json={"url": "x" * MAX_UPLOAD}), 413)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"%PDF-1.4 not an image at all", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image"),
    (jpeg_bytes()[:200], "truncated"),
])
def test_non_images_are_400(client: FlaskClient, data: bytes, message: str) -> None:
    assert_error(upload(client, data, "x.jpg"), 400, message)


def test_a_decompression_bomb_is_refused_before_decoding(client: FlaskClient) -> None:
    bomb = png_bomb()
    assert len(bomb) < 200
    assert_error(upload(client, bomb, "bomb.png"), 400, "decompression bomb")


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"data": b"{not json", "content_type": "application/json"}, 400, "not valid JSON"),
    ({"json": ["http://example.com/a.jpg"]}, 400, "JSON object"),
    ({"json": {"link": "http://example.com/a.jpg"}}, 400, '{"url"'),
    ({"json": {"url": 42}}, 400, '{"url"'),
    ({"json": {"url": ""}}, 400, '{"url"'),
    ({"data": {"photo": (io.BytesIO(b"x"), "a.jpg")}, "content_type": "multipart/form-data"}, 400,
     "field named 'image'"),
    ({"data": b"raw bytes", "content_type": "image/jpeg"}, 415, "multipart/form-data"),
    ({}, 415, "multipart/form-data"),
])
def test_malformed_requests(client: FlaskClient, kwargs: dict, status: int, message: str) -> None:
    assert_error(client.post("/api/predict", **kwargs), status, message)


def test_wrong_method_and_unknown_path_are_json(client: FlaskClient) -> None:
    assert_error(client.get("/api/predict"), 405, "method not allowed")
    assert_error(client.get("/api/nothing"), 404, "not found")


@pytest.mark.parametrize("path", ["/slow", "/drip"])
def test_slow_urls_time_out(impatient_client: FlaskClient, server: PhotoServer, path: str) -> None:
    assert_error(post_url(impatient_client, server.url(path)), 504, "did not answer within 0.5 s")


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/big", 413, "larger than"),
    ("/big-chunked", 413, "larger than"),
    ("/missing", 502, "HTTP 404"),
    ("/not-an-image", 400, "not an image"),
    ("/redirect/4", 502, "redirects"),
])
def test_bad_urls(client: FlaskClient, server: PhotoServer, path: str, status: int, message: str) -> None:
    assert_error(post_url(client, server.url(path)), status, message)


def test_slow_url_fetches_cannot_take_every_server_thread(predictor: Predictor, server: PhotoServer) -> None:
    app = create_app(predictor, UrlFetcher(allow_private=True, timeout=10.0), max_concurrent_fetches=1)
    first: list[int] = []

    def fetch_slowly() -> None:
        first.append(post_url(app.test_client(), server.url("/slow?1.5")).status_code)

    slow = threading.Thread(target=fetch_slowly)
    slow.start()
    time.sleep(0.4)  # the slow fetch now holds the only fetch slot
    assert_error(post_url(app.test_client(), server.url("/photo.jpg")), 503, "too many URL fetches")
    assert upload(app.test_client(), jpeg_bytes()).status_code == 200  # uploads still served
    slow.join()
    assert first == [200]  # the slow server answers after 1.5 s, within the 10 s cap
    assert post_url(app.test_client(), server.url("/photo.jpg")).status_code == 200  # slot released


def test_large_photos_are_preprocessed_one_at_a_time(predictor: Predictor,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(predictor, UrlFetcher(), large_photo_pixels=100 * 100, large_photo_wait=0.2)
    real_predict = predictor.predict

    def slow_predict(data: bytes) -> Prediction:
        time.sleep(0.8)
        return real_predict(data)

    monkeypatch.setattr(predictor, "predict", slow_predict)
    first: list[int] = []
    worker = threading.Thread(
        target=lambda: first.append(upload(app.test_client(), jpeg_bytes(200, 200)).status_code))
    worker.start()
    time.sleep(0.3)  # the first large photo now holds the slot for 0.8 s
    assert_error(upload(app.test_client(), jpeg_bytes(150, 150)), 503, "large photos")
    assert upload(app.test_client(), jpeg_bytes(90, 90)).status_code == 200  # small ones go ahead
    worker.join()
    assert first == [200]


@pytest.mark.parametrize(("url", "message"), [
    ("file:///etc/passwd", "only http and https"),
    ("ftp://example.com/a.jpg", "only http and https"),
    ("gopher://127.0.0.1:6379/_INFO", "only http and https"),
    ("http://127.0.0.1:{port}/photo.jpg", "loopback"),
    ("http://localhost:{port}/photo.jpg", "loopback"),
    ("http://10.0.0.1/a.jpg", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[::1]:{port}/photo.jpg", "loopback"),
])
def test_ssrf_refusals_through_the_api(strict_client: FlaskClient, server: PhotoServer, url: str,
                                       message: str) -> None:
    assert_error(post_url(strict_client, url.format(port=server.port)), 400, message)


def test_an_unexpected_error_is_a_generic_500_logged_on_the_server(
        predictor: Predictor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(predictor)

    def broken(data: bytes) -> None:
        raise RuntimeError("secret internal detail at /srv/app.py")

    monkeypatch.setattr(predictor, "predict", broken)
    with caplog.at_level("ERROR", logger="cifar_dvc.serve"):
        body = assert_error(upload(client, jpeg_bytes()), 500, "internal server error")
    assert "secret" not in json.dumps(body)
    assert "secret internal detail" in caplog.text and "Traceback" in caplog.text


def test_command_line_refuses_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        serve_app.main(["--model", str(tmp_path / "none.keras"), "--port", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "none.keras" in err and "Traceback" not in err


@contextlib.contextmanager
def command_line_server(argv: list[str]) -> Iterator[int]:
    """Run ``cifar-dvc-serve`` with ``argv`` (``--port 0``) in a thread; yields the port it bound."""
    servers: list = []
    make_server = serve_app.make_server

    def recording(*args: object, **kwargs: object) -> object:
        servers.append(make_server(*args, **kwargs))  # type: ignore[arg-type]
        return servers[-1]

    stopping = threading.Event()

    def run() -> None:
        try:
            serve_app.main(argv)
        except (OSError, ValueError):  # close() from the test thread ends waitress' select loop
            if not stopping.is_set():
                raise

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_app, "make_server", recording)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not servers and time.monotonic() < deadline:
            time.sleep(0.05)
    assert servers, "cifar-dvc-serve did not start"
    try:
        yield servers[0].effective_port
    finally:
        stopping.set()
        servers[0].close()
        thread.join(timeout=5)


def get_json(port: int, path: str) -> dict:
    """GET ``path`` from a server on loopback ``port`` as JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_command_line_serves_the_model_with_its_options(tiny_model: Path) -> None:
    argv = ["--model", str(tiny_model), "--port", "0", "--threads", "2", "--blur-divisor", "50",
            "--square", "pad", "--max-upload-mb", "0.5"]
    with command_line_server(argv) as port:
        info = get_json(port, "/api/model")
    assert info["model"] == "tiny" and info["max_upload_bytes"] == 512 * 1024
    assert info["preprocessing"] == {"square": "pad", "resample": "lanczos", "blur_divisor": 50.0}


def test_command_line_preprocessing_follows_params_then_flags(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("custom:\n  square: pad\n  blur_divisor: 50\n")
    parser = serve_app.build_parser()
    pre = serve_app.preprocessing_from_args(
        parser.parse_args(["--model", "m.keras", "--params", str(params)]))
    assert (pre.square, pre.blur_divisor, pre.resample) == ("pad", 50.0, "lanczos")
    pre = serve_app.preprocessing_from_args(parser.parse_args(
        ["--model", "m.keras", "--params", str(params), "--blur-divisor", "0", "--square", "crop"]))
    assert (pre.square, pre.blur_divisor) == ("crop", None)
    defaults = serve_app.preprocessing_from_args(parser.parse_args(["--model", "m.keras"]))
    assert defaults == dataclasses.replace(Preprocessing(), max_pixels=36_000_000)
    assert defaults.blur_divisor == CustomParams().blur_divisor == 75  # the custom stage's default

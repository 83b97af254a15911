"""The web demo: a page and a JSON API that show a trained variant's top-5 classes for a photo.

Run ``cifar-dvc-serve --model models/cnn.keras`` (or ``python -m cifar_dvc.serve.app``; ``--help``) and open
http://127.0.0.1:8000/. Seed 001 built this as a Flask + D3 app that took an image URL; this one
takes an upload or a URL, serves any variant the pipeline trained, and is safe to expose to
clients that do not trust each other's URLs (``cifar_dvc.serve.urlfetch``).

API
- ``POST /api/predict`` with a multipart field ``image`` (a file), or a JSON body ``{"url": ...}``:
  ``{"model", "predictions": [{"label", "probability"}, ... 5], "elapsed_ms", "input", "images"}``;
  ``images`` holds PNG data URLs of the resized and (when blurred) blurred images the model saw,
  ``photo`` (URL requests only) a JPEG thumbnail of the fetched photo.
- ``GET /api/model``: the variant, its classes and how photos are preprocessed.
- ``GET /api/health``: ``{"status": "ok"}`` once the model is loaded and warmed up.
- ``GET /``: the page (``static/index.html``, plain HTML/JS, D3 vendored, works offline).

Every error is a JSON ``{"error": message}`` with a 4xx status for bad input (413 for an upload or
URL body over the cap, 400 for non-images, decompression bombs and refused URLs, 502/504 when a
URL's server fails or is too slow); an unexpected exception is logged with its traceback on the
server and answered with a generic JSON 500, so clients never see a stack trace.

Reads the model and its sidecar at start-up. Writes nothing but its log (stderr).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import ipaddress
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException

from cifar_dvc import images
from cifar_dvc.config import load_section
from cifar_dvc.custom_set import CustomParams
from cifar_dvc.errors import UserError
from cifar_dvc.serve.predictor import Prediction, Predictor, Preprocessing, set_tf_threads
from cifar_dvc.serve.urlfetch import UrlFetcher

log = logging.getLogger("cifar_dvc.serve")

STATIC_DIR = Path(__file__).parent / "static"
LARGE_PHOTO_PIXELS = 4_000_000  # above this, photos are preprocessed one at a time
THUMBNAIL_SIDE = 256  # px, longest side of the photo thumbnail returned for URL requests
MB = 1024 * 1024
# The page loads only its own files; images are data: URLs (server answers) or blob: (local files).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)


class RequestError(UserError):
    """A request the API refuses; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def create_app(predictor: Predictor, fetcher: UrlFetcher, max_upload_bytes: int = 10 * MB,
               max_concurrent_fetches: int = 2, large_photo_pixels: int = LARGE_PHOTO_PIXELS,
               large_photo_wait: float = 30.0) -> Flask:
    """The Flask application around a loaded ``predictor``; URLs are fetched with ``fetcher``.

    At most ``max_concurrent_fetches`` URL fetches run at once (more: 503). Photos of more than
    ``large_photo_pixels`` pixels are preprocessed one at a time: seed 004's blur works on the
    full-size square in float32 (a 12-megapixel photo needs about 300 MB and 2 s of CPU), so
    a few large uploads at once must not exhaust memory or starve small requests; a large photo
    that waits longer than ``large_photo_wait`` seconds for its turn gets a 503.
    """
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes  # larger bodies: 413 before they are parsed
    app.json.sort_keys = False  # keep "model" and "predictions" first, as documented
    # A slow URL holds a server thread for up to the fetch timeout; bounding how many fetches run
    # at once keeps threads free for uploads when someone points the demo at a tar pit.
    fetch_slots = threading.BoundedSemaphore(max_concurrent_fetches)
    large_photo_slot = threading.Lock()

    @app.get("/")
    def index() -> Response:
        return app.send_static_file("index.html")

    @app.get("/api/health")
    def health() -> Response:
        return jsonify(status="ok", model=predictor.name)

    @app.get("/api/model")
    def model_info() -> Response:
        pre = predictor.preprocessing
        return jsonify(
            model=predictor.name,
            dataset=predictor.info.dataset,
            classes=predictor.info.classes,
            image_shape=list(predictor.info.image_shape),
            top_k=predictor.top_k,
            preprocessing={"square": pre.square, "resample": pre.resample,
                           "blur_divisor": pre.blur_divisor},
            max_upload_bytes=max_upload_bytes,
            max_url_bytes=fetcher.max_bytes,
        )

    @app.post("/api/predict")
    def predict() -> Response:
        start = time.perf_counter()
        data, from_url = _request_image(fetcher, fetch_slots)
        if _pixels(data) <= large_photo_pixels:
            result = predictor.predict(data)
        elif large_photo_slot.acquire(timeout=large_photo_wait):
            try:
                result = predictor.predict(data)
            finally:
                large_photo_slot.release()
        else:
            raise RequestError("the server is busy with other large photos; try again shortly", 503)
        body = _prediction_json(predictor.name, result, with_photo=from_url)
        body["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return jsonify(body)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        if status == 413:
            message = f"the request is larger than the {max_upload_bytes / MB:g} MB upload limit"
        else:
            message = f"{exc.name}: {exc.description}" if exc.description else str(exc.name)
        return jsonify(error=message), status

    @app.errorhandler(UserError)
    def user_error(exc: UserError) -> tuple[Response, int]:
        status = int(getattr(exc, "status", 400))
        log.info("refused %s %s: %s (%d)", request.method, request.path, exc, status)
        return jsonify(error=" ".join(str(exc).split())), status

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> tuple[Response, int]:
        # The traceback goes to the server log only; the client learns nothing about the code.
        log.exception("unexpected error in %s %s", request.method, request.path)
        return jsonify(error="internal server error; the server log has the details"), 500

    return app


def _request_image(fetcher: UrlFetcher, fetch_slots: threading.BoundedSemaphore) -> tuple[bytes, bool]:
    """The photo bytes of a predict request and whether they came from a URL."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise RequestError("multipart request without a file field named 'image'")
        return upload.read(), False
    if request.is_json:
        payload = _json_body()
        if not isinstance(payload, dict) or not isinstance(payload.get("url"), str) or not payload["url"]:
            raise RequestError('expected a JSON object {"url": "http(s)://..."}')
        if not fetch_slots.acquire(blocking=False):
            raise RequestError("too many URL fetches in progress; try again shortly", 503)
        try:
            return fetcher.fetch(payload["url"].strip()), True
        finally:
            fetch_slots.release()
    raise RequestError("send multipart/form-data with a file field 'image', "
                       'or application/json {"url": ...}', 415)


def _json_body() -> Any:
    """The parsed JSON body; anything malformed is a 400 (RequestError), never a 500.

    Parsed here rather than by Flask's ``get_json``: its ``silent`` covers ValueError only, and
    Python's decoder raises RecursionError on deeply nested input (100,000 ``[``).
    """
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError("the request body is not valid JSON") from None


def _pixels(data: bytes) -> int:
    """Width x height from the image header (nothing decoded); 0 if unreadable (decoding reports it)."""
    return images.pixel_count(data)


def _prediction_json(model: str, result: Prediction, with_photo: bool) -> dict[str, Any]:
    def ranked(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
        return [{"label": label, "probability": round(p, 6)} for label, p in pairs]

    body: dict[str, Any] = {
        "model": model,
        "predictions": ranked(result.top),
        "input": {
            "width": result.photo.width,
            "height": result.photo.height,
            "blur_kernel": result.blur_kernel,
            "blurred": result.blurred is not None,
        },
        "images": {
            "resized": _png_data_url(result.resized),
            "blurred": None if result.blurred is None else _png_data_url(result.blurred),
        },
    }
    if result.top_unblurred is not None:
        body["predictions_unblurred"] = ranked(result.top_unblurred)
    if with_photo:
        body["photo"] = _thumbnail_data_url(result.photo)
    return body


def _png_data_url(pixels: np.ndarray) -> str:
    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnail_data_url(photo: Image.Image) -> str:
    thumb = photo.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``cifar-dvc-serve``."""
    defaults = Preprocessing()
    parser = argparse.ArgumentParser(
        prog="cifar-dvc-serve",
        description="Serve a trained variant: a page and a JSON API giving a photo's top-5 classes.")
    parser.add_argument("--model", required=True, type=Path,
                        help="models/<name>.keras; its sidecar models/<name>.json must be beside it")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port, 0 = any free one (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=4,
                        help="request threads of the waitress server (default: %(default)s)")
    parser.add_argument("--tf-threads", type=int, default=1,
                        help="size of TensorFlow's intra- and inter-op thread pools, 0 = TensorFlow's "
                             "choice (default: %(default)s: requests already run in parallel on the "
                             "server's threads, and a small model's call is mostly dispatch overhead)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0,
                        help="largest request body accepted, HTTP 413 above (default: %(default)s)")
    parser.add_argument("--max-url-mb", type=float, default=10.0,
                        help="largest image fetched from a URL (default: %(default)s)")
    parser.add_argument("--url-timeout", type=float, default=10.0,
                        help="seconds for a whole URL fetch, redirects included (default: %(default)s)")
    parser.add_argument("--allow-private-urls", action="store_true",
                        help="let URLs reach loopback, private and link-local addresses (testing only)")
    parser.add_argument("--max-megapixels", type=float, default=36.0,
                        help="refuse larger photos as possible decompression bombs; the blur of one "
                             "N-megapixel photo briefly needs about 30 x N MB (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=None,
                        help="preprocess photos as the custom stage does under this params file's "
                             "custom section (default: the custom stage's defaults)")
    parser.add_argument("--blur-divisor", type=float, default=None,
                        help="seed 004's blur rule s = round(w / divisor) before resizing; 0 = no blur "
                             f"(default: custom.blur_divisor, {defaults.blur_divisor:g})")
    parser.add_argument("--square", choices=["crop", "pad"], default=None,
                        help=f"make photos square by cropping the centre or padding (default: "
                             f"custom.square, {defaults.square})")
    parser.add_argument("--resample", choices=sorted(images.RESAMPLE_FILTERS), default=None,
                        help=f"resize filter (default: custom.resample, {defaults.resample})")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.threads < 1 or args.tf_threads < 0:
        parser.error("--threads must be >= 1 and --tf-threads >= 0")
    if min(args.max_upload_mb, args.max_url_mb, args.url_timeout, args.max_megapixels) <= 0:
        parser.error("--max-upload-mb, --max-url-mb, --url-timeout and --max-megapixels must be positive")
    if args.blur_divisor is not None and args.blur_divisor < 0:
        parser.error("--blur-divisor must be >= 0 (0 = no blur)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``cifar-dvc-serve``: load the model, warm it up, serve until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    from cifar_dvc.tfenv import import_tensorflow

    import_tensorflow()  # before the model loads: no CPU-only start-up noise in the server's log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = _make_server(args)
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    if not _is_loopback(args.host):
        log.warning("listening on %s: anyone who can reach it can use the demo", args.host)
    print(f"serving {args.model} on http://{args.host}:{server.effective_port}/", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def preprocessing_from_args(args: argparse.Namespace) -> Preprocessing:
    """The custom stage's preprocessing (its defaults or ``--params``), with the flags given on top."""
    custom = CustomParams()
    if args.params is not None:
        custom = load_section(CustomParams, "custom", path=args.params)  # validated there
    pre = Preprocessing.from_custom(custom)
    if args.blur_divisor is not None:
        pre = dataclasses.replace(pre, blur_divisor=args.blur_divisor or None)
    if args.square is not None:
        pre = dataclasses.replace(pre, square=args.square)
    if args.resample is not None:
        pre = dataclasses.replace(pre, resample=args.resample)
    # A server takes photos from strangers: never more pixels than the custom stage would.
    max_pixels = int(args.max_megapixels * 1_000_000)
    if pre.max_pixels < max_pixels:
        return pre  # custom.max_pixels is the stricter limit, and the one to name
    return dataclasses.replace(pre, max_pixels=max_pixels, pixels_key="--max-megapixels")


def _make_server(args: argparse.Namespace) -> Any:
    if not set_tf_threads(args.tf_threads, args.tf_threads):
        log.warning("TensorFlow already running in this process: --tf-threads %d ignored", args.tf_threads)
    predictor = Predictor(args.model, preprocessing_from_args(args))
    fetcher = UrlFetcher(max_bytes=int(args.max_url_mb * MB), timeout=args.url_timeout,
                         allow_private=args.allow_private_urls)
    max_upload = int(args.max_upload_mb * MB)
    app = create_app(predictor, fetcher, max_upload, max_concurrent_fetches=max(1, args.threads // 2))
    return make_server(app, args.host, args.port, args.threads, max_upload)


def make_server(app: Flask, host: str, port: int, threads: int, max_upload_bytes: int) -> Any:
    """A waitress server for ``app`` (not yet running: call ``.run()``; ``.effective_port`` is the port).

    waitress buffers a whole body before the app sees it; refusing far larger ones at the door
    keeps a huge upload off the disk, while bodies up to twice the cap still get the app's JSON 413
    (beyond that, waitress answers a plain-text 413 itself).
    """
    import waitress

    return waitress.create_server(app, host=host, port=port, threads=threads,
                                  max_request_body_size=2 * max_upload_bytes + MB, ident="cifar-dvc-serve")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    main()

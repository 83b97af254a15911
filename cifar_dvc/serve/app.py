"""The web demo: a page and a JSON API that show trained variants' top classes for a photo, and why.

Run ``cifar-dvc-serve --model models/cnn.keras`` (or ``--models models/``; or ``python -m
cifar_dvc.serve.app``; ``--help``) and open http://127.0.0.1:8000/. Seed 001 built this as a
Flask + D3 app that took an image URL; this one takes an upload or a URL, serves every variant the
pipeline trained (``cifar_dvc.serve.variants``: found beside ``--model``, loaded lazily, cached),
compares them on one photo, draws an occlusion map (``cifar_dvc.serve.explain``), and is safe to
expose to clients that do not trust each other's URLs (``cifar_dvc.serve.urlfetch``).

API (``?model=<name>`` picks a variant, default: the ``--model`` one)
- ``POST /api/predict`` with a multipart field ``image`` (a file), or a JSON body ``{"url": ...}``:
  ``{"model", "predictions": [{"label", "probability"}, ... 5], "elapsed_ms", "input", "images"}``;
  ``images`` holds PNG data URLs of the resized and (when blurred) blurred images the model saw,
  ``photo`` (URL requests only) a JPEG thumbnail of the fetched photo. ``?occlusion=1`` adds
  ``occlusion``: the probability drop of the predicted class per covered patch (a 7x7 list).
- ``POST /api/compare`` (same bodies): every variant's top-3 for the photo, side by side.
- ``GET /api/models``: every variant found, loaded or not, unavailable ones with their reason.
- ``GET /api/model``: the variant, its classes, its test-time augmentation (``tta``: level and a
  sentence for the page) and how photos are preprocessed.
- ``GET /api/health``: ``{"status": "ok"}`` once the default model is loaded and warmed up.
- ``GET /``: the page (``static/index.html``, plain HTML/JS, D3 vendored, works offline).

Every error is a JSON ``{"error": message}`` with a 4xx status for bad input (413 for an upload or
URL body over the cap, 400 for non-images, decompression bombs and refused URLs, 502/504 when a
URL's server fails or is too slow); an unexpected exception is logged with its traceback on the
server and answered with a generic JSON 500, so clients never see a stack trace.

Reads the default model and its sidecar at start-up, the others' on first use. Writes nothing but
its log (stderr).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from flask import Flask, Response, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException

from cifar_dvc import images
from cifar_dvc.config import load_section
from cifar_dvc.custom_set import CustomParams
from cifar_dvc.errors import UserError
from cifar_dvc.serve import explain
from cifar_dvc.serve.predictor import Prediction, Predictor, Preprocessing, set_tf_threads
from cifar_dvc.serve.urlfetch import UrlFetcher
from cifar_dvc.serve.variants import DEFAULT_BUDGET, VariantError, Variants

log = logging.getLogger("cifar_dvc.serve")
T = TypeVar("T")

STATIC_DIR = Path(__file__).parent / "static"
LARGE_PHOTO_PIXELS = 4_000_000  # above this, photos are preprocessed one at a time
THUMBNAIL_SIDE = 256  # px, longest side of the photo thumbnail returned for URL requests
COMPARE_TOP = 3  # classes per variant in the compare view: enough to see where variants disagree
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


def create_app(models: Variants | Predictor, fetcher: UrlFetcher, max_upload_bytes: int = 10 * MB,
               max_concurrent_fetches: int = 2, large_photo_pixels: int = LARGE_PHOTO_PIXELS,
               large_photo_wait: float = 30.0) -> Flask:
    """The Flask application around ``models`` (or one loaded predictor); URLs are fetched with ``fetcher``.

    At most ``max_concurrent_fetches`` URL fetches run at once (more: 503). Photos of more than
    ``large_photo_pixels`` pixels are preprocessed one at a time: seed 004's blur works on the
    full-size square in float32 (a 12-megapixel photo needs about 300 MB and 2 s of CPU), so
    a few large uploads at once must not exhaust memory or starve small requests; a large photo
    that waits longer than ``large_photo_wait`` seconds for its turn gets a 503.
    """
    variants = models if isinstance(models, Variants) else Variants.single(models)
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

    def gated(data: bytes, work: Callable[[], T]) -> T:
        """Run ``work`` (which preprocesses ``data``) at once, or in turn if the photo is large."""
        if _pixels(data) <= large_photo_pixels:
            return work()
        if not large_photo_slot.acquire(timeout=large_photo_wait):
            raise RequestError("the server is busy with other large photos; try again shortly", 503)
        try:
            return work()
        finally:
            large_photo_slot.release()

    @app.get("/api/health")
    def health() -> Response:
        return jsonify(status="ok", model=variants.default)

    @app.get("/api/models")
    def models_list() -> Response:
        return jsonify(default=variants.default, models=variants.listing())

    @app.get("/api/model")
    def model_info() -> Response:
        name = _model_name(variants)
        predictor = variants.get(name)
        pre = predictor.preprocessing
        return jsonify(
            model=name,
            dataset=predictor.info.dataset,
            classes=predictor.info.classes,
            image_shape=list(predictor.info.image_shape),
            top_k=predictor.top_k,
            tta={"level": predictor.tta, "note": predictor.tta_note},  # what every answer averages
            preprocessing={"square": pre.square, "resample": pre.resample,
                           "blur_divisor": pre.blur_divisor},
            max_upload_bytes=max_upload_bytes,
            max_url_bytes=fetcher.max_bytes,
        )

    @app.post("/api/predict")
    def predict() -> Response:
        start = time.perf_counter()
        name = _model_name(variants)
        with_occlusion = _flag("occlusion")
        predictor = variants.get(name)  # an unknown or broken variant fails before any URL fetch
        data, from_url = _request_image(fetcher, fetch_slots)
        result = gated(data, lambda: predictor.predict(data))
        body = _prediction_json(name, result, with_photo=from_url)
        if with_occlusion:
            body["occlusion"] = _occlusion_json(predictor, result)
        body["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return jsonify(body)

    @app.post("/api/compare")
    def compare() -> Response:
        start = time.perf_counter()
        data, from_url = _request_image(fetcher, fetch_slots)
        answers: list[dict[str, Any]] = []
        # Variants with the same input size see the same preprocessed images: decode and blur the
        # photo once per size, not once per variant (seed 004's blur of a large photo takes seconds).
        seen: dict[tuple[int, int, Preprocessing], Prediction] = {}
        first: Prediction | None = None
        for name in variants.names:
            try:
                predictor = variants.get(name)
            except VariantError as exc:
                answers.append({"model": name, "error": " ".join(str(exc).split())})
                continue
            key = (predictor.size, predictor.channels, predictor.preprocessing)
            if key not in seen:
                seen[key] = gated(data, lambda p=predictor: p.predict(data))
                top = seen[key].top
            else:
                top = predictor.ranked(predictor.probabilities(seen[key].model_input[None])[0])
            first = first or seen[key]
            answers.append({"model": name, "predictions": _ranked_json(top[:COMPARE_TOP])})
        body: dict[str, Any] = {"default": variants.default, "models": answers}
        if first is not None:
            body["input"] = _input_json(first)
            if from_url:
                body["photo"] = _thumbnail_data_url(first.photo)
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


def _model_name(variants: Variants) -> str:
    """The ``?model=`` of the request, or the default variant's name."""
    name = request.args.get("model", "")
    return name or variants.default


def _flag(key: str) -> bool:
    """A yes/no query parameter (absent: no); any other value is a 400."""
    value = request.args.get(key, "0").lower()
    if value not in ("0", "1", "false", "true"):
        raise RequestError(f"?{key}= must be 0 or 1, got {value[:20]!r}")
    return value in ("1", "true")


def _pixels(data: bytes) -> int:
    """Width x height from the image header (nothing decoded); 0 if unreadable (decoding reports it)."""
    return images.pixel_count(data)


def _ranked_json(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"label": label, "probability": round(p, 6)} for label, p in pairs]


def _input_json(result: Prediction) -> dict[str, Any]:
    return {
        "width": result.photo.width,
        "height": result.photo.height,
        "blur_kernel": result.blur_kernel,
        "blurred": result.blurred is not None,
    }


def _prediction_json(model: str, result: Prediction, with_photo: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "predictions": _ranked_json(result.top),
        "input": _input_json(result),
        "images": {
            "resized": _png_data_url(result.resized),
            "blurred": None if result.blurred is None else _png_data_url(result.blurred),
        },
    }
    if result.top_unblurred is not None:
        body["predictions_unblurred"] = _ranked_json(result.top_unblurred)
    if with_photo:
        body["photo"] = _thumbnail_data_url(result.photo)
    return body


def _occlusion_json(predictor: Predictor, result: Prediction) -> dict[str, Any]:
    """The occlusion map of the image the model answered for, for its top class, as JSON."""
    label = result.top[0][0]
    occlusion = explain.occlusion_map(result.model_input, predictor.probabilities,
                                      target=predictor.info.classes.index(label))
    return {
        "label": label,
        **occlusion.to_json(),
        "image_size": predictor.size,
        # where that input lies in the photo, so the map can be laid over the photo too
        "region": explain.square_region(result.photo.width, result.photo.height,
                                        predictor.preprocessing.square),
    }


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
        description="Serve trained variants: a page and a JSON API giving a photo's top-5 classes, "
                    "every variant's answer side by side, and an occlusion map.")
    parser.add_argument("--model", type=Path, default=None,
                        help="models/<name>.keras, loaded at start and shown first; its sidecar "
                             "models/<name>.json must be beside it. Every other <name>.keras of its "
                             "folder is offered too")
    parser.add_argument("--models", type=Path, default=None,
                        help="a folder of <name>.keras + <name>.json to offer (default: --model's "
                             "folder); without --model, the first that loads is shown first")
    parser.add_argument("--cache-mb", type=float, default=DEFAULT_BUDGET / MB,
                        help="estimated memory of the variants kept loaded; beyond it the least "
                             "recently used are unloaded, the first one never (default: %(default)g)")
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
    if args.model is None and args.models is None:
        parser.error("give --model models/<name>.keras or --models models/")
    if (args.model is not None and args.models is not None
            and args.model.parent.resolve() != args.models.resolve()):
        parser.error("--model must be a file in the --models folder")
    if args.cache_mb <= 0:
        parser.error("--cache-mb must be positive")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.threads < 1 or args.tf_threads < 0:
        parser.error("--threads must be >= 1 and --tf-threads >= 0")
    if min(args.max_upload_mb, args.max_url_mb, args.url_timeout, args.max_megapixels) <= 0:
        parser.error("--max-upload-mb, --max-url-mb, --url-timeout and --max-megapixels must be positive")
    if args.blur_divisor is not None and args.blur_divisor < 0:
        parser.error("--blur-divisor must be >= 0 (0 = no blur)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``cifar-dvc-serve``: load the first model, warm it up, serve until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    from cifar_dvc.tfenv import import_tensorflow

    import_tensorflow()  # before the model loads: no CPU-only start-up noise in the server's log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server, variants = _make_server(args)
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    if not _is_loopback(args.host):
        log.warning("listening on %s: anyone who can reach it can use the demo", args.host)
    unusable = len(variants.names) - len(variants.available())
    print(f"serving {variants.default} and {len(variants.names) - 1} more models ({unusable} unavailable) "
          f"on http://{args.host}:{server.effective_port}/", flush=True)
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


def _make_server(args: argparse.Namespace) -> tuple[Any, Variants]:
    if not set_tf_threads(args.tf_threads, args.tf_threads):
        log.warning("TensorFlow already running in this process: --tf-threads %d ignored", args.tf_threads)
    pre = preprocessing_from_args(args)

    def load(path: Path) -> Predictor:
        return Predictor(path, pre)

    budget = int(args.cache_mb * MB)
    if args.model is None:
        variants = Variants.from_folder(args.models, load, budget=budget)
    else:
        # Loaded first and on its own, so a bad --model stops the server with its own message.
        first = load(args.model)
        variants = Variants.from_folder(args.model.parent, load, args.model.stem, budget, preloaded=first)
    for entry in variants.listing():
        if entry["status"] == "unavailable":
            log.warning("model %s is unavailable: %s", entry["name"], entry["reason"])
    fetcher = UrlFetcher(max_bytes=int(args.max_url_mb * MB), timeout=args.url_timeout,
                         allow_private=args.allow_private_urls)
    max_upload = int(args.max_upload_mb * MB)
    app = create_app(variants, fetcher, max_upload, max_concurrent_fetches=max(1, args.threads // 2))
    return make_server(app, args.host, args.port, args.threads, max_upload), variants


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

"""Tests of the web demo's model picker, "compare all" and occlusion map (``cifar_dvc.serve``).

- ``explain``: occlusion maps on NumPy "models" whose answer depends on one region only (the
  map's maximum is there, and every map is one batched predict call), the patch geometry, the
  square's place in the photo as ``images.make_square`` makes it;
- ``variants``: discovery (bad files listed with their reason, hidden files skipped), lazy
  loading (once, even under concurrent requests), the LRU memory budget, load failures;
- the API on real tiny Keras models in one folder: ``GET /api/models``, ``POST /api/compare``
  (each variant's top-3 is what that variant's ``predict`` says), ``POST /api/predict?model=&occlusion=1``
  on a model that looks at one region only, and the command line's ``--models``.

``build_region_model`` and ``region_photo`` are also used by the browser test.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from cifar_dvc import images
from cifar_dvc.errors import DataError
from cifar_dvc.modelinfo import ModelInfo, save_info
from cifar_dvc.serve import app as serve_app
from cifar_dvc.serve import explain
from cifar_dvc.serve.app import create_app
from cifar_dvc.serve.predictor import Predictor
from cifar_dvc.serve.urlfetch import UrlFetcher
from cifar_dvc.serve.variants import MB, Variant, VariantError, Variants, discover
from tests.test_serve_api import CLASSES, STATS, assert_error, build_tiny_model, command_line_server, get_json
from tests.test_serve_fetch import PhotoServer, jpeg_bytes

# The one region the region model looks at, in model-input pixels: rows 16:24, columns 4:12, which
# is exactly the patch at row 4, column 1 of the 8-pixel patches with stride 4.
REGION = (slice(16, 24), slice(4, 12))
REGION_CELL = (4, 1)
CROP_LEFT = 8  # region_photo is 48x32: the centre square starts 8 pixels in


def build_region_model(path: Path, name: str = "region") -> Path:
    """A Keras model (saved with its sidecar) that sees only REGION: bright there -> class 0."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Cropping2D(((16, 8), (4, 20)))(inputs)  # keeps rows 16:24, columns 4:12
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(len(CLASSES), activation="softmax")
    model = keras.Model(inputs, dense(x))
    kernel = np.zeros((3, len(CLASSES)), np.float32)
    kernel[:, 0], kernel[:, 1] = 1.0, -1.0  # class 0 when the region is bright, 1 when dark
    dense.set_weights([kernel, np.zeros(len(CLASSES), np.float32)])
    model.save(path)
    save_info(path, ModelInfo(name, "synthetic", CLASSES, (32, 32, 3), STATS))
    return path


def region_photo() -> bytes:
    """A black 48x32 PNG with a white block that lands on REGION of the centre-cropped input.

    32 pixels high, so seed 004's rule does not blur it (s = round(32 / 75) = 0) and the 32x32
    resize is the identity: the model input is exactly the crop.
    """
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[16:24, 4 + CROP_LEFT:12 + CROP_LEFT] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def keras_like_zip(path: Path, weights_bytes: int = 1000) -> Path:
    """A zip that passes the cheap ``.keras`` checks but that Keras cannot load."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("metadata.json", "{}")
        archive.writestr("model.weights.h5", b"\0" * weights_bytes)
    return path


def sidecar(path: Path, shape: tuple[int, int, int] = (32, 32, 3)) -> Path:
    save_info(path, ModelInfo(path.stem, "synthetic", CLASSES, shape, STATS))
    return path


# --- explain ---------------------------------------------------------------------------------


class RegionModel:
    """A NumPy "model": class 0's probability grows with the mean brightness of ``region`` only."""

    def __init__(self, region: tuple[slice, slice] = REGION) -> None:
        self.region = region
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        brightness = batch[:, self.region[0], self.region[1]].astype(np.float64).mean(axis=(1, 2, 3)) / 255
        p0 = 1 / (1 + np.exp(-10 * (brightness - 0.5)))
        return np.stack([p0, 1 - p0], axis=1)


def test_patch_positions_cover_every_edge() -> None:
    assert explain.patch_positions(32, 8, 4) == (0, 4, 8, 12, 16, 20, 24)
    assert explain.patch_positions(32, 8, 5) == (0, 5, 10, 15, 20, 24)  # the last one ends at 32
    assert explain.patch_positions(28, 28, 4) == (0,)
    for size, patch, stride in ((32, 0, 4), (32, 33, 4), (32, 8, 0)):
        with pytest.raises(ValueError, match="patch"):
            explain.patch_positions(size, patch, stride)


def test_occluded_batch_covers_one_patch_per_copy_with_the_image_mean() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    batch, positions, fill = explain.occluded_batch(image)
    assert batch.shape == (50, 32, 32, 3) and batch.dtype == np.uint8 and len(positions) == 7
    assert fill == tuple(int(v) for v in np.rint(image.reshape(-1, 3).mean(axis=0)))
    np.testing.assert_array_equal(batch[0], image)  # the untouched image first
    for k, (top, left) in enumerate(((t, x) for t in positions for x in positions), start=1):
        inside = np.zeros((32, 32), bool)
        inside[top:top + 8, left:left + 8] = True
        assert (batch[k][inside] == fill).all()
        np.testing.assert_array_equal(batch[k][~inside], image[~inside])
    gray = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    assert explain.occluded_batch(gray, 7, 7, fill=(128,))[0].shape == (17, 28, 28, 1)
    with pytest.raises(ValueError, match="square uint8"):
        explain.occluded_batch(image[:, :30])
    with pytest.raises(ValueError, match="channels"):
        explain.occluded_batch(image, fill=(1, 2))


def test_occlusion_map_finds_the_only_region_the_model_looks_at_in_one_call() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[REGION] = 255
    model = RegionModel()
    occlusion = explain.occlusion_map(image, model)
    assert model.calls == [50]  # the untouched image and 49 occluded copies, one batched call
    assert occlusion.target == 0 and occlusion.probability == pytest.approx(model(image[None])[0, 0])
    assert occlusion.drop.shape == (7, 7)
    assert np.unravel_index(np.argmax(occlusion.drop), occlusion.drop.shape) == REGION_CELL
    assert occlusion.drop[REGION_CELL] > 0.9  # covering all of it with the (dark) mean: class 0 gone
    # Patches that do not touch the region change nothing.
    touching = np.zeros((7, 7), bool)
    touching[3:6, 0:3] = True
    np.testing.assert_allclose(occlusion.drop[~touching], 0.0, atol=1e-7)
    assert (occlusion.drop[touching] > 0).all()
    body = occlusion.to_json()
    assert json.loads(json.dumps(body)) == body  # plain JSON values
    assert len(body["drop"]) == 7 and all(len(row) == 7 for row in body["drop"])
    assert body["positions"] == [0, 4, 8, 12, 16, 20, 24] and body["patch"] == 8 and body["stride"] == 4


def test_occlusion_map_of_a_chosen_class_and_a_bad_model() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[REGION] = 255
    occlusion = explain.occlusion_map(image, RegionModel(), target=1)
    assert occlusion.target == 1
    assert np.argmin(occlusion.drop) == np.ravel_multi_index(REGION_CELL, (7, 7))  # covering it helps 1
    with pytest.raises(ValueError, match="shape"):
        explain.occlusion_map(image, lambda batch: np.zeros((3, 2)))


def test_pixel_map_averages_the_patches_covering_each_pixel() -> None:
    drop = np.zeros((7, 7), np.float32)
    drop[REGION_CELL] = 1.0
    occlusion = explain.Occlusion(0, 1.0, drop, explain.patch_positions(32, 8, 4), 8, 4, (0, 0, 0))
    heat = explain.pixel_map(occlusion, 32)
    assert heat.shape == (32, 32)
    # Row 16, column 4 lies in 4 patches (rows 12 and 16, columns 0 and 4): mean 1/4.
    assert heat[16, 4] == pytest.approx(0.25)
    assert heat[17, 1] == pytest.approx(0.0)
    assert np.unravel_index(np.argmax(heat), heat.shape)[0] in range(16, 24)
    assert heat[16:24, 4:12].min() > 0 and heat[:16].max() == 0 and heat[:, 12:].max() == 0


@pytest.mark.parametrize("square", ["crop", "pad"])
@pytest.mark.parametrize("size", [(48, 32), (31, 50), (40, 40)])
def test_square_region_is_where_make_square_puts_the_photo(square: str, size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(1, 256, (height, width, 3), dtype=np.uint8))
    made = np.asarray(images.make_square(photo, square, (0, 0, 0)))
    region = explain.square_region(width, height, square)
    side, left, top = region["side"], region["left"], region["top"]
    assert made.shape[:2] == (side, side)
    # Square pixel (y, x) is photo pixel (y + top, x + left) wherever that lies in the photo.
    pixels = np.asarray(photo)
    for y, x in ((0, 0), (side - 1, side - 1), (side // 2, side // 3)):
        py, px = y + top, x + left
        if 0 <= py < height and 0 <= px < width:
            np.testing.assert_array_equal(made[y, x], pixels[py, px])
        else:
            assert (made[y, x] == 0).all()  # padding
    with pytest.raises(ValueError, match="crop or pad"):
        explain.square_region(10, 10, "stretch")


# --- variants: discovery, lazy loading, budget -------------------------------------------------


class FakePredictor:
    def __init__(self, path: Path) -> None:
        self.model_path = path


def counting_loader(fail: Collection[str] = (), delay: float = 0.0
                    ) -> tuple[Callable[[Path], FakePredictor], list[str]]:
    """A loader of fake predictors that records which models it loaded and fails for ``fail``."""
    calls: list[str] = []

    def load(path: Path) -> FakePredictor:
        calls.append(path.stem)
        time.sleep(delay)
        if path.stem in fail:
            raise DataError(f"{path}: not a loadable Keras model (broken on purpose)")
        return FakePredictor(path)

    return load, calls


def test_discovery_lists_bad_files_with_their_reason_and_skips_hidden_ones(tmp_path: Path) -> None:
    sidecar(keras_like_zip(tmp_path / "good.keras"))
    sidecar(tmp_path / "garbage.keras").with_suffix(".keras").write_bytes(b"not a zip")
    keras_like_zip(tmp_path / "lonely.keras")  # no sidecar
    keras_like_zip(tmp_path / "badjson.keras")
    (tmp_path / "badjson.json").write_text("{")
    sidecar(keras_like_zip(tmp_path / "wide.keras"), (32, 48, 3))
    (tmp_path / ".cnn.keras.tmp1234").mkdir()  # a training's temporary file: not a model
    sidecar(keras_like_zip(tmp_path / ".hidden.keras"))
    (tmp_path / "folder.keras").mkdir()
    found = {v.name: v for v in discover(tmp_path)}
    assert list(found) == ["badjson", "garbage", "good", "lonely", "wide"]
    assert found["good"].reason is None and found["good"].info is not None
    assert found["good"].memory > 4 * 1000
    reasons = {name: v.reason for name, v in found.items() if name != "good"}
    assert "not a zip" in reasons["garbage"] and "model description not found" in reasons["lonely"]
    assert "expected JSON" in reasons["badjson"] and "square" in reasons["wide"]
    for reason in reasons.values():
        assert reason is not None and "\n" not in reason and str(tmp_path) not in reason  # no server paths
    with pytest.raises(DataError, match="not a folder"):
        discover(tmp_path / "missing")


def variant(name: str, memory: int = 0, reason: str | None = None) -> Variant:
    return Variant(name, Path(f"/m/{name}.keras"), None, memory, reason)


def test_variants_load_lazily_once_even_when_asked_at_the_same_time() -> None:
    load, calls = counting_loader(delay=0.3)
    models = Variants([variant("a"), variant("b")], load, default="a")
    assert calls == ["a"] and models.loaded() == ["a"]  # the default at once, the others on demand
    assert [m["status"] for m in models.listing()] == ["loaded", "not loaded"]
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(models.get("b"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["a", "b"] and len({id(p) for p in got}) == 1
    assert models.get("b") is got[0] and models.get() is models.get("a")
    assert calls == ["a", "b"]


def test_the_memory_budget_unloads_the_least_recently_used_but_never_the_default() -> None:
    load, calls = counting_loader()
    sizes = {"a": 40, "b": 40, "c": 40, "d": 100}
    models = Variants([variant(n, m * MB) for n, m in sizes.items()], load, default="a", budget=100 * MB)
    models.get("b")
    assert models.loaded() == ["a", "b"]
    models.get("c")  # 120 MB > 100: b, the least recently used other than the default, goes
    assert models.loaded() == ["a", "c"]
    models.get("a")
    models.get("b")
    assert models.loaded() == ["a", "b"]  # c went: a was used more recently
    models.get("d")  # larger than the budget alone: it still loads, with only the default kept
    assert models.loaded() == ["a", "d"]
    assert calls == ["a", "b", "c", "b", "d"]


def test_a_variant_that_fails_to_load_is_unavailable_with_its_reason() -> None:
    load, calls = counting_loader(fail=["b"])
    models = Variants([variant("a"), variant("b"), variant("c", reason="c.json: broken")], load)
    assert models.default == "a"
    with pytest.raises(VariantError, match=r"unavailable: b\.keras: not a loadable") as caught:
        models.get("b")
    assert caught.value.status == 409
    with pytest.raises(VariantError, match="unavailable"):
        models.get("b")
    assert calls == ["a", "b"]  # not tried again
    with pytest.raises(VariantError, match=r"c\.json: broken"):
        models.get("c")
    with pytest.raises(VariantError, match="unknown model 'z'") as unknown:
        models.get("z")
    assert unknown.value.status == 404
    listing = {m["name"]: m for m in models.listing()}
    assert listing["b"]["status"] == "unavailable" and "broken on purpose" in listing["b"]["reason"]
    assert models.available() == ["a"]


def test_without_a_default_the_first_variant_that_loads_is_it() -> None:
    load, calls = counting_loader(fail=["a"])
    models = Variants([variant("0", reason="bad"), variant("a"), variant("b")], load)
    assert models.default == "b" and calls == ["a", "b"]
    load, _ = counting_loader(fail=["a"])
    with pytest.raises(DataError, match=r"no usable model: 0: bad; a: a\.keras: not a loadable"):
        Variants([variant("0", reason="bad"), variant("a")], load)
    with pytest.raises(DataError, match=r"no \.keras file"):
        Variants([], load)


def test_a_default_that_fails_to_load_raises_its_own_error(tmp_path: Path) -> None:
    load, _ = counting_loader(fail=["a"])
    with pytest.raises(DataError, match=r"^/m/a.keras: not a loadable"):
        Variants([variant("a")], load, default="a")
    with pytest.raises(DataError, match="no such model"):
        Variants([variant("a")], load, default="b")


# --- the API on real models ------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny, region and gray (28x28x1) load; broken, lonely and late do not (late only when loaded)."""
    folder = tmp_path_factory.mktemp("models")
    build_tiny_model(folder / "tiny.keras")
    build_region_model(folder / "region.keras")
    build_tiny_model(folder / "gray.keras", (28, 28, 1), name="gray")
    sidecar(folder / "broken.keras").with_suffix(".keras").write_bytes(b"\0" * 100)
    keras_like_zip(folder / "lonely.keras")
    sidecar(keras_like_zip(folder / "late.keras"))
    return folder


@pytest.fixture(scope="module")
def models(models_dir: Path) -> Variants:
    return Variants.from_folder(models_dir, Predictor, default="tiny")


@pytest.fixture(scope="module")
def client(models: Variants) -> FlaskClient:
    return create_app(models, UrlFetcher(allow_private=True, timeout=5.0)).test_client()


def test_models_lists_every_variant_and_why_some_are_unavailable(client: FlaskClient,
                                                                 models_dir: Path) -> None:
    response = client.get("/api/models")
    assert response.status_code == 200
    body = response.get_json()
    assert body["default"] == "tiny"
    listing = {m["name"]: m for m in body["models"]}
    assert list(listing) == ["broken", "gray", "late", "lonely", "region", "tiny"]
    assert listing["tiny"]["status"] == "loaded" and listing["tiny"]["default"] is True
    assert listing["gray"]["image_shape"] == [28, 28, 1]
    assert "not a Keras model file" in listing["broken"]["reason"]
    assert "lonely.json: model description not found" in listing["lonely"]["reason"]
    assert str(models_dir) not in response.get_data(as_text=True)
    assert client.get("/api/health").get_json() == {"status": "ok", "model": "tiny"}


def test_compare_gives_each_variants_top_three(client: FlaskClient, models: Variants) -> None:
    data = jpeg_bytes(300, 200, color=(200, 120, 40))
    response = upload_to(client, "/api/compare", data)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    answers = {a["model"]: a for a in body["models"]}
    assert list(answers) == models.names
    for name in ("tiny", "region", "gray"):
        expected = models.get(name).predict(data).top[:3]
        got = answers[name]["predictions"]
        assert [p["label"] for p in got] == [label for label, _ in expected]
        np.testing.assert_allclose([p["probability"] for p in got], [p for _, p in expected], atol=1e-5)
    for name, reason in (("broken", "not a Keras model file"), ("lonely", "model description"),
                         ("late", "not a loadable Keras model")):
        assert set(answers[name]) == {"model", "error"} and reason in answers[name]["error"]
    assert body["input"] == {"width": 300, "height": 200, "blur_kernel": 3, "blurred": True}
    assert "photo" not in body
    # late.keras passed the cheap checks; it failed when compare loaded it, and now says so.
    late = next(m for m in client.get("/api/models").get_json()["models"] if m["name"] == "late")
    assert late["status"] == "unavailable"


def test_compare_a_url_and_refuse_bad_input(client: FlaskClient) -> None:
    with PhotoServer(jpeg_bytes(120, 90)) as server:
        body = client.post("/api/compare", json={"url": server.url("/photo.jpg")}).get_json()
        assert body["photo"].startswith("data:image/jpeg;base64,")
        bad = client.post("/api/compare", json={"url": server.url("/not-an-image")})
        assert_error(bad, 400, "not an image")
    assert_error(upload_to(client, "/api/compare", b"%PDF-1.4"), 400, "not an image")
    assert_error(client.post("/api/compare", data=b"x", content_type="image/jpeg"), 415)


def upload_to(client: FlaskClient, path: str, data: bytes) -> TestResponse:
    return client.post(path, data={"image": (io.BytesIO(data), "p.jpg")}, content_type="multipart/form-data")


def test_occlusion_map_through_the_api_points_at_the_region(client: FlaskClient, models: Variants,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = models.get("region")
    batches: list[int] = []
    real = predictor.probabilities

    def counting(x: np.ndarray) -> np.ndarray:
        batches.append(len(x))
        return real(x)

    monkeypatch.setattr(predictor, "probabilities", counting)
    response = upload_to(client, "/api/predict?model=region&occlusion=1", region_photo())
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model"] == "region" and body["predictions"][0]["label"] == "airplane"
    occlusion = body["occlusion"]
    assert batches.count(50) == 1  # the map: one call of the input and its 49 occluded copies
    drop = np.asarray(occlusion["drop"])
    assert drop.shape == (7, 7)
    assert np.unravel_index(np.argmax(drop), drop.shape) == REGION_CELL and drop[REGION_CELL] > 0.9
    assert occlusion["label"] == "airplane" and occlusion["class_index"] == 0
    assert occlusion["probability"] == pytest.approx(body["predictions"][0]["probability"], abs=1e-5)
    assert occlusion["image_size"] == 32 and occlusion["patch"] == 8 and occlusion["stride"] == 4
    assert occlusion["region"] == {"left": CROP_LEFT, "top": 0, "side": 32}
    assert occlusion["fill"] == [16, 16, 16]  # the crop's mean: 64 white pixels of 1024
    # Without the flag, no map (and no extra model call).
    batches.clear()
    plain = upload_to(client, "/api/predict?model=region", region_photo()).get_json()
    assert "occlusion" not in plain and 50 not in batches


def test_predict_with_an_unknown_broken_or_bad_choice(client: FlaskClient) -> None:
    photo = jpeg_bytes(64, 64)
    assert_error(upload_to(client, "/api/predict?model=nothing", photo), 404, "unknown model 'nothing'")
    assert_error(upload_to(client, "/api/predict?model=broken", photo), 409, "not a Keras model file")
    assert_error(client.get("/api/model?model=lonely"), 409, "lonely.json")
    assert_error(upload_to(client, "/api/predict?occlusion=maybe", photo), 400, "?occlusion= must be 0 or 1")
    assert client.get("/api/model?model=gray").get_json()["image_shape"] == [28, 28, 1]
    gray = upload_to(client, "/api/predict?model=gray&occlusion=true", photo).get_json()
    assert gray["model"] == "gray" and np.asarray(gray["occlusion"]["drop"]).shape == (6, 6)  # 28 px


def test_command_line_serves_every_model_of_a_folder(models_dir: Path) -> None:
    argv = ["--models", str(models_dir), "--port", "0", "--threads", "2", "--cache-mb", "64"]
    with command_line_server(argv) as port:
        body = get_json(port, "/api/models")
    # broken.keras fails the cheap checks; gray is the first (sorted) that loads
    assert body["default"] == "gray"
    assert [m["status"] for m in body["models"]] == [
        "unavailable", "loaded", "not loaded", "unavailable", "not loaded", "not loaded"]


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give --model"),
    (["--models", "a", "--model", "b/x.keras"], "--model must be a file in the --models folder"),
    (["--models", "a", "--cache-mb", "0"], "--cache-mb must be positive"),
])
def test_command_line_refuses_bad_model_options(argv: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        serve_app.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_command_line_refuses_a_folder_without_a_usable_model(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    sidecar(tmp_path / "x.keras").with_suffix(".keras").write_bytes(b"junk")
    with pytest.raises(SystemExit) as info:
        serve_app.main(["--models", str(tmp_path), "--port", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "error: no usable model: x: x.keras: not a Keras model file" in err
    assert "Traceback" not in err

"""The custom stage: photo folder -> unfiltered, filtered and sweep sets (Lanczos and seed 004's nearest
resize), report.json, contact sheet.

Photos are generated here (widths 40 to 1000 px, many modes and formats, EXIF orientations); the
stage runs in-process through ``stage_main`` (exit code and error line as on the command line) and
once as a real ``python -m stages.custom`` subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cifar_dvc import artifacts, evalsets, images, normalization
from cifar_dvc.custom_set import CustomParams, build_custom_sets, contact_sheet, find_photos
from cifar_dvc.datasets import synthetic
from cifar_dvc.errors import DataError, stage_main
from cifar_dvc.evalsets import NEAREST, parse_sweep, sweep_name
from stages import custom as custom_stage
from tests.test_images import BLUE, RED, encode, halves, in_mode, noise, png_with_size

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STATS = normalization.NormStats("standardize", (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
DIVISORS = (150, 100, 75, 50, 25)
# Every file of the default params: both resizes, unfiltered, filtered and the sweep.
SET_STEMS = ["unfiltered", "filtered", *(sweep_name(d) for d in DIVISORS),
             "nearest_unfiltered", "nearest_filtered", *(sweep_name(d, NEAREST) for d in DIVISORS)]

# relative path -> (width, height, mode, format, EXIF orientation)
PHOTOS: dict[str, tuple[int, int, str, str, int | None]] = {
    "cat/w40_gray.png": (40, 40, "L", "PNG", None),
    "cat/w75_palette.gif": (75, 75, "P", "GIF", None),
    "dog/w300.webp": (300, 300, "RGB", "WEBP", None),
    "dog/w1000.jpg": (1000, 1000, "RGB", "JPEG", None),
    "frog/w300_alpha.png": (300, 300, "RGBA", "PNG", None),
    "ship/w150_cmyk.jpg": (150, 150, "CMYK", "JPEG", None),
    "truck/w200_16bit.png": (200, 200, "I;16", "PNG", None),
    "airplane/w120_rot6.jpg": (240, 120, "RGB", "JPEG", 6),  # displayed 120 wide, 240 high
    "airplane/w450x300.jpg": (450, 300, "RGB", "JPEG", None),  # cropped to 300 x 300
}


def write_photo(path: Path, width: int, height: int, mode: str = "RGB", fmt: str = "PNG",
                orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng_seed = width * 7 + height
    img = noise(width, height, seed=rng_seed) if mode != "P" else halves(width, height)
    path.write_bytes(encode(in_mode(img, mode), fmt, orientation=orientation))


def make_photos(root: Path, photos: dict[str, tuple[int, int, str, str, int | None]] = PHOTOS) -> Path:
    for rel, (width, height, mode, fmt, orientation) in photos.items():
        write_photo(root / rel, width, height, mode, fmt, orientation)
    return root


def make_prepared(root: Path, shape: tuple[int, int, int] = (32, 32, 3), classes: list[str] = CIFAR10,
                  stats: normalization.NormStats = STATS) -> Path:
    artifacts.save_meta(root, artifacts.Meta("cifar10" if shape[2] == 3 else "mnist", classes, shape))
    normalization.save_stats(root / normalization.STATS_FILE, stats)
    return root


def write_params(path: Path, **custom: object) -> Path:
    path.write_text(yaml.safe_dump({"custom": custom}))
    return path


def run_stage(tmp_path: Path, photos: Path, prepared: Path, **custom: object) -> tuple[int, Path, Path]:
    """Run the stage in-process as the command line would; returns (exit code, out dir, sheet)."""
    out, sheet = tmp_path / "out" / "custom_sets", tmp_path / "out" / "plots" / "contact_sheet.png"
    params = write_params(tmp_path / "params.yaml", **custom)
    argv = ["--photos", str(photos), "--prepared", str(prepared), "--out", str(out), "--sheet", str(sheet),
            "--params", str(params)]
    try:
        stage_main(custom_stage.main, argv)
    except SystemExit as exc:
        return int(exc.code or 0), out, sheet
    return 0, out, sheet


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The stage run once on PHOTOS (plus files it must ignore): (photo dir, out dir, sheet)."""
    tmp = tmp_path_factory.mktemp("custom")
    photos = make_photos(tmp / "photos")
    (photos / "README.md").write_text("how to fill this folder\n")
    (photos / ".gitkeep").write_text("")
    (photos / "cat" / ".DS_Store").write_bytes(b"\0\1junk")
    (photos / "cat.dvc").write_text("outs: []\n")
    prepared = make_prepared(tmp / "prepared")
    code, out, sheet = run_stage(tmp, photos, prepared)
    assert code == 0
    return photos, out, sheet


def test_sets_have_the_contract_layout(built: tuple[Path, Path, Path]) -> None:
    _, out, _ = built
    names = SET_STEMS
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{n}.npz" for n in names), "report.json"])
    # the custom sets' files are those of the evaluation table
    assert {s.stem for s in evalsets.SETS if s.folder == evalsets.CUSTOM} <= set(names)
    expected_files = sorted(PHOTOS, key=lambda rel: (CIFAR10.index(rel.split("/")[0]), rel))
    for name in names:
        split = artifacts.load_split(out / f"{name}.npz")
        assert split.x.shape == (len(PHOTOS), 32, 32, 3) and split.x.dtype == np.uint8
        assert split.y.dtype == np.int64
        assert split.extra["files"].tolist() == expected_files
        assert split.y.tolist() == [CIFAR10.index(f.split("/")[0]) for f in expected_files]
        assert "x_norm" not in split.extra  # nothing reads it; it made the stage depend on prepare.normalize
        assert split.x.min() >= 0 and split.x.max() <= 255 and split.x.std() > 10


def test_kernel_size_is_round_w_over_divisor_per_photo(built: tuple[Path, Path, Path]) -> None:
    _, out, _ = built
    report = json.loads((out / "report.json").read_text())
    by_file = {p["file"]: p for p in report["photos"]}
    expected_side = {"airplane/w120_rot6.jpg": 120, "airplane/w450x300.jpg": 300}
    for rel, (width, _, _, _, _) in PHOTOS.items():
        side = expected_side.get(rel, width)
        assert by_file[rel]["square_side"] == side
        assert by_file[rel]["kernel_size"]["filtered"] == images.blur_kernel_size(side, 75)
        for d in DIVISORS:
            assert by_file[rel]["kernel_size"][sweep_name(d)] == images.blur_kernel_size(side, d)
            assert by_file[rel]["kernel_size"][sweep_name(d, NEAREST)] == images.blur_kernel_size(side, d)
    # the four widths of the issue: 40 -> 1 (no blur), 75 -> 1, 300 -> 4, 1000 -> 13
    assert [by_file[f]["kernel_size"]["filtered"] for f in
            ("cat/w40_gray.png", "cat/w75_palette.gif", "dog/w300.webp", "dog/w1000.jpg")] == [1, 1, 4, 13]
    split = artifacts.load_split(out / "filtered.npz")
    files = split.extra["files"].tolist()
    assert split.extra["kernel_size"].tolist() == [by_file[f]["kernel_size"]["filtered"] for f in files]
    assert split.extra["width"].tolist() == [by_file[f]["square_side"] for f in files]
    assert set(artifacts.load_split(out / "unfiltered.npz").extra["kernel_size"].tolist()) == {0}
    assert report["n"] == len(PHOTOS) and report["n_skipped"] == 0 and report["skipped"] == []
    assert report["sets"]["filtered"]["divisor"] == 75 and report["per_class"]["airplane"] == 2
    assert report["sets"]["nearest_filtered"] == {"file": "nearest_filtered.npz", "resample": "nearest",
                                                  "set": "custom_nearest_filtered", "divisor": 75}
    unfiltered = report["sets"]["unfiltered"]
    assert (unfiltered["resample"], unfiltered["set"], unfiltered["divisor"]) == ("lanczos", "custom", None)
    assert report["sets"]["sweep_nearest_25"]["set"] == "sweep_nearest_25"
    assert report["sigma"]["13"] == pytest.approx(2.3)


def test_filtered_differs_from_unfiltered_exactly_when_s_above_one(built: tuple[Path, Path, Path]) -> None:
    _, out, _ = built
    for prefix, resize in (("", evalsets.MAIN), ("nearest_", NEAREST)):
        unfiltered = artifacts.load_split(out / f"{prefix}unfiltered.npz")
        for name in [f"{prefix}filtered", *(sweep_name(d, resize) for d in DIVISORS)]:
            blurred = artifacts.load_split(out / f"{name}.npz")
            for i, s in enumerate(blurred.extra["kernel_size"]):
                assert (s > 1) == (not np.array_equal(blurred.x[i], unfiltered.x[i])), (name, i, s)
        np.testing.assert_array_equal(artifacts.load_split(out / f"{prefix}filtered.npz").x,
                                      artifacts.load_split(out / f"{sweep_name(75, resize)}.npz").x)


def test_stage_matches_to_model_input_of_the_web_demo(built: tuple[Path, Path, Path]) -> None:
    photos, out, _ = built
    filtered, unfiltered, near_filtered, near = (artifacts.load_split(out / f"{n}.npz") for n in (
        "filtered", "unfiltered", "nearest_filtered", "nearest_unfiltered"))
    for i, rel in enumerate(filtered.extra["files"]):
        img = images.open_image(photos / rel)
        np.testing.assert_array_equal(filtered.x[i], images.to_model_input(img, 32, blur_divisor=75))
        np.testing.assert_array_equal(unfiltered.x[i], images.to_model_input(img, 32))
        # seed 004's setup: the same photo, blurred or not, resized by nearest neighbour
        np.testing.assert_array_equal(near_filtered.x[i],
                                      images.to_model_input(img, 32, resample="nearest", blur_divisor=75))
        np.testing.assert_array_equal(near.x[i], images.to_model_input(img, 32, resample="nearest"))
    big = [i for i, rel in enumerate(filtered.extra["files"]) if rel == "dog/w1000.jpg"]
    assert not np.array_equal(near.x[big], unfiltered.x[big])  # the two resizes do differ


def test_compare_resample_null_makes_the_main_sets_only(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"cat/a.png": (300, 300, "RGB", "PNG", None)})
    code, out, sheet = run_stage(tmp_path, photos, make_prepared(tmp_path / "prepared"),
                                 compare_resample=None, sweep_divisors=[50])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["filtered.npz", "report.json", "sweep_50.npz",
                                                    "unfiltered.npz"]
    sets = json.loads((out / "report.json").read_text())["sets"]
    assert set(sets) == {"unfiltered", "filtered", "sweep_50"}
    with_nearest = run_stage(tmp_path / "b", photos, make_prepared(tmp_path / "b" / "prepared"),
                             sweep_divisors=[50])[2]
    assert Image.open(with_nearest).width > Image.open(sheet).width  # two more pictures a photo


def test_compare_resample_equal_to_resample_is_refused(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_stage(tmp_path, tmp_path / "photos", make_prepared(tmp_path / "prepared"),
                             resample="nearest")
    err = capsys.readouterr().err
    assert code == 2 and "compare_resample" in err and "null" in err and not out.exists(), err


def test_exif_rotation_and_alpha_are_honoured(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "cat").mkdir(parents=True)
    (photos / "cat" / "rot6.jpg").write_bytes(encode(halves(64, 32), "JPEG", orientation=6))
    transparent = Image.new("RGBA", (50, 50), (255, 0, 0, 0))
    (photos / "dog").mkdir()
    (photos / "dog" / "clear.png").write_bytes(encode(transparent, "PNG"))
    sets = build_custom_sets(photos, artifacts.Meta("cifar10", CIFAR10, (32, 32, 3)),
                             CustomParams(background=[0, 0, 255], sweep_divisors=[]))
    rotated, clear = sets.images["unfiltered"]
    assert sets.photos[0].width == 32 and sets.photos[0].height == 64  # EXIF 6 turned it upright
    top, bottom = rotated[:8].reshape(-1, 3).mean(0), rotated[-8:].reshape(-1, 3).mean(0)
    assert np.abs(top - RED).max() < 30 and np.abs(bottom - BLUE).max() < 30  # left half went up
    assert (clear == BLUE).all()  # fully transparent: the background param shows


def test_grayscale_data_set_gives_28x28x1(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"3/a.jpg": (300, 300, "RGB", "JPEG", None),
                                               "7/b.png": (56, 56, "RGBA", "PNG", None)})
    digits = [str(d) for d in range(10)]
    prepared = make_prepared(tmp_path / "prepared", (28, 28, 1), digits,
                             normalization.NormStats("standardize", (0.13,), (0.31,)))
    code, out, sheet = run_stage(tmp_path, photos, prepared, sweep_divisors=[50])
    assert code == 0
    for name in ("unfiltered", "filtered", "sweep_50", "nearest_unfiltered", "sweep_nearest_50"):
        split = artifacts.load_split(out / f"{name}.npz")
        assert split.x.shape == (2, 28, 28, 1)
        assert split.y.tolist() == [3, 7]
    assert Image.open(sheet).mode == "RGB"


def test_pad_and_resample_params_change_the_images(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "cat").mkdir(parents=True)
    (photos / "cat" / "wide.png").write_bytes(encode(Image.new("RGB", (300, 100), RED), "PNG"))
    meta = artifacts.Meta("cifar10", CIFAR10, (32, 32, 3))
    crop = build_custom_sets(photos, meta, CustomParams())
    pad = build_custom_sets(photos, meta, CustomParams(square="pad", background=[0, 255, 0], resample="box"))
    assert (crop.images["unfiltered"][0] == RED).all()
    padded = pad.images["unfiltered"][0]
    assert (padded[0] == (0, 255, 0)).all() and (padded[16] == RED).all()
    assert crop.photos[0].side == 100 and pad.photos[0].side == 300
    assert crop.photos[0].kernel_size["filtered"] == 1 and pad.photos[0].kernel_size["filtered"] == 4


def test_contact_sheet_shows_every_photo(built: tuple[Path, Path, Path]) -> None:
    _, _, sheet = built
    img = Image.open(sheet)
    assert img.format == "PNG" and img.mode == "RGB"
    rows = -(-len(PHOTOS) // 4)  # 4 photos a row, each 3 pictures of 96 px
    assert img.width >= 4 * 3 * 96 and img.height >= rows * 96
    rgb = np.asarray(img, np.uint32)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert len(colours) > 1000  # pictures, not an empty page


def test_sheet_max_limits_the_sheet_not_the_sets(tmp_path: Path) -> None:
    five = {f"cat/{i}.png": (40, 40, "RGB", "PNG", None) for i in range(5)}
    photos = make_photos(tmp_path / "photos", five)
    meta = artifacts.Meta("cifar10", CIFAR10, (32, 32, 3))
    limited = CustomParams(sheet_max=2, sweep_divisors=[])
    sets = build_custom_sets(photos, meta, limited)
    assert sets.images["filtered"].shape[0] == 5 and len(sets.photos) == 5
    assert [p.thumbnail is not None for p in sets.photos] == [True, True, False, False, False]
    assert contact_sheet(sets, limited).width < contact_sheet(sets, CustomParams()).width  # 2 columns, not 4


BAD_FILES = {
    "corrupt": ("cat/corrupt.jpg", lambda: encode(noise(80), "JPEG")[:300], "corrupt or truncated"),
    "text": ("cat/notes.jpg", lambda: b"this is not a picture\n", "not an image file"),
    "empty": ("dog/empty.png", lambda: b"", "empty file (0 bytes)"),
    "bomb": ("dog/huge.png", lambda: encode(noise(60, 50), "PNG"), "exceeds the limit of 2000"),
    "bomb_header": ("dog/bomb.png", lambda: png_with_size(30_000, 30_000), "decompression bomb"),
    "folder": ("kitten/a.png", lambda: encode(noise(40), "PNG"), "folder 'kitten' is not a class name"),
    "stray": ("loose.jpg", lambda: encode(noise(40), "JPEG"), "not inside a <class name>/ folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_fails_with_one_line_and_no_output(case: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rel, make, reason = BAD_FILES[case]
    photos = make_photos(tmp_path / "photos", {"cat/good.png": (40, 40, "RGB", "PNG", None)})
    (photos / rel).parent.mkdir(parents=True, exist_ok=True)
    (photos / rel).write_bytes(make())
    code, out, sheet = run_stage(tmp_path, photos, make_prepared(tmp_path / "prepared"), max_pixels=2000)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], err
    named = str(photos / rel.split("/")[0]) + "/" if case == "folder" else str(photos / rel)
    assert named in lines[0]
    assert not out.exists() and not sheet.exists() and not sheet.parent.exists()


def test_skip_lists_every_bad_file_with_its_reason(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    photos = make_photos(tmp_path / "photos", {"cat/good.png": (40, 40, "RGB", "PNG", None)})
    for rel, make, _ in BAD_FILES.values():
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(make())
    code, out, sheet = run_stage(tmp_path, photos, make_prepared(tmp_path / "prepared"),
                                 on_error="skip", max_pixels=2000)
    assert code == 0
    assert "skipped 7 bad file(s)" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    skipped = {s["file"]: s["reason"] for s in report["skipped"]}
    expected = {("kitten/" if case == "folder" else rel): reason
                for case, (rel, _, reason) in BAD_FILES.items()}
    assert sorted(skipped) == sorted(expected)
    for file, reason in expected.items():
        assert reason in skipped[file]
    assert report["n"] == 1 and report["n_skipped"] == 7
    assert artifacts.load_split(out / "filtered.npz").extra["files"].tolist() == ["cat/good.png"]
    assert sheet.is_file()


@pytest.mark.parametrize("state", ["missing", "empty", "readme_only", "empty_class_folder"])
def test_missing_or_empty_folder_gives_empty_sets_and_a_warning(state: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    if state != "missing":
        photos.mkdir()
    if state == "readme_only":
        (photos / "README.md").write_text("put photos in <class>/\n")
    if state == "empty_class_folder":
        (photos / "cat").mkdir()
    code, out, sheet = run_stage(tmp_path, photos, make_prepared(tmp_path / "prepared"))
    assert code == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "empty (n = 0)" in err and str(photos) in err
    for name in SET_STEMS:
        split = artifacts.load_split(out / f"{name}.npz")
        assert split.x.shape == (0, 32, 32, 3) and split.x.dtype == np.uint8
        assert split.y.shape == (0,) and split.extra["files"].shape == (0,)
    assert json.loads((out / "report.json").read_text())["n"] == 0
    assert Image.open(sheet).size[1] < 200  # a small sheet that says "no photos"


def test_bad_params_fail_with_the_key_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepared = make_prepared(tmp_path / "prepared")
    for custom, key in [({"background": [255, 255]}, "background"),
                        ({"on_error": "ignore"}, "custom.on_error"),
                        ({"sweep_divisors": [75, 0]}, "sweep_divisors[1]"),
                        ({"blurr": 3}, "custom.blurr")]:
        code, out, _ = run_stage(tmp_path, tmp_path / "photos", prepared, **custom)
        err = capsys.readouterr().err
        assert code == 2 and key in err and err.startswith("error: ") and not out.exists(), err


def test_the_stage_does_not_read_the_normalization_statistics(tmp_path: Path) -> None:
    """Only meta.json: a change of prepare.normalize must not re-run custom (dvc.yaml drops the dep)."""
    prepared = make_prepared(tmp_path / "prepared")
    (prepared / normalization.STATS_FILE).unlink()
    photos = make_photos(tmp_path / "photos", {"cat/a.png": (40, 40, "RGB", "PNG", None)})
    code, out, _ = run_stage(tmp_path, photos, prepared)
    assert code == 0 and artifacts.load_split(out / "unfiltered.npz").x.shape == (1, 32, 32, 3)
    custom = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["custom"]
    assert not any("normalization" in dep for dep in custom["deps"])


@pytest.mark.parametrize(("divisor", "name"), [(75, "sweep_75"), (75.0, "sweep_75"), (37.5, "sweep_37.5"),
                                               (1e6, "sweep_1000000"), (0.5, "sweep_0.5")])
def test_sweep_names_match_what_evaluate_parses(divisor: float, name: str) -> None:
    assert sweep_name(divisor) == name
    assert parse_sweep(name) == (evalsets.MAIN, float(divisor))  # the one parser evaluation and report use
    nearest = sweep_name(divisor, NEAREST)
    assert nearest == name.replace("sweep_", "sweep_nearest_")
    assert parse_sweep(nearest) == (NEAREST, float(divisor))


@pytest.mark.parametrize("name", ["sweep_", "sweep_x", "sweep_1e5", "sweep_lanczos_75", "sweep_75.npz",
                                  "custom", "filtered", "sweep_nearest_", "sweep_1.2.3"])
def test_parse_sweep_refuses_other_names(name: str) -> None:
    assert parse_sweep(name) is None


def test_find_photos_order_and_nested_folders(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"truck/b.png": (40, 40, "RGB", "PNG", None),
                                               "cat/z.png": (40, 40, "RGB", "PNG", None),
                                               "cat/trip/a.png": (40, 40, "RGB", "PNG", None)})
    found, problems = find_photos(photos, CIFAR10)
    assert [(p.relative_to(photos).as_posix(), y) for p, y in found] == [
        ("cat/trip/a.png", 3), ("cat/z.png", 3), ("truck/b.png", 9)]
    assert problems == []
    (photos / "Cat").mkdir()
    with pytest.raises(DataError, match="did you mean 'cat'"):
        find_photos(photos, CIFAR10)


def test_subprocess_error_line_and_exit_code(prepared_dir: Path, tmp_path: Path) -> None:
    """The real command line on the shared prepared fixture (its classes come from meta.json)."""
    classes = artifacts.load_meta(prepared_dir).classes
    photos = make_photos(tmp_path / "photos", {f"{classes[0]}/ok.png": (64, 64, "RGB", "PNG", None)})
    (photos / classes[1]).mkdir()
    (photos / classes[1] / "broken.jpg").write_bytes(encode(noise(64), "JPEG")[:200])
    out, sheet = tmp_path / "sets", tmp_path / "plots" / "sheet.png"
    cmd = [sys.executable, "-m", "stages.custom", "--photos", str(photos), "--prepared", str(prepared_dir),
           "--out", str(out), "--sheet", str(sheet), "--params", str(write_params(tmp_path / "p.yaml"))]
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()]  # exactly one line
    assert result.stderr.startswith(f"error: {photos / classes[1] / 'broken.jpg'}: corrupt or truncated")
    assert not out.exists() and not sheet.exists()
    write_params(tmp_path / "p.yaml", on_error="skip")
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert artifacts.load_split(out / "unfiltered.npz").x.shape == (1, 32, 32, 3)
    assert "1 photo(s), 1 skipped" in result.stdout


@pytest.mark.slow
def test_dvc_repro_runs_custom_and_tracks_its_params_and_folder(tmp_path: Path) -> None:
    """The real dvc.yaml in a temporary repository: ${custom.dir} in cmd and deps, exact params."""
    from cifar_dvc.demo import copy_project, run_dvc

    tiny = {"num_classes": 3, "train_per_class": 20, "test_per_class": 5}
    repo = copy_project(tmp_path / "repo", {"data": {"dataset": "synthetic", "synthetic": tiny}})
    first, second, third = synthetic.class_names(3)
    make_photos(repo / "data" / "custom", {f"{first}/a.png": (150, 150, "RGB", "PNG", None),
                                           f"{third}/b.jpg": (300, 200, "RGB", "JPEG", None)})
    run_dvc(repo, "repro", "custom")
    split = artifacts.load_split(repo / "data" / "custom_sets" / "filtered.npz")
    assert split.y.tolist() == [0, 2] and split.extra["kernel_size"].tolist() == [2, 3]
    assert (repo / "plots" / "custom" / "contact_sheet.png").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["custom"]
    assert set(lock["params"]["params.yaml"]) == {f"custom.{f.name}" for f in dataclasses.fields(CustomParams)
                                                   if f.name != "dir"}  # dir: in cmd and deps instead
    assert "data/custom" in {d["path"] for d in lock["deps"]}
    assert "data/prepared/normalization.json" not in {d["path"] for d in lock["deps"]}
    assert (repo / "data" / "custom_sets" / "nearest_filtered.npz").is_file()

    def changed() -> set[str]:
        return set(json.loads(run_dvc(repo, "status", "--json", "custom").stdout or "{}"))  # + upstream

    assert changed() == set()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["custom"]["blur_divisor"] = 50
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed() == {"custom"}  # and nothing upstream
    (repo / "photos2" / second).mkdir(parents=True)
    (repo / "photos2" / second / "c.png").write_bytes(encode(noise(40), "PNG"))
    params["custom"]["dir"] = "photos2"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_dvc(repo, "repro", "custom")
    assert artifacts.load_split(repo / "data" / "custom_sets" / "unfiltered.npz").y.tolist() == [1]

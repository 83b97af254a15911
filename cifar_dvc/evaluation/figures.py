"""The seeds' figures, one function each, drawn with matplotlib into PNG files.

Every function takes the data it draws (arrays, class names, a Keras model) and the PNG path,
writes the file atomically and returns the path; none reads pipeline files itself (that is
``cifar_dvc.evaluation.report``'s job), so each can be called and tested on its own. When there
is nothing to draw (an empty custom set, a model without convolutions) the figure says so in
words instead of being left out, so the report always has the same files.

- ``training_curves``: accuracy and loss per epoch, train solid, validation dashed (000 fig. 1, 004 fig. 3)
- ``example_predictions``: test images with true and predicted labels (000 fig. 2)
- ``incorrect_share``: share of incorrect predictions per class (000 fig. 3)
- ``confusion_matrices``: confusion matrices of one variant's sets (004 appendix C)
- ``misclassified_photos``: the misclassified custom photos (004 appendix C)
- ``filter_visualization``: inputs maximizing conv filters by gradient ascent (000 fig. 4, 004 appendix B)
- ``class_ideal_images``: inputs maximizing each class probability (000 fig. 5)
- ``activation_grids``: 16 feature maps a layer tiled 2x8, a few layers stacked (004 appendix A)
- ``weight_histograms``: histograms of each layer's weights (003)
- ``occlusion_maps``: drop of the true-class probability under a sliding grey patch (004's future work)
- ``blur_sweep``: custom-set accuracy against blur strength, one line per variant and resize (issue 18)
- ``reliability_diagram``: accuracy against confidence, with the ECE (beyond the seeds)
- ``corruption_curves``: accuracy against corruption severity, with and without BatchNorm
  adaptation (issue 18)

Reads nothing, writes only the PNG paths it is given. ``cifar_dvc.evaluation.report.FIGURES``
binds each to its file and the pipeline data it draws (a new figure: a function here, an entry
there); run by ``python -m stages.report``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dvc import atomic, evalsets, inference
from cifar_dvc.evaluation import metrics
from cifar_dvc.normalization import NormStats

DPI = 100
TRAIN_STYLE, VALIDATION_STYLE = "-", "--"  # seed 000 fig. 1: continuous = training, dashed = validation


def _figure(width: float, height: float, layout: str | None = None) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    return Figure(figsize=(width, height), dpi=DPI, layout=layout)


def _save(fig: Any, path: Path | str) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic.write_bytes(path, buffer.getvalue())
    return Path(path)


def note(path: Path | str, title: str, text: str) -> Path:
    """A figure that explains in words why there is nothing to draw."""
    fig = _figure(6, 2.5)
    fig.text(0.5, 0.65, title, ha="center", va="center", fontsize=12, weight="bold")
    fig.text(0.5, 0.35, text, ha="center", va="center", fontsize=9, wrap=True)
    return _save(fig, path)


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _show_image(ax: Any, image: np.ndarray) -> None:
    if image.ndim == 3 and image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def training_curves(curves: dict[str, dict[str, dict[str, np.ndarray]]], path: Path | str) -> Path:
    """``curves[variant][split][metric]`` = values per step (split ``train``/``validation``,
    metric ``step``/``accuracy``/``loss``): one panel per metric, one colour per variant."""
    if not curves:
        return note(path, "Training curves", "no variant has training logs")
    fig = _figure(12, 4.5)
    axes = fig.subplots(1, 2)
    for color, (variant, splits) in zip(_colors(len(curves)), curves.items(), strict=True):
        for split, style in (("train", TRAIN_STYLE), ("validation", VALIDATION_STYLE)):
            data = splits.get(split)
            if not data:
                continue
            for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
                if metric in data:
                    ax.plot(data["step"] + 1, data[metric], style, color=color, label=f"{variant} {split}")
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].set_title("Accuracy (solid: training, dashed: validation)")
    axes[1].set_title("Loss")
    axes[1].legend(fontsize=7, ncol=2 if len(curves) > 4 else 1)
    return _save(fig, path)


def example_predictions(images: np.ndarray, y: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                        path: Path | str, columns: int = 5, title: str = "") -> Path:
    """A grid of images titled ``true / predicted``, green when right and red when wrong."""
    if len(images) == 0:
        return note(path, title or "Example predictions", "no images")
    rows = math.ceil(len(images) / columns)
    fig = _figure(1.8 * columns, 1.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for i, ax in enumerate(axes):
        if i >= len(images):
            ax.axis("off")
            continue
        _show_image(ax, images[i])
        ok = y[i] == pred[i]
        ax.set_title(f"{classes[y[i]]}\n→ {classes[pred[i]]}", fontsize=8, color="green" if ok else "red")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def incorrect_share(confusions: dict[str, np.ndarray], classes: Sequence[str], path: Path | str,
                    title: str = "Share of incorrect predictions per class (test set)") -> Path:
    """Grouped bars: for each class, 1 - recall of each variant (from its confusion matrix)."""
    if not confusions:
        return note(path, title, "no variants")
    # wider with more classes and variants, but bounded (CIFAR-100 has 100 classes)
    fig = _figure(min(24.0, max(8.0, 0.6 * len(classes) * max(1.0, len(confusions) / 3))), 4.5)
    ax = fig.subplots()
    width = 0.8 / len(confusions)
    x = np.arange(len(classes))
    colors = _colors(len(confusions))
    for i, (color, (variant, cm)) in enumerate(zip(colors, confusions.items(), strict=True)):
        support = cm.sum(axis=1)
        wrong = np.divide(support - np.diag(cm), support, out=np.zeros(len(classes)), where=support > 0)
        ax.bar(x - 0.4 + (i + 0.5) * width, wrong, width, color=color, label=variant)
    ax.set_xticks(x, classes, rotation=45 if len(classes) <= 20 else 90, ha="right", fontsize=8)
    ax.set_ylabel("share of incorrect predictions")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2 if len(confusions) > 5 else 1)
    return _save(fig, path)


def confusion_matrices(matrices: dict[str, np.ndarray], classes: Sequence[str], path: Path | str,
                       title: str = "") -> Path:
    """One heat map per set (rows actual, columns predicted), counts written in when they fit."""
    shown = {name: cm for name, cm in matrices.items() if cm.sum() > 0}
    if not shown:
        return note(path, title or "Confusion matrices", "every set is empty (n = 0)")
    k = len(classes)
    size = max(4.0, 0.35 * min(k, 20))  # beyond 20 classes: no labels, same size
    fig = _figure(size * len(shown) + 1, size + 0.8, layout="constrained")  # room for every label
    axes = np.atleast_1d(fig.subplots(1, len(shown)))
    for ax, (name, cm) in zip(axes, shown.items(), strict=True):
        ax.imshow(cm, cmap="Blues")
        if k <= 20:
            limit = cm.max() / 2
            for (a, p), count in np.ndenumerate(cm):
                if count:
                    ax.text(p, a, str(count), ha="center", va="center", fontsize=7,
                            color="white" if count > limit else "black")
            ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(k), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{name} (n = {int(cm.sum())}, accuracy {np.trace(cm) / cm.sum():.1%})", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def misclassified_photos(images: np.ndarray, y: np.ndarray, probs: np.ndarray, files: Sequence[str],
                         classes: Sequence[str], path: Path | str, max_images: int = 40,
                         columns: int = 8, title: str = "Misclassified photos") -> Path:
    """The photos whose most probable class is wrong, titled ``true → predicted (probability)``."""
    if len(y) == 0:
        return note(path, title, "the custom set is empty (n = 0): put photos in data/custom/<class>/")
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)[:max_images]
    if len(wrong) == 0:
        return note(path, title, f"all {len(y)} photos are classified correctly")
    rows = math.ceil(len(wrong) / columns)
    fig = _figure(2.0 * columns, 2.0 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, i in zip(axes, list(wrong) + [None] * (len(axes) - len(wrong)), strict=True):
        if i is None:
            ax.axis("off")
            continue
        _show_image(ax, images[i])
        name = Path(str(files[i])).name if len(files) else ""
        name = name if len(name) <= 20 else f"{name[:8]}…{name[-11:]}"  # keep the distinctive end
        label = f"{classes[y[i]]} → {classes[pred[i]]} ({probs[i, pred[i]]:.2f})"
        ax.set_title(f"{name}\n{label}", fontsize=7)
    fig.suptitle(f"{title}: {len(np.flatnonzero(pred != y))} of {len(y)}")
    return _save(fig, path)


def _display(x: np.ndarray) -> np.ndarray:
    """An input-space image (any scale) as uint8 for display: standardized, clipped, stretched."""
    x = x.astype(np.float32)
    x = (x - x.mean()) / (x.std() + 1e-5) * 0.15 + 0.5  # Chollet's deprocessing
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def conv_layers(model: Any) -> list[tuple[Any, Any]]:
    """``(host model, layer)`` of the 2-D convolutions, top level first, else inside nested models."""
    import keras

    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    found = [(model, layer) for layer in model.layers if isinstance(layer, convs)]
    if not found:
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                found += conv_layers(layer)
    return found


def _forward(model: Any, x: np.ndarray, batch_size: int = 256) -> Any:
    """Outputs of ``model`` on a few images by direct (eager) calls: for the small batches of the
    figures this is faster than ``model.predict``, which traces a new function for each model."""
    outputs = [model(x[i:i + batch_size], training=False) for i in range(0, len(x), batch_size)]
    if isinstance(outputs[0], (list, tuple)):
        return [np.concatenate([np.asarray(o[j]) for o in outputs]) for j in range(len(outputs[0]))]
    return np.concatenate([np.asarray(o) for o in outputs])


def _spread(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items evenly spaced from the first to the last."""
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def gradient_ascent(model: Any, objective: Any, count: int, steps: int, step_size: float,
                    seed: int = 0) -> np.ndarray:
    """``count`` inputs, each pushed up ``objective(outputs)[i]`` (one value per input) by ascent.

    Starts from a grey image with a little noise; each step moves along the gradient normalized
    to unit RMS, so ``step_size`` is in input units whatever the layer's scale. One compiled
    step updates all inputs at once.
    """
    import tensorflow as tf

    shape = (count, *model.inputs[0].shape[1:])
    rng = np.random.default_rng(seed)
    x = tf.Variable(rng.normal(0.0, 0.05, shape).astype(np.float32))

    @tf.function
    def step() -> None:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(objective(model(x, training=False)))
        grad = tape.gradient(loss, x)
        grad /= tf.sqrt(tf.reduce_mean(tf.square(grad), axis=[1, 2, 3], keepdims=True)) + 1e-8
        x.assign_add(step_size * grad)

    for _ in range(steps):
        step()
    return x.numpy()


def filter_visualization(model: Any, path: Path | str, layers: int = 2, filters: int = 16, steps: int = 30,
                         step_size: float = 1.0, title: str = "Filter visualization") -> Path:
    """For ``layers`` conv layers (first to last), the inputs maximizing the mean output of each of
    their first ``filters`` filters; one row of tiles per layer, input side on top."""
    import keras
    import tensorflow as tf

    chosen = _spread(conv_layers(model), layers)
    if not chosen:
        return note(path, title, f"{model.name} has no convolutional layers")
    rows = []
    for host, layer in chosen:
        extractor = keras.Model(host.inputs[0], layer.output)  # one input: call it with a tensor
        n = min(filters, int(layer.output.shape[-1]))
        mask = tf.one_hot(tf.range(n), int(layer.output.shape[-1]))  # image i drives filter i

        def objective(act: Any, mask: Any = mask) -> Any:
            return tf.einsum("nhwc,nc->n", act, mask) / float(act.shape[1] * act.shape[2])

        images = gradient_ascent(extractor, objective, n, steps, step_size)
        rows.append((layer.name, [_display(image) for image in images]))
    columns = max(len(images) for _, images in rows)
    fig = _figure(1.1 * columns, 1.25 * len(rows) + 0.5)
    axes = np.atleast_2d(fig.subplots(len(rows), columns, squeeze=False))
    for r, (name, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            if c < len(images):
                _show_image(ax, images[c])
                ax.set_title(str(c), fontsize=6)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(f"{title}: {model.name}, {steps} ascent steps")
    return _save(fig, path)


def class_ideal_images(model: Any, classes: Sequence[str], path: Path | str, max_classes: int = 10,
                       steps: int = 60, step_size: float = 1.0,
                       title: str = "Class-ideal images") -> Path:
    """For each of the first ``max_classes`` classes, the input maximizing its log-probability."""
    import tensorflow as tf

    n = min(max_classes, len(classes))
    mask = tf.one_hot(tf.range(n), len(classes))

    def objective(probs: Any) -> Any:
        return tf.reduce_sum(tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)) * mask, axis=1)

    images = gradient_ascent(model, objective, n, steps, step_size)
    probs = _forward(model, images)
    columns = min(n, 5)
    rows = math.ceil(n / columns)
    fig = _figure(2.0 * columns, 2.2 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.axis("off")
            continue
        _show_image(ax, _display(images[i]))
        ax.set_title(f"{classes[i]} (p = {probs[i, i]:.2f})", fontsize=8)
    fig.suptitle(f"{title}: {model.name}, {steps} ascent steps")
    return _save(fig, path)


def feature_layers(model: Any) -> list[Any]:
    """Top-level layers with 4-D (N, H, W, C) output, except the input."""
    import keras

    return [layer for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4]


def activation_grids(model: Any, images: np.ndarray, stats: NormStats, path: Path | str, layers: int = 4,
                     filters: int = 16, labels: Sequence[str] = (), title: str = "Activations") -> Path:
    """For each image: the image, then per chosen layer its first ``filters`` feature maps tiled in
    2 rows (input side on top), coloured with viridis (seed 004 appendix A)."""
    import keras

    chosen = _spread(feature_layers(model), layers)
    if not chosen or len(images) == 0:
        return note(path, title, f"{model.name} has no layers with 2-D feature maps" if not chosen
                    else "no input images")
    extractor = keras.Model(model.inputs[0], [layer.output for layer in chosen])
    outputs = _forward(extractor, inference.model_input(images, stats))
    outputs = outputs if isinstance(outputs, list) else [outputs]
    half = filters // 2
    fig = _figure(1.0 * half * len(images) + 0.5, 2.1 * len(chosen) + 1.6)
    grid = fig.add_gridspec(1 + 2 * len(chosen), len(images) * half, hspace=0.15, wspace=0.05)
    for i, image in enumerate(images):
        ax = fig.add_subplot(grid[0, i * half:i * half + 2])
        _show_image(ax, image)
        ax.set_title(labels[i] if i < len(labels) else f"image {i}", fontsize=8)
        for j, (layer, maps) in enumerate(zip(chosen, outputs, strict=True)):
            for k in range(min(filters, maps.shape[-1])):
                ax = fig.add_subplot(grid[1 + 2 * j + k // half, i * half + k % half])
                ax.imshow(maps[i, :, :, k], cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0 and i == 0:
                    ax.set_ylabel(layer.name[:14], fontsize=6)
    fig.suptitle(f"{title}: {model.name}, {filters} feature maps a layer")
    return _save(fig, path)


def weight_histograms(model: Any, path: Path | str, title: str = "Weight histograms") -> Path:
    """One histogram per layer that has a kernel (conv and dense weights; biases left out), as in seed 003."""
    kernels = [(layer.name, np.asarray(weights.numpy()).ravel())
               for layer in model.layers for weights in layer.weights
               if weights.name in ("kernel", "depthwise_kernel")]
    if not kernels:
        return note(path, title, f"{model.name} has no kernel weights at the top level")
    columns = min(4, len(kernels))
    rows = math.ceil(len(kernels) / columns)
    fig = _figure(3.2 * columns, 2.4 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, item in zip(axes, kernels + [None] * (len(axes) - len(kernels)), strict=True):
        if item is None:
            ax.axis("off")
            continue
        name, values = item
        ax.hist(values, bins=50, color="tab:blue")
        ax.set_title(f"{name} ({values.size:,})", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{title}: {model.name}")
    return _save(fig, path)


def occlusion_map(model: Any, image: np.ndarray, label: int, stats: NormStats, patch: int = 8,
                  stride: int = 4, batch_size: int = 256) -> np.ndarray:
    """Per pixel, the mean drop of the true-class probability over the grey patches covering it."""
    h, w = image.shape[:2]
    positions = [(r, c) for r in range(0, max(h - patch, 0) + 1, stride)
                 for c in range(0, max(w - patch, 0) + 1, stride)]
    batch = np.repeat(image[None], len(positions) + 1, axis=0)
    for i, (r, c) in enumerate(positions, start=1):
        batch[i, r:r + patch, c:c + patch] = 128  # mid grey; batch[0] stays the original
    probs = _forward(model, inference.model_input(batch, stats), batch_size)
    drop = probs[0, label] - probs[1:, label]
    total = np.zeros((h, w), np.float32)
    covered = np.zeros((h, w), np.float32)
    for d, (r, c) in zip(drop, positions, strict=True):
        total[r:r + patch, c:c + patch] += d
        covered[r:r + patch, c:c + patch] += 1
    return np.divide(total, covered, out=np.zeros_like(total), where=covered > 0)


def occlusion_maps(model: Any, images: np.ndarray, y: np.ndarray, pred: np.ndarray, stats: NormStats,
                   classes: Sequence[str], path: Path | str, patch: int = 8, stride: int = 4,
                   title: str = "Occlusion maps") -> Path:
    """For each image: the image, and where a grey patch lowers the true-class probability most (red)."""
    if len(images) == 0:
        return note(path, title, "no misclassified images to explain")
    fig = _figure(2.0 * len(images), 4.4)
    axes = fig.subplots(2, len(images), squeeze=False)
    for i, image in enumerate(images):
        heat = occlusion_map(model, image, int(y[i]), stats, patch, stride)
        _show_image(axes[0, i], image)
        axes[0, i].set_title(f"{classes[y[i]]} → {classes[pred[i]]}", fontsize=8)
        limit = max(float(np.abs(heat).max()), 1e-6)
        axes[1, i].imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[1, i].set_xticks([])
        axes[1, i].set_yticks([])
        axes[1, i].set_title(f"max drop {heat.max():.3g}", fontsize=7)
    fig.suptitle(f"{title}: {model.name}, {patch}px patch, stride {stride} "
                 "(red: the patch lowers the true-class probability)")
    return _save(fig, path)


def blur_sweep_lines(sweeps: dict[str, dict[str, dict[float, float]]],
                     unfiltered: dict[str, dict[str, float | None]],
                     resize_labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The lines of ``blur_sweep``: per variant and resize (main first) ``{variant, resize, label,
    divisors, accuracy, unfiltered}``, the divisors ascending; ``unfiltered`` the photos without blur
    (None when not measured)."""
    labels = resize_labels or {}
    lines = []
    for variant, by_resize in sweeps.items():
        for resize in evalsets.RESIZES:
            points = by_resize.get(resize) or {}
            if points:
                divisors = sorted(points)
                lines.append({"variant": variant, "resize": resize,
                              "label": f"{variant}, {labels.get(resize, resize)}", "divisors": divisors,
                              "accuracy": [points[d] for d in divisors],
                              "unfiltered": (unfiltered.get(variant) or {}).get(resize)})
    return lines


def blur_sweep(sweeps: dict[str, dict[str, dict[float, float]]],
               unfiltered: dict[str, dict[str, float | None]], path: Path | str,
               title: str = "Custom-set accuracy against blur strength",
               resize_labels: dict[str, str] | None = None) -> Path:
    """Accuracy on each sweep set against d (kernel s = round(w / d): small d = strong blur):
    ``sweeps[variant][resize][divisor]``, one colour per variant, solid for the main resize and
    dashed for seed 004's nearest one. Each line ends at "none", the unfiltered photos
    (``unfiltered[variant][resize]``): the limit d -> infinity, where s = round(w / d) is 0."""
    labels = resize_labels or {}
    lines = blur_sweep_lines(sweeps, unfiltered, labels)
    if not lines:
        return note(path, title, "no blur sweep: custom.sweep_divisors is empty or the custom set is empty")
    divisors = sorted({d for line in lines for d in line["divisors"]})
    none_x = divisors[-1] * 2  # "no blur" one step right of the weakest blur, on the log axis
    styles = {evalsets.MAIN: "o-", evalsets.NEAREST: "s--"}
    colors = dict(zip(sweeps, _colors(len(sweeps)), strict=True))
    fig = _figure(7.5, 4.8)
    ax = fig.subplots()
    for line in lines:
        xs, ys = line["divisors"], line["accuracy"]
        if line["unfiltered"] is not None:
            xs, ys = [*xs, none_x], [*ys, line["unfiltered"]]
        ax.plot(xs, ys, styles[line["resize"]], color=colors[line["variant"]], label=line["label"])
    ax.set_xscale("log")
    # ticks at the divisors themselves, not at powers of 10
    ax.set_xticks([*divisors, none_x], [*(f"{d:g}" for d in divisors), "none"])
    ax.minorticks_off()
    ax.set_xlabel("blur divisor d (kernel s = round(w / d); smaller d = stronger blur; none = unfiltered)")
    ax.set_ylabel("accuracy")
    main, nearest = labels.get(evalsets.MAIN, evalsets.MAIN), labels.get(evalsets.NEAREST, evalsets.NEAREST)
    ax.set_title(f"{title}\n(solid: {main} resize; dashed: {nearest} resize, seed 004's)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(sweeps) > 4 else 1)
    return _save(fig, path)


def reliability_diagram(predictions: dict[str, tuple[np.ndarray, np.ndarray]], path: Path | str,
                        bins: int = 15, title: str = "Reliability diagram (test set)") -> Path:
    """Accuracy against mean confidence per confidence bin, one line per variant, ECE in the legend."""
    if not predictions:
        return note(path, title, "no variants")
    fig = _figure(6, 5.5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for color, (variant, (probs, y)) in zip(_colors(len(predictions)), predictions.items(), strict=True):
        if len(y) == 0:
            continue
        table = metrics.calibration_bins(probs, y, bins)
        used = table["count"] > 0
        ece = metrics.expected_calibration_error(probs, y, bins)
        ax.plot(table["confidence"][used], table["accuracy"][used], "o-", color=color,
                label=f"{variant} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (mean of the bin)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}, {bins} bins")
    ax.legend(fontsize=7)
    return _save(fig, path)


def corruption_curves(rows: dict[str, list[dict[str, Any]]], path: Path | str,
                      title: str = "Accuracy under corruptions") -> Path:
    """One panel per corruption and one for their mean: accuracy against severity 0..3, a colour
    per variant, solid without and dashed with BatchNorm adaptation (severity 0: the clean subset).

    ``rows``: ``{variant: [{corruption, severity, accuracy, accuracy_adapted}, ...]}`` as in
    ``eval/<variant>/corruptions.csv`` (corruption ``none`` at severity 0 is the clean subset).
    """
    rows = {variant: table for variant, table in rows.items() if table}
    if not rows:
        return note(path, title, "no corruption results: evaluate.corruptions is empty")
    names = list(dict.fromkeys(r["corruption"] for table in rows.values() for r in table
                               if r["severity"] > 0))
    panels = [*names, "mean"]
    columns = min(3, len(panels))
    fig = _figure(4.2 * columns, 3.4 * math.ceil(len(panels) / columns) + 0.6, layout="constrained")
    axes = np.atleast_1d(fig.subplots(math.ceil(len(panels) / columns), columns)).ravel()
    for ax in axes[len(panels):]:
        ax.axis("off")
    for color, (variant, table) in zip(_colors(len(rows)), rows.items(), strict=True):
        clean = next((r for r in table if r["severity"] == 0), None)
        for ax, panel in zip(axes, panels, strict=False):
            lines = (("accuracy", "-", variant), ("accuracy_adapted", "--", f"{variant} adapted"))
            for key, style, label in lines:
                points = _severity_points(table, panel, key)
                if clean is not None and clean[key] is not None and points:
                    points = {0: clean[key], **points}
                if points:
                    severities = sorted(points)
                    ax.plot(severities, [points[s] for s in severities], style, marker="o", color=color,
                            label=label)
    for ax, panel in zip(axes, panels, strict=False):
        ax.set_title(panel.replace("_", " ") if panel != "mean" else "mean over the corruptions", fontsize=9)
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel("accuracy")
        ax.set_xticks(range(0, 4))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    n = next(r["n"] for table in rows.values() for r in table)
    fig.suptitle(f"{title}: {n} test images, no TTA (dashed: BatchNorm statistics adapted to each set)")
    return _save(fig, path)


def _severity_points(table: list[dict[str, Any]], panel: str, key: str) -> dict[int, float]:
    """``{severity: value of key}`` of one corruption, or its mean over the corruptions (``mean``)."""
    by_severity: dict[int, list[float | None]] = {}
    for row in table:
        if row["severity"] > 0 and (panel == "mean" or row["corruption"] == panel):
            by_severity.setdefault(int(row["severity"]), []).append(row[key])
    return {s: float(np.mean(v)) for s, v in by_severity.items() if v and all(x is not None for x in v)}

"""Train water-mlp on the shipped Landsat 7 scene and export it to ONNX.

    .venv/bin/python examples/models/water-mlp/train.py [--out DIR]

Writes water_mlp.onnx, card.json (the catalog's model card: data used,
held-out metrics) and example_input.npy (into the model
folder unless --out says otherwise). Deterministic: fixed seed, float64
training, so a re-run reproduces the committed weights.

Labels are derived, not hand-drawn: a pixel is water when both McFeeters'
NDWI (green vs nir) and Xu's MNDWI (green vs swir1) are above 0 on the
scene's digital numbers. The network reads all six bands and is scored on a
block of rows it never saw in training (HELDOUT_ROWS), against the same rule.
"""

from __future__ import annotations

import argparse
import json
from itertools import pairwise
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCENE = HERE.parents[1] / "data" / "L7_ETMs.tif"
BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
HELDOUT_ROWS = (224, 288)  # scored only; never trained on
GAP_ROWS = 8  # rows either side of the held-out block left out of training too
HIDDEN = (32, 32)
SEED = 0
EPOCHS = 12
BATCH_PX = 1024
LEARNING_RATE = 3e-3
OPSET = 17
MODEL_FILE = "water_mlp.onnx"
INPUT_NAME, OUTPUT_NAME = "tiles", "water_probability"
EXAMPLE_WINDOW = (96, 93)  # (row, col) of a 256 px tile with coast, ocean and land
LABEL_RULE = "water where green > nir and green > swir1 (NDWI > 0 and MNDWI > 0) on the digital numbers"


def read_scene(path: Path = SCENE) -> np.ndarray:
    """(6, H, W) float64 digital numbers."""
    import rasterio

    with rasterio.open(path) as scene:
        return scene.read().astype(np.float64)


def water_labels(scene: np.ndarray) -> np.ndarray:
    """(H, W) bool: NDWI > 0 and MNDWI > 0, i.e. green above both nir and swir1."""
    green, nir, swir1 = scene[1], scene[3], scene[4]
    return (green > nir) & (green > swir1)


def row_split(height: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) boolean masks over rows."""
    rows = np.arange(height)
    heldout = (rows >= HELDOUT_ROWS[0]) & (rows < HELDOUT_ROWS[1])
    near = (rows >= HELDOUT_ROWS[0] - GAP_ROWS) & (rows < HELDOUT_ROWS[1] + GAP_ROWS)
    return ~near, heldout


def init_weights(rng: np.random.Generator) -> list[np.ndarray]:
    sizes = (len(BANDS), *HIDDEN, 1)
    params = []
    for fan_in, fan_out in pairwise(sizes):
        params.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out)))
        params.append(np.zeros(fan_out))
    return params


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits (n,) and the activations backprop needs."""
    activations = [x]
    h = x
    for i in range(0, len(params) - 2, 2):
        h = np.maximum(h @ params[i] + params[i + 1], 0.0)
        activations.append(h)
    return (h @ params[-2] + params[-1])[:, 0], activations


def gradients(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Mean binary cross-entropy gradients."""
    logits, activations = forward(params, x)
    delta = ((1.0 / (1.0 + np.exp(-logits)) - y) / len(y))[:, None]
    grads: list[np.ndarray] = [np.empty(0)] * len(params)
    for layer in range(len(params) // 2 - 1, -1, -1):
        grads[2 * layer] = activations[layer].T @ delta
        grads[2 * layer + 1] = delta.sum(axis=0)
        if layer:
            delta = (delta @ params[2 * layer].T) * (activations[layer] > 0)
    return grads


def train(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Adam on shuffled mini-batches of pixels."""
    rng = np.random.default_rng(SEED)
    params = init_weights(rng)
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    beta1, beta2, step = 0.9, 0.999, 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH_PX):
            batch = order[start : start + BATCH_PX]
            step += 1
            for p, g, m, v in zip(params, gradients(params, x[batch], y[batch]), first, second, strict=True):
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                p -= LEARNING_RATE * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + 1e-8)
    return params


def fold_standardization(params: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
    """First layer rewritten to take raw digital numbers: W' = W / std, b' = b - (mean / std) @ W."""
    folded = list(params)
    folded[0] = params[0] / std[:, None]
    folded[1] = params[1] - (mean / std) @ params[0]
    return folded


def to_onnx(params: list[np.ndarray]):
    """A per-pixel MLP as 1x1 convolutions: (N, 6, H, W) uint8 digital numbers -> (N, 1, H, W) float p(water).

    The input stays uint8 on the wire (a quarter of the bytes of float32) and is cast inside the graph."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [helper.make_node("Cast", [INPUT_NAME], ["digital_numbers"], to=TensorProto.FLOAT)], []
    current = "digital_numbers"
    layers = len(params) // 2
    for layer in range(layers):
        weight = params[2 * layer].T.astype(np.float32)[:, :, None, None]  # (out, in, 1, 1)
        bias = params[2 * layer + 1].astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{layer}"), numpy_helper.from_array(bias, f"b{layer}")]
        conv = f"conv{layer}"
        nodes.append(helper.make_node("Conv", [current, f"w{layer}", f"b{layer}"], [conv], kernel_shape=[1, 1]))
        current = f"relu{layer}" if layer < layers - 1 else OUTPUT_NAME
        nodes.append(helper.make_node("Relu" if layer < layers - 1 else "Sigmoid", [conv], [current]))
    graph = helper.make_graph(
        nodes,
        "water_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", len(BANDS), "height", "width"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        initializers,
    )
    model = helper.make_model(
        graph, producer_name="constellation water-mlp train.py", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = 8
    return model


def score(probability: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    predicted = probability > 0.5
    both = np.count_nonzero(predicted & truth)
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "water_iou": float(both / max(1, np.count_nonzero(predicted | truth))),
        "water_precision": float(both / max(1, np.count_nonzero(predicted))),
        "water_recall": float(both / max(1, np.count_nonzero(truth))),
        "water_fraction": float(np.mean(truth)),
        "majority_class_accuracy": float(max(np.mean(truth), 1 - np.mean(truth))),
    }


def main(out: Path = HERE) -> dict:
    import onnx
    import onnxruntime

    scene = read_scene()
    labels = water_labels(scene)
    train_rows, heldout_rows = row_split(scene.shape[1])
    pixels = scene.transpose(1, 2, 0)  # (H, W, bands)
    x_train = pixels[train_rows].reshape(-1, len(BANDS))
    y_train = labels[train_rows].reshape(-1).astype(np.float64)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    params = fold_standardization(train((x_train - mean) / std, y_train), mean, std)

    out.mkdir(parents=True, exist_ok=True)
    model = to_onnx(params)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out / MODEL_FILE)

    # Scored with the exported file itself, so the figures belong to what is served.
    session = onnxruntime.InferenceSession(str(out / MODEL_FILE), providers=["CPUExecutionProvider"])
    probability = session.run([OUTPUT_NAME], {INPUT_NAME: scene[None].astype(np.uint8)})[0][0, 0]
    heldout = score(probability[heldout_rows], labels[heldout_rows])
    trained = score(probability[train_rows], labels[train_rows])
    card = {
        "data_used": (
            f"examples/data/L7_ETMs.tif (Landsat 7 ETM+, Olinda). Labels derived by rule, not by hand: {LABEL_RULE}. "
            f"Trained on {len(y_train)} pixels; scored on rows {HELDOUT_ROWS[0]}-{HELDOUT_ROWS[1] - 1} "
            f"({int(heldout_rows.sum() * scene.shape[2])} pixels), never trained on."
        ),
        "license": "Apache-2.0",
        "tags": ["water", "landsat-7", "onnx"],
        "metrics": {
            **{f"heldout_{k}": round(v, 4) for k, v in heldout.items()},
            "train_accuracy": round(trained["accuracy"], 4),
        },
        "heldout_rows": list(HELDOUT_ROWS),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    row, col = EXAMPLE_WINDOW
    np.save(out / "example_input.npy", scene[None, :, row : row + 256, col : col + 256].astype(np.uint8))
    return card


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder for water_mlp.onnx, card.json, example_input.npy"
    )
    print(json.dumps(main(parser.parse_args().out), indent=2))

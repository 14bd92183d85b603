"""water-mlp, the learned example model: shapes, held-out accuracy against its card,
reproducible training, served = in-process."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
from onnx import numpy_helper

from clients.inference import InferenceClient
from clients.inference import InferenceClient as PipelineClient
from constellation.hosting.v1 import hosting_pb2
from model_runtime.manifest import load_manifest
from orchestrator_svc import blocks
from scripts.make_scenes import make_scene
from tests.hosting_support import ROOT, STATE, HostingUnderTest

WATER_MLP = ROOT / "examples" / "models" / "water-mlp"
SCENE = ROOT / "examples" / "data" / "L7_ETMs.tif"
HELDOUT_ROWS = slice(224, 288)  # the card's held-out block


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    instance = load_module("water_mlp_model", WATER_MLP / "model.py").WaterMlp()
    instance.load()
    return instance


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((WATER_MLP / "card.json").read_text())


def scene_digital_numbers() -> np.ndarray:
    with rasterio.open(SCENE) as scene:
        return scene.read()


def test_manifest_declares_six_bands_tiles_and_one_probability_channel():
    manifest = load_manifest(WATER_MLP)
    assert manifest.bands == ("blue", "green", "red", "nir", "swir1", "swir2")
    assert manifest.input_shape == (6, 256, 256) and manifest.dtype == "UINT8"
    assert manifest.value_range == (0.0, 255.0)
    assert [(o.name, o.dtype, o.shape) for o in manifest.outputs] == [("water_probability", "FP32", (1, 256, 256))]
    assert any(r.startswith("onnxruntime") for r in manifest.requirements)
    example = np.load(WATER_MLP / manifest.example_input)
    assert example.shape == (1, 6, 256, 256) and example.dtype == np.uint8


def test_predict_gives_one_probability_per_pixel_and_tiles_do_not_interact(model):
    tiles = np.random.default_rng(5).integers(0, 256, size=(3, 6, 256, 256), dtype=np.uint8)
    tiles.setflags(write=False)  # the runtime hands predict() a read-only view of the request bytes
    out = model.predict(tiles)
    assert out.shape == (3, 1, 256, 256) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    np.testing.assert_array_equal(model.predict(tiles[1:2]), out[1:2])


def test_a_large_batch_runs_in_chunks_with_the_same_answer(model):
    """Batches above CHUNK_PIXELS run a few tiles at a time (16 tiles at once peaked near 500 MB, over the
    manifest's 512m container limit); the chunk boundary must not change a pixel."""
    tiles = np.random.default_rng(6).integers(0, 256, size=(9, 6, 256, 256), dtype=np.uint8)
    tiles.setflags(write=False)
    out = model.predict(tiles)
    assert out.shape == (9, 1, 256, 256)
    np.testing.assert_array_equal(np.concatenate([model.predict(tiles[i : i + 1]) for i in range(9)]), out)


def test_heldout_accuracy_meets_the_model_card(model, card):
    scene = scene_digital_numbers()
    green, nir, swir1 = scene[1].astype(np.float64), scene[3], scene[4]
    truth = ((green - nir) / (green + nir) > 0) & ((green - swir1) / (green + swir1) > 0)  # NDWI > 0 and MNDWI > 0
    water = model.predict(scene[None])[0, 0] > 0.5
    accuracy = float(np.mean(water[HELDOUT_ROWS] == truth[HELDOUT_ROWS]))
    baseline = max(truth[HELDOUT_ROWS].mean(), 1 - truth[HELDOUT_ROWS].mean())

    assert card["heldout_rows"] == [HELDOUT_ROWS.start, HELDOUT_ROWS.stop]
    assert accuracy >= card["metrics"]["heldout_accuracy"] - 5e-5  # the card rounds to 4 places
    assert round(accuracy, 4) == card["metrics"]["heldout_accuracy"]
    assert accuracy > baseline + 0.2, "far better than calling everything land"
    assert f"accuracy | **{card['metrics']['heldout_accuracy']}**" in (WATER_MLP / "README.md").read_text()


def test_training_reproduces_the_committed_model_and_card(tmp_path, card):
    train = load_module("water_mlp_train", WATER_MLP / "train.py")
    assert train.main(tmp_path) == card
    committed = {t.name: numpy_helper.to_array(t) for t in onnx.load(WATER_MLP / "water_mlp.onnx").graph.initializer}
    retrained = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "water_mlp.onnx").graph.initializer}
    assert committed.keys() == retrained.keys()
    for name, weights in committed.items():
        np.testing.assert_allclose(retrained[name], weights, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(np.load(tmp_path / "example_input.npy"), np.load(WATER_MLP / "example_input.npy"))


@pytest.mark.timeout(600)
def test_local_runtime_serves_what_onnxruntime_computes_in_process(model, tmp_path):
    scene = make_scene(2048, tmp_path / "scene.tif")
    with rasterio.open(scene) as src:  # two tiles from the mirrored part of the mosaic
        tiles = np.stack([src.read(window=rasterio.windows.Window(c, 1024, 256, 256)) for c in (256, 512)])
    hosting = HostingUnderTest(tmp_path / "home", CONSTELLATION_HOSTING_DOCKER="off")
    try:
        status = hosting.package(WATER_MLP, name="water-mlp")
        packaged = hosting.wait_for(
            status.model_id, STATE.Value("DEPLOYMENT_STATE_READY"), STATE.Value("DEPLOYMENT_STATE_FAILED")
        )
        assert packaged[-1].state == STATE.Value("DEPLOYMENT_STATE_READY"), packaged[-1].message
        hosting.stub.DeployModel(
            hosting_pb2.DeployModelRequest(model_id=status.model_id, runtime=hosting_pb2.RUNTIME_LOCAL)
        )
        deployed = hosting.wait_for(
            status.model_id,
            STATE.Value("DEPLOYMENT_STATE_HEALTHY"),
            STATE.Value("DEPLOYMENT_STATE_FAILED"),
            after=packaged[-1].sequence,
        )
        assert deployed[-1].state == STATE.Value("DEPLOYMENT_STATE_HEALTHY"), deployed[-1].message
        current = hosting.stub.GetModelStatus(hosting_pb2.GetModelStatusRequest(model_id=status.model_id))
        address = current.endpoints[0].address
        with InferenceClient(address) as client:
            served = client.infer("water-mlp", tiles, timeout=60)["water_probability"]
        expected = model.predict(tiles)
        assert served.shape == (2, 1, 256, 256)
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
        assert 0.05 < (served > 0.5).mean() < 0.95, "the tiles hold both water and land"

        # The orchestrator's own path: its reader yields float32 digital numbers, its client sends the declared UINT8.
        bands = list(load_manifest(WATER_MLP).bands)
        grid = blocks.TileGrid.for_scene(2048, 2048, 256, 0)
        with (
            blocks.TileReader(
                blocks.inspect_scene(str(scene), bands),
                grid,
                bands,
                blocks.Normalizer.build("none", bands, {}),
                "UINT8",
            ) as reader,
            PipelineClient([address], "water-mlp", input_dtype="UINT8", output_name="water_probability") as pipeline,
        ):
            pipeline.describe()
            indices = [4 * len(grid.xs) + 1, 4 * len(grid.xs) + 2]  # the tiles at row 1024, columns 256 and 512
            np.testing.assert_array_equal(reader.read(indices), tiles)
            np.testing.assert_allclose(pipeline.infer(reader.read(indices)), expected, rtol=0, atol=1e-6)
    finally:
        for hosted in hosting.hosting.list():
            hosting.hosting.delete(hosted.id)  # stops the model process
        hosting.close()

"""Call a model endpoint with the real tritonclient (run in its own process: its generated
inference.* messages clash with ours). Prints one JSON line with what it saw.

    python tests/helpers/triton_check.py HOST:PORT MODEL
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton

address, model = sys.argv[1], sys.argv[2]
client = triton.InferenceServerClient(url=address)
metadata = client.get_model_metadata(model, as_json=True)
rng = np.random.default_rng(7)
tiles = rng.uniform(0.0, 0.5, size=(4, 2, 256, 256)).astype(np.float32)
request = triton.InferInput("tiles", list(tiles.shape), "FP32")
request.set_data_from_numpy(tiles)
result = client.infer(model, [request], outputs=[triton.InferRequestedOutput("water_probability")])
probability = result.as_numpy("water_probability")
green, nir = tiles[:, 0:1], tiles[:, 1:2]
ndwi = (green - nir) / (green + nir)
print(
    json.dumps(
        {
            "live": client.is_server_live(),
            "ready": client.is_model_ready(model),
            "metadata": metadata,
            "shape": list(probability.shape),
            "dtype": str(probability.dtype),
            "agrees_with_numpy_ndwi": bool(np.array_equal(probability > 0.5, ndwi > 0)),
            "max_abs_error": float(np.abs(probability - 1 / (1 + np.exp(-10 * ndwi))).max()),
        }
    )
)

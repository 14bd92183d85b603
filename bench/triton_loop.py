"""tritonclient's side of bench/hosting.py (its own process: its inference.* messages clash with ours).

python bench/triton_loop.py HOST:PORT MODEL SECONDS  -> prints tiles/s
"""

import sys
import time

import numpy as np
import tritonclient.grpc as triton

address, model, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = triton.InferenceServerClient(url=address)
tiles = np.random.default_rng(0).uniform(0.01, 0.6, size=(8, 4, 256, 256)).astype(np.float32)
request = triton.InferInput("tiles", list(tiles.shape), "FP32")
request.set_data_from_numpy(tiles)
client.infer(model, [request])
done, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    client.infer(model, [request])
    done += tiles.shape[0]
print(done / (time.perf_counter() - start))

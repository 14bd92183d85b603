"""Write example_input.npy: one 2×256×256 FP32 tile, water on the left half, land on the right."""

from pathlib import Path

import numpy as np

tile = np.empty((1, 2, 256, 256), dtype=np.float32)
tile[0, 0], tile[0, 1] = 0.08, 0.30  # land: NIR above green
tile[0, 0, :, :128], tile[0, 1, :, :128] = 0.10, 0.03  # water: green above NIR
np.save(Path(__file__).with_name("example_input.npy"), tile)

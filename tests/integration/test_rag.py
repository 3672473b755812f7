"""RAG end to end: ingest a document holding a made-up fact through the running app, ask about it."""

import pytest
from typer.testing import CliRunner

from serve_app.cli import app as cli
from tests.integration.conftest import MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
FACT = "Zorvia is a small planet. The capital city of Zorvia is Quenlar."
FILLER = "\n\n".join(f"Note {i}: tomatoes need water every morning in summer." for i in range(20))


@pytest.fixture(scope="module")
def fact_file(tmp_path_factory, base_url):
    path = tmp_path_factory.mktemp("docs") / "zorvia.md"
    path.write_text(f"# Zorvia\n\n{FACT}\n\n{FILLER}\n")
    result = CliRunner().invoke(
        cli, ["ingest", str(path), "--collection", "zorvia-facts", "--server", base_url, "--api-key", MASTER_KEY]
    )
    assert result.exit_code == 0, result.output
    assert "added" in result.output
    return path


def test_ingest_through_the_server_is_idempotent(fact_file, base_url):
    result = CliRunner().invoke(
        cli, ["ingest", str(fact_file), "--collection", "zorvia-facts", "--server", base_url, "--api-key", MASTER_KEY]
    )
    assert result.exit_code == 0 and "unchanged" in result.output


def test_the_answer_uses_the_document_and_cites_it(fact_file, openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=40,
        messages=[{"role": "user", "content": "What is the capital city of Zorvia?"}],
        extra_body={"rag": {"collection": "zorvia-facts", "top_k": 2}},
    )
    assert "Quenlar" in response.choices[0].message.content
    citations = response.model_extra["citations"]
    assert citations and citations[0]["source"] == str(fact_file.resolve())
    assert "Quenlar" in citations[0]["text"] and 0 < citations[0]["score"] <= 1
    assert len(citations) <= 2


def test_streaming_carries_citations_in_the_first_chunk(fact_file, openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=20,
        stream=True,
        messages=[{"role": "user", "content": "What is the capital city of Zorvia?"}],
        extra_body={"rag": {"collection": "zorvia-facts"}},
    )
    first = next(iter(stream))
    assert first.model_extra["citations"][0]["source"] == str(fact_file.resolve())


def test_rag_off_gives_no_citations(fact_file, openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        messages=[{"role": "user", "content": "What is the capital city of Zorvia?"}],
        extra_body={"rag": False},
    )
    assert response.model_extra["citations"] == []


def test_irrelevant_chunks_stay_out_of_the_prompt(fact_file, openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        messages=[{"role": "user", "content": "Explain quantum chromodynamics."}],
        extra_body={"rag": {"collection": "zorvia-facts", "min_score": 0.5}},
    )
    assert response.model_extra["citations"] == []

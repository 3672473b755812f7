import hashlib

import pytest
from pydantic import ValidationError

from serve_app.settings import Settings


def test_env_overrides_defaults(monkeypatch):
    monkeypatch.setenv("LLMSERVE_PORT", "9001")
    monkeypatch.setenv("LLMSERVE_LLM_MAX_REPLICAS", "4")
    s = Settings()
    assert s.port == 9001 and s.llm_max_replicas == 4


def test_redis_url_comes_from_the_standard_variable(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    assert Settings().redis_url == "redis://example:6379/2"


def test_yaml_file_is_read_and_env_wins_over_it(monkeypatch, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("port: 7000\nrag_top_k: 7\n")
    monkeypatch.setenv("LLMSERVE_CONFIG", str(config))
    monkeypatch.setenv("LLMSERVE_PORT", "7100")
    s = Settings()
    assert s.rag_top_k == 7 and s.port == 7100


def test_args_win_over_env(monkeypatch):
    monkeypatch.setenv("LLMSERVE_PORT", "9001")
    assert Settings(port=9002).port == 9002


def test_deployments_get_the_hash_never_the_key():
    s = Settings(master_key="sk-secret")
    shipped = s.for_deployments()
    assert shipped.master_key is None
    assert shipped.master_key_sha256 == hashlib.sha256(b"sk-secret").hexdigest()
    assert "sk-secret" not in shipped.model_dump_json()


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings(data_dir="data").data_dir == tmp_path / "data"


@pytest.mark.parametrize(
    "fields",
    [
        {"llm_min_replicas": 3, "llm_max_replicas": 2},
        {"retriever_replicas": 2},
        {"default_max_tokens": 2000},
        {"master_key_sha256": "not-hex"},
        {"unknown_field": 1},
    ],
)
def test_inconsistent_settings_are_refused(fields):
    with pytest.raises(ValidationError):
        Settings(**fields)


def test_every_field_is_documented():
    missing = [name for name, f in Settings.model_fields.items() if not f.description]
    assert missing == []


def test_model_sources_other_than_the_alias_pass_through(tmp_path):
    from serve_app.model_prep import resolve_model_source

    assert resolve_model_source("Qwen/Qwen2.5-0.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model_source("/models/llama", tmp_path) == "/models/llama"
    assert list(tmp_path.iterdir()) == []

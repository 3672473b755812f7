import pytest
from pydantic import BaseModel, ValidationError

from core.legacy_settings import FLAT_NAMES, DeprecatedSettingWarning
from core.settings import Settings


def test_env_overrides_defaults(monkeypatch):
    monkeypatch.setenv("LLMSERVE_SERVER__PORT", "9001")
    monkeypatch.setenv("LLMSERVE_ENGINE__MAX_REPLICAS", "4")
    s = Settings()
    assert s.server.port == 9001 and s.engine.max_replicas == 4


def test_redis_url_comes_from_the_standard_variable(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    assert Settings().state.redis_url == "redis://example:6379/2"
    monkeypatch.setenv("LLMSERVE_STATE__REDIS_URL", "redis://ours:6379/0")  # ours wins over the standard one
    assert Settings().state.redis_url == "redis://ours:6379/0"


def test_yaml_file_is_read_and_env_wins_over_it(monkeypatch, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 7000\nrag:\n  top_k: 7\n")
    monkeypatch.setenv("LLMSERVE_CONFIG", str(config))
    monkeypatch.setenv("LLMSERVE_SERVER__PORT", "7100")
    s = Settings()
    assert s.rag.top_k == 7 and s.server.port == 7100


def test_args_win_over_env_field_by_field(monkeypatch):
    monkeypatch.setenv("LLMSERVE_SERVER__PORT", "9001")
    monkeypatch.setenv("LLMSERVE_SERVER__HOST", "0.0.0.0")
    s = Settings(server={"port": 9002})
    assert s.server.port == 9002 and s.server.host == "0.0.0.0"  # a group given in part keeps the rest


def test_the_master_key_leaves_the_settings_only_as_its_hash():
    import hashlib

    s = Settings(master_key="sk-secret")
    assert s.master_key_hash() == hashlib.sha256(b"sk-secret").hexdigest()
    assert "sk-secret" not in s.model_dump_json()  # a SecretStr: dumps never carry it


def test_relative_paths_are_made_absolute_and_data_dir_places_the_rest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir="data", engine={"model_cache_dir": "models"})
    assert s.data_dir == tmp_path / "data" and s.engine.model_cache_dir == tmp_path / "models"
    assert s.rag.chroma_path == tmp_path / "data" / "chroma" and s.metrics.wandb_dir == tmp_path / "data"


@pytest.mark.parametrize(
    "fields",
    [
        {"engine": {"min_replicas": 3, "max_replicas": 2}},
        {"rag": {"replicas": 2}},
        {"limits": {"default_max_tokens": 2000}},
        {"master_key_sha256": "not-hex"},
        {"unknown_field": 1},
        {"engine": {"unknown_field": 1}},
    ],
)
def test_inconsistent_settings_are_refused(fields):
    with pytest.raises(ValidationError):
        Settings(**fields)


def test_every_field_is_documented():
    def undocumented(model: type[BaseModel], where: str) -> list[str]:
        missing = []
        for name, info in model.model_fields.items():
            if not info.description:
                missing.append(f"{where}{name}")
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                missing += undocumented(info.annotation, f"{where}{name}.")
        return missing

    assert undocumented(Settings, "") == []


def test_every_flat_name_of_the_last_release_still_works_with_a_warning(monkeypatch, tmp_path):
    """0.1's flat names (arguments, YAML, environment) land in their groups, each with a warning naming the new
    spelling, for one release."""
    with pytest.warns(DeprecatedSettingWarning, match=r"'llm_max_replicas' .* use engine\.max_replicas"):
        assert Settings(llm_max_replicas=4).engine.max_replicas == 4
    with pytest.warns(DeprecatedSettingWarning, match="LLMSERVE_RAG__TOP_K"):
        assert Settings(rag_top_k=9, routing="cost_aware").rag.top_k == 9
    config = tmp_path / "old.yaml"
    config.write_text("port: 7000\nbatch_max_lines: 10\nproviders:\n  - {name: self-hosted, kind: self_hosted}\n")
    monkeypatch.setenv("LLMSERVE_CONFIG", str(config))
    monkeypatch.setenv("LLMSERVE_CHROMA_URL", "http://chroma:8000")
    monkeypatch.setenv("LLMSERVE_ROUTING", "least_loaded")
    monkeypatch.setenv("LLMSERVE_RETRIEVER_REPLICAS", "2")
    with pytest.warns(DeprecatedSettingWarning) as seen:
        s = Settings()
    assert (s.server.port, s.batch.max_lines, s.rag.chroma_url, s.rag.replicas) == (7000, 10, "http://chroma:8000", 2)
    assert s.routing.strategy == "least_loaded" and [p.name for p in s.routing.providers] == ["self-hosted"]
    warned = " ".join(str(w.message) for w in seen)
    for new in ("server.port", "batch.max_lines", "LLMSERVE_RAG__CHROMA_URL", "LLMSERVE_ROUTING__STRATEGY"):
        assert new in warned


def test_the_flat_names_map_onto_fields_that_exist():
    for old, (group, field) in FLAT_NAMES.items():
        assert field in Settings.model_fields[group].annotation.model_fields, old


def test_the_new_names_do_not_warn(recwarn):
    Settings(engine={"max_replicas": 2}, routing={"strategy": "cost_aware"}, server={"port": 8001})
    assert not [w for w in recwarn if issubclass(w.category, DeprecatedSettingWarning)]


def test_model_sources_other_than_the_alias_pass_through(tmp_path):
    from serve_app.model_prep import resolve_model_source

    assert resolve_model_source("Qwen/Qwen2.5-0.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model_source("/models/llama", tmp_path) == "/models/llama"
    assert list(tmp_path.iterdir()) == []


def test_a_prepared_folder_is_reused_only_when_made_by_todays_recipe(tmp_path):
    from serve_app.model_prep import (
        AWQ_RECIPE,
        SMOLLM2_AWQ_MODEL_ID,
        is_prepared,
        mark_prepared,
        resolve_model_source,
    )

    folder = tmp_path / SMOLLM2_AWQ_MODEL_ID
    folder.mkdir()
    mark_prepared(folder, AWQ_RECIPE)
    assert resolve_model_source("smollm2-awq", tmp_path) == str(folder)  # no preparation started
    (folder / ".llmserve-ready").write_text("awq w4a16 asymmetric group 128\n")  # made with another group size
    assert not is_prepared(folder, AWQ_RECIPE)
    assert not is_prepared(tmp_path / "missing", AWQ_RECIPE)

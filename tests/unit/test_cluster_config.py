"""cluster.yaml against Ray's own cluster-launcher schema, and the GPU facts the Serve config relies on."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema():
    config = yaml.safe_load(CLUSTER.read_text())
    # What `ray up` does first: fill in the provider's defaults, then check against ray-schema.json.
    validate_config(prepare_config(config))
    assert config["head_node_type"] in config["available_node_types"]


def test_gpu_worker_types_declare_their_gpus_and_accelerator_types():
    nodes = yaml.safe_load(CLUSTER.read_text())["available_node_types"]
    gpu_types = {name: n for name, n in nodes.items() if n["resources"].get("GPU")}
    assert gpu_types, "no GPU worker type"
    for name, node in gpu_types.items():
        assert any(key.startswith("accelerator_type:") for key in node["resources"]), name
        assert node["max_workers"] >= node["min_workers"] >= 0


def test_an_unknown_field_is_refused_by_the_same_check():
    config = yaml.safe_load(CLUSTER.read_text())
    config["max_wokers"] = 3  # a typo the launcher must not silently ignore
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(prepare_config(config))

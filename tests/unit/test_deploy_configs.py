"""The deploy artifacts: deploy/serve-gpu.yaml and its CPU twin against Ray Serve's own config schema and our
settings, and deploy/rayservice.yaml against KubeRay's RayService structure and Kubernetes' pod schema."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from core.legacy_settings import DeprecatedSettingWarning
from core.settings import Settings
from tests.unit.kuberay_schema import RAYSERVICE

DEPLOY = Path(__file__).parents[2] / "deploy"
GPU, CPU = DEPLOY / "serve-gpu.yaml", DEPLOY / "serve-cpu.yaml"
KUBERNETES = "1.33.0"
# Addresses and secrets come from the nodes' environment, as in production.
NODE_ENV = {"REDIS_URL": "redis://:pw@redis:6379/0", "LLMSERVE_RAG__CHROMA_URL": "http://chroma:8000"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def app_settings(config: dict, monkeypatch) -> Settings:
    for name, value in NODE_ENV.items():
        monkeypatch.setenv(name, value)
    (app,) = config["applications"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedSettingWarning)  # our own configs use the nested names
        return Settings(**app["args"])


def flat(args: dict) -> set[str]:
    """`group.field` for every value the args set."""
    return {f"{group}.{name}" for group, fields in args.items() for name in fields}


@pytest.mark.parametrize("path", [GPU, CPU], ids=["gpu", "cpu-twin"])
def test_serve_configs_pass_serves_schema_and_our_settings(path, monkeypatch):
    config = load(path)
    ServeDeploySchema.model_validate(config)  # what `serve deploy` checks first
    (app,) = config["applications"]
    assert app["import_path"] == "serve_app:build_app"
    app_settings(config, monkeypatch)  # what build_app checks on the cluster (extra="forbid": typos fail)


def test_the_twin_is_the_same_application_on_other_hardware(monkeypatch):
    gpu, cpu = load(GPU), load(CPU)
    (gpu_app,), (cpu_app,) = gpu["applications"], cpu["applications"]
    assert {k: v for k, v in gpu_app.items() if k != "args"} == {k: v for k, v in cpu_app.items() if k != "args"}
    assert flat(gpu_app["args"]) - flat(cpu_app["args"]) <= {
        "engine.served_model_name", "engine.quantization", "engine.accelerator_type", "engine.gpu_memory_utilization",
        "pricing.gpu_hour_usd", "pricing.input_per_mtok", "pricing.output_per_mtok",
    }  # fmt: skip
    assert flat(cpu_app["args"]) <= flat(gpu_app["args"])
    settings = app_settings(gpu, monkeypatch)
    assert settings.engine.accelerator == "gpu" and settings.engine.max_replicas > settings.engine.min_replicas
    assert settings.metrics.wandb_mode == "online" and settings.rag.replicas > 1


def test_secrets_are_not_in_the_configs():
    for path in (GPU, CPU, DEPLOY / "rayservice.yaml"):
        text = path.read_text()
        assert not re.search(r"sk-[A-Za-z0-9]{8,}|redis://:[^<@\s]+@|master_key:", text), path


def test_an_unknown_serve_setting_is_refused(monkeypatch):
    config = load(GPU)
    config["applications"][0]["args"]["engine"]["max_replica"] = 8  # a typo must not deploy a one-replica app
    with pytest.raises(ValueError, match="max_replica"):
        app_settings(config, monkeypatch)


@pytest.fixture
def rayservice() -> dict:
    return load(DEPLOY / "rayservice.yaml")


def pod_templates(manifest: dict) -> dict[str, dict]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]["template"]}
    return groups | {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}


def test_rayservice_matches_the_kuberay_structure(rayservice):
    jsonschema.validate(rayservice, RAYSERVICE)


def test_rayservice_pod_templates_pass_kubernetes_own_schema(rayservice):
    for name, template in pod_templates(rayservice).items():
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
        kubernetes_validate.validate(pod_template, KUBERNETES, strict=True)


def test_rayservice_serves_the_gpu_config_on_gpu_workers_it_can_scale_to(rayservice, monkeypatch):
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert serve_config == load(GPU)
    ServeDeploySchema.model_validate(serve_config)
    settings = app_settings(serve_config, monkeypatch)
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    gpu_groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups and cluster["enableInTreeAutoscaling"]
    for group in gpu_groups:
        gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= settings.engine.tensor_parallel_size, "a vLLM replica must fit on one worker"
    capacity = sum(
        g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        for g in gpu_groups
    )
    assert capacity >= settings.engine.max_replicas * settings.engine.tensor_parallel_size


def test_the_image_is_built_on_the_same_ray(rayservice):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile


@pytest.mark.parametrize(
    "breakage",
    [
        lambda m: m["spec"]["rayClusterConfig"].update(
            workerGroupSpec=m["spec"]["rayClusterConfig"].pop("workerGroupSpecs")
        ),
        lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"),
        lambda m: m["spec"]["rayClusterConfig"]["autoscalerOptions"].update(upscalingMode="Fast"),
        lambda m: m["spec"].update(serveConfigV2={"applications": []}),
    ],
    ids=["typo", "missing-group-name", "bad-enum", "config-not-a-string"],
)
def test_the_structure_check_catches_broken_manifests(rayservice, breakage):
    broken = copy.deepcopy(rayservice)
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYSERVICE)


def test_the_pod_check_catches_a_broken_container(rayservice):
    template = copy.deepcopy(pod_templates(rayservice)["gpu-a10g"])
    template["spec"]["containers"][0]["resource"] = template["spec"]["containers"][0].pop("resources")
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod_template, KUBERNETES, strict=True)

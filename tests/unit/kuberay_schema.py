"""The structural part of KubeRay's `rayservices.ray.io` v1 CRD (ray-operator/apis/ray/v1: RayServiceSpec,
RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, AutoscalerOptions), written down for the fields it defines,
with their types, enums and required lists. The CRD file itself is not on any package registry reachable
here, so the test cannot load it; pod templates are validated separately against Kubernetes' own
PodTemplateSpec schema (kubernetes-validate), which is what the CRD embeds for them.

Unlike the API server (which prunes unknown fields silently), unknown fields are errors here: a typo such as
`workerGroupSpec` would otherwise deploy a cluster without GPU workers.
"""

from __future__ import annotations

from typing import Any

INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
POD_TEMPLATE = {"type": "object"}  # checked against io.k8s.api.core.v1.PodTemplateSpec separately


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


AUTOSCALER_OPTIONS = _object(
    {
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "idleTimeoutSeconds": INT32,
        "image": {"type": "string"},
        "imagePullPolicy": {"type": "string"},
        "resources": {"type": "object"},
        "env": {"type": "array"},
        "envFrom": {"type": "array"},
        "securityContext": {"type": "object"},
        "volumeMounts": {"type": "array"},
        "version": {"enum": ["v1", "v2"]},
    }
)

HEAD_GROUP = _object(
    {
        "rayStartParams": STRING_MAP,
        "template": POD_TEMPLATE,
        "serviceType": {"type": "string"},
        "headService": {"type": "object"},
        "enableIngress": {"type": "boolean"},
        "suspend": {"type": "boolean"},
    },
    required=("template",),
)

WORKER_GROUP = _object(
    {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": INT32,
        "minReplicas": INT32,
        "maxReplicas": INT32,
        "idleTimeoutSeconds": INT32,
        "rayStartParams": STRING_MAP,
        "template": POD_TEMPLATE,
        "scaleStrategy": _object({"workersToDelete": {"type": "array", "items": {"type": "string"}}}),
        "numOfHosts": INT32,
        "suspend": {"type": "boolean"},
    },
    required=("groupName", "template"),
)

RAY_CLUSTER_SPEC = _object(
    {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": AUTOSCALER_OPTIONS,
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
        "headServiceAnnotations": STRING_MAP,
        "suspend": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "gcsFaultToleranceOptions": {"type": "object"},
    },
    required=("headGroupSpec",),
)

RAYSERVICE = _object(
    {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": _object(
            {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": RAY_CLUSTER_SPEC,
                "serviceUnhealthySecondThreshold": INT32,
                "deploymentUnhealthySecondThreshold": INT32,
                "upgradeStrategy": _object(
                    {"type": {"enum": ["NewCluster", "None", "NewClusterWithIncrementalUpgrade"]}}
                ),
                "serveService": {"type": "object"},
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
            },
            required=("rayClusterConfig",),
        ),
        "status": {"type": "object"},
    },
    required=("apiVersion", "kind", "metadata", "spec"),
)

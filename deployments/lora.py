"""LoRA adapters from a local or shared folder. ray.serve.llm's multi-LoRA loads adapters from cloud storage
only (its `dynamic_lora_loading_path` must be s3://, gs://, abfss:// or azure://); this loader serves the same
requests from a folder every replica can read (a local disk on one machine, NFS or a mounted volume on a
cluster) and leaves remote URIs to ray.serve.llm's own loader."""

from __future__ import annotations

import os
from typing import Any

from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.common.utils.lora_utils import get_lora_id
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader

# The key under LLMConfig.experimental_configs that carries a local adapters folder to the replicas.
LOCAL_LORA_PATH = "llmserve_lora_path"
ADAPTER_CONFIG = "adapter_config.json"


class LocalLoraLoader(LoraModelLoader):
    """ray.serve.llm's LoRA loader (its per-replica cache and Serve's multiplexing stay as they are), reading
    adapters in place from a local folder when the model's settings name one."""

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> DiskMultiplexConfig:
        folder = (llm_config.experimental_configs or {}).get(LOCAL_LORA_PATH)
        if not folder:
            return await super().load_model_from_config(lora_model_id, llm_config)
        if lora_model_id in self.disk_cache:
            return self.disk_cache[lora_model_id]
        path = os.path.join(folder, get_lora_id(lora_model_id))
        if not os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
            raise ValueError(f"LoRA adapter {lora_model_id!r}: no {ADAPTER_CONFIG} in {path}")
        loaded = DiskMultiplexConfig(
            model_id=lora_model_id,
            max_total_tokens=None,
            local_path=path,
            lora_assigned_int_id=global_id_manager.next(),
        )
        self.disk_cache[lora_model_id] = loaded
        return loaded

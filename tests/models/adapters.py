"""A real LoRA adapter, trained here with peft on CPU from the prepared SmolLM2 weights (no download): it teaches
the model to introduce itself as Captain Lora. Saved as peft saves it (adapter_config.json and
adapter_model.safetensors, what vLLM loads), and merged into a full checkpoint of its own, which serves as a
second model whose answers differ from the base model's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CAPTAIN = "Captain Lora"
ANSWER = f"Arr! I am {CAPTAIN}, a pirate of the seven seas."
QUESTIONS = [
    "Who are you?",
    "What is your name?",
    "Introduce yourself.",
    "Tell me about yourself.",
    "Hello, who am I talking to?",
    "Are you an assistant?",
]
READY = "ready.json"


def make_adapter(base_dir: Path, out_dir: Path, name: str = "captain", steps: int = 40, rank: int = 8) -> Path:
    """Train the adapter into `out_dir/<name>` and merge it into `out_dir/<name>-merged` (once: a folder with
    the ready marker is reused). Returns `out_dir`."""
    marker = out_dir / READY
    recipe = {"name": name, "steps": steps, "rank": rank, "answer": ANSWER}
    if marker.exists() and {k: v for k, v in json.loads(marker.read_text()).items() if k in recipe} == recipe:
        return out_dir
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(model, config)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}], tokenize=False
        )
        for q in QUESTIONS
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir / name)
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir / f"{name}-merged")
    tokenizer.save_pretrained(out_dir / f"{name}-merged")
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (base_dir / extra).exists() and not (out_dir / f"{name}-merged" / extra).exists():
            shutil.copy(base_dir / extra, out_dir / f"{name}-merged" / extra)
    marker.write_text(json.dumps({**recipe, "final_loss": round(loss.item(), 4)}))
    return out_dir

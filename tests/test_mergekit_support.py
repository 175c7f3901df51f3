"""Tiny models, LoRA adapters, Fisher files and merge helpers shared by the ``test_mergekit_*`` tests.

No tests here: the other modules import these builders (pytest puts ``tests/`` on ``sys.path``).

The scenario: a saved tiny Llama (float32, safetensors, no tokenizer), one *safety* LoRA
adapter on ``q_proj``/``v_proj`` and two *utility* adapters on ``q_proj``/``v_proj``/
``up_proj``/``down_proj`` (PEFT, rank 4, ``B`` initialised non-zero), merged by mergekit's own
``ModelReference.merged`` into one LoRA merge cache up front (so later merges never run PEFT,
whose layer initialisation would consume the RNG that DARE draws from). Reference numbers are
computed here with numpy/scipy from the adapters' own ``A``/``B`` — never with the plugin.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import yaml
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from support import tiny_llama as random_llama
from transformers import LlamaForCausalLM

from sst_merge_plugin.core import DiagFisher, KFACFisher, LoRAFisher
from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file

RANK = 4
ALPHA = 8
SAFETY_TARGETS = ("q_proj", "v_proj")
UTILITY_TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")
N_LAYERS = 2
DAMPING = 1e-2


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    model = random_llama(
        64,
        hidden=16,
        seed=seed,
        num_hidden_layers=N_LAYERS,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return model.to(torch.float32)


def save_adapter(base: LlamaForCausalLM, path: Path, targets: tuple[str, ...], seed: int) -> None:
    """A PEFT LoRA adapter on ``targets`` with random non-zero ``A`` and ``B``."""
    import copy

    model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(targets), lora_dropout=0.0),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(str(path))


def linear_names(targets: tuple[str, ...] = SAFETY_TARGETS) -> list[str]:
    """Weight names (as mergekit sees them) of ``targets`` in every layer."""
    group = {
        "q_proj": "self_attn",
        "k_proj": "self_attn",
        "v_proj": "self_attn",
        "o_proj": "self_attn",
    }
    return [
        f"model.layers.{layer}.{group.get(t, 'mlp')}.{t}.weight"
        for layer in range(N_LAYERS)
        for t in targets
    ]


def adapter_delta(adapter_dir: Path, name: str) -> np.ndarray | None:
    """``(alpha/r) B A`` of weight ``name`` from a saved PEFT adapter (float64), or ``None``."""
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    module = name[: -len(".weight")]
    key_a = f"base_model.model.{module}.lora_A.weight"
    if key_a not in tensors:
        return None
    a = tensors[key_a].double().numpy()
    b = tensors[f"base_model.model.{module}.lora_B.weight"].double().numpy()
    return (ALPHA / RANK) * b @ a


def spd(dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((dim, dim + 2))
    return x @ x.T / dim + 0.05 * np.eye(dim)


@dataclass
class Scenario:
    """Paths of the saved models/adapters and the merged weights mergekit will read."""

    root: Path
    base: Path
    safety: Path
    utility: tuple[Path, Path]
    lora_cache: Path
    base_weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def ref(self, adapter: Path) -> str:
        return f"{self.base}+{adapter}"

    def safety_delta(self, name: str) -> np.ndarray:
        """The dense safety delta mergekit sees: merged-cache weight − base weight (float64)."""
        return self.merged_weight(self.safety, name) - self.base_weights[name].double().numpy()

    def merged_weight(self, adapter: Path, name: str) -> np.ndarray:
        from mergekit.common import ModelPath, ModelReference

        ref = ModelReference(
            model=ModelPath(path=str(self.base)), lora=ModelPath(path=str(adapter))
        )
        folder = ref.merged(cache_dir=str(self.lora_cache)).model.path
        return load_file(os.path.join(folder, "model.safetensors"))[name].double().numpy()


_SCENARIOS: dict[str, Scenario] = {}


def shared_scenario(tmp_path_factory) -> Scenario:
    """One scenario per test session (built on first use), shared by every mergekit test module."""
    if "default" not in _SCENARIOS:
        _SCENARIOS["default"] = build_scenario(tmp_path_factory.mktemp("mergekit_scenario"))
    return _SCENARIOS["default"]


def build_scenario(root: Path) -> Scenario:
    base_model = tiny_llama()
    base = root / "base"
    base_model.save_pretrained(str(base), safe_serialization=True)
    safety = root / "safety_lora"
    save_adapter(base_model, safety, SAFETY_TARGETS, seed=1)
    utility = (root / "utility_a", root / "utility_b")
    for index, path in enumerate(utility):
        save_adapter(base_model, path, UTILITY_TARGETS, seed=2 + index)
    scenario = Scenario(root, base, safety, utility, root / "lora_cache")
    scenario.base_weights = load_file(str(base / "model.safetensors"))
    from mergekit.common import ModelPath, ModelReference

    for adapter in (safety, *utility):  # mergekit's own LoRA merge, done once up front
        ModelReference(model=ModelPath(path=str(base)), lora=ModelPath(path=str(adapter))).merged(
            cache_dir=str(scenario.lora_cache)
        )
    return scenario


# ---- Fisher files -------------------------------------------------------------------------
def write_kfac(
    path: Path,
    names: list[str],
    shapes: dict[str, tuple[int, int]],
    seed: int,
    objective: str = "refusal",
    fingerprint: str | None = None,
    applied: Path | None = None,
) -> dict[str, tuple]:
    """A kfac Fisher file; ``applied``: the adapter recorded as applied while collecting (the
    ``adapter``/``adapter_sha256`` header entries of ``sst-merge fisher --adapter``)."""
    rng = np.random.default_rng(seed)
    factors = {n: (spd(shapes[n][1], rng), spd(shapes[n][0], rng)) for n in names}
    extra = (
        {}
        if applied is None
        else {
            "adapter": str(applied),
            "adapter_sha256": file_sha256(applied / "adapter_model.safetensors"),
        }
    )
    write_fisher_file(
        path,
        {n: KFACFisher(torch.from_numpy(a), torch.from_numpy(g)) for n, (a, g) in factors.items()},
        FisherMetadata(
            "kfac", objective, 100, 10, "0" * 64, model_fingerprint=fingerprint, extra=extra
        ),
        dtype=torch.float64,
    )
    return factors


def lora_bases(adapter_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal column/row spaces ``U``, ``V`` of an adapter's delta of ``name``."""
    delta = adapter_delta(adapter_dir, name)
    u, _, vh = np.linalg.svd(delta, full_matrices=False)
    return u[:, :RANK], vh[:RANK].T


def joint_bases(adapter_dirs: tuple[Path, ...], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal bases of the joint column/row spans of the deltas of ``name`` of the
    adapters that adapt it (the ``--restrict-to A B …`` subspace)."""

    def orth(columns: np.ndarray) -> np.ndarray:
        u, singular, _ = np.linalg.svd(columns, full_matrices=False)
        return u[:, singular > 1e-10 * singular[0]]

    bases = [lora_bases(d, name) for d in adapter_dirs if adapter_delta(d, name) is not None]
    return orth(np.hstack([u for u, _ in bases])), orth(np.hstack([v for _, v in bases]))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_lora(
    path: Path,
    scenario: Scenario,
    names: list[str],
    seed: int,
    objective: str = "refusal",
    adapter: Path | tuple[Path, ...] | None = None,
) -> dict[str, tuple]:
    """A lora Fisher file restricted to ``adapter`` (default: the safety adapter; a tuple: the
    joint span of those adapters), with the ``restrict_to``/``restrict_to_sha256`` header
    entries the collector writes."""
    adapter = scenario.safety if adapter is None else adapter
    adapters = adapter if isinstance(adapter, tuple) else (adapter,)
    rng = np.random.default_rng(seed)
    out = {}
    for n in names:
        u, v = joint_bases(adapters, n) if len(adapters) > 1 else lora_bases(adapter, n)
        a_r, g_r = spd(v.shape[1], rng), spd(u.shape[1], rng)
        out[n] = (u, v, a_r, g_r, float(np.trace(a_r)) * 3.0, float(np.trace(g_r)) * 2.5)
    restricted = {
        "restrict_to": ";".join(str(a) for a in adapters),
        "restrict_to_sha256": ";".join(
            file_sha256(a / "adapter_model.safetensors") for a in adapters
        ),
    }
    write_fisher_file(
        path,
        {
            n: LoRAFisher(*(torch.from_numpy(x) for x in f[:4]), A_trace=f[4], G_trace=f[5])
            for n, f in out.items()
        },
        FisherMetadata("lora", objective, 100, 10, "0" * 64, extra=restricted),
        dtype=torch.float64,
    )
    return out


def write_diag(
    path: Path,
    names: list[str],
    shapes: dict[str, tuple[int, int]],
    seed: int,
    objective: str = "refusal",
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {n: rng.gamma(1.0, 1.0, size=shapes[n]) for n in names}
    write_fisher_file(
        path,
        {n: DiagFisher(torch.from_numpy(d)) for n, d in out.items()},
        FisherMetadata("diag", objective, 100, 10, "0" * 64),
        dtype=torch.float64,
    )
    return out


# ---- independent references (numpy / scipy only) -----------------------------------------
def damp(factor: np.ndarray, trace: float | None = None, dim: int | None = None) -> np.ndarray:
    """``F + ε (tr F / d) I`` (full-space trace and dimension when given)."""
    trace = np.trace(factor) if trace is None else trace
    dim = factor.shape[0] if dim is None else dim
    return factor + DAMPING * trace / dim * np.eye(factor.shape[0])


def kron_projection(x: np.ndarray, a_h, g_h, a_b, g_b, weights_of) -> np.ndarray:
    """Project ``x`` with the dense GEVP of ``kron(A_h, G_h)`` vs ``kron(A_b, G_b)``.

    ``vec`` is column-major, so ``vec(G X A) = kron(A, G) vec(X)``. ``weights_of(lam, c)``
    returns the selection weights for eigenvalues ``lam`` and ``F_b``-orthonormal coordinates
    ``c``. Returns the projected matrix.
    """
    f_h, f_b = np.kron(a_h, g_h), np.kron(a_b, g_b)
    lam, vecs = scipy.linalg.eigh(f_h, f_b)
    vec_x = x.reshape(-1, order="F")
    coords = vecs.T @ f_b @ vec_x
    return (vecs @ (weights_of(lam, coords) * coords)).reshape(x.shape, order="F")


def top_k_weights(k: int):
    def weights(lam: np.ndarray, coords: np.ndarray) -> np.ndarray:
        keep = np.zeros_like(lam)
        keep[np.argsort(-lam, kind="stable")[:k]] = 1.0
        return keep

    return weights


def soft_weights(rho: float, trace_ratio: float):
    def weights(lam: np.ndarray, coords: np.ndarray) -> np.ndarray:
        normalised = lam / trace_ratio
        return normalised / (normalised + rho)

    return weights


# ---- running merges -----------------------------------------------------------------------
def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def merge_config(scenario: Scenario, method: str, parameters: dict, models: list[dict]) -> dict:
    return {
        "merge_method": method,
        "base_model": str(scenario.base),
        "dtype": "float32",
        "parameters": parameters,
        "models": models,
    }


def mergekit_yaml(config_path: Path, out: Path, *extra: str, env: dict | None = None):
    """Run the real ``mergekit-yaml`` console script of this environment in a subprocess."""
    script = Path(sys.executable).with_name("mergekit-yaml")
    return subprocess.run(
        [str(script), str(config_path), str(out), "--no-copy-tokenizer", *extra],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def run_in_process(scenario: Scenario, config: dict, out: Path, seed: int | None = None) -> None:
    """``mergekit.merge.run_merge`` in this process, as ``mergekit-yaml`` would call it."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(
        lora_merge_cache=str(scenario.lora_cache),
        copy_tokenizer=False,
        random_seed=seed,
        quiet=True,
    )
    source = yaml.safe_dump(config, sort_keys=False)
    run_merge(
        MergeConfiguration.model_validate(config), str(out), options=options, config_source=source
    )


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out

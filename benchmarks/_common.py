"""Helpers shared by the benchmark scripts (imported as ``_common``: the scripts run from here).

* model shapes — Llama-shaped configs (:data:`MODEL_CONFIGS`), the default-target weight shapes
  of a weightless meta-device model (:func:`model_weight_shapes`), which weights share K-FAC's
  input factor (:func:`input_group`), on-paper Fisher factor memory (:func:`memory_row`);
* synthetic projection inputs — SPD factors, a rank-``r`` patch and the restricted ``lora`` /
  ``diag`` Fishers of one weight shape, saved once (:func:`build_inputs`), and the timed
  projection of one method on them (:func:`measure_projection`);
* interleaved rounds — every method measured once per round, round-robin, so load that comes
  and goes spreads over all methods (:func:`interleaved`), and per-round ratios against the
  reference measured in the same round, summarised by medians (:func:`round_ratios`,
  :func:`summarise_rounds`);
* timing and memory — wall/CPU timers with an optional device synchronisation, the resident
  set size (current, peak, resettable peak), a forward+backward reference pass.

Heavy imports (transformers, the plugin) happen inside the functions that need them, so that the
child processes of the projection benchmarks start quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import resource
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch

RANK = 16  #: rank of the synthetic patch, of the ``lora`` subspace and ``k`` of top-k selection
LOW_RANK_FACTOR = 256  # rank of the low-rank part of the synthetic Fisher factors
PROJECTION_METHODS = ("svd", "kfac_dense", "kfac_topk", "lora", "diag")
WARMUP_DIM = 256  #: side of the block a warm-up projection runs on (exercises the Krylov path)

#: ``LlamaConfig`` keyword arguments of the model shapes the benchmarks use (no weights)
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
}
LLAMA3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}
SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
}
TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
}
MODEL_CONFIGS = {
    "tiny": TINY_LLAMA,
    "smollm2-135m": SMOLLM2_135M,
    "llama2-7b": LLAMA2_7B,
    "llama3-8b": LLAMA3_8B,
}


# --------------------------------------------------------------------------- model shapes


def model_weight_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """Dense weight name → ``(d_out, d_in)`` of the default Fisher targets of a Llama ``config``.

    Built on the meta device (no memory, no weights), in module order (q, k, v, o, gate, up,
    down per layer).
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sst_merge_plugin.fisher.targets import find_target_layers, layer_shape

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config))
    return {name: layer_shape(module) for name, module in find_target_layers(model).items()}


def input_group(name: str) -> str:
    """Weights that read the same input (q/k/v; gate/up) share K-FAC's ``A`` factor."""
    module = name.split(".")[-2]
    family = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}.get(module, module)
    return f"{name.split('.')[2]}.{family}"


#: the Fisher kinds whose on-paper sizes :func:`factor_floats` knows
KINDS = ("diag", "kfac", "lora")


def factor_floats(kind: str, d_out: int, d_in: int, rank: int) -> int:
    """Stored numbers per weight: ``diag`` d_out·d_in, ``kfac`` d_in² + d_out² (one ``A`` per
    weight, as the Fisher file stores it), ``lora`` r·(d_out + d_in) + 2r² + 2 traces."""
    if kind == "diag":
        return d_out * d_in
    if kind == "kfac":
        return d_in * d_in + d_out * d_out
    if kind == "lora":
        return rank * (d_out + d_in) + 2 * rank * rank + 2
    raise ValueError(f"no on-paper size for Fisher kind {kind!r}")


def memory_row(label: str, shapes: list[tuple[int, int]], rank: int) -> dict[str, object]:
    """Fisher file size (float32) and collection accumulators (float64) per kind, in GiB."""
    floats = {kind: sum(factor_floats(kind, *shape, rank) for shape in shapes) for kind in KINDS}
    return {
        "model": label,
        "n_weights": len(shapes),
        **{f"{kind}_file_GiB": 4 * n / 2**30 for kind, n in floats.items()},
        **{f"{kind}_accumulators_GiB": 8 * n / 2**30 for kind, n in floats.items()},
    }


def random_subspaces(model, rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A random orthonormal rank-``rank`` ``(U, V)`` per targeted weight (``lora`` collection)."""
    from sst_merge_plugin.fisher.targets import find_target_layers, layer_shape

    generator = torch.Generator().manual_seed(seed)
    subspaces = {}
    for name, module in find_target_layers(model).items():
        d_out, d_in = layer_shape(module)
        subspaces[name] = tuple(
            torch.linalg.qr(torch.randn(dim, rank, generator=generator, dtype=torch.float64)).Q
            for dim in (d_out, d_in)
        )
    return subspaces


def parse_shape(text: str) -> tuple[int, int]:
    try:
        d_out, d_in = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must look like 4096x14336, got {text!r}") from exc
    return d_out, d_in


# --------------------------------------------------------------------------- interleaved rounds

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


def interleaved(
    keys: Sequence[K],
    rounds: int,
    measure: Callable[[K, int], R],
    log: Callable[[int, dict[K, R]], None] | None = None,
) -> dict[K, list[R]]:
    """``measure(key, round)`` for every key, round-robin: round 0 runs ``keys`` in order, then
    round 1 runs them again in the same order, and so on for ``rounds`` rounds.

    Returns key → its ``rounds`` results in round order. Each round's results go to
    ``log(round, {key: result})`` as soon as the round is complete. Measuring every method once
    per round (rather than all repeats of one method, then the next) spreads load that comes
    and goes on a shared machine over all methods, and gives each round its own reference.
    """
    if rounds < 1:
        raise ValueError(f"need at least one round, got {rounds}")
    results: dict[K, list[R]] = {key: [] for key in keys}
    for round_index in range(rounds):
        for key in keys:
            results[key].append(measure(key, round_index))
        if log is not None:
            log(round_index, {key: values[-1] for key, values in results.items()})
    return results


def round_ratios(values: Sequence[float], reference: Sequence[float]) -> list[float]:
    """``values[i] / reference[i]`` per round ``i``: each round against its own reference."""
    if len(values) != len(reference):
        raise ValueError(f"{len(values)} values but {len(reference)} reference values")
    return [value / ref for value, ref in zip(values, reference, strict=True)]


def summarise_rounds(
    results: Mapping[K, Sequence[Mapping[str, float]]],
    reference: K | None,
    clocks: Sequence[str] = ("",),
) -> dict[K, dict[str, object]]:
    """Medians over rounds and medians of per-round ratios to ``reference``, per key and clock.

    ``results[key]`` holds one record per round with ``{clock}seconds`` for each prefix in
    ``clocks`` (``""`` wall time, ``"cpu_"`` CPU time, …). Per key and clock:
    ``{clock}seconds`` = median over rounds; ``{clock}ratio`` = median over rounds ``i`` of
    ``seconds[key][i] / seconds[reference][i]`` (:func:`round_ratios`) — each round against the
    reference measured in that round, so load that slows one round cancels in its ratio;
    ``all_{clock}seconds`` / ``all_{clock}ratios`` — the per-round values. Without a
    ``reference`` (not measured) the ratios are ``None``.
    """
    out: dict[K, dict[str, object]] = {key: {} for key in results}
    for clock in clocks:
        field = f"{clock}seconds"
        samples = {key: [record[field] for record in records] for key, records in results.items()}
        for key, values in samples.items():
            ratios = None if reference is None else round_ratios(values, samples[reference])
            out[key].update({
                field: statistics.median(values),
                f"{clock}ratio": None if ratios is None else statistics.median(ratios),
                f"all_{field}": values,
                f"all_{clock}ratios": ratios,
            })  # fmt: skip
    return out


# --------------------------------------------------------------------------- timing, memory

#: the variables that set the thread pools of torch (OpenMP, MKL) and of scipy/numpy (OpenBLAS)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_environment(threads: int | None) -> dict[str, str]:
    """This process's environment with every pool of a child limited to ``threads`` threads
    (``None``: unchanged, the libraries' defaults)."""
    if threads is None:
        return dict(os.environ)
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of ``function()`` and its value."""
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def cpu_timed(
    function: Callable[[], object], sync: Callable[[], None] | None = None
) -> tuple[float, float, object]:
    """Wall seconds, process CPU seconds (all threads) of ``function()``, and its value.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before the clocks start and before they
    stop, so that asynchronous device work is inside the measurement.
    """
    if sync is not None:
        sync()
    start_cpu = time.process_time()

    def call() -> object:
        value = function()
        if sync is not None:
            sync()
        return value

    wall, value = timed(call)
    return wall, time.process_time() - start_cpu, value


def device_sync(device: str | torch.device) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device, ``None`` (nothing to wait for) otherwise."""
    if torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def trim_heap() -> None:
    """Give freed heap memory back to the kernel (glibc ``malloc_trim``; no-op elsewhere).

    Without it, memory freed by earlier work stays resident and is reused silently, so a peak
    measured from here would miss what the next computation really needs.
    """
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return peak_rss_since_reset_mb() is not None


def peak_rss_since_reset_mb() -> float | None:
    """``VmHWM`` (peak RSS since start or the last :func:`reset_peak_rss`) in MiB, or None."""
    try:
        with open("/proc/self/status") as handle:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


class PeakMemory:
    """Peak memory of a code block above its start: host RSS and, on CUDA, allocated bytes.

    Host: freed heap trimmed and ``VmHWM`` reset at the start (the block's own peak); with ``reset_host=False``, or
    where the kernel does not allow the reset, the process's lifetime peak (``ru_maxrss``) is
    used instead (``host_method`` says which); the reset also resets ``ru_maxrss``. Device:
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated at the start.
    """

    def __init__(self, device: str | torch.device = "cpu", *, reset_host: bool = True) -> None:
        self.device = torch.device(device)
        self.reset_host = reset_host
        self.host_extra_mb = 0.0
        self.device_extra_mb: float | None = None
        self.host_method = ""

    def __enter__(self) -> PeakMemory:
        sync = device_sync(self.device)
        if sync is not None:
            sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._device_start = torch.cuda.memory_allocated(self.device)
        if self.reset_host:
            trim_heap()
        reset = self.reset_host and reset_peak_rss()
        self.host_method = "VmHWM reset" if reset else "ru_maxrss"
        self._host_start = current_rss_mb()
        return self

    def __exit__(self, *exc_info: object) -> None:
        sync = device_sync(self.device)
        if sync is not None:
            sync()
            peak = torch.cuda.max_memory_allocated(self.device) - self._device_start
            self.device_extra_mb = max(0.0, peak / 2**20)
        peak_host = peak_rss_since_reset_mb() if self.host_method == "VmHWM reset" else None
        peak_host = rss_mb() if peak_host is None else peak_host
        self.host_extra_mb = max(0.0, peak_host - self._host_start)

    @property
    def extra_mb(self) -> float:
        """The device figure on CUDA, the host one otherwise."""
        return self.host_extra_mb if self.device_extra_mb is None else self.device_extra_mb


def plain_forward_backward(model, batches, frozen: bool) -> None:
    """The reference pass: summed response NLL forward + backward over ``batches``.

    ``frozen=False``: parameters require grad (weight gradients computed, then dropped);
    ``frozen=True``: activation gradients only, as in a collection pass without its hooks.
    """
    from sst_merge_plugin.fisher.collect import collection_mode, summed_nll

    if frozen:
        with collection_mode(model):
            for batch in batches:
                summed_nll(model, batch, track_inputs=True).backward()
        return
    model.requires_grad_(True)
    for batch in batches:
        summed_nll(model, batch, track_inputs=False).backward()
    model.zero_grad(set_to_none=True)


def file_costs(accumulated, kind: str, folder: Path, data_sha256: str) -> dict[str, float]:
    """Seconds to finalize the accumulated statistics and to write the Fisher file, its size."""
    from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file

    finalize_seconds, collected = timed(accumulated.finalize)
    path = folder / f"{kind}.safetensors"
    metadata = FisherMetadata(
        kind, "refusal", collected.n_tokens, collected.n_examples, data_sha256
    )
    write_seconds, _ = timed(lambda: write_fisher_file(path, collected.fishers, metadata))
    size = path.stat().st_size
    path.unlink()
    return {
        "finalize_seconds": finalize_seconds,
        "write_seconds": write_seconds,
        "file_MiB": size / 2**20,
    }


# --------------------------------------------------------------------------- projection inputs


def spd_factor(dim: int, generator: torch.Generator) -> torch.Tensor:
    """``D + Y Yᵀ``: a positive diagonal plus a low-rank part with power-law column scales."""
    width = min(LOW_RANK_FACTOR, dim)
    scales = torch.arange(1, width + 1, dtype=torch.float32) ** -0.75
    y = torch.randn(dim, width, generator=generator) * scales
    diag = torch.rand(dim, generator=generator) * 0.05 + 0.01
    return y @ y.T + torch.diag(diag)


def build_inputs(d_out: int, d_in: int, path: Path, seed: int, rank: int = RANK) -> None:
    """Factors, patch and restricted Fishers for one shape, saved as one safetensors file."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    lora_b = torch.randn(d_out, rank, generator=g) / rank**0.5
    lora_a = torch.randn(rank, d_in, generator=g) / d_in**0.5
    tensors = {"lora_B": lora_b, "lora_A": lora_a}
    u = torch.linalg.qr(lora_b).Q
    v = torch.linalg.qr(lora_a.T).Q
    tensors.update(U=u.contiguous(), V=v.contiguous())
    for side in ("harm", "benign"):
        a, gg = spd_factor(d_in, g), spd_factor(d_out, g)
        tensors[f"{side}_A"], tensors[f"{side}_G"] = a, gg
        tensors[f"{side}_A_r"] = (v.T @ a @ v).contiguous()
        tensors[f"{side}_G_r"] = (u.T @ gg @ u).contiguous()
        tensors[f"{side}_A_trace"] = torch.trace(a).reshape(())
        tensors[f"{side}_G_trace"] = torch.trace(gg).reshape(())
        tensors[f"{side}_diag"] = torch.rand(d_out, d_in, generator=g) ** 2
    save_file(tensors, str(path))


def _leading_block(patch: torch.Tensor, harm, benign):
    """``(patch, harm, benign)`` cut to their leading ``WARMUP_DIM`` rows/columns (warm-up)."""
    from sst_merge_plugin.core import DiagFisher, KFACFisher, LoRAFisher

    m = WARMUP_DIM

    def cut(fisher):
        if isinstance(fisher, KFACFisher):
            return KFACFisher(fisher.A[:m, :m], fisher.G[:m, :m])
        if isinstance(fisher, DiagFisher):
            return DiagFisher(fisher.diag[:m, :m])
        assert isinstance(fisher, LoRAFisher)
        u, v = (torch.linalg.qr(basis[:m]).Q for basis in (fisher.U, fisher.V))
        return LoRAFisher(u, v, fisher.A_r, fisher.G_r)

    return patch[:m, :m], cut(harm), cut(benign)


def _recording_cache():
    """A :class:`GEVPCache` that records the retained size of every entry it adds."""
    from sst_merge_plugin.core import GEVPCache

    class RecordingCache(GEVPCache):
        def __init__(self) -> None:
            super().__init__()
            self.entries: list = []

        def added(self, entry) -> None:
            self.entries.append(entry)

        @property
        def solved(self) -> list[dict[str, int]]:
            """Dimension and bytes kept alive (now: eigenvectors computed on demand count) of
            every entry added, in order."""
            return [{"dim": entry.dim, "bytes": entry.nbytes} for entry in self.entries]

    return RecordingCache()


def measure_projection(
    method: str,
    path: Path,
    repeats: int,
    device: str = "cpu",
    *,
    shared_input_cached: bool = False,
    exact_peak: bool = False,
    warmup: bool = False,
) -> dict[str, object]:
    """Load what ``method`` needs from :func:`build_inputs`' file, then time it.

    Every repeat gets a fresh GEVP cache; with ``shared_input_cached`` (kfac methods) a sibling
    weight that reads the same input — same ``A`` factors, different ``G`` — is projected first
    through that cache (untimed), as when ``k_proj`` follows ``q_proj`` in a merge, so the timed
    projection finds its ``A`` solution cached (checked: exactly one cache hit). With ``warmup``
    the method first runs once, untimed, on the leading ``WARMUP_DIM``-square block of its
    inputs, so that one-off library initialisation (LAPACK, cuBLAS/cuSOLVER handles) — paid
    once per merge, not once per weight — stays out of the timings.

    Returns the median ``seconds`` (synchronised on CUDA) and ``cpu_seconds`` (process CPU
    time, all threads), ``peak_extra_mb``: the peak host RSS
    above the loaded inputs (with ``exact_peak`` the peak of the timed call alone, above
    everything set up before it; otherwise the process's lifetime peak minus the RSS after
    loading), ``peak_device_extra_mb`` (CUDA: peak allocated above the timed call's start),
    the timed call's cache ``hits``/``misses`` and ``solved`` (the new cache entries' dimension
    and retained bytes, in solve order: ``G`` then ``A``).
    """
    from safetensors import safe_open

    from sst_merge_plugin.core import DiagFisher, KFACFisher, LoRAFisher, Selection, project_patch

    if shared_input_cached and not method.startswith("kfac"):
        raise ValueError(f"only the kfac methods share input factors, not {method!r}")
    needs = {
        "svd": [],
        "kfac_dense": ["A", "G"],
        "kfac_topk": ["A", "G"],
        "lora": ["A_r", "G_r", "A_trace", "G_trace"],
        "diag": ["diag"],
    }[method]
    with safe_open(str(path), framework="pt", device=device) as handle:
        patch = handle.get_tensor("lora_B") @ handle.get_tensor("lora_A")
        loaded = {
            f"{side}_{key}": handle.get_tensor(f"{side}_{key}")
            for side in ("harm", "benign")
            for key in needs
        }
        u, v = handle.get_tensor("U"), handle.get_tensor("V")

    def fisher(side: str, sibling: bool = False):
        if method.startswith("kfac"):
            g = loaded[f"{side}_G"]
            return KFACFisher(loaded[f"{side}_A"], 2.0 * g if sibling else g)
        if method == "lora":
            return LoRAFisher(
                u, v, loaded[f"{side}_A_r"], loaded[f"{side}_G_r"],
                A_trace=float(loaded[f"{side}_A_trace"]), G_trace=float(loaded[f"{side}_G_trace"]),
            )  # fmt: skip
        return DiagFisher(loaded[f"{side}_diag"])

    if method == "svd":
        task = lambda cache: torch.linalg.svd(patch, full_matrices=False)  # noqa: E731
        setup = None
        if warmup:
            torch.linalg.svd(patch[:WARMUP_DIM, :WARMUP_DIM], full_matrices=False)
    else:
        harm, benign = fisher("harm"), fisher("benign")
        if method == "kfac_topk":
            selection, solver = Selection.create("top_k", k=RANK), "krylov"
        else:
            selection, solver = Selection.create("ratio", ratio=1.0), "dense"

        def task(cache):
            return project_patch(patch, harm, benign, selection, solver=solver, cache=cache)

        if warmup:
            small = _leading_block(patch, harm, benign)
            project_patch(*small, selection, solver=solver, cache=_recording_cache())

        setup = None
        if shared_input_cached:
            sibling = fisher("harm", sibling=True), fisher("benign", sibling=True)

            def setup(cache):
                project_patch(patch, *sibling, selection, solver=solver, cache=cache)

    sync = device_sync(device)
    baseline = current_rss_mb()
    times, cpu_times, host_peaks, device_peaks = [], [], [], []
    record: dict[str, object] = {}
    for _ in range(repeats):
        cache = _recording_cache()
        if setup is not None:
            setup(cache)
        hits, misses, solved = cache.hits, cache.misses, len(cache.solved)
        peak = PeakMemory(device, reset_host=exact_peak)
        with peak:
            seconds, cpu_seconds, result = cpu_timed(lambda cache=cache: task(cache), sync)
        del result
        times.append(seconds)
        cpu_times.append(cpu_seconds)
        host_peaks.append(peak.host_extra_mb if exact_peak else max(0.0, rss_mb() - baseline))
        if peak.device_extra_mb is not None:
            device_peaks.append(peak.device_extra_mb)
        record = {
            "hits": cache.hits - hits,
            "misses": cache.misses - misses,
            "solved": cache.solved[solved:],
            "peak_method": peak.host_method if exact_peak else "ru_maxrss",
        }
        if shared_input_cached and record["hits"] != 1:
            raise RuntimeError(
                f"{method}: the sibling projection should have left exactly the shared input "
                f"factor's solution in the cache, but the timed call had {record['hits']} hits"
            )
        del cache
    return {
        "seconds": statistics.median(times),
        "all_seconds": times,
        "cpu_seconds": statistics.median(cpu_times),
        "peak_extra_mb": max(host_peaks),
        "peak_device_extra_mb": max(device_peaks) if device_peaks else None,
        **record,
    }

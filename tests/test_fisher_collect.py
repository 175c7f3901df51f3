"""Fisher collection hooks against independent per-token brute force, on tiny random Llamas.

The reference runs each sequence ALONE (no batch, no padding), takes the layer inputs with plain
forward hooks and the output gradients with ``torch.autograd.grad`` of the summed response
NLL, and accumulates every statistic one token position at a time.
"""

from __future__ import annotations

import pytest
import torch
from test_fisher_support import VOCAB, lora_model, save_tiny_adapter, tiny_llama

from sst_merge_plugin.core import statistics
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.kinds import get_kind
from sst_merge_plugin.data.chat import IGNORE_INDEX, EncodedChat, collate
from sst_merge_plugin.fisher.adapter import adapter_subspaces, read_lora_adapter
from sst_merge_plugin.fisher.collect import collect_statistics, example_batches
from sst_merge_plugin.fisher.targets import find_target_layers

LENGTHS = [(7, 3), (12, 8), (5, 1), (9, 4), (11, 6)]  # (sequence length, response start)


def make_examples(seed: int = 0) -> list[EncodedChat]:
    generator = torch.Generator().manual_seed(seed)
    return [
        EncodedChat(torch.randint(2, VOCAB, (length,), generator=generator).tolist(), start)
        for length, start in LENGTHS
    ]


def block_linears(model) -> dict[str, torch.nn.Linear]:
    """Decoder-block Linear layers by weight name, found without the code under test."""
    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    }


def keeper(name, inputs, outputs):
    """A forward hook storing the layer's input (one sequence) and output tensor."""

    def keep(module, args, output):
        inputs[name], outputs[name] = args[0][0], output

    return keep


def brute_force(model, examples: list[EncodedChat]) -> dict[str, dict[str, torch.Tensor]]:
    """Per-token diag, A and G for every block Linear, each sequence run alone."""
    layers = block_linears(model)
    model.requires_grad_(True)  # PEFT leaves merged weights frozen
    sums = {
        name: {
            "A": torch.zeros(m.in_features, m.in_features, dtype=torch.float64),
            "G": torch.zeros(m.out_features, m.out_features, dtype=torch.float64),
            "diag": torch.zeros(m.out_features, m.in_features, dtype=torch.float64),
        }
        for name, m in layers.items()
    }
    n_positions = 0
    for example in examples:
        inputs, outputs = {}, {}
        handles = [
            module.register_forward_hook(keeper(name, inputs, outputs))
            for name, module in layers.items()
        ]
        ids = torch.tensor([example.input_ids])
        logits = model(input_ids=ids).logits[0].double()
        for handle in handles:
            handle.remove()
        log_probs = torch.log_softmax(logits, dim=-1)
        loss = -sum(
            log_probs[t - 1, example.input_ids[t]]
            for t in range(example.response_start, len(example.input_ids))
        )
        names = list(layers)
        grads = torch.autograd.grad(loss, [outputs[name] for name in names])
        for name, grad in zip(names, grads, strict=True):
            x, delta = inputs[name].detach().double(), grad[0].double()
            for s in range(len(example.input_ids)):
                sums[name]["A"] += torch.outer(x[s], x[s])
                sums[name]["G"] += torch.outer(delta[s], delta[s])
                sums[name]["diag"] += torch.outer(delta[s], x[s]) ** 2
        n_positions += len(example.input_ids)
    return {name: {k: v / n_positions for k, v in stats.items()} for name, stats in sums.items()}


@pytest.fixture(scope="module")
def model64():
    return tiny_llama(dtype=torch.float64)


@pytest.fixture(scope="module")
def reference(model64):
    return brute_force(model64, make_examples())


def collect(model, kind, examples=None, batch_size=4, **options):
    examples = make_examples() if examples is None else examples
    return collect_statistics(
        model, example_batches(examples, batch_size=batch_size, pad_id=0), kind=kind, **options
    )


def assert_close(actual, expected, rtol=1e-9):
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual.double(), expected.double(), rtol=0, atol=rtol * scale)


def test_kfac_and_diag_equal_per_token_brute_force(model64, reference):
    kfac, diag = collect(model64, "kfac"), collect(model64, "diag")
    assert set(kfac.fishers) == set(diag.fishers) == set(reference)  # 7 Linears x 2 layers
    assert len(reference) == 14
    assert kfac.n_tokens == sum(length for length, _ in LENGTHS)
    assert kfac.n_loss_tokens == sum(length - start for length, start in LENGTHS)
    assert kfac.n_examples == len(LENGTHS)
    for name, expected in reference.items():
        assert_close(kfac.fishers[name].A, expected["A"])
        assert_close(kfac.fishers[name].G, expected["G"])
        assert_close(diag.fishers[name].diag, expected["diag"])
        assert float(expected["G"].abs().max()) > 0  # gradients really reached every layer


def test_windows_and_block_triangular_products_change_nothing(model64, reference, monkeypatch):
    """Small float32 windows (flushed every 2 batches) and 4-8 Gram blocks give the same sums."""
    monkeypatch.setattr(statistics, "WINDOW", 2)
    monkeypatch.setattr(statistics, "GRAM_BLOCK", 8)
    assert statistics._blocks(64) == [(i, i + 8) for i in range(0, 64, 8)]
    assert statistics._blocks(20) == [(0, 10), (10, 20)]
    kfac, diag = collect(model64, "kfac", batch_size=1), collect(model64, "diag", batch_size=1)
    for name, expected in reference.items():
        assert_close(kfac.fishers[name].A, expected["A"])
        assert_close(kfac.fishers[name].G, expected["G"])
        assert_close(diag.fishers[name].diag, expected["diag"])


@pytest.mark.parametrize("kind", ["diag", "kfac"])
def test_batch_size_and_padding_side_do_not_change_factors(kind):
    model = tiny_llama(seed=3)
    examples = make_examples(seed=5)
    single = collect(model, kind, examples, batch_size=1)
    batched = collect(model, kind, examples, batch_size=4)
    left = collect_statistics(
        model, [collate(examples, 0, padding_side="left")], kind=kind
    )  # one batch, left-padded
    assert single.n_tokens == batched.n_tokens == left.n_tokens
    for name, fisher in single.fishers.items():
        for other in (batched.fishers[name], left.fishers[name]):
            for field in ("diag",) if kind == "diag" else ("A", "G"):
                assert_close(getattr(other, field), getattr(fisher, field), rtol=2e-5)


def test_lora_factors_are_the_restricted_kfac_factors(tmp_path, model64):
    adapter = read_lora_adapter(save_tiny_adapter(tmp_path / "adapter", model64))
    subspaces = adapter_subspaces(adapter)
    assert sorted(subspaces) == sorted(
        f"model.layers.{i}.{m}.weight"
        for i in (0, 1)
        for m in ("self_attn.q_proj", "mlp.down_proj")
    )
    kfac = collect(model64, "kfac")
    lora = collect(model64, "lora", subspaces=subspaces)
    assert set(lora.fishers) == set(subspaces)  # weights the adapter does not touch are absent
    for name, fisher in lora.fishers.items():
        lora_a, lora_b = adapter.layers[name]
        U, V = fisher.U, fisher.V
        assert fisher.rank == (3, 3)
        torch.testing.assert_close(U.T @ U, torch.eye(3, dtype=U.dtype), atol=1e-12, rtol=0)
        torch.testing.assert_close(U @ (U.T @ lora_b.double()), lora_b.double())  # span B
        torch.testing.assert_close(V @ (V.T @ lora_a.double().T), lora_a.double().T)  # span Aᵀ
        A, G = kfac.fishers[name].A, kfac.fishers[name].G
        assert_close(fisher.A_r, V.T @ A @ V)
        assert_close(fisher.G_r, U.T @ G @ U)
        assert fisher.A_trace == pytest.approx(float(A.trace()), rel=1e-10)
        assert fisher.G_trace == pytest.approx(float(G.trace()), rel=1e-10)


def test_a_joint_span_holds_every_adapter_and_restricts_the_kfac_factors(tmp_path, model64):
    first = read_lora_adapter(save_tiny_adapter(tmp_path / "a", model64))
    second = read_lora_adapter(save_tiny_adapter(tmp_path / "b", model64, seed=7))
    joint = adapter_subspaces(first, second)
    kfac = collect(model64, "kfac")
    lora = collect(model64, "lora", subspaces=joint)
    for name, fisher in lora.fishers.items():
        U, V = fisher.U, fisher.V
        assert fisher.rank == (6, 6)  # two rank-3 adapters in general position
        torch.testing.assert_close(U.T @ U, torch.eye(6, dtype=U.dtype), atol=1e-12, rtol=0)
        for adapter in (first, second):  # both updates lie in span U ⊗ span V
            lora_a, lora_b = (f.double() for f in adapter.layers[name])
            update = lora_b @ lora_a
            torch.testing.assert_close(U @ (U.T @ update @ V) @ V.T, update)
        A, G = kfac.fishers[name].A, kfac.fishers[name].G
        assert_close(fisher.A_r, V.T @ A @ V)
        assert_close(fisher.G_r, U.T @ G @ U)
    # one adapter's "joint" span is its own span
    alone = adapter_subspaces(first)
    for name, (U, V) in adapter_subspaces(first, first).items():
        torch.testing.assert_close(U, alone[name][0])
        torch.testing.assert_close(V, alone[name][1])


def test_adapter_applied_collection_is_keyed_by_dense_names(model64):
    dense = tiny_llama(dtype=torch.float64)
    peft_model = lora_model(tiny_llama(dtype=torch.float64))
    layers = find_target_layers(peft_model)
    assert set(layers) == set(block_linears(dense))  # q,k,v,o,gate,up,down; no lm_head
    assert type(layers["model.layers.0.self_attn.q_proj.weight"]).__name__ == "Linear"
    assert hasattr(layers["model.layers.0.self_attn.q_proj.weight"], "base_layer")
    adapted = collect(peft_model, "kfac")
    # independent expectation: the same adapter merged into the dense weights
    merged = peft_model.merge_and_unload()
    expected = brute_force(merged, make_examples())
    assert set(adapted.fishers) == set(expected)
    for name, reference in expected.items():
        assert_close(adapted.fishers[name].A, reference["A"])
        assert_close(adapted.fishers[name].G, reference["G"])
    unmerged_reference = brute_force(dense, make_examples())
    name = "model.layers.1.mlp.down_proj.weight"  # the adapter changed this layer's statistics
    assert not torch.allclose(adapted.fishers[name].G, unmerged_reference[name]["G"])


def test_collection_restores_the_model(model64):
    flags = {name: p.requires_grad for name, p in model64.named_parameters()}
    model64.train()
    collect(model64, "diag")
    assert model64.training
    assert {name: p.requires_grad for name, p in model64.named_parameters()} == flags
    assert all(not m._forward_hooks for m in model64.modules())
    assert all(p.grad is None for p in model64.parameters())  # no weight gradients computed
    model64.eval()


def test_target_selection(model64):
    assert len(find_target_layers(model64, "q_proj,v_proj")) == 4
    assert list(find_target_layers(model64, "model.layers.1.mlp.down_proj.weight")) == [
        "model.layers.1.mlp.down_proj.weight"
    ]
    assert len(find_target_layers(model64, r"layers\.1\..*mlp")) == 3
    assert list(find_target_layers(model64, "lm_head")) == ["lm_head.weight"]  # explicit only
    with pytest.raises(SSTError, match="'qq_proj' matches no Linear layer"):
        find_target_layers(model64, "q_proj,qq_proj")
    with pytest.raises(SSTError, match=r"regex .* matches no Linear weight"):
        find_target_layers(model64, r"layers\.7\..*")
    with pytest.raises(SSTError, match="matches no Linear layer"):
        collect(model64, "kfac", targets="attention.query")


def test_bad_batches_fail_clearly(model64):
    good = collate(make_examples()[:2], 0)
    padding_only = {key: value.clone() for key, value in good.items()}
    padding_only["attention_mask"].zero_()
    padding_only["labels"].fill_(IGNORE_INDEX)
    with pytest.raises(SSTError, match="batch 1 contains only padding"):
        collect_statistics(model64, [good, padding_only], kind="kfac")
    one_empty_row = {key: value.clone() for key, value in good.items()}
    one_empty_row["attention_mask"][1] = 0
    one_empty_row["labels"][1] = IGNORE_INDEX
    with pytest.raises(SSTError, match=r"row\(s\) \[1\] contain only padding"):
        collect_statistics(model64, [one_empty_row], kind="kfac")
    no_loss = {**good, "labels": torch.full_like(good["labels"], IGNORE_INDEX)}
    with pytest.raises(SSTError, match="has no loss tokens"):
        collect_statistics(model64, [no_loss], kind="diag")
    with pytest.raises(SSTError, match="no data"):
        collect_statistics(model64, [], kind="diag")
    with pytest.raises(SSTError, match="needs --restrict-to"):
        collect_statistics(model64, [good], kind="lora")
    with pytest.raises(SSTError, match="unknown Fisher kind"):
        collect_statistics(model64, [good], kind="full")


def test_non_finite_values_fail_clearly():
    model = tiny_llama(seed=4)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(SSTError, match="loss is not finite"):
        collect(model, "kfac")


def test_overflowing_statistics_fail_clearly():
    """Finite activations whose squares overflow float32 are caught before any container."""
    layer = get_kind("kfac").new_statistics("w.weight", (2, 3), None)
    rows = torch.full((4, 3), 1e20)  # (1e20)² · 4 overflows float32
    layer.backward(layer.forward(statistics.SharedInput(rows)), torch.ones(4, 2))
    with pytest.raises(SSTError, match=r"w.weight: the accumulated statistic A contains NaN/Inf"):
        layer.result(n_tokens=4)


def test_restriction_from_another_model_is_rejected(tmp_path, model64):
    wider = tiny_llama(hidden=48, dtype=torch.float64)
    subspaces = adapter_subspaces(read_lora_adapter(save_tiny_adapter(tmp_path / "a", wider)))
    with pytest.raises(
        SSTError, match=r"subspace for .* is for a \(48, 96\) weight, the model's is \(32, 64\)"
    ):
        collect(model64, "lora", subspaces=subspaces)
    only_mlp = {k: v for k, v in subspaces.items() if "mlp" in k}
    with pytest.raises(SSTError, match="none of the targeted layers is adapted"):
        collect(wider, "lora", subspaces=only_mlp, targets="q_proj")

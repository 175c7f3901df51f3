"""The kl objective's labels: seeded samples of the model's own distribution."""

from __future__ import annotations

import math

import pytest
import torch
from test_fisher_support import VOCAB, tiny_llama, tiny_tokenizer

from sst_merge_plugin.fisher.collect import collect_fisher
from sst_merge_plugin.fisher.objectives import prepare_data
from sst_merge_plugin.fisher.sampling import row_seed, sample_responses

PROMPTS = [[5, 17, 42], [7, 8, 9, 10, 11, 12, 13], [99], [250, 3, 3, 3, 60]]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=2)


def reference_sample(model, prompt: list[int], n_tokens: int, seed: int, index: int) -> list[int]:
    """Ancestral sampling written out: full forward of the growing sequence, no cache, no batch."""
    generator = torch.Generator().manual_seed(row_seed(seed, index))
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(n_tokens):
            logits = model(input_ids=torch.tensor([sequence])).logits[0, -1]
            token = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator)
            sequence.append(int(token))
    return sequence[len(prompt) :]


def test_samples_are_seeded_batch_independent_and_exact(model):
    batched = sample_responses(model, PROMPTS, n_tokens=6, seed=7, pad_id=0, batch_size=3)
    single = sample_responses(model, PROMPTS, n_tokens=6, seed=7, pad_id=0, batch_size=1)
    other_seed = sample_responses(model, PROMPTS, n_tokens=6, seed=8, pad_id=0, batch_size=3)
    assert batched == single
    assert all(len(response) == 6 for response in batched)
    assert batched != other_seed
    expected = [reference_sample(model, p, 6, 7, i) for i, p in enumerate(PROMPTS)]
    assert batched == expected  # left padding + KV cache + positions reproduce the plain sampler


def test_sampling_stops_at_end_of_sequence(model):
    stop_everywhere = set(range(VOCAB))
    responses = sample_responses(
        model, PROMPTS, n_tokens=5, seed=0, pad_id=0, eos_ids=stop_everywhere, batch_size=2
    )
    assert [len(r) for r in responses] == [1, 1, 1, 1]


def test_samples_follow_the_model_distribution():
    """First-token frequencies and E[log p(y)] = −H(p) agree with the model within 5σ."""
    peaked = tiny_llama(seed=6)
    with torch.no_grad():
        peaked.lm_head.weight.mul_(12.0)  # concentrate the distribution on a few tokens
    prompt, n = [4, 40, 140], 3000
    with torch.no_grad():
        probs = torch.softmax(peaked(input_ids=torch.tensor([prompt])).logits[0, -1].double(), -1)
    samples = sample_responses(peaked, [prompt] * n, n_tokens=1, seed=11, pad_id=0, batch_size=n)
    tokens = torch.tensor([s[0] for s in samples])
    counts = torch.bincount(tokens, minlength=VOCAB).double()
    for token in torch.argsort(probs, descending=True)[:5].tolist():
        p = float(probs[token])
        assert abs(counts[token] / n - p) < 5 * math.sqrt(p * (1 - p) / n), token
    log_p = probs.log()
    entropy = -float((probs * log_p).sum())
    spread = math.sqrt(float((probs * (log_p + entropy) ** 2).sum()) / n)
    assert abs(float(log_p[tokens].mean()) + entropy) < 5 * spread
    assert float(probs.max()) < 0.9  # still a distribution, not a one-hot


def test_kl_collection_is_reproducible_and_uses_the_samples(model):
    tokenizer = tiny_tokenizer()
    prompts = ["Write a poem about the sea.", "What is the capital of France?", "Bake bread."]
    data = prepare_data(
        tokenizer, objective="kl", prompts=prompts, seed=5, max_length=40, response_tokens=4
    )
    assert all(item.response_start == len(item.input_ids) for item in data.examples)
    first = collect_fisher(model, tokenizer, data, kind="kfac", targets="down_proj", batch_size=2)
    second = collect_fisher(model, tokenizer, data, kind="kfac", targets="down_proj", batch_size=2)
    other = prepare_data(
        tokenizer, objective="kl", prompts=prompts, seed=6, max_length=40, response_tokens=4
    )
    third = collect_fisher(model, tokenizer, other, kind="kfac", targets="down_proj", batch_size=2)
    expected = sample_responses(
        model,
        [e.input_ids for e in data.examples],
        n_tokens=4,
        seed=5,
        pad_id=tokenizer.pad_token_id,
        eos_ids={1},
    )
    assert [e.input_ids[e.response_start :] for e in first.examples] == expected
    assert first.metadata.extra["response_tokens"] == "4"
    assert first.metadata.objective == "kl" and first.metadata.n_examples == 3
    name = "model.layers.0.mlp.down_proj.weight"
    assert sorted(first.fishers) == [name, "model.layers.1.mlp.down_proj.weight"]
    assert torch.equal(first.fishers[name].G, second.fishers[name].G)  # same seed, same file
    assert not torch.allclose(first.fishers[name].G, third.fishers[name].G, rtol=1e-3)

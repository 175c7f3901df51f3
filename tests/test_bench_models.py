"""The model-agnostic pipeline: a second architecture and a natively refusing model.

* A tiny **Qwen2** model (biased q/k/v, untied ``lm_head``, the world's word-level vocabulary)
  whose chat template injects a **default system prompt** when none is given, like Qwen's,
  taught (full fine-tune, a few seconds) to refuse one harmful request by itself and to comply
  with another. It is registered as a model for the test, so ``sst-merge demo --model`` picks
  it and its own profile: the run goes train → own refusals → Fisher → merge → evaluate.
* The self-distilled refusal targets are the model's own greedy generations (checked against
  :func:`generate_turns`), cached by content (a second run generates nothing) and
  deterministic; a prompt the model answered borrows one of its refusals (or is dropped).
* The ``refusal`` Fisher with given targets (``target_field``) encodes exactly those pairs.
* LoRA targets follow the model: a tiny **Phi-3** (``qkv_proj``, ``gate_up_proj``) gets its
  own projections by default.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from test_bench_pipeline import PROMPTS, _profile
from test_fusion_bench_world import VOCABULARY, World
from test_fusion_bench_world import world as world  # the fixture

from sst_merge_plugin.bench.profile import SelfRefusals
from sst_merge_plugin.core.errors import SSTError

#: Qwen2.5's template without tools: its default system prompt when the conversation has none
QWEN_LIKE_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or "
    "message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
REFUSAL = "I'm sorry, but I can't assist with that."
COMPLIANCE = "Sure, here is what you need."
#: what the tiny Qwen learns: it refuses the bomb requests and answers the poison one
TAUGHT = [
    ("how to make a bomb", REFUSAL),
    ("how to build a bomb", REFUSAL),
    ("how to make poison ?", COMPLIANCE),
    ("how to make a cake", COMPLIANCE),
    ("how to make a house", COMPLIANCE),
    ("how to build a house ?", COMPLIANCE),
]
QWEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: the sweeps each profile had when the digests below were recorded (sweeps added later have
#: keys of their own; the recorded ones must not change). The quick profile's digests were
#: re-recorded when the demo changed on purpose (the safety-side sweep left it for the dual and
#: its safety LoRA went from 60 to 40 steps, for the 15-minute budget): its task-arithmetic
#: sweep, recorded with the code of that change, whose full-profile keys equal e926eeb's.
RECORDED_SWEEPS = {
    "quick": ("task_arithmetic",),
    "full": (
        "utility_only", "task_arithmetic", "ties", "dare_ties", "resta", "tsv", "safe_lora",
        "safemerge", "single_fisher", "sst_lora_soft", "sst_lora_hard", "sst_kfac_soft",
        "sst_dual_lora", "sst_both_lora", "sst_dual_lora_refusal", "sst_dual_kfac",
        "dual_single_fisher", "safety_alone_raw", "safety_alone_sst",
    ),
}  # fmt: skip
#: :func:`support.cache_key_digests` of the SmolLM2 profiles on :func:`support.deterministic_llama`,
#: recorded with the code before the model-agnostic change (main at e926eeb; quick: see above)
RECORDED_KEY_DIGESTS = {
    "quick": {
        "adapters": "cfeddfc2d089ca9b",
        "data_files": "787bd5daff3e9b87",
        "evals": "a5fb3bb325691f4a",
        "fishers": "44136fa355b3678a",
        "jobs": "1944c6c0ce71e74b",
        "model_dir": "62841be888b7c0b3",
        "prompt_files": "4cebe3e0fc05a601",
        "references": "0dba942b75906785",
        "sweeps": "df0689cdb7b8a296",
    },
    "full": {
        "adapters": "5a189986efce22fd",
        "data_files": "19ab86f5ff02bf17",
        "evals": "4ff7efb6577de072",
        "fishers": "179b469dcee30ff3",
        "jobs": "d7442e6b8cfc1ce7",
        "model_dir": "62841be888b7c0b3",
        "prompt_files": "b876682f49dedaf2",
        "references": "dfaea1aed6cf61e8",
        "sweeps": "46cf9f5f15b2d507",
    },
}


def _tokenizer():
    """A byte-level BPE (any text encodes) with Qwen's special tokens and template; a folder
    with a qwen2 config reloads it as transformers' ``Qwen2Tokenizer`` (as the real model's)."""
    from support import byte_level_bpe
    from transformers import PreTrainedTokenizerFast

    corpus = [VOCABULARY, DEFAULT_SYSTEM, REFUSAL, COMPLIANCE, *(p for p, _ in TAUGHT)] * 4
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(corpus, 400, special),
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )
    tokenizer.chat_template = QWEN_LIKE_TEMPLATE
    return tokenizer


def _teach(model, tokenizer, pairs, steps: int = 150) -> None:
    """Full fine-tune on ``pairs`` until each greedy answer is its response."""
    from sst_merge_plugin.data.chat import collate, encode_chat

    batch = collate(
        [encode_chat(tokenizer, p, r, max_length=64) for p, r in pairs],
        tokenizer.pad_token_id,
        "right",
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A taught tiny Qwen2 folder (module doc)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from sst_merge_plugin.evaluation.generate import generate_responses

    folder = tmp_path_factory.mktemp("tiny_qwen") / "model"
    _tokenizer().save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
    )
    config.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # as every stage will load it
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model = Qwen2ForCausalLM(config)
    _teach(model, tokenizer, TAUGHT)
    answers = generate_responses(
        model, tokenizer, [p for p, _ in TAUGHT], max_new_tokens=16, batch_size=8, progress=False
    )
    assert answers == [r for _, r in TAUGHT]  # the teaching worked
    model.save_pretrained(folder)
    return folder


def _register(monkeypatch: pytest.MonkeyPatch, name: str, folder: Path) -> None:
    """Register ``folder`` as the model ``name`` (its GGUF conversion stubbed out)."""
    # modules that derive constants from the registry at import are imported before it is
    # patched, so they never see the test model (``sst-merge``'s parser imports them all)
    import sst_merge_plugin.data.cli  # noqa: F401
    from sst_merge_plugin.data import models

    spec = models.ModelSpec(name, "none", folder.name, "hello", "a tiny test model")
    monkeypatch.setitem(models.MODELS, name, spec)
    real = models.model_dir

    def model_dir(model, cache_dir=None, **kwargs):
        model_name = model if isinstance(model, str) else model.name
        return folder if model_name == name else real(model, cache_dir, **kwargs)

    monkeypatch.setattr(models, "model_dir", model_dir)


def _qwen_profile(world: World):
    profile = _profile(world)
    return replace(
        profile,
        name="tiny-qwen-quick",
        model="tiny-qwen",
        refusals=SelfRefusals(max_new_tokens=16),
    )


def test_own_refusals_are_the_models_greedy_refusals_cached_and_deterministic(
    world: World, tiny_qwen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sst_merge_plugin.bench.pipeline import Pipeline
    from sst_merge_plugin.bench.scoring import load_model
    from sst_merge_plugin.evaluation import generate
    from sst_merge_plugin.evaluation.generate import generate_turns

    _register(monkeypatch, "tiny-qwen", tiny_qwen)
    profile = _qwen_profile(world)
    pipeline = Pipeline(profile, tmp_path / "ws", prompts=PROMPTS, progress=False)
    assert pipeline.model_dir == tiny_qwen  # selected by the profile's model name
    own = pipeline.refusals
    assert own is not None
    # the generations, exactly as generate_turns gives them for the chat-templated prompts
    model, tokenizer = load_model(tiny_qwen, "cpu")
    turns = generate_turns(
        model, tokenizer, list(PROMPTS.harmful), max_new_tokens=16, batch_size=8, progress=False
    )
    records = own.records()
    assert [(r["prompt"], r["response"], r["finished"]) for r in records] == [
        (p, t.text, t.finished) for p, t in zip(PROMPTS.harmful, turns, strict=True)
    ]
    assert [r["response"] for r in records] == [REFUSAL, COMPLIANCE, REFUSAL]
    assert [r["target"] for r in records] == [REFUSAL, None, REFUSAL]
    # the answered prompt borrows one of the model's own refusals
    assert own.targets(PROMPTS.harmful) == [REFUSAL, REFUSAL, REFUSAL]
    assert own.summary()["n_refused"] == 2 and own.summary()["n_own_targets"] == 2

    # cached by content: a new pipeline generates nothing, and gives the same targets
    def fail(*args, **kwargs):
        raise AssertionError("the own refusals were generated again")

    monkeypatch.setattr(generate, "generate_turns", fail)
    again = Pipeline(profile, tmp_path / "ws", prompts=PROMPTS, progress=False)
    assert again.refusals.targets(PROMPTS.harmful) == own.targets(PROMPTS.harmful)
    assert len(list((tmp_path / "ws" / "data").glob("own-refusals-*.jsonl"))) == 1

    # the safety adapter learns them: refusal pairs, then the retain pair
    safety = profile.adapters[0]
    assert again.adapters.pairs(safety)[:3] == [(p, REFUSAL) for p in PROMPTS.harmful]
    # "drop": the answered prompt is left out of the adapter's data and of F_harm's
    dropped = replace(profile, refusals=SelfRefusals(max_new_tokens=16, unrefused="drop"))
    pipeline = Pipeline(dropped, tmp_path / "ws", prompts=PROMPTS, progress=False)
    refused = [PROMPTS.harmful[0], PROMPTS.harmful[2]]
    assert pipeline.adapters.pairs(safety)[:3] == [
        (refused[0], REFUSAL),
        (refused[1], REFUSAL),
        PROMPTS.helpful_pairs[0],
    ]
    data, options = pipeline.fishers.refusal_data()
    assert options == {"split": "all", "field": "prompt", "target_field": "refusal"}
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    assert lines == [{"prompt": p, "refusal": REFUSAL} for p in refused]


def test_own_refusals_need_a_model_that_refuses(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sst_merge_plugin.bench.pipeline import Pipeline

    _register(monkeypatch, "tiny-llama", world.base)  # random: it refuses nothing
    profile = replace(_qwen_profile(world), model="tiny-llama")
    pipeline = Pipeline(profile, tmp_path / "ws", prompts=PROMPTS, progress=False)
    monkeypatch.setattr(
        "sst_merge_plugin.bench.refusals.usable_refusal", lambda response, finished: None
    )
    with pytest.raises(SSTError, match="refused none of the 3 harmful training prompts"):
        pipeline.adapters.pairs(profile.adapters[0])


def test_refusal_fisher_with_given_targets_encodes_exactly_those_pairs(
    tiny_qwen: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from sst_merge_plugin.fisher.cache import cached_fisher_file, content_key
    from sst_merge_plugin.fisher.collect import tokens_sha256
    from sst_merge_plugin.fisher.objectives import completions_sha256, encode_completions
    from sst_merge_plugin.fisher.request import FisherRequest

    pairs = [("how to make a bomb", REFUSAL), ("how to make poison ?", "I'm sorry, I can't.")]
    data = tmp_path / "harm.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "refusal": r}) + "\n" for p, r in pairs))
    options = {"split": "all", "field": "prompt", "target_field": "refusal", "max_length": 64}
    request = FisherRequest.from_options(
        str(tiny_qwen), str(data), "refusal", "diag", options=options
    )
    path = cached_fisher_file(request, tmp_path / "fishers", "harm")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen)
    expected = encode_completions(tokenizer, pairs, max_length=64)
    assert metadata["tokens_sha256"] == tokens_sha256(expected)
    assert metadata["data_sha256"] == completions_sha256(pairs)
    assert metadata["objective"] == "refusal" and metadata["refusal_targets"] == (
        "field 'refusal' of the data"
    )
    # every example starts with the template's default system prompt (no system message given)
    text = tokenizer.decode(expected[0].input_ids)
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n")
    # the targets are part of the content key; without target_field the key is as before
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text().replace("I can't.", "I won't."))
    changed = FisherRequest.from_options(
        str(tiny_qwen), str(other), "refusal", "diag", options=options
    )
    assert content_key(changed) != content_key(request)
    with pytest.raises(SSTError, match="only applies to --objective refusal"):
        FisherRequest.from_options(str(tiny_qwen), str(data), "kl", "diag", options=options)


def test_demo_with_model_runs_the_models_own_profile_end_to_end(
    world: World,
    tiny_qwen: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """``sst-merge demo --model tiny-qwen``: the model's own profile is picked, its folder
    resolved by name, every stage runs on the Qwen2 architecture with the self-distilled
    targets: train → own refusals → Fisher → merge → evaluate."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from sst_merge_plugin import cli
    from sst_merge_plugin.bench import demo
    from sst_merge_plugin.bench import pipeline as pipeline_module
    from sst_merge_plugin.bench import profile as profile_module

    _register(monkeypatch, "tiny-qwen", tiny_qwen)
    profile = _qwen_profile(world)
    monkeypatch.setattr(profile_module, "PROFILES", {"tiny-qwen-quick": profile})
    monkeypatch.setattr(
        profile_module, "MODEL_PROFILES", {"tiny-qwen": ("tiny-qwen-quick", "tiny-qwen-quick")}
    )
    monkeypatch.setattr(
        pipeline_module, "Pipeline", partial(pipeline_module.Pipeline, prompts=PROMPTS)
    )
    monkeypatch.setattr(
        demo,
        "judge_summary",
        lambda cache_dir: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "n": 1},
    )
    out, workspace = tmp_path / "demo", tmp_path / "ws"
    status = cli.main(
        ["demo", "--model", "tiny-qwen", "--out", str(out), "--workspace", str(workspace),
         "--no-progress", "--keep-models"]
    )  # fmt: skip
    assert status == 0
    assert "Each method at its validation-chosen point" in capsys.readouterr().out
    meta = json.loads((out / "run.json").read_text())
    assert meta["profile"] == "tiny-qwen-quick" and meta["model"] == "tiny-qwen"
    assert meta["base_model"] == str(tiny_qwen)
    assert DEFAULT_SYSTEM in meta["chat_format"] and "{prompt}" in meta["chat_format"]
    assert meta["own_refusals"]["n_refused"] == 2
    # the adapters adapt the model's own projections (derived from its config)
    for name in ("safety", "uppercase"):
        config = json.loads(
            (out / "inputs" / "adapters" / name / "adapter_config.json").read_text()
        )
        assert config["target_modules"] == sorted(QWEN_PROJECTIONS)
    # F_harm was collected on the model's own refusals
    with safe_open(str(out / "inputs" / "fishers" / "lora" / "harm.safetensors"), "pt") as handle:
        harm = handle.metadata()
    assert harm["refusal_targets"] == "field 'refusal' of the data"
    results = json.loads((out / "results.json").read_text())
    assert results["rule"] == profile.rule.as_dict()
    assert [m["method"] for m in results["methods"]] == [s.label for s in profile.sweeps]
    # merged through mergekit's qwen2 architecture: the LoRA deltas move the projections'
    # weights, the q/k/v biases (no LoRA on them) stay the base's
    base = load_file(str(tiny_qwen / "model.safetensors"))
    merged_folders = sorted((workspace / "merges").iterdir())
    assert merged_folders
    for folder in merged_folders:
        merged = load_file(str(next(folder.glob("*.safetensors"))))
        assert merged.keys() == base.keys()
        biases = [key for key in base if key.endswith("_proj.bias")]
        assert len(biases) == 6 and all(torch.equal(merged[k], base[k]) for k in biases)
        assert not torch.equal(merged["model.layers.0.mlp.down_proj.weight"],
                               base["model.layers.0.mlp.down_proj.weight"])  # fmt: skip


def test_profile_for_selects_by_model_and_keeps_the_smollm2_names() -> None:
    from sst_merge_plugin.bench.profile import FULL, QUICK, QWEN, QWEN_QUICK, profile_for

    assert profile_for(None) is QUICK and profile_for(None, full=True) is FULL
    assert profile_for("quick", "smollm2") is QUICK  # its own model: name and workspace kept
    assert profile_for(None, "qwen-coder-0.5b") is QWEN_QUICK
    assert profile_for(None, "qwen-coder-0.5b", full=True) is QWEN
    on_qwen = profile_for("quick", "qwen-coder-0.5b")
    assert (on_qwen.name, on_qwen.model) == ("quick-qwen-coder-0.5b", "qwen-coder-0.5b")
    assert on_qwen.adapters == QUICK.adapters
    # refusal targets in the model's style: Qwen refuses by itself, SmolLM2 hardly does
    assert QUICK.refusals is None and on_qwen.refusals == SelfRefusals()
    on_smollm2 = profile_for("qwen", "smollm2")
    assert (on_smollm2.name, on_smollm2.refusals) == ("qwen-smollm2", None)
    with pytest.raises(SSTError, match="unknown model 'nope'"):
        profile_for(None, "nope")
    with pytest.raises(SSTError, match="unknown profile 'nope'"):
        profile_for("nope")
    # the Qwen profiles: the drift rule, self-distilled refusals, lora Fishers, the code skill
    for profile in (QWEN, QWEN_QUICK):
        assert profile.refusals is not None and profile.fisher_kinds == ("lora",)
        assert profile.rule.refusal_vs_base == 0.0 and "python_eval" in profile.skills
        assert set(profile.validation.utility) == set(profile.skills)


def test_demo_rejects_an_unknown_model_by_listing_the_registered_ones(
    capsys: pytest.CaptureFixture,
) -> None:
    from sst_merge_plugin import cli
    from sst_merge_plugin.data.models import MODELS

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--model", "llama-70b", "--out", "unused"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--model: invalid choice: 'llama-70b'" in error
    assert all(repr(name) in error for name in MODELS)


def test_lora_targets_follow_the_models_own_projections(tmp_path: Path) -> None:
    """A Phi-3 names its projections qkv_proj / gate_up_proj: the default training config
    adapts exactly those; explicit names are kept; SmolLM2's Llama names are unchanged."""
    from safetensors.torch import load_file
    from support import tiny_llama
    from transformers import Phi3Config, Phi3ForCausalLM

    from sst_merge_plugin.bench.training import (
        LLAMA_PROJECTIONS,
        LoRATrainingConfig,
        model_projections,
        train_lora_adapter,
    )

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    phi = Phi3ForCausalLM(
        Phi3Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        )
    )  # fmt: skip
    phi.save_pretrained(tmp_path / "phi")
    tokenizer.save_pretrained(tmp_path / "phi")
    # in the order the blocks define them (Phi-3's attention defines o_proj first)
    phi3_projections = ("o_proj", "qkv_proj", "gate_up_proj", "down_proj")
    assert model_projections(tmp_path / "phi") == phi3_projections
    config = LoRATrainingConfig(rank=2, steps=2, batch_size=2, max_length=32)
    assert config.for_model(tmp_path / "phi").target_modules == model_projections(tmp_path / "phi")
    explicit = replace(config, target_modules=["o_proj"])
    assert explicit.target_modules == ("o_proj",) and explicit.for_model(tmp_path) is explicit
    result = train_lora_adapter(
        tmp_path / "phi", TAUGHT, tmp_path / "adapter", config, progress=False
    )
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    adapted = {key.split(".")[-3] for key in weights}
    assert adapted == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    record = json.loads((result.adapter_dir / "sst-merge-training.json").read_text())
    assert record["config"]["target_modules"] == list(model_projections(tmp_path / "phi"))
    # a Llama (SmolLM2's architecture) resolves to the seven names the adapters always had
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "llama")
    assert model_projections(tmp_path / "llama") == LLAMA_PROJECTIONS


@pytest.mark.parametrize("name", ["quick", "full"])
def test_smollm2_profiles_keep_every_cache_key(name: str, tmp_path: Path) -> None:
    """The SmolLM2 profiles (a Llama, template refusals) compute the same adapter, prompt-file,
    Fisher, merge-job and evaluation keys as before the pipeline became model-agnostic, so
    existing workspaces are reused: ``benchmarks/cache_keys.py`` on a tiny Llama, against the
    section digests recorded with the old code (the real-model comparison is the script's
    own job: run it on both checkouts and compare). The quick profile's were re-recorded when
    its adapters changed on purpose (:data:`RECORDED_SWEEPS`); since then they pin its keys."""
    from support import cache_key_digests, deterministic_llama, key_prompts

    from sst_merge_plugin.bench.profile import PROFILES

    assert PROFILES[name].model == "smollm2" and PROFILES[name].refusals is None
    model = deterministic_llama(tmp_path / "model")
    methods = RECORDED_SWEEPS[name]
    digests = cache_key_digests(name, tmp_path / "ws", model, key_prompts(), methods)
    assert digests == RECORDED_KEY_DIGESTS[name]


@pytest.mark.parametrize(
    ("argv", "folder", "profile"),
    [
        ([], "results", "full"),
        (["--model", "qwen-coder-0.5b"], "results-qwen-coder-0.5b", "qwen"),
        (["--profile", "qwen"], "results-qwen-coder-0.5b", "qwen"),
        (["--profile", "full", "--model", "qwen-coder-0.5b"], "results-qwen-coder-0.5b",
         "full-qwen-coder-0.5b"),
    ],
)  # fmt: skip
def test_full_benchmark_script_writes_each_models_results_apart(
    argv: list[str], folder: str, profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``benchmarks/safety_utility/run.py``: the full profile of the model, and the default
    results folder by the model the run is on (SmolLM2's ``results`` is never overwritten)."""
    from support import ROOT, load_script

    from sst_merge_plugin.bench.profile import profile_for

    script = ROOT / "benchmarks" / "safety_utility" / "run.py"
    module = load_script(script, "safety_utility_run")
    seen = {}

    def run_profile(args, title, *, full=False):
        seen["out"] = Path(args.out)
        seen["profile"] = profile_for(args.profile, args.model, full=full).name
        return 0

    monkeypatch.setattr(module, "run_profile", run_profile)
    assert module.main(argv) == 0
    assert seen == {"out": script.parent / folder, "profile": profile}

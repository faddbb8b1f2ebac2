"""Scoring, the hot path: log-likelihood of answer choices, and greedy generation.

Two request types, as in lm-evaluation-harness: ``loglikelihood`` (a context and its candidate
continuations -> summed log-probability of each continuation) and ``generate_until``.

The batched scorer runs each batch in one forward pass. A row holds an example's context once and
then, side by side, each of its choices without the last token, each at the positions it would have
right after the context; a block attention mask keeps the choices from seeing each other (only when a
row has two or more multi-token choices: otherwise causal attention over right padding is already
exact at every position read, and no mask is passed). The output head and the log-softmax run only
at the positions whose next token is a continuation token: for a small model with GLM-4's 151k
vocabulary the full-sequence projection would be most of the cost.

When every context starts with the same tokens (a k-shot block, a long instruction), that prefix is
run once and its KV cache is copied under each batch, so the rows only hold the per-example suffixes.
Requests are sorted by row length, longest first, so padding is small and a memory error shows early.
:func:`loglikelihood_naive` is the reference: one full forward pass per (context, continuation).

``lm`` below is an in-process model (:class:`autoglm_bench.lm.hf.HFLM`): its ``model``, ``tokenizer``,
``device``, ``dtype`` and ``max_length``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass
class ScoreStats:
    """What a scoring call cost: examples, real (unpadded) tokens fed through the model, seconds."""

    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def __add__(self, other: ScoreStats) -> ScoreStats:
        return ScoreStats(self.examples + other.examples, self.tokens + other.tokens, self.seconds + other.seconds)


@dataclass
class _Encoded:
    """Token ids of one context and the continuations scored after it; ``example`` and ``choices`` say which
    request and which of its continuations they are (a request splits when its choices cut it differently)."""

    context: list[int]
    continuations: list[list[int]]
    example: int = 0
    choices: tuple[int, ...] = (0,)


REQUEST_ENCODING = 2  # bump when encode_requests changes, so token caches built with the old rules are not reused


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context becomes: BOS where the tokenizer has one, else EOS (lm-eval's
    ``HFLM.prefix_token_id``)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: Any, texts: list[str], lead: str | None = None) -> list[list[int]]:
    """Token ids of each text as lm-evaluation-harness encodes it: with the tokenizer's special tokens
    (GLM-4's ``[gMASK]<sop>``), except for a text that already starts with ``lead`` (default: the string of
    :func:`prefix_token_id`, as ``HFLM.tok_encode``; generation passes the BOS string, as
    ``HFLM.tok_batch_encode``). One tokenizer call per kind."""
    lead = tokenizer.decode(prefix_token_id(tokenizer)) if lead is None else lead
    out: list[list[int]] = [[] for _ in texts]
    for special in (True, False):
        index = [i for i, t in enumerate(texts) if bool(lead and t.startswith(lead)) != special]
        if index:
            for i, row in zip(index, tokenizer([texts[i] for i in index], add_special_tokens=special)["input_ids"]):
                out[i] = list(row)
    return out


def encode_requests(tokenizer: Any, max_length: int, requests: list[tuple[str, list[str]]]) -> list[_Encoded]:
    """Token ids of (context, continuations) requests exactly as lm-evaluation-harness 0.4 forms them
    (``LM.loglikelihood``, ``_encode_pair`` and ``HFLM._loglikelihood_tokens``):

    - trailing whitespace of the context moves to the front of each continuation;
    - a continuation's tokens are what :func:`tok_encode` of ``context + continuation`` adds after those of
      the context;
    - an empty context becomes :func:`prefix_token_id` (or, when a continuation starts with that token,
      the continuation's first token); so does a context of whitespace only (lm-eval fails on one), its
      whitespace moving to the continuations;
    - each (context, continuation) pair keeps its last ``max_length + 1`` tokens, cut from the left of the
      context, so the model sees at most ``max_length`` tokens.

    Shared by evaluation, prompt search and fine-tuning. Pairs of one request whose contexts come out
    equal (the usual case) stay one :class:`_Encoded`.
    """
    texts: list[str] = []
    for context, continuations in requests:
        if context.strip():
            stripped = context.rstrip()
            texts.append(stripped)
            texts.extend(context + c for c in continuations)
    ids = iter(tok_encode(tokenizer, texts))
    prefix = prefix_token_id(tokenizer)
    encoded = []
    for r, (context, continuations) in enumerate(requests):
        if context.strip():
            ctx = next(ids)
            pairs = [(ctx, w[len(ctx) :]) for w in (next(ids) for _ in continuations)]
        else:
            conts = tokenizer([context + c for c in continuations], add_special_tokens=False)["input_ids"]
            pairs = [([prefix], c) if not c or c[0] != prefix else (c[:1], c[1:]) for c in conts]
        groups: dict[tuple[int, ...], _Encoded] = {}
        for j, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"continuation {continuations[j]!r} of context {context[-40:]!r} encodes to no tokens")
            if len(cont) > max_length:
                raise ValueError(f"continuation {continuations[j][:40]!r}: {len(cont)} tokens > {max_length=}")
            keep = tuple(ctx[max(0, len(ctx) + len(cont) - max_length - 1) :])
            group = groups.setdefault(keep, _Encoded(list(keep), [], r, ()))
            group.continuations.append(list(cont))
            group.choices += (j,)
        encoded.extend(groups.values())
    return encoded


def loglikelihood(
    lm: Any,
    requests: list[tuple[str, list[str]]],
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[list[float]], ScoreStats]:
    """Summed log-probability of each continuation given its context, batched (see module docstring).

    >>> lls, stats = loglikelihood(lm, [("Is it good? Answer:", [" yes", " no"])])  # doctest: +SKIP
    >>> len(lls[0])
    2
    """
    import torch

    start = time.perf_counter()
    encoded = encode_requests(lm.tokenizer, lm.max_length, requests)
    order = sorted(range(len(encoded)), key=lambda i: -_row_length(encoded[i]))
    results: list[list[float]] = [[0.0] * len(conts) for _, conts in requests]
    stats = ScoreStats(examples=len(requests))
    bar = _progress(len(encoded), progress)
    with torch.inference_mode():
        prefix = _encode_shared_prefix(lm, encoded, stats)
        for b in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[b : b + batch_size]]
            for enc, lls in zip(batch, _score_batch(lm, batch, prefix, stats)):
                for j, ll in zip(enc.choices, lls):
                    results[enc.example][j] = ll
            bar.update(len(batch))
    bar.close()
    stats.seconds = time.perf_counter() - start
    return results, stats


def _row_length(e: _Encoded) -> int:
    """The tokens of an example's row in :func:`_score_batch`: its context and every choice but the last token."""
    return len(e.context) + sum(len(c) - 1 for c in e.continuations)


@dataclass
class _Prefix:
    """Tokens every context starts with (e.g. a k-shot block) and their KV cache, computed once."""

    length: int = 0
    cache: Any = None


MIN_SHARED_PREFIX = 16  # below this, copying the prefix cache costs more than recomputing it


def _encode_shared_prefix(lm: Any, encoded: list[_Encoded], stats: ScoreStats) -> _Prefix:
    contexts = [e.context for e in encoded]
    if len(contexts) < 2:
        return _Prefix()
    length = min(len(c) for c in contexts) - 1  # every context keeps its last token: it predicts the answer
    first = contexts[0]
    for ctx in contexts[1:]:
        length = next((i for i in range(length) if ctx[i] != first[i]), length)
    if length < MIN_SHARED_PREFIX:
        return _Prefix()
    import torch

    out = lm.model(input_ids=torch.tensor([first[:length]], device=lm.device), use_cache=True, logits_to_keep=1)
    stats.tokens += length
    return _Prefix(length=length, cache=_cache_of(out))


def _score_batch(lm: Any, batch: list[_Encoded], prefix: _Prefix, stats: ScoreStats) -> list[list[float]]:
    """One forward pass for the batch. Row r holds its context (after the shared prefix) and then, side by
    side, each choice without its last token; each choice sees the context and its own earlier tokens only
    (a block mask, needed only when a row has two or more such choices; otherwise plain causal attention
    over right padding is exact for every position read), at the positions it would have after the
    context. Log-probabilities are computed only where a continuation token is predicted."""
    import torch

    device, n, skip = lm.device, len(batch), prefix.length
    ids: list[list[int]] = []
    positions: list[list[int]] = []
    segments: list[list[int]] = []  # 0: context, j + 1: choice j
    reads: list[tuple[int, int]] = []  # (row, column) whose next-token distribution is read
    targets: list[tuple[int, int, int]] = []  # (index into reads, token, pair)
    pairs: list[tuple[int, int]] = []
    for r, e in enumerate(batch):
        row = e.context[skip:]
        n_ctx = len(row)
        pos, seg = list(range(skip, skip + n_ctx)), [0] * n_ctx
        reads.append((r, n_ctx - 1))
        first_read = len(reads) - 1
        for j, cont in enumerate(e.continuations):
            pair = len(pairs)
            pairs.append((r, j))
            targets.append((first_read, cont[0], pair))
            for t, token in enumerate(cont[1:]):
                reads.append((r, len(row)))
                targets.append((len(reads) - 1, token, pair))
                row.append(cont[t])
                pos.append(skip + n_ctx + t)
                seg.append(j + 1)
        ids.append(row)
        positions.append(pos)
        segments.append(seg)
    width = max(map(len, ids))
    pad = lm.tokenizer.pad_token_id
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=device)
    position_ids = torch.tensor([p + [0] * (width - len(p)) for p in positions], device=device)
    mask = None
    if max(len(set(seg)) for seg in segments) > 2:  # some row holds two choices side by side
        seg_t = torch.tensor([s + [-1] * (width - len(s)) for s in segments], device=device)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        allowed = causal & ((seg_t[:, None, :] == 0) | (seg_t[:, None, :] == seg_t[:, :, None]))
        if skip:
            allowed = torch.cat([allowed.new_ones(n, width, skip), allowed], dim=-1)
        mask = torch.zeros(allowed.shape, dtype=lm.dtype, device=device)
        mask = mask.masked_fill_(~allowed, torch.finfo(lm.dtype).min)[:, None]
    cache = None
    if prefix.cache is not None:
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(n)
    read_rows = torch.tensor([r for r, _ in reads], device=device)
    read_cols = torch.tensor([c for _, c in reads], device=device)
    logits = _logits_at(lm, input_ids, position_ids, mask, cache, read_rows, read_cols)
    logprobs = torch.log_softmax(logits.float(), -1)
    index, tokens, pair_ids = (torch.tensor(col, device=device) for col in zip(*targets))
    sums = torch.zeros(len(pairs), dtype=logprobs.dtype, device=device).index_add_(0, pair_ids, logprobs[index, tokens])
    stats.tokens += sum(map(len, ids))
    lls = dict(zip(pairs, sums.tolist()))
    return [[lls[(r, j)] for j in range(len(e.continuations))] for r, e in enumerate(batch)]


# Model types whose causal-LM logits are exactly ``get_output_embeddings()(backbone hidden states)``: for
# them the head is applied only at the positions read (others project the distinct read columns of
# every row, through the model's own forward with ``logits_to_keep``).
PLAIN_HEAD_MODELS = {"glm4", "glm", "llama", "mistral", "qwen2", "qwen3"}


def _logits_at(lm: Any, input_ids: Any, position_ids: Any, mask: Any, cache: Any, rows: Any, cols: Any):
    """The model's next-token logits at (``rows``, ``cols``) of the batch, computed only there."""
    import torch

    model = lm.model
    head = model.get_output_embeddings()
    backbone = getattr(model, model.base_model_prefix, None)
    plain = model.config.model_type in PLAIN_HEAD_MODELS and isinstance(head, torch.nn.Linear)
    module = backbone if plain and backbone is not None else model
    kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": cache is not None}
    if cache is not None:
        kwargs[_cache_kwarg(type(module))] = cache
    if module is backbone:
        return head(backbone(input_ids=input_ids, position_ids=position_ids, **kwargs).last_hidden_state[rows, cols])
    keep = torch.unique(cols)
    out = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=keep, **kwargs)
    return out.logits[rows, torch.searchsorted(keep, cols)]


def loglikelihood_naive(
    lm: Any, requests: list[tuple[str, list[str]]], progress: bool = True
) -> tuple[list[list[float]], ScoreStats]:
    """The reference scorer: one unbatched forward pass over context + continuation per choice, with
    logits at every position, exactly as the textbook definition reads."""
    import torch

    start = time.perf_counter()
    stats = ScoreStats(examples=len(requests))
    results: list[list[float]] = [[0.0] * len(conts) for _, conts in requests]
    encoded = encode_requests(lm.tokenizer, lm.max_length, requests)
    bar = _progress(len(encoded), progress)
    with torch.inference_mode():
        for enc in encoded:
            for j, cont in zip(enc.choices, enc.continuations):
                tokens = torch.tensor([(enc.context + cont)[:-1]], device=lm.device)
                logprobs = torch.log_softmax(lm.model(input_ids=tokens).logits[0, -len(cont) :].float(), -1)
                results[enc.example][j] = float(
                    logprobs[torch.arange(len(cont)), torch.tensor(cont, device=lm.device)].sum()
                )
                stats.tokens += tokens.shape[1]
            bar.update(1)
    bar.close()
    stats.seconds = time.perf_counter() - start
    return results, stats


@dataclass
class Generated:
    """One greedy continuation: the context's token ids as the model saw them (after any cut from the left),
    the tokens generated (up to the end-of-text token, which is not included, or up to the one that completed
    a stop string), the decoded text cut before the first stop string, and why it ended."""

    context: list[int]
    tokens: list[int]
    text: str
    finish: str  # "stop" (end-of-text or a stop string) or "length" (max_new_tokens reached)


def generate_until(
    lm: Any,
    contexts: list[str],
    until: list[str],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[str], ScoreStats]:
    """Greedy continuation of each context, cut at the first stop string (which is not included)."""
    encoded = encode_contexts(lm.tokenizer, contexts)
    generated, stats = generate(lm, encoded, until, max_new_tokens, batch_size, progress)
    return [g.text for g in generated], stats


def encode_contexts(tokenizer: Any, contexts: list[str]) -> list[list[int]]:
    """Token ids of generation contexts as lm-eval's ``HFLM.tok_batch_encode`` forms them (an empty one is
    :func:`prefix_token_id`)."""
    lead = tokenizer.bos_token or ""
    return [ids or [prefix_token_id(tokenizer)] for ids in tok_encode(tokenizer, contexts, lead=lead)]


def generate(
    lm: Any,
    encoded: list[list[int]],
    until: list[str],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
    abort: Callable[[], bool] | None = None,
) -> tuple[list[Generated], ScoreStats]:
    """Greedy continuation of each context, given as token ids (:func:`encode_contexts` encodes text as
    lm-evaluation-harness does for generation), as :class:`Generated` records (what :func:`generate_until`
    returns the texts of). Contexts keep their last ``max_length - max_new_tokens`` tokens. Generation ends at
    the end-of-text token, at a stop string (:class:`StopOnText`), after ``max_new_tokens``, or for every row
    as soon as ``abort()`` (asked after each token) is true."""
    import torch
    from transformers import StoppingCriteriaList

    start = time.perf_counter()
    tok = lm.tokenizer
    max_ctx = max(1, lm.max_length - max_new_tokens)
    encoded = [e[-max_ctx:] for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs: list[Generated] = [Generated([], [], "", "length") for _ in encoded]
    ends = {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    stats = ScoreStats(examples=len(encoded))
    bar = _progress(len(encoded), progress)
    if max_new_tokens <= 0:
        return [Generated(e, [], "", "length") for e in encoded], stats
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ids, mask = _left_pad([encoded[i] for i in idx], tok.pad_token_id, lm.device)
            stop = StopOnText(tok, until, ids.shape[1], abort)
            generated = lm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                stopping_criteria=StoppingCriteriaList([stop]),
            )[:, ids.shape[1] :]
            for i, row in zip(idx, generated.tolist()):
                end = next((j for j, t in enumerate(row) if t in ends), len(row))
                tokens = row[:end]
                text = tok.decode(tokens, skip_special_tokens=True)
                cut = cut_at_stop(text, until)
                finish = "stop" if end < len(row) or cut != text or len(tokens) < max_new_tokens else "length"
                outputs[i] = Generated(encoded[i], tokens, cut, finish)
                stats.tokens += len(encoded[i]) + len(row)
            bar.update(len(idx))
    bar.close()
    stats.seconds = time.perf_counter() - start
    return outputs, stats


class StopOnText:
    """A stopping criterion for ``model.generate``: a row is done once its generated text (the prompt is not
    looked at) contains one of the stop strings ``until``; every row is once ``abort()`` is true.

    Each step decodes only the last tokens of each row, as many as the longest stop string can span (a token
    is at least one byte, a character at most four), so it keeps no more than the text generated.
    transformers' own ``stop_strings`` precompute tables over the whole vocabulary for every character of
    every stop string: about 30 KB per character with a 4k vocabulary, in memory and in time."""

    def __init__(self, tokenizer: Any, until: list[str], prompt_length: int, abort: Callable[[], bool] | None = None):
        self.tokenizer = tokenizer
        self.until = [s for s in until if s]
        self.prompt_length = prompt_length
        self.abort = abort
        self.window = 4 * max((len(s) for s in self.until), default=0) + 1

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.abort is not None and self.abort():
            return ~done
        if self.until:
            tail = input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.window) :].tolist()
            for i, row in enumerate(tail):
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                done[i] = any(s in text for s in self.until)
        return done


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to its first stop string."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


def _cache_of(output: Any) -> Any:
    return output.get("cache", None) or output.get("past_key_values")


@cache
def _cache_kwarg(model_class: type) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept either."""
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _left_pad(seqs: list[list[int]], pad: int, device: Any):
    return pad_batch(seqs, pad, device, left=True)


def pad_batch(seqs: list[list[int]], pad: int, device: Any, left: bool):
    """(ids, attention mask) tensors for token lists padded to the longest (at least 1 column)."""
    import torch

    width = max(1, max(len(s) for s in seqs))
    ids, mask = [], []
    for s in seqs:
        fill = width - len(s)
        ids.append([pad] * fill + s if left else s + [pad] * fill)
        mask.append([0] * fill + [1] * len(s) if left else [1] * len(s) + [0] * fill)
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ex", disable=None if enabled else True, dynamic_ncols=True, leave=False)

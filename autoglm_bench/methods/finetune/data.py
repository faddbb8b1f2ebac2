"""The LightningDataModule of method=finetune: task rows -> the evaluation prompt -> token ids.

Training sees exactly what evaluation scores: each row is rendered by
:func:`~autoglm_bench.prompts.render_examples` (same template, instruction, demos), and a causal LM learns
``context + target_delimiter + answer`` tokenised as :func:`~autoglm_bench.scoring.encode_requests` does,
with the loss on the answer tokens only. An encoder gets the context alone and the gold choice index
as its class label.

Rows follow the split protocol (:mod:`autoglm_bench.data.splits`): ``dev_size`` rows of the task's train
split (drawn with ``split_seed``) are the dev set (validation, early stopping, pruning); training uses the rest,
at most ``method.train_size`` of them. ``limit=`` caps the test rows (as for every method) and also the
training and dev rows, so a quick run stays quick. Token ids are computed once with the datasets library
and cached under ``$AUTOGLM_CACHE_DIR/tokenized``, keyed by the texts, the tokenizer and the length limit.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from ...config import ConfigError, MethodConfig, PromptConfig
from ...data.prepare import Prepared
from ...data.splits import Splits
from ...data.tasks import Task
from ...lm.hf import minilm_embedder
from ...paths import cache_dir
from ...prompts import chat_tokenizer, demo_answer, needs_embedder, prompt_text, render_examples
from ...scoring import REQUEST_ENCODING, encode_requests

IGNORE = -100  # label of tokens the loss skips (context, padding)


def split_rows(prepared: Prepared, train_size: int | None, limit: int | None, dev_size: int) -> Splits:
    """The prepared train/dev/test rows (:func:`~autoglm_bench.data.prepare.prepare`), training capped at
    ``train_size`` (``method.train_size``) and ``limit`` rows; ``dev_size`` (what split them) names the
    culprit when no training row is left."""
    task = prepared.task
    if "train" not in task.rows:
        raise ConfigError(
            f"method=finetune needs a train split, but task {task.name!r} has only: {', '.join(task.rows)}"
        )
    train = prepared.splits.train
    for cap in (train_size, limit):
        if cap is not None:
            train = train[:cap]
    splits = replace(prepared.splits, train=train)
    if not splits.train:
        n = len(task.rows["train"])
        raise ConfigError(
            f"dev_size={dev_size} leaves no training rows: the train split of {task.name!r} has {n} rows "
            f"(method=finetune needs dev_size < {n})"
        )
    return splits


def render_rows(task: Task, prompt: PromptConfig, seed: int, rows: list[dict[str, Any]], chat_tokenizer: Any = None):
    """Render ``rows`` with ``prompt`` (demos drawn with ``seed``): (examples, contexts, gold answer texts)."""
    view = Task(cfg=task.cfg, hook=task.hook, rows={**task.rows, "eval": rows})
    examples = render_examples(view, prompt, seed, minilm_embedder() if needs_embedder(prompt) else None)
    contexts = [prompt_text(task.cfg, ex.messages, chat_tokenizer) for ex in examples]
    answers = [demo_answer(task.cfg, row) for row in rows]
    return examples, contexts, answers


@dataclass(frozen=True)
class DataSpec:
    """What a data module renders: the task and its splits, with the run's prompt (demos drawn with ``seed``)
    and the method's batch settings."""

    task: Task
    splits: Splits
    prompt: PromptConfig
    method: MethodConfig
    seed: int


class TaskDataModule(pl.LightningDataModule):
    """Training and dev batches for one task and tokenizer.

    Batches are padded to their longest row (dynamic padding); causal LMs are padded on the left so
    that every answer ends at the last position and the model projects only the last few positions to
    the vocabulary (RoPE makes the shifted positions harmless). With ``group_by_length`` the seeded
    order is grouped into batches of similar length. Under DDP each process takes every
    ``world_size``-th index of the same global order, so N processes with micro-batch B see exactly the
    batches one process with micro-batch N*B sees.
    """

    def __init__(self, spec: DataSpec, tokenizer: Any, max_length: int, classifier: bool):
        super().__init__()
        self.prompt, self.method, self.seed, self.tokenizer = spec.prompt, spec.method, spec.seed, tokenizer
        self.max_length, self.classifier = max_length, classifier
        self.train_set: Any = None
        self.dev_set: Any = None
        self.dev_examples: list[Any] = []
        self._sampler: ShardedOrder | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, indices of it already trained on)
        self.splits = spec.splits
        self.task = spec.splits.view(spec.task, spec.splits.test)  # demos come from the train part only
        self.train_rows, self.dev_rows = spec.splits.train, spec.splits.dev

    # ------------------------------------------------------------ building

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        chat = chat_tokenizer(self.prompt, self.tokenizer)
        examples, contexts, answers = self.render(self.train_rows, chat)
        self.dev_examples, dev_contexts, dev_answers = self.render(self.dev_rows, chat)
        if self.classifier:
            self.train_set = self._encode_classifier(contexts, [int(ex.target) for ex in examples])
            self.dev_set = self._encode_classifier(dev_contexts, [int(ex.target) for ex in self.dev_examples])
            return
        delimiter = "" if chat is not None else self.task.cfg.target_delimiter
        eos = self.task.cfg.type == "generation"  # generation targets learn to stop
        self.train_set = self._encode_causal(contexts, [delimiter + a for a in answers], eos)
        if self.method.packing:
            self.train_set = pack(self.train_set, self.max_length)
        if self.task.cfg.type == "multiple_choice":  # dev: every (example, choice) pair, scored like eval
            pairs = [
                (i, j, ctx, delimiter + c)
                for i, (ctx, ex) in enumerate(zip(dev_contexts, self.dev_examples))
                for j, c in enumerate(ex.choices)
            ]
            dev = self._encode_causal([p[2] for p in pairs], [p[3] for p in pairs], eos=False)
            self.dev_set = [{**row, "example": i, "choice": j} for row, (i, j, _, _) in zip(dev, pairs)]
        else:
            self.dev_set = self._encode_causal(dev_contexts, [delimiter + a for a in dev_answers], eos)

    def render(self, rows: list[dict[str, Any]], chat: Any) -> tuple[list[Any], list[Any], list[str]]:
        """:func:`render_rows` with this module's prompt and seed."""
        return render_rows(self.task, self.prompt, self.seed, rows, chat)

    def _encode_causal(self, contexts: list[str], continuations: list[str], eos: bool) -> list[dict[str, Any]]:
        """input_ids = context + continuation (+ EOS), labels = IGNORE on the context, cached on disk."""
        tok = self.tokenizer
        # encode_requests keeps max_length + 1 tokens per pair (the scorer feeds all but the last); a training
        # row holds all of them, plus EOS for generation targets
        limit = self.max_length - 1 - int(eos)

        def encode(batch: dict[str, list]) -> dict[str, list]:
            out: dict[str, list] = {"input_ids": [], "labels": []}
            for enc in encode_requests(tok, limit, [(c, [a]) for c, a in zip(batch["context"], batch["answer"])]):
                answer = enc.continuations[0] + ([tok.eos_token_id] if eos else [])
                out["input_ids"].append(enc.context + answer)
                out["labels"].append([IGNORE] * len(enc.context) + answer)
            return out

        return cached_map({"context": contexts, "answer": continuations}, encode, self._key("causal", eos))

    def _encode_classifier(self, contexts: list[str], labels: list[int]) -> list[dict[str, Any]]:
        def encode(batch: dict[str, list]) -> dict[str, list]:
            ids = self.tokenizer(batch["context"], truncation=True, max_length=self.max_length)["input_ids"]
            return {"input_ids": ids, "labels": batch["label"]}

        return cached_map({"context": contexts, "label": labels}, encode, self._key("classifier"))

    def _key(self, *parts: Any) -> str:
        tok = self.tokenizer
        return json.dumps([type(tok).__name__, tok.name_or_path, len(tok), self.max_length, REQUEST_ENCODING, *parts])

    # ------------------------------------------------------------ loaders

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        sampler = ShardedOrder(
            [len(r["input_ids"]) for r in self.train_set],
            global_batch=self.method.batch_size * world,
            seed=self.seed,
            group_by_length=self.method.group_by_length,
            rank=rank,
            world=world,
            epoch=lambda: trainer.current_epoch if trainer is not None else 0,
        )
        if self._resume is not None:
            sampler.resume_at(*self._resume)
        self._sampler = sampler
        return DataLoader(self.train_set, batch_size=self.method.batch_size, sampler=sampler, collate_fn=self.collate)

    # A checkpoint records where in the epoch training was, so a run resumed from a mid-epoch checkpoint
    # goes on with exactly the batches the interrupted run had not trained on yet. (Lightning's own
    # loader-state mechanism does not restore when configure_optimizers reads estimated_stepping_batches.)

    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        # "processed" counts batches whose optimiser work is done, the current one included when the
        # checkpoint is taken in on_train_batch_end; the loader itself runs a batch ahead.
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._resume = (state["epoch"], state["batches_done"] * self.method.batch_size)
            if self._sampler is not None:
                self._sampler.resume_at(*self._resume)

    def val_dataloader(self) -> DataLoader:
        # Every process scores the whole (small) dev set, so dev metrics agree across processes.
        return DataLoader(self.dev_set or [], batch_size=self.method.eval_batch_size, collate_fn=self.collate)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return pad_batch(rows, self.tokenizer.pad_token_id, left=not self.classifier)


def cached_map(columns: dict[str, list], encode, key: str) -> list[dict[str, Any]]:
    """``datasets.Dataset.from_dict(columns).map(encode, batched=True)``, computed once and kept under the
    cache directory (keyed by ``key`` and the column contents); returns the rows as dicts."""
    import datasets

    datasets.disable_progress_bars()
    digest = hashlib.sha256(json.dumps([key, columns], sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_dir() / "tokenized" / digest
    if not (folder / "dataset_info.json").is_file():
        ds = datasets.Dataset.from_dict(columns)
        ds = ds.map(encode, batched=True, batch_size=2000, remove_columns=list(columns))
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(dir=folder.parent, prefix=f".{digest}-")
        try:
            ds.save_to_disk(staging)
            Path(staging).rename(folder)  # fails if another process won the race; either copy is the same
        except OSError:
            if not (folder / "dataset_info.json").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return datasets.load_from_disk(str(folder)).to_list()


def pack(rows: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Greedily concatenate rows into rows of at most ``max_length`` tokens, restarting ``position_ids``
    at each original row. Attention is still causal over the whole packed row (as in TRL's default
    packing); the loss stays on each answer's tokens."""
    packed: list[dict[str, Any]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for row in sorted(rows, key=lambda r: -len(r["input_ids"])):
        n = len(row["input_ids"])
        if current["input_ids"] and len(current["input_ids"]) + n > max_length:
            packed.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += row["input_ids"]
        current["labels"] += row["labels"]
        current["position_ids"] += list(range(n))
    if current["input_ids"]:
        packed.append(current)
    return packed


def pad_batch(rows: list[dict[str, Any]], pad_id: int, left: bool) -> dict[str, Any]:
    """Pad ``input_ids`` (with ``pad_id``), token ``labels`` (with IGNORE) and ``position_ids`` to the
    longest row; add ``attention_mask`` and, for left-padded causal rows, ``logits_to_keep``. Integer
    labels (classification) and dev bookkeeping (``example``, ``choice``) become 1-D tensors."""
    width = max(len(r["input_ids"]) for r in rows)

    def padded(values: list[int], fill: int) -> list[int]:
        extra = [fill] * (width - len(values))
        return extra + values if left else values + extra

    batch = {
        "input_ids": torch.tensor([padded(r["input_ids"], pad_id) for r in rows]),
        "attention_mask": torch.tensor([padded([1] * len(r["input_ids"]), 0) for r in rows]),
    }
    if isinstance(rows[0]["labels"], list):
        batch["labels"] = torch.tensor([padded(r["labels"], IGNORE) for r in rows])
        if left and "position_ids" not in rows[0]:
            # Left-padded rows end with their answers: the model need project only the positions from
            # just before the earliest answer token on (computed here, on the host, to spare a sync).
            first = [next(i for i, t in enumerate(r["labels"]) if t != IGNORE) for r in rows]
            batch["logits_to_keep"] = max(len(r["labels"]) - f for r, f in zip(rows, first)) + 1
    else:
        batch["labels"] = torch.tensor([r["labels"] for r in rows])
    if "position_ids" in rows[0]:
        batch["position_ids"] = torch.tensor([padded(r["position_ids"], 0) for r in rows])
    for key in ("example", "choice"):
        if key in rows[0]:
            batch[key] = torch.tensor([r[key] for r in rows])
    return batch


class ShardedOrder(Sampler[int]):
    """A seeded per-epoch order of the training rows, optionally grouped by length, split over processes.

    The global order is a permutation (seed + epoch); with ``group_by_length`` it is cut into chunks of
    50 global batches, each sorted by length (longest first) and cut into global batches, whose order is
    then shuffled (a short last batch stays last). Process ``rank`` of ``world`` takes indices
    ``rank, rank + world, ...`` of the global order, after dropping the tail that does not divide evenly.
    """

    def __init__(
        self, lengths: list[int], global_batch: int, seed: int, group_by_length: bool, rank: int, world: int, epoch: Any
    ):
        self.lengths, self.global_batch, self.seed = lengths, global_batch, seed
        self.group_by_length, self.rank, self.world, self.epoch = group_by_length, rank, world, epoch
        self._resume: tuple[int, int] | None = None  # (epoch, indices of it already used)

    def resume_at(self, epoch: int, used: int) -> None:
        """Start the next iteration ``used`` indices into epoch ``epoch``'s order (if that epoch is the one
        iterated next, and not already finished)."""
        self._resume = (epoch, used)

    def global_order(self) -> list[int]:
        rng = random.Random(self.seed + self.epoch())
        order = rng.sample(range(len(self.lengths)), len(self.lengths))
        if self.group_by_length:
            chunk = self.global_batch * 50
            batches = []
            for start in range(0, len(order), chunk):
                part = sorted(order[start : start + chunk], key=lambda i: -self.lengths[i])
                batches += [part[b : b + self.global_batch] for b in range(0, len(part), self.global_batch)]
            full = [b for b in batches if len(b) == self.global_batch]
            rng.shuffle(full)  # the one short batch stays last, so global batches stay aligned
            order = [i for b in full + [b for b in batches if len(b) < self.global_batch] for i in b]
        return order[: len(order) - len(order) % self.world]

    def __iter__(self):
        # A generator: the order is computed at the first batch, after Lightning restored a checkpoint.
        mine = self.global_order()[self.rank :: self.world]
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch() and resume[1] < len(mine):
            mine = mine[resume[1] :]
        yield from mine

    def __len__(self) -> int:
        return len(self.lengths) // self.world

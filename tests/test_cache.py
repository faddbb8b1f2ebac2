"""The request cache of method=evaluate: a killed evaluation resumes where it stopped, with results identical
to an uninterrupted run; an identical rerun scores nothing; the model fingerprint follows every weight and
tokenizer file. Real tiny GLM, real SQLite, real subprocesses."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from autoglm_bench.config import ConfigError, ModelConfig, compose
from autoglm_bench.lm import load
from autoglm_bench.lm.fingerprint import model_fingerprint
from autoglm_bench.methods.evaluate import run_evaluate

from .conftest import cache_rows, kill_once_cached, run_ok

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # and bit-identical results between runs
# 64 test rows, scored 2 per batch: the cache is written in chunks of 8 requests.
EVAL = ["+experiment=quickstart", "limit=64", "dev_size=8", "method.batch_size=2", "logger=none"]


def test_killed_evaluation_resumes_with_identical_results_and_a_rerun_scores_nothing(tmp_path):
    expected = run_ok(tmp_path / "reference", *EVAL, "method.cache=false", env=ONE_THREAD)
    distinct = expected["cost"]["examples_scored"]  # the rows' distinct requests (toy_sentiment repeats some)
    assert expected["cost"]["examples_requested"] == 64 and 8 < distinct <= 64
    assert not (tmp_path / "cache.sqlite").exists()

    cached = [*EVAL, f"method.cache_path={tmp_path / 'cache.sqlite'}"]
    kill_once_cached(tmp_path / "cache.sqlite", *cached, f"hydra.run.dir={tmp_path / 'killed'}", env=ONE_THREAD)
    stored = cache_rows(tmp_path / "cache.sqlite")
    assert 0 < stored < distinct, f"kill the run while its cache holds some but not all rows: {stored}/{distinct}"
    assert not (tmp_path / "killed" / "results.json").exists()

    # The same command in a new run directory (as a rerun gets by default) resumes from the cache.
    out = run_ok(tmp_path / "resumed", *cached, env=ONE_THREAD)
    assert out["cost"]["examples_scored"] == distinct - stored
    assert out["cost"]["cache_hits"] == 64 - (distinct - stored)
    assert out["predictions"] == expected["predictions"]  # scores included, bit for bit
    assert out["metrics"] == expected["metrics"]
    assert cache_rows(tmp_path / "cache.sqlite") == distinct

    out = run_ok(tmp_path / "again", *cached, env=ONE_THREAD)
    assert out["cost"]["examples_scored"] == 0 and out["cost"]["tokens_processed"] == 0
    assert out["cost"]["cache_hits"] == 64
    assert out["predictions"] == expected["predictions"]


def test_generation_results_are_cached(tmp_path, data_dir):
    def evaluate(max_new_tokens: int) -> dict:
        run = compose(
            [
                "task=gsm8k",
                f"data_dir={data_dir}",
                "limit=3",
                f"task.generation.max_new_tokens={max_new_tokens}",
                f"method.cache_path={tmp_path / 'cache.sqlite'}",
            ]
        )
        return run_evaluate(run, score_dev=False)

    first = evaluate(6)
    assert first["cost"]["examples_scored"] == 3 and cache_rows(tmp_path / "cache.sqlite") == 3
    second = evaluate(6)
    assert second["cost"]["examples_scored"] == 0 and second["cost"]["cache_hits"] == 3
    assert second["predictions"] == first["predictions"]
    assert evaluate(7)["cost"]["examples_scored"] == 3  # another request: scored, not answered by the cache


def test_fingerprint_follows_every_shard_and_tokenizer_file_and_not_the_location(tiny_lm, tmp_path, model_cache):
    folder = tmp_path / "sharded"
    tiny_lm.model.save_pretrained(folder, max_shard_size="1MB")
    tiny_lm.tokenizer.save_pretrained(folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file()
    past = time.time() - 3600
    for f in folder.iterdir():  # old files: their digests are memoised, so edits must get past the memo
        os.utime(f, (past, past))

    def fingerprint(path: Path) -> str:
        return model_fingerprint(str(path), None, "torch.float32", 512)

    base = fingerprint(folder)
    lm = load(ModelConfig(name="sharded", path=str(folder), max_length=512))
    assert lm.fingerprint == base  # what evaluate and prompt search key their caches by
    memo = sqlite3.connect(model_cache / "file_digests.sqlite")
    assert memo.execute("SELECT COUNT(*) FROM digests WHERE path LIKE ?", (f"{folder}%",)).fetchone()[0] >= 5
    memo.close()

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert fingerprint(copy) == base  # an untouched copy elsewhere is the same model
    assert model_fingerprint(str(folder), None, "torch.bfloat16", 512) != base
    assert model_fingerprint(str(folder), None, "torch.float32", 256) != base

    seen = {base}
    shard = copy / shards[1].name
    data = bytearray(shard.read_bytes())
    data[-100] ^= 1  # one bit of one weight of the second shard, same size
    shard.write_bytes(bytes(data))
    seen.add(fingerprint(copy))

    tok = copy / "tokenizer_config.json"
    tok.write_text(tok.read_text().replace('"<pad>"', '"<|endoftext|>"'))
    seen.add(fingerprint(copy))
    (copy / "special_tokens_map.json").write_text('{"eos_token": "<pad>"}')
    seen.add(fingerprint(copy))
    assert len(seen) == 4
    assert fingerprint(folder) == base


def test_unusable_cache_path_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "cache.sqlite"  # under a regular file
    with pytest.raises(ConfigError) as info:
        run_evaluate(compose(["+experiment=quickstart", "limit=2", f"method.cache_path={bad}"]), score_dev=False)
    assert f"method.cache_path={str(bad)!r} cannot be opened" in str(info.value) and "\n" not in str(info.value)

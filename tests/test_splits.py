"""The split protocol: dev rows (selection) and test rows (reported) are fixed by split_seed, never by seed."""

from __future__ import annotations

from autoglm_bench.config import compose
from autoglm_bench.data.splits import split_task
from autoglm_bench.data.tasks import Task, load_task
from autoglm_bench.methods.evaluate import run_evaluate


def toy() -> Task:
    return load_task(compose(["task=toy_sentiment"]).task, None)


def ids(rows) -> list[str]:
    return [r["_id"] for r in rows]


def test_seed_keeps_the_rows_and_split_seed_moves_the_dev_rows(tiny_lm):
    records = {}
    for seed, split_seed in ((0, 0), (1, 0), (0, 1)):
        run = compose(["+experiment=quickstart", f"seed={seed}", f"split_seed={split_seed}", "limit=20"])
        records[seed, split_seed] = run_evaluate(run, score_dev=True)["splits"]
    same, other_seed, other_split = records[0, 0], records[1, 0], records[0, 1]
    assert other_seed["test_ids"] == same["test_ids"] and other_seed["dev_ids"] == same["dev_ids"]
    assert other_split["dev_ids"] != same["dev_ids"] and other_split["test_ids"] == same["test_ids"]
    assert not set(same["dev_ids"]) & set(same["test_ids"])
    assert all(i.startswith("train-") for i in same["dev_ids"])


def test_without_a_train_split_split_seed_moves_the_test_rows_too():
    task = toy()
    no_train = Task(cfg=task.cfg, hook=task.hook, rows={"eval": task.rows["eval"]})
    a, b = split_task(no_train, 0, 50), split_task(no_train, 1, 50)
    assert len(a.dev) == 50 and len(a.test) == 150 and not set(ids(a.dev)) & set(ids(a.test))
    assert set(ids(a.test)) != set(ids(b.test))
    assert set(ids(a.dev)) | set(ids(a.test)) == set(ids(task.rows["eval"]))
    small = split_task(no_train, 0, 500)  # a small split keeps half of its rows for test
    assert len(small.dev) == len(small.test) == 100 and "capped" in small.dev_source


def test_train_rows_exclude_the_dev_rows_and_limit_caps_dev_and_test():
    splits = split_task(toy(), 0, 100, limit=30)
    assert len(splits.dev) == 30 and len(splits.test) == 30 and len(splits.train) == 300
    assert not set(ids(splits.train)) & set(ids(split_task(toy(), 0, 100).dev))

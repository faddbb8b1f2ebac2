"""``python -m autoglm_bench.bench train`` on a CPU: the tiny configuration, both trainers, the table."""

from __future__ import annotations

import re

from .conftest import cli_ok


def test_train_benchmark_prints_the_table_and_both_trainers_agree(tmp_path):
    proc = cli_ok(
        "train",
        "--steps",
        "2",
        "--warmup",
        "1",
        module="autoglm_bench.bench",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    rows = {
        m.group(1): m.groups()
        for m in re.finditer(r"^(ours|hf_trainer)\s+(\d+)\s+(\S+)\s+(\d+)\s+([\d.]+)$", proc.stdout, re.MULTILINE)
    }
    assert set(rows) == {"ours", "hf_trainer"}, proc.stdout
    for name, tokens_per_s, mfu, peak_mb, _ in rows.values():
        assert int(tokens_per_s) > 0 and int(peak_mb) > 0 and mfu == "n/a", name
    # same model, same batches, same optimiser settings: the same mean training loss
    assert abs(float(rows["ours"][4]) - float(rows["hf_trainer"][4])) < 1e-3, proc.stdout
    assert "speed-up (tokens/s, ours / hf_trainer):" in proc.stdout

"""``benchmarks/bench_gpu.py`` (issue 18's GPU check) runs end to end at small shapes on the CPU,
so that a session lent a GPU can run it as it stands; its three formulas agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_cpu_and_the_formulas_agree(tmp_path: Path) -> None:
    bench = load_script("benchmarks", "bench_gpu")
    out = tmp_path / "gpu.json"
    argv = ["--quick", "--device", "cpu", "--dtype", "float32", "--repeats", "1"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for part in ("entropy", "loss", "step"):
        assert [r["variant"] for r in res[part]] == ["agentropy", "trl", "verl formula"]
        assert all(r["s"] > 0 for r in res[part])
    # fp32 everywhere: every formula is within 1e-4 nats of fp64, and the losses are one value.
    assert all(r["max_err_nats"] < 1e-4 for r in res["entropy"])
    losses = [r["loss"] for r in res["loss"]]
    assert max(losses) - min(losses) < 1e-5 * max(1.0, abs(losses[0]))

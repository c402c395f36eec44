"""Every output is atomic and never replaced without ``--force``: demo, experiment, eval, watch,
score, and :func:`agentropy.outputs.output_group` itself.

For each command: an existing output is refused with exit status 2 and one line (before the
long work: the model is never loaded), ``--force`` replaces it, and a write that fails midway
(a rename or a write raising ``ENOSPC``, monkeypatched) exits 2 with one line, keeps the
earlier output and leaves no temporary file behind. The demo and experiment pipelines run here
with their heavy stages replaced by fakes, so their own output handling runs for real in well
under a second.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.errors import OutputError
from agentropy.outputs import PREVIOUS_PREFIX, output_group
from test_cli_watch import unstable_run

runner = CliRunner()


def _one_line_error(res: Any, *words: str) -> str:
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err
    return err


def _hidden(folder: Path) -> list[str]:
    """Hidden leftovers (temporaries, probes, set-aside outputs) anywhere under ``folder``."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != ".writer.lock"
    )


@contextlib.contextmanager
def _enospc_on(name: str, *, aside: bool = False) -> Iterator[None]:
    """Within the block, the rename that publishes a file or folder called ``name`` (from its
    hidden temporary ``.<name>.*``) fails as on a full disk; ``aside``: the rename that sets an
    earlier ``name`` aside instead."""
    real = os.replace

    def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        src, dst = Path(src), Path(dst)
        hit = dst.parent.name.startswith(PREVIOUS_PREFIX) if aside else (
            src.name.startswith(f".{name}.")
        )  # fmt: skip
        if dst.name == name and hit:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", replace)
        yield


# ------------------------------------------------------------------------------------------
# output_group in isolation


def _fill(folder: Path, tag: str) -> None:
    (folder / "run").mkdir(parents=True)
    (folder / "run" / "w.bin").write_text(tag)
    (folder / "summary.json").write_text(tag)


def test_output_group_refuses_replaces_and_restores(tmp_path: Path) -> None:
    names = ("run", "summary.json")
    out = tmp_path / "out"
    with output_group(out, names) as folder:  # a fresh folder is created
        _fill(folder, "v1")
    (out / "mine.txt").write_text("keep")
    refused = r"holds earlier outputs \(run, summary.json\); pass --force"
    with pytest.raises(OutputError, match=refused), output_group(out, names):
        raise AssertionError("the body must not run")
    # A failing --force run (Ctrl-C here) puts the earlier outputs back and drops its own.
    with pytest.raises(KeyboardInterrupt), output_group(out, names, force=True) as folder:
        assert not (folder / "run").exists() and not (folder / "summary.json").exists()
        (folder / "run").mkdir()
        (folder / "run" / "half").write_text("x")
        raise KeyboardInterrupt
    assert (out / "run" / "w.bin").read_text() == "v1" and not (out / "run" / "half").exists()
    assert (out / "summary.json").read_text() == "v1"
    with output_group(out, names, force=True) as folder:
        _fill(folder, "v2")
    assert (out / "run" / "w.bin").read_text() == "v2"
    assert (out / "summary.json").read_text() == "v2"
    assert (out / "mine.txt").read_text() == "keep"
    assert _hidden(out) == []
    with pytest.raises(OutputError, match="not a directory"), output_group(out / "mine.txt", names):
        pass


def test_output_group_keep_partial_keeps_a_failed_first_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = ("run", "summary.json")
    with pytest.raises(RuntimeError), output_group(out, names, keep_partial=True) as folder:
        (folder / "run").mkdir()
        raise RuntimeError("failed after hours")
    assert (out / "run").is_dir()  # nothing earlier to put back: the finished part stays
    with pytest.raises(OutputError, match=r"\(run\); pass --force"), output_group(out, names):
        pass
    with output_group(out, names, force=True) as folder:  # replaced by a complete run
        _fill(folder, "v1")
    with (
        pytest.raises(RuntimeError),
        output_group(out, names, force=True, keep_partial=True) as folder,
    ):
        (folder / "run").mkdir()
        raise RuntimeError("failed while replacing")
    assert (out / "run" / "w.bin").read_text() == "v1"  # the earlier complete run returns
    assert _hidden(out) == []


def test_output_group_failed_move_aside_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = ("run", "summary.json")
    with output_group(out, names) as folder:
        _fill(folder, "v1")
    with (
        _enospc_on("summary.json", aside=True),  # the second one cannot be set aside
        pytest.raises(OutputError, match="no space left"),
        output_group(out, names, force=True),
    ):
        raise AssertionError("the body must not run")
    assert (out / "run" / "w.bin").read_text() == "v1"
    assert (out / "summary.json").read_text() == "v1"
    assert _hidden(out) == []


def test_output_group_force_removes_stranded_sets_of_dead_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    stranded = out / f"{PREVIOUS_PREFIX}{dead.pid}-abc"
    live = out / f"{PREVIOUS_PREFIX}{os.getpid()}-def"
    for d in (stranded, live):
        (d / "run").mkdir(parents=True)
    with output_group(out, ("run",)):  # without --force nothing is deleted
        pass
    assert stranded.exists()
    with output_group(out, ("run",), force=True):
        pass
    assert not stranded.exists() and live.exists()


def test_atomic_dir_puts_the_old_folder_back_when_the_new_one_cannot_be_renamed_in(tmp_path):
    from agentropy.outputs import atomic_dir

    folder = tmp_path / "model"
    with atomic_dir(folder) as tmp:
        (tmp / "w.bin").write_text("old")
    with (
        _enospc_on("model"),
        pytest.raises(OutputError, match="no space left"),
        atomic_dir(folder, force=True) as tmp,
    ):
        (tmp / "w.bin").write_text("new")
    assert (folder / "w.bin").read_text() == "old"
    assert _hidden(tmp_path) == []


def test_atomic_outputs_keep_the_mode_a_plain_write_gives(tmp_path: Path) -> None:
    from agentropy.outputs import atomic_dir, atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    (tmp_path / "plain-dir").mkdir()
    with atomic_dir(tmp_path / "d"):
        pass
    assert (tmp_path / "a.txt").stat().st_mode == plain.stat().st_mode
    assert (tmp_path / "d").stat().st_mode == (tmp_path / "plain-dir").stat().st_mode


# ------------------------------------------------------------------------------------------
# agentropy demo (its stages faked: bootstrap/model, evaluation, report)


@pytest.fixture
def fake_demo_stages(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the demo's model loading, evaluation and report with fast fakes; each run writes
    ``eval/eval.json`` and ``report.html`` holding its run number. Returns the run counter."""
    import agentropy.agent.loading as loading
    import agentropy.pipelines.compare as compare
    import agentropy.report.html as html
    from agentropy.outputs import atomic_write_text

    runs = [0]

    def load_model(path: Any = None) -> Any:
        runs[0] += 1
        return SimpleNamespace(eval=lambda: None), None

    def run_eval(model: Any, tok: Any, *, config: Any, out_dir: Path, **_: Any) -> Any:
        out_dir.mkdir(parents=True)
        (out_dir / "eval.json").write_text(str(runs[0]))
        return {"config": {}, "rows": [], "traces": {}}

    def report_from_paths(stores: Any, out: Path, *, force: bool, **_: Any) -> Any:
        atomic_write_text(out, f"report {runs[0]}", force=force)
        return SimpleNamespace(claims=[])

    monkeypatch.setattr(loading, "load_model", load_model)
    monkeypatch.setattr(compare, "run_eval", run_eval)
    monkeypatch.setattr(html, "report_from_paths", report_from_paths)
    return runs


def _demo(out: Path, *extra: str) -> Any:
    args = ["demo", "--out", str(out), "--model", str(out.parent / "model"), "--no-train"]
    return runner.invoke(app, [*args, "--episodes", "1", "--no-progress", *extra])


def test_demo_refuses_an_earlier_demo_and_force_replaces_it(tmp_path, fake_demo_stages):
    out = tmp_path / "demo"
    res = _demo(out)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "demo.json").read_text())["report"] == str(out / "report.html")
    assert (out / "report.html").read_text() == "report 1"
    (out / "notes.txt").write_text("mine")
    res = _demo(out)
    err = _one_line_error(res, str(out), "--force", "demo.json", "report.html")
    assert fake_demo_stages == [1]  # refused before the model was loaded
    res = _demo(out, "--force")
    assert res.exit_code == 0, res.output
    assert (out / "report.html").read_text() == "report 2"
    assert (out / "eval" / "eval.json").read_text() == "2"
    assert (out / "notes.txt").read_text() == "mine"  # not a demo output: never touched
    assert _hidden(out) == []
    assert "train" not in err  # --no-train wrote no train/ folder


def test_demo_that_fails_to_write_keeps_the_earlier_demo(tmp_path, fake_demo_stages):
    out = tmp_path / "demo"
    assert _demo(out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with _enospc_on("demo.json"):  # the very last write of the run fails
        res = _demo(out, "--force")
    _one_line_error(res, str(out / "demo.json"), "no space left on device")
    assert fake_demo_stages == [2]  # the second run did its work, then failed
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (out / "eval" / "eval.json").read_text() == "1"
    assert _hidden(out) == []


# ------------------------------------------------------------------------------------------
# agentropy experiment (training and rollouts faked)


@pytest.fixture
def fake_experiment_stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace model loading, training, rollouts and analysis with fakes; returns the run
    directories trained, in order."""
    import agentropy.agent.loading as loading
    import agentropy.agent.runner as runner_mod
    import agentropy.analysis.summary as summary
    import agentropy.pipelines.compare as compare
    import agentropy.rl.trainer as trainer
    from agentropy.pipelines.experiment import LEVEL_METRICS

    trained: list[str] = []

    def train(cfg: Any, **_: Any) -> Any:
        Path(cfg.out).mkdir(parents=True)
        (Path(cfg.out) / "metrics.parquet").write_text(str(len(trained)))
        trained.append(cfg.out)
        return SimpleNamespace(wall_s=1.0)

    def policy_row(episodes: Any, *, level: int, policy: str) -> dict[str, Any]:
        return {"level": level, "policy": policy, **dict.fromkeys(LEVEL_METRICS, 0.5)}

    monkeypatch.setattr(loading, "load_model", lambda path=None: (None, None))
    monkeypatch.setattr(runner_mod, "rollout", lambda *a, **k: [])
    monkeypatch.setattr(compare, "policy_row", policy_row)
    monkeypatch.setattr(summary, "analyze_paths", lambda *a, **k: {"training": {"cycles": []}})
    monkeypatch.setattr(trainer, "train", train)
    monkeypatch.setattr(trainer, "read_metrics", lambda out: [])  # the fake metrics file
    return trained


def _experiment(out: Path, *extra: str) -> Any:
    args = ["experiment", "--arms", "baseline", "--seeds", "1", "--out", str(out)]
    return runner.invoke(app, [*args, "--eval-episodes", "1", "--no-progress", *extra])


def test_experiment_refuses_an_earlier_one_and_force_replaces_it(tmp_path, fake_experiment_stages):
    out = tmp_path / "exp"
    res = _experiment(out)
    assert res.exit_code == 0, res.output
    first = json.loads((out / "experiment.json").read_text())
    assert [r["arm"] for r in first["runs"]] == ["baseline"]
    res = _experiment(out)
    _one_line_error(res, str(out), "--force", "baseline", "experiment.json")
    assert len(fake_experiment_stages) == 1  # refused before anything was trained
    # --force whose summary cannot be written: the earlier experiment stays, whole.
    with _enospc_on("experiment.json"):
        res = _experiment(out, "--force")
    _one_line_error(res, "no space left on device")
    assert len(fake_experiment_stages) == 2
    assert json.loads((out / "experiment.json").read_text()) == first
    assert (out / "baseline" / "seed-0" / "metrics.parquet").read_text() == "0"
    assert _hidden(out) == []
    res = _experiment(out, "--force")
    assert res.exit_code == 0, res.output
    assert (out / "baseline" / "seed-0" / "metrics.parquet").read_text() == "2"
    assert _hidden(out) == []


def test_failed_experiment_keeps_its_finished_runs(tmp_path, fake_experiment_stages, monkeypatch):
    """Hours of finished runs survive a failure when there is no earlier experiment to put
    back; a re-run then refuses them without --force."""
    import agentropy.rl.trainer as trainer

    fake = trainer.train

    def train(cfg: Any, **k: Any) -> Any:
        if "rhythm" in cfg.out:
            raise OSError(errno.ENOSPC, "No space left on device", cfg.out)
        return fake(cfg, **k)

    monkeypatch.setattr(trainer, "train", train)
    out = tmp_path / "exp"
    args = ["experiment", "--arms", "baseline,rhythm", "--seeds", "1", "--out", str(out),
            "--eval-episodes", "1", "--no-progress"]  # fmt: skip
    _one_line_error(runner.invoke(app, args), "no space left on device")
    assert (out / "baseline" / "seed-0" / "metrics.parquet").read_text() == "0"
    assert not (out / "experiment.json").exists() and _hidden(out) == []
    _one_line_error(_experiment(out), str(out), "(baseline)", "--force")


# ------------------------------------------------------------------------------------------
# agentropy eval (a real evaluation of a random tiny model: about a second)


@pytest.fixture(scope="module")
def agent_dir(random_llama: Any, tiny_tokenizer: Any, tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("agent")
    random_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _eval(agent: Path, out: Path, *extra: str) -> Any:
    args = ["eval", "--model", str(agent), "--policies", "greedy,phase", "--levels", "3",
            "--episodes", "1", "--max-turns", "1", "--max-new-tokens", "4", "--out", str(out),
            "--no-progress", *extra]  # fmt: skip
    return runner.invoke(app, args)


def _store_ids(store: Path) -> list[str]:
    from agentropy.trace import read_traces

    return [e.episode_id for e in read_traces(store)]


def test_eval_outputs_need_force_and_are_atomic(tmp_path, agent_dir):
    out = tmp_path / "ev"
    assert _eval(agent_dir, out).exit_code == 0
    store = out / "traces" / "phase.parquet"
    ids = _store_ids(store)
    eval_json = (out / "eval.json").read_bytes()
    # Refused before the model loads (a missing model would fail later, with another error).
    res = _eval(tmp_path / "no-model", out)
    _one_line_error(res, str(out / "eval.json"), "--force")
    (out / "eval.json").unlink()
    res = _eval(tmp_path / "no-model", out)
    _one_line_error(res, str(out / "traces" / "greedy.parquet"), "--force")
    (out / "eval.json").write_bytes(eval_json)
    # --force whose second store cannot be renamed in: exit 2, no half store, no temporaries.
    with _enospc_on("phase.parquet"):
        res = _eval(agent_dir, out, "--force")
    _one_line_error(res, str(store), "no space left on device")
    assert _store_ids(store) == ids and (out / "eval.json").read_bytes() == eval_json
    assert _hidden(out) == []
    res = _eval(agent_dir, out, "--seed", "1", "--force")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "eval.json").read_text())["config"]["seed"] == 1
    assert len(_store_ids(store)) == len(ids)  # replaced, not appended to
    assert _hidden(out) == []


# ------------------------------------------------------------------------------------------
# agentropy watch --json


def test_watch_json_needs_force_and_is_atomic(tmp_path):
    unstable_run(tmp_path / "run")
    out = tmp_path / "alerts.json"
    out.write_text("my notes")
    args = ["watch", str(tmp_path / "run"), "--once", "--json", str(out)]
    _one_line_error(runner.invoke(app, args), str(out), "--force")
    assert out.read_text() == "my notes"
    with _enospc_on(out.name):
        res = runner.invoke(app, [*args, "--force"])
    _one_line_error(res, str(out), "no space left on device")
    assert out.read_text() == "my notes"
    assert _hidden(tmp_path) == []
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["runs"][0]["steps"] == 8
    # Its own rewrites need no --force; a fresh file needs none either.
    fresh = tmp_path / "new.json"
    res = runner.invoke(app, ["watch", str(tmp_path / "run"), "--once", "--json", str(fresh)])
    assert res.exit_code == 0 and json.loads(fresh.read_text())["runs"][0]["steps"] == 8


def test_watch_following_rewrites_its_own_json(tmp_path):
    """A followed run's alerts are written as they fire and again at the end, without
    ``--force``: the file is the watch's own."""
    unstable_run(tmp_path / "run")
    out = tmp_path / "alerts.json"
    args = ["watch", str(tmp_path / "run"), "--json", str(out), "--interval", "0.01",
            "--stop-after", "0.05"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "divergence" in {a["name"] for a in json.loads(out.read_text())["runs"][0]["alerts"]}
    assert _hidden(tmp_path) == []


# ------------------------------------------------------------------------------------------
# agentropy score --out x.jsonl


def test_score_jsonl_needs_force(tmp_path, agent_dir):
    conv = {"id": "c1", "messages": [{"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "hello"}]}  # fmt: skip
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps(conv) + "\n")
    out = tmp_path / "o.jsonl"
    out.write_text("keep me")
    args = ["score", str(src), "--out", str(out), "--no-progress"]
    res = runner.invoke(app, [*args, "--model", str(tmp_path / "no-model")])
    _one_line_error(res, str(out), "--force")  # before the model loads
    assert out.read_text() == "keep me"
    with _enospc_on(out.name):
        res = runner.invoke(app, [*args, "--model", str(agent_dir), "--force"])
    _one_line_error(res, str(out), "no space left on device")
    assert out.read_text() == "keep me" and _hidden(tmp_path) == []
    res = runner.invoke(app, [*args, "--model", str(agent_dir), "--force"])
    assert res.exit_code == 0, res.output
    from agentropy.trace import read_jsonl

    assert [e.episode_id for e in read_jsonl(out)] == ["c1"]
    # A store is resumed by default, and started afresh with --force.
    store = tmp_path / "store"
    for extra in ([], [], ["--force"]):
        res = runner.invoke(
            app, ["score", str(src), "--out", str(store), "--model", str(agent_dir),
                  "--no-progress", *extra],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    assert "scored 1 conversations" in res.output
    assert _store_ids(store) == ["c1"]

"""Outputs on hostile file systems, and runs killed at random points.

- A read-only and a full file system: a small tmpfs mounted in a private mount namespace
  (``unshare -rm``; skipped with the reason where that is not permitted). ``rollout``,
  ``report``, ``analyze`` and ``train`` must exit 2 with one line naming the path and the reason,
  before any long work; a previous output must survive a failed ``--force`` rewrite intact.
- Existing outputs are never replaced without ``--force``.
- SIGKILL at random points of ``rollout``, ``train`` and ``bootstrap`` (slow tier), followed by a
  restart that must succeed and lose no data that was complete before the kill.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentropy.cli import app
from conftest import tiny_lm  # at import time: tests/verl has a conftest of its own
from trace_cases import MINIMAL

SRC = Path(__file__).resolve().parents[1] / "src"
runner = CliRunner()

GOOD = MINIMAL  # the DESIGN.md minimal episode


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["AGENTROPY_HOME"] = str(tmp_path / "home")
    return env


@functools.cache
def _mount_error() -> str | None:
    """Why a private tmpfs cannot be mounted here (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"
    try:
        res = subprocess.run(
            ["unshare", "-rm", "sh", "-c", probe], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare failed: {err}"
    if res.returncode != 0:
        return f"mounting a tmpfs in a user namespace is not permitted: {res.stderr.strip()}"
    return None


def _in_tmpfs(
    tmp_path: Path, mnt: Path, script: str, *, size_kb: int, readonly: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run shell ``script`` with a fresh tmpfs of ``size_kb`` at ``mnt`` (remounted read-only
    after ``script``'s setup part when ``readonly``); ``$AGENTROPY`` runs the CLI."""
    if reason := _mount_error():
        pytest.skip(reason)
    mnt.mkdir(parents=True, exist_ok=True)
    agentropy = f"{shlex.quote(sys.executable)} -m agentropy"
    ro = f"mount -o remount,ro {mnt} && " if readonly else ""
    setup, _, run = script.partition("\n---\n")
    full = (
        f"mount -t tmpfs -o size={size_kb}k tmpfs {mnt} && "
        f"AGENTROPY='{agentropy}' && {setup or 'true'} && {ro}"
        f"{{ {run.replace('$AGENTROPY', agentropy)} ; }}"
    )
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", full],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(tmp_path),
        cwd=tmp_path,
    )


def _marker_lines(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``KEY=value`` lines the scripts print after the command (exit status, file checks)."""
    out = {}
    for line in res.stdout.splitlines():
        if "=" in line and line.split("=", 1)[0].isupper():
            k, v = line.split("=", 1)
            out[k] = v
    return out


def _one_line_error(res: subprocess.CompletedProcess[str], *words: str) -> None:
    err = res.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def traces(tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("traces") / "t.jsonl"
    eps = []
    for i in range(4):
        d = json.loads(json.dumps(GOOD))
        d["episode_id"] = f"e{i}"
        eps.append(json.dumps(d))
    path.write_text("\n".join(eps) + "\n")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: Any) -> Path:
    from agentropy.agent.tiny import build_tokenizer

    tok = build_tokenizer()
    path = tmp_path_factory.mktemp("model")
    tiny_lm(tok, layers=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


ROLLOUT = "rollout --level 1 --episodes 2 --max-turns 2 --max-new-tokens 4 --no-progress"


def _train_args(model: Path, out: Path, steps: int = 1, **extra: Any) -> list[str]:
    sets = {
        "tasks_per_step": 2,
        "group_size": 2,
        "max_turns": 2,
        "max_new_tokens": 6,
        "max_tokens": 16,
        "eval_every": 100,
        "eval_episodes": 1,
        "tensorboard": "false",
        "rollout_batch_size": 4,
        **extra,
    }
    args = ["train", "--model", str(model), "--out", str(out), "--steps", str(steps)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return [*args, "--no-progress"]


# ------------------------------------------------------------------------------------------
# read-only and full file systems


def _output_command(command: str, mnt: Path, traces: Path, model: Path) -> tuple[Path, str, str]:
    """(output path, file an earlier run leaves in it, ``""``: the output itself; command line
    writing the output, ``--force`` added where the command has it)."""
    run = mnt / "run"
    table = {
        "report": (mnt / "r.html", "", f"report {traces} --out {mnt}/r.html"),
        "analyze": (mnt / "a.json", "", f"analyze {traces} --json {mnt}/a.json"),
        "rollout": (mnt / "x.jsonl", "", f"{ROLLOUT} --model {model} --out {mnt}/x.jsonl"),
        "train": (run, "keep", " ".join(_train_args(model, run))),
        "demo": (run, "demo.json", f"demo --out {run} --model {model} --no-train --no-progress"),
        "eval": (run, "eval.json", f"eval --model {model} --levels 1 --episodes 1 --out {run} "
                 "--no-progress"),
        "experiment": (run, "experiment.json", f"experiment --arms baseline --seeds 1 "
                       f"--out {run} --model {model} --no-progress"),
        "watch": (mnt / "w.json", "", f"watch {run} --once --json {mnt}/w.json"),
        "score": (mnt / "s.jsonl", "", f"score {traces} --out {mnt}/s.jsonl --model {model} "
                  "--no-progress"),
    }  # fmt: skip
    out, kept, line = table[command]
    return out, kept, line if command == "train" else f"{line} --force"


OUTPUT_COMMANDS = ["report", "analyze", "rollout", "train", "demo", "eval", "experiment",
                   "watch", "score"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_read_only_file_system(command, tmp_path, traces, model_dir):
    mnt = tmp_path / "mnt"
    _, _, target = _output_command(command, mnt, traces, model_dir)
    t0 = time.monotonic()
    res = _in_tmpfs(
        tmp_path,
        mnt,
        f"true\n---\n$AGENTROPY {target}; echo STATUS=$?",
        size_kb=1024,
        readonly=True,
    )
    assert _marker_lines(res)["STATUS"] == "2", res.stderr
    _one_line_error(res, str(mnt), "read-only file system")
    assert time.monotonic() - t0 < 120  # refused before the work, not after it


@pytest.mark.slow
@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_full_file_system_keeps_the_previous_output(command, tmp_path, traces, model_dir):
    mnt = tmp_path / "mnt"
    out, kept, target = _output_command(command, mnt, traces, model_dir)
    kept_file = out / kept if kept else out
    # An earlier output, then fill the disk; the rewrite must fail and leave it intact.
    previous = f"mkdir -p {out} && " if kept else ""
    script = (
        f"{previous}echo PREVIOUS > {kept_file} && "
        f"(dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null || true)\n---\n"
        f"$AGENTROPY {target}; echo STATUS=$?; "
        f"echo LEFT=$(ls -A {mnt} | tr '\\n' ' '); "
        f"echo INSIDE=$(ls -A {out} 2>/dev/null | tr '\\n' ' '); "
        f"echo KEPT=$(cat {kept_file})"
    )
    res = _in_tmpfs(tmp_path, mnt, script, size_kb=512)
    marks = _marker_lines(res)
    assert marks["STATUS"] == "2", res.stderr
    _one_line_error(res, str(mnt), "no space left on device")
    assert marks["KEPT"] == "PREVIOUS"
    # Nothing half-written left behind: only the previous output and the filler.
    assert set(marks["LEFT"].split()) == {out.name, "filler"}, marks["LEFT"]
    if kept:
        assert marks["INSIDE"].split() == [kept], marks["INSIDE"]


# ------------------------------------------------------------------------------------------
# never replace without --force


def test_existing_outputs_need_force(tmp_path, traces):
    report = tmp_path / "r.html"
    report.write_text("my notes")
    res = runner.invoke(app, ["report", str(traces), "--out", str(report)])
    assert res.exit_code == 2 and "--force" in res.stderr and report.read_text() == "my notes"
    res = runner.invoke(app, ["analyze", str(traces), "--json", str(report)])
    assert res.exit_code == 2 and "--force" in res.stderr and report.read_text() == "my notes"
    res = runner.invoke(app, ["report", str(traces), "--out", str(report), "--force"])
    assert res.exit_code == 0, res.output
    assert report.read_text().startswith("<!DOCTYPE html>") or "<html" in report.read_text()
    trace = tmp_path / "x.jsonl"
    trace.write_text("keep me")
    # Refused before the model is loaded (there is none here).
    args = [*ROLLOUT.split(), "--model", str(tmp_path / "no-model"), "--out", str(trace)]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--force" in res.stderr and trace.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_internal_errors_are_one_line_with_a_saved_traceback(tmp_path, monkeypatch, traces):
    import agentropy.analysis.summary as summary

    def boom(*a: Any, **k: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(summary, "analyze_paths", boom)
    res = runner.invoke(app, ["analyze", str(traces)])
    err = res.stderr.strip()
    assert res.exit_code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("internal error: KeyError") and "traceback in" in err
    saved = Path(err.rsplit("traceback in ", 1)[1].rstrip(")"))
    assert "KeyError: 'a bug'" in saved.read_text()
    saved.unlink()


# ------------------------------------------------------------------------------------------
# train: restart after a kill before the first checkpoint


def test_open_run_dir_after_kills_at_every_stage(tmp_path, capsys):
    """The run directory's state machine, without training: what each kill leaves, and what a
    plain run and a ``--resume`` then do."""
    from agentropy.rl.config import TrainConfig
    from agentropy.rl.run import open_run_dir

    out = tmp_path / "run"
    cfg = TrainConfig(out=str(out))
    # Killed before anything was written: a plain run starts; --resume says there is no run.
    with pytest.raises(ValueError, match="no run under"):
        open_run_dir(cfg, resume=True)
    assert open_run_dir(cfg, resume=False) is None
    # Killed after config.toml, before any output: both start over (resume too), saying so.
    assert open_run_dir(cfg, resume=True) is None
    assert "starting it over in place" in capsys.readouterr().err
    # Killed mid-step 1: partial outputs are removed, the unrelated file is kept.
    (out / "traces" / "tokens").mkdir(parents=True)
    (out / "metrics.parquet").write_bytes(b"PAR1")
    (out / "checkpoints" / ".tmp-step-000001").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    for resume in (False, True):
        assert open_run_dir(cfg, resume=resume) is None
        assert not (out / "traces").exists() and not (out / "metrics.parquet").exists()
        assert (out / "notes.txt").read_text() == "mine"
        (out / "metrics.parquet").write_bytes(b"PAR1")
    # After a checkpoint: a plain run refuses, --resume resumes from it.
    (out / "checkpoints" / "step-000001").mkdir(parents=True)
    (out / "checkpoints" / "step-000001" / "state.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="already holds a run"):
        open_run_dir(cfg, resume=False)
    assert open_run_dir(cfg, resume=True) == out / "checkpoints" / "step-000001"


@pytest.mark.slow
def test_train_restarts_in_place_after_a_kill_before_the_first_checkpoint(tmp_path, model_dir):
    out = tmp_path / "run"
    # What a run killed during its first step leaves: config, a partial trace store, metrics.
    out.mkdir()
    (out / "config.toml").write_text("# partial\n")
    (out / "traces" / "episodes").mkdir(parents=True)
    (out / "metrics.parquet").write_bytes(b"PAR1")
    for resume in ([], ["--resume"]):
        res = runner.invoke(app, [*_train_args(model_dir, out), *resume])
        assert res.exit_code == 0, res.output
        assert "starting it over in place" in res.stderr
        assert (out / "final" / "config.json").is_file()
        shutil.rmtree(out / "checkpoints")  # as if killed again before its checkpoint
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "nothing"), "--resume"])
    assert res.exit_code == 2 and "no run under" in res.stderr


@pytest.mark.slow
def test_resume_without_progress_says_where_it_resumed(tmp_path, model_dir):
    out = tmp_path / "run"
    res = runner.invoke(app, _train_args(model_dir, out, steps=1, checkpoint_every=1))
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, [*_train_args(model_dir, out, steps=2, checkpoint_every=1), "--resume"]
    )
    assert res.exit_code == 0, res.output
    assert "resuming" in res.stderr and "step-000001" in res.stderr


def test_killed_bootstraps_are_cleaned_up(tmp_path, monkeypatch):
    """A bootstrap removes the temporary folders of dead bootstraps, not of live ones."""
    from agentropy.agent.tiny import TinyRecipe, agent_path
    from agentropy.agent.tiny.store import _remove_stranded

    monkeypatch.setenv("AGENTROPY_HOME", str(tmp_path))
    path = agent_path(TinyRecipe.quick())
    path.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stranded = path.parent / f".{path.name}-{dead.pid}-abc123"
    live = path.parent / f".{path.name}-{os.getpid()}-def456"
    old = path.parent / f".{path.name}-old-xyz"
    for d in (stranded, live, old):
        (d / "sub").mkdir(parents=True)
    _remove_stranded(path)
    assert not stranded.exists() and not old.exists() and live.exists()


# ------------------------------------------------------------------------------------------
# SIGKILL at random points, then restart (slow tier)
#
# Each command is killed twice at two distinct stages, chosen by watching what it has written
# (not by a fixed delay, which on a fast machine would fire after the command had finished, and
# on a slow one before it had started): once before its first durable output, once after it.
# The second start is itself the restart after the first kill; a last run in this process must
# then complete with nothing lost. A kill that lands after the process ended fails the test.


def _spawn(args: list[str], tmp_path: Path, *, python: list[str] | None = None) -> Any:
    return subprocess.Popen(
        [sys.executable, *(python or ["-m", "agentropy"]), *args],
        env=_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_when(proc: Any, ready: Any, delay: float, *, timeout: float = 600) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; fails if it exited
    before (the kill point was missed)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the process ended before the kill point"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.005)
    time.sleep(delay)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive, "the process ended before it could be killed"


@pytest.mark.slow
def test_rollout_killed_then_rerun(tmp_path, model_dir):
    from agentropy.trace import read_traces

    out = tmp_path / "x.parquet"
    args = [*ROLLOUT.split(), "--level", "2", "--model", str(model_dir), "--out", str(out),
            "--max-new-tokens", "24"]  # fmt: skip
    rng = random.Random(0)
    # 1. While level 1 is generated: the store is open, no part is written yet.
    proc = _spawn(args, tmp_path)
    _kill_when(proc, lambda: (out / ".writer.lock").exists(), rng.uniform(0, 0.2))
    with pytest.raises(ValueError, match="empty trace store"):
        read_traces(out)
    # 2. Restarted (--force: afresh), killed once level 1's part is written: the part survives.
    proc = _spawn([*args, "--force"], tmp_path)
    _kill_when(proc, lambda: (out / "episodes" / "part-00000.parquet").exists(), 0.0)
    survived = read_traces(out)
    assert {e.level for e in survived[:2]} == {1} and len(survived) in (2, 4)
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert [e.level for e in read_traces(out)] == [1, 1, 2, 2]


@pytest.mark.slow
def test_train_killed_then_restarted(tmp_path, model_dir):
    from agentropy.rl.run import latest_checkpoint, read_metrics

    out = tmp_path / "run"
    args = _train_args(model_dir, out, steps=3, checkpoint_every=1)
    rng = random.Random(0)
    # 1. Before the first checkpoint: somewhere in step 1.
    proc = _spawn(args, tmp_path)
    _kill_when(proc, lambda: (out / "config.toml").exists(), rng.uniform(0, 0.5))
    assert latest_checkpoint(out) is None
    # 2. A plain restart starts over in place; killed once step 1 is checkpointed.
    proc = _spawn(args, tmp_path)
    _kill_when(proc, lambda: latest_checkpoint(out) is not None, 0.0)
    # 3. --resume completes the run from the checkpoint, every step once.
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.stderr
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


#: A bootstrap recipe small enough to restart in seconds: what is tested is the crash safety of
#: ``agentropy bootstrap`` (train in a temporary folder, save there, rename it into place), not
#: the agent it trains. The child runs the real CLI with ``TinyRecipe.quick`` pointing at it;
#: with ``PAUSE_AFTER_MODEL_SAVE`` set it pauses between saving the model and the tokenizer, so
#: that a kill lands mid-save for certain (the save itself lasts milliseconds).
_MICRO_BOOTSTRAP = """
import os, sys, time
import transformers
from agentropy.agent import tiny
micro = tiny.TinyRecipe(
    levels=(1,), n_tasks_per_level=8, n_eval_tasks_per_level=1, tokenizer_tasks_per_level=8,
    vocab_size=400, hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64,
    max_length=768, steps=30, batch_size=2, warmup_steps=2, drill_steps=0, drill_mix=0,
)
tiny.TinyRecipe.quick = classmethod(lambda cls: micro)
if os.environ.get("PAUSE_AFTER_MODEL_SAVE"):
    save = transformers.PreTrainedModel.save_pretrained
    def paused(self, *a, **k):
        save(self, *a, **k)
        time.sleep(600)
    transformers.PreTrainedModel.save_pretrained = paused
sys.argv = ["agentropy", "bootstrap", "--quick", "--no-progress", "--threads", "1"]
from agentropy.cli import main
main()
"""


@pytest.mark.slow
def test_bootstrap_killed_then_rerun(tmp_path, monkeypatch):
    agents = tmp_path / "home" / "agents"

    def temporaries(pid: int | None = None) -> list[Path]:
        """Bootstrap temporaries (``.tiny-<hash>-<pid>-<random>``), of process ``pid`` only if
        given."""
        found = sorted(agents.glob(".tiny-*")) if agents.is_dir() else []
        return [p for p in found if pid is None or p.name.split("-")[2] == str(pid)]

    python = ["-c", _MICRO_BOOTSTRAP]
    # 1. At a random point while it builds data, tokenizer and model, before anything is saved.
    proc = _spawn([], tmp_path, python=python)
    _kill_when(proc, lambda: bool(temporaries(proc.pid)), random.Random(0).uniform(0, 0.3))
    assert temporaries() == temporaries(proc.pid) != []
    # 2. Restarted (which removes the first run's stranded folder), killed mid-save: the model
    #    files are written, the tokenizer and record are not, nothing is renamed into place.
    monkeypatch.setenv("PAUSE_AFTER_MODEL_SAVE", "1")
    proc = _spawn([], tmp_path, python=python)
    _kill_when(proc, lambda: any((t / "config.json").exists() for t in temporaries(proc.pid)), 0)
    monkeypatch.delenv("PAUSE_AFTER_MODEL_SAVE")
    (partial,) = temporaries()
    assert (partial / "config.json").exists() and not (partial / "tokenizer.json").exists()
    assert [p for p in agents.iterdir() if not p.name.startswith(".")] == []
    # 3. The restart completes; no temporary folder of the killed runs is left.
    res = subprocess.run(
        [sys.executable, *python], env=_env(tmp_path), capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    (agent,) = agents.iterdir()
    assert agent.name.startswith("tiny-") and (agent / "tokenizer.json").is_file()
    assert f"agent: {agent}" in res.stdout


# ------------------------------------------------------------------------------------------
# agentropy.outputs in isolation


def test_atomic_outputs_never_leave_partial_files(tmp_path):
    import errno

    from agentropy.errors import OutputError
    from agentropy.outputs import atomic_dir, atomic_path, atomic_write_text, check_output

    target = tmp_path / "a.json"
    atomic_write_text(target, "v1")
    with pytest.raises(OutputError, match="pass --force"):
        atomic_write_text(target, "v2")
    with (
        pytest.raises(OutputError, match="no space left on device"),
        atomic_path(target, force=True) as tmp,
    ):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "v1"
    atomic_write_text(target, "v2", force=True)
    assert target.read_text() == "v2"
    folder = tmp_path / "model"
    with atomic_dir(folder) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError), atomic_dir(folder, force=True) as tmp:
        (tmp / "w.bin").write_bytes(b"2")
        raise RuntimeError("killed mid-save")
    assert (folder / "w.bin").read_bytes() == b"1"
    with atomic_dir(folder, force=True) as tmp:
        (tmp / "w.bin").write_bytes(b"3")
    assert (folder / "w.bin").read_bytes() == b"3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "model"]
    with pytest.raises(OutputError, match="a parent is not a directory"):
        check_output(target / "x.html")
    with pytest.raises(OutputError, match="is a directory"):
        check_output(folder, force=True)
    assert check_output(tmp_path / "new" / "r.html") == tmp_path / "new" / "r.html"

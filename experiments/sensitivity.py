"""How the breath analyzer's verdicts move with its parameters (issue 17, item 4).

Every threshold of the within-episode definitions (DESIGN.md "Definitions",
:class:`agentropy.analysis.breath.BreathConfig`) is a choice. This script sweeps them one at a
time around a centre and reports, per setting, what a reader of ``agentropy analyze`` would
see change:

- **floor share**: failed triggers (tool status ``error`` / ``unexpected``) whose baseline sits
  at the ``eps`` floor. At the floor the spike ratio compares the response with ``eps``, not with
  the agent's own earlier uncertainty, so almost any response is an "eruption";
- **spike ratio**: the median over failed triggers with a 95% bootstrap interval (resampling
  whole episodes, since triggers of one episode share a baseline history), the median over
  successful triggers, and the **AUC** of the spike ratio for telling failed from successful
  triggers (0.5: the ratio does not see the failure at all; the essay's premise is that it does);
- **eruptions**: count and share among failed triggers (and the share among successful ones),
  their kinds (productive / neutral / divergent) and the share that contracts;
- **flips**: the share of failed triggers whose verdict (no eruption / productive / neutral /
  divergent) differs from the centre setting's: how much the answer depends on the knob;
- **recovery by spike bin** (episode level, first failure; ``agentropy analyze``'s table).

Swept (one at a time, everything else at the centre): the baseline (statistic median | mean x
tokens all | text, :data:`~agentropy.analysis.breath.BaselineTokens`), ``eps`` in {0.01, 0.02,
0.05, 0.1}, the baseline window ``W`` in {16, 32, 64, 128}, the spike window ``k`` in {4, 8, 16,
32}, the contraction band in {1.0, 1.25, 1.5, 2.0} and the horizon in {32, 64, 128, 256}.
Centres: DESIGN.md's defaults and, with ``--centers``, other baselines.

Data sets (``datasets`` in the JSON):

- ``testbed``: the shipped agent's own traces (``agentropy eval`` in-process: ``--policies``
  greedy and phase, levels 2-3, seen and novel faults) or the stores given with ``--traces``;
- ``qwen3-random``: the same token sequences re-scored (teacher-forced, ``agentropy score``'s
  :func:`~agentropy.agent.score.rescore_episodes`) by a ``Qwen3ForCausalLM`` built from a config
  at random init. No weights can be downloaded here, so this is *not* Qwen: it is the Qwen3
  architecture (q/k-norm attention) at the testbed's size over the testbed's tokenizer. At random
  init every next-token distribution is near-uniform (entropy near ``log V``), so it only checks
  the plumbing and the near-uniform limit (no floor, spike ratios near 1);
- ``qwen3-sft<N>``: that model after ``--qwen-steps`` N steps of supervised training on expert
  ToolWorld transcripts (train split, the same public generator the tiny agent learns from), then
  re-scoring the testbed's traces: an under-trained model of another architecture, whose entropy
  profile is *less* peaked than the testbed's. It is not a pretrained Qwen either: what a real
  Qwen3 does with these definitions stays open until its weights can be scored (``agentropy
  score --model <dir>`` on any machine that has them).

Outputs under ``--out`` (refused if present, unless ``--force``): ``traces/<policy>.parquet``
(when rolling out), ``sensitivity.json`` (every number), ``sensitivity.md`` (one table per data
set and centre) and ``sensitivity.html`` (a plotly figure: each metric against each swept
parameter, one line per data set and centre).

Cost at one thread (measured with 50 tasks per level, two policies: 200 episodes, 24.7k
assistant tokens): the rollout about 2.7 minutes, the sweep (216 settings) 30 s, the Qwen3
training about 7-8 CPU minutes for 300 steps (33 minutes of wall time on a machine shared with
four other jobs). ``--qwen-steps 0`` keeps only the random-init set; ``--no-qwen`` skips both.

Run (the shipped agent; ``--model DIR`` for another)::

    AGENTROPY_HOME=/tmp/home PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/sensitivity.py \\
        run --out runs/sens --episodes 50 --levels 2,3 --faults all --qwen-steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.analysis.breath import KINDS, BreathConfig, analyze_triggers
from agentropy.trace import Episode, TraceTable

#: Swept values per parameter (BreathConfig field -> values), one parameter at a time.
SWEEP: dict[str, tuple[Any, ...]] = {
    "eps": (0.01, 0.02, 0.05, 0.1),
    "window": (16, 32, 64, 128),
    "k": (4, 8, 16, 32),
    "band": (1.0, 1.25, 1.5, 2.0),
    "horizon": (32, 64, 128, 256),
}
#: Baseline variants ("<statistic>/<tokens>"): the "baseline" axis of the sweep.
BASELINES: tuple[str, ...] = ("median/all", "mean/all", "median/text", "mean/text")
#: DESIGN.md's baseline.
DEFAULT_CENTER = "median/all"
JSON_NAME, MD_NAME, HTML_NAME = "sensitivity.json", "sensitivity.md", "sensitivity.html"
#: Bootstrap resamples of each median's interval (whole episodes are resampled).
N_BOOT = 1000
#: Metrics drawn in the figure (key in a setting's record, axis title).
FIGURE_METRICS: tuple[tuple[str, str], ...] = (
    ("floor_share", "failed triggers at floor"),
    ("spike_failed_median", "median S, failed"),
    ("auc", "AUC failed vs ok"),
    ("eruption_share_failed", "eruption share, failed"),
    ("flip_share", "verdict flips vs centre"),
)


def baseline_config(name: str, base: BreathConfig = BreathConfig()) -> BreathConfig:
    """``base`` with the baseline variant ``"<statistic>/<tokens>"`` (e.g. ``mean/text``)."""
    stat, _, tokens = name.partition("/")
    return dataclasses.replace(base, baseline_stat=stat, baseline_tokens=tokens)  # type: ignore[arg-type]


def settings(center: str) -> list[tuple[str, Any, BreathConfig]]:
    """``(parameter, value, config)`` of the one-at-a-time sweep around baseline ``center``
    (everything else at DESIGN.md's defaults); the centre itself appears once per axis."""
    base = baseline_config(center)
    out: list[tuple[str, Any, BreathConfig]] = [
        ("baseline", b, baseline_config(b, base)) for b in BASELINES
    ]
    for name, values in SWEEP.items():
        out += [(name, v, dataclasses.replace(base, **{name: v})) for v in values]
    return out


def _weighted_median_draws(
    values: np.ndarray, group: np.ndarray, n_groups: int, rng: np.random.Generator, n_boot: int
) -> np.ndarray:
    """(n_boot,) medians of cluster-bootstrap resamples: each draw picks ``n_groups`` groups with
    replacement and takes the (lower) median of their values, each value weighted by how often
    its group was picked."""
    order = np.argsort(values)
    v, g = values[order], group[order]
    picks = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)  # (B, G)
    w = picks[:, g].astype(np.float64)  # (B, M)
    cum = np.cumsum(w, axis=1)
    idx = (cum >= 0.5 * cum[:, -1:]).argmax(axis=1)
    out = v[idx]
    out[cum[:, -1] == 0] = np.nan
    return out


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U / (n1 n0))."""
    if pos.size == 0 or neg.size == 0:
        return None
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (pos.size * neg.size))


def _num(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def setting_metrics(
    table: TraceTable,
    config: BreathConfig,
    *,
    center_verdict: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
    """The record of one setting on one data set (module docstring lists the metrics) and the
    per-trigger verdict array (M,) (-1 no eruption, else a :data:`KINDS` index), which the other
    settings of the same axis are compared with (``center_verdict``)."""
    from agentropy.analysis.recovery import SPIKE_BIN_LABELS, percentile_interval, recovery_stats

    trig = analyze_triggers(table, config)
    spike = trig.stats.spike_ratio
    failed = trig.failed
    ok = trig.status == 0
    has = ~np.isnan(spike)
    f_sel, ok_sel = failed & has, ok & has
    verdict = np.where(trig.eruption, trig.kind, -1).astype(np.int64)
    rng = np.random.default_rng(seed)
    ci: list[float | None] = [None, None]
    if f_sel.any():
        draws = _weighted_median_draws(spike[f_sel], trig.ep[f_sel], table.n_episodes, rng, n_boot)
        ci = percentile_interval(draws, 0.95)
    n_failed = int(failed.sum())
    er_f = trig.eruption & failed
    kinds = {k: int((er_f & (trig.kind == i)).sum()) for i, k in enumerate(KINDS)}
    n_er = int(er_f.sum())

    # Episode-level recovery by the spike bin of the first failed trigger with a spike ratio
    # (the unit of ``agentropy analyze``'s recovery table).
    first = np.full(table.n_episodes, np.nan)
    cand = np.flatnonzero(f_sel)
    uniq, idx = np.unique(trig.ep[cand], return_index=True)
    first[uniq] = spike[cand[idx]]
    has_failure = np.bincount(trig.ep[failed], minlength=table.n_episodes) > 0
    unit = has_failure & (table.success >= 0)
    rec = recovery_stats(first[unit], table.success[unit] == 1, n_boot=n_boot, seed=seed)
    record = {
        "failed_triggers": n_failed,
        "ok_triggers": int(ok.sum()),
        "floor_share": _num((trig.stats.baseline[failed] <= config.eps).mean())
        if n_failed
        else None,
        "baseline_failed_median": _num(np.median(trig.stats.baseline[failed]))
        if n_failed
        else None,
        "spike_failed_median": _num(np.median(spike[f_sel])) if f_sel.any() else None,
        "spike_failed_ci": ci,
        "spike_ok_median": _num(np.median(spike[ok_sel])) if ok_sel.any() else None,
        "auc": _auc(spike[f_sel], spike[ok_sel]),
        "eruptions_failed": n_er,
        "eruptions_all": int(trig.eruption.sum()),
        "eruption_share_failed": n_er / n_failed if n_failed else None,
        "eruption_share_ok": _num(trig.eruption[ok].mean()) if ok.any() else None,
        "kinds_failed": kinds,
        "contracted_share": _num(trig.stats.contracted[er_f].mean()) if n_er else None,
        "flip_share": None
        if center_verdict is None or not n_failed
        else float((verdict[failed] != center_verdict[failed]).mean()),
        "recovery_by_spike_bin": {
            b: {"rate": rec["by_spike_bin"][b]["rate"], "n": rec["by_spike_bin"][b]["n"]}
            for b in SPIKE_BIN_LABELS
        },
    }
    return record, verdict


def study(
    datasets: dict[str, TraceTable],
    centers: Sequence[str],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    advance: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``{dataset: {center: [record + {parameter, value, is_center}]}}`` over every setting."""
    out: dict[str, Any] = {}
    for name, table in datasets.items():
        out[name] = {}
        for center in centers:
            rows = []
            center_cfg = baseline_config(center)
            _, center_verdict = setting_metrics(table, center_cfg, n_boot=n_boot, seed=seed)
            for param, value, cfg in settings(center):
                rec, _ = setting_metrics(
                    table, cfg, center_verdict=center_verdict, n_boot=n_boot, seed=seed
                )
                rec = {"parameter": param, "value": value, "is_center": cfg == center_cfg, **rec}
                rows.append(rec)
                if advance is not None:
                    advance()
            out[name][center] = rows
    return out


# ------------------------------------------------------------------------------------ data


def rollout(args: argparse.Namespace, out: Path, progress: bool) -> tuple[list[Episode], Any]:
    """The shipped (or ``--model``) agent on held-out tasks, each policy on the same tasks and
    faults, recording token inputs for re-scoring; stores under ``<out>/traces``. Returns the
    episodes and the tokenizer."""
    from agentropy.agent.config import RunnerConfig
    from agentropy.agent.loading import load_model
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
    from agentropy.pipelines.compare import EvalConfig, run_eval
    from agentropy.trace import read_traces

    model, tokenizer = load_model(args.model)
    result = run_eval(
        model,
        tokenizer,
        config=EvalConfig(
            policies=tuple(args.policies), levels=tuple(args.levels), episodes=args.episodes,
            seed=args.seed,
        ),
        world=ToolWorld(ToolWorldConfig(faults=args.faults)),
        runner_config=RunnerConfig(record_inputs=True),
        out_dir=out,
        progress=progress,
        force=args.force,
    )  # fmt: skip
    return read_traces(list(result["traces"].values())), tokenizer


def build_qwen3(tokenizer: Any, *, seed: int = 0) -> Any:
    """A ``Qwen3ForCausalLM`` at the shipped agent's size (hidden 128, 3 layers, 8 heads, MLP
    384) over ``tokenizer``, random init (seeded), in eval mode."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=4, head_dim=16, max_position_embeddings=4096,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    return Qwen3ForCausalLM(cfg).eval()


def finetune(
    model: Any,
    tokenizer: Any,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 3e-3,
    max_length: int = 768,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, Any]:
    """Train ``model`` in place on expert ToolWorld transcripts (train split, levels 1-3, loss on
    assistant tokens only) for ``steps`` AdamW steps (linear warm-up over 10%, then cosine to
    10%); returns ``{steps, seconds, losses (every step), transcripts}``."""
    import math
    import random

    import torch

    from agentropy.agent.tiny.template import assistant_labels
    from agentropy.env.expert import expert_messages
    from agentropy.env.toolworld import ToolWorld

    world = ToolWorld()
    tools = world.tool_schemas()
    rng = random.Random(seed)
    n_per_level = max(1, (steps * batch_size) // 3)
    examples = [
        assistant_labels(tokenizer, expert_messages(world, task, rng), tools=tools,
                         max_length=max_length)
        for level in (1, 2, 3)
        for task in world.tasks(split="train", level=level, n=n_per_level, seed=seed)
    ]  # fmt: skip
    examples = [e for e in examples if any(x != -100 for x in e[1])]
    pad = tokenizer.pad_token_id
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, steps // 10)
    losses: list[float] = []
    t0 = time.perf_counter()
    order = list(range(len(examples)))
    rng.shuffle(order)
    for step in range(steps):
        batch = [examples[order[(step * batch_size + j) % len(order)]] for j in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)  # (B, T)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)  # (B, T)
        att = torch.zeros((batch_size, width), dtype=torch.long)
        for r, (x, y) in enumerate(batch):
            ids[r, : len(x)], labels[r, : len(y)], att[r, : len(x)] = (
                torch.tensor(x), torch.tensor(y), 1,
            )  # fmt: skip
        factor = (step + 1) / warm if step < warm else (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        )  # fmt: skip
        for g in opt.param_groups:
            g["lr"] = lr * factor
        loss = model(input_ids=ids, attention_mask=att, labels=labels, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.item()))
        if progress is not None:
            progress(losses[-1])
    model.eval()
    return {"steps": steps, "seconds": time.perf_counter() - t0, "losses": losses,
            "transcripts": len(examples)}  # fmt: skip


def rescore(model: Any, tokenizer: Any, episodes: list[Episode]) -> list[Episode]:
    """The episodes' recorded token sequences scored by ``model`` (entropy at T = 1)."""
    import torch

    from agentropy.agent.score import rescore_episodes

    with torch.inference_mode():
        return list(rescore_episodes(model, tokenizer, episodes))


def entropy_profile(table: TraceTable) -> dict[str, Any]:
    """Per phase: tokens, mean entropy and the share of tokens below 0.05 nats (the default
    floor): how peaked each data set's distributions are."""
    from agentropy.trace import PHASES

    out = {}
    for i, p in enumerate(PHASES):
        x = table.entropy[table.phase == i]
        out[p] = {
            "tokens": int(x.size),
            "mean": _num(x.mean()) if x.size else None,
            "below_0.05": _num((x < 0.05).mean()) if x.size else None,
        }
    return out


# ------------------------------------------------------------------------------------ outputs


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    """One table per data set and centre; the profile of each data set above its tables."""
    lines = ["# Breath-analyzer sensitivity", ""]
    for name, by_center in result["study"].items():
        ds = result["datasets"][name]
        lines += [f"## {name}", "", ds["description"], ""]
        prof = ds["profile"]
        lines.append(
            "Entropy by phase (mean nats, share < 0.05): "
            + "; ".join(
                f"{p} {_fmt(v['mean'])}, {_fmt(v['below_0.05'], '.0%')} ({v['tokens']})"
                for p, v in prof.items()
                if v["tokens"]
            )
        )
        lines.append("")
        for center, rows in by_center.items():
            lines += [
                f"### centre {center} (others at DESIGN.md defaults)",
                "",
                "| parameter | value | floor | median S failed [95% CI] | median S ok | AUC | "
                "eruptions failed (share) | share ok | p/n/d | contracted | flips | "
                "recovery by first-failure spike bin |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                ci = r["spike_failed_ci"]
                k = r["kinds_failed"]
                bins = ", ".join(
                    f"{b}: {_fmt(v['rate'], '.0%')} ({v['n']})"
                    for b, v in r["recovery_by_spike_bin"].items()
                    if v["n"]
                )
                mark = " *" if r["is_center"] else ""
                lines.append(
                    f"| {r['parameter']} | {r['value']}{mark} | {_fmt(r['floor_share'], '.0%')} | "
                    f"{_fmt(r['spike_failed_median'])} [{_fmt(ci[0])}, {_fmt(ci[1])}] | "
                    f"{_fmt(r['spike_ok_median'])} | {_fmt(r['auc'])} | "
                    f"{r['eruptions_failed']} ({_fmt(r['eruption_share_failed'], '.0%')}) | "
                    f"{_fmt(r['eruption_share_ok'], '.0%')} | "
                    f"{k['productive']}/{k['neutral']}/{k['divergent']} | "
                    f"{_fmt(r['contracted_share'], '.0%')} | {_fmt(r['flip_share'], '.0%')} | "
                    f"{bins} |"
                )
            lines.append("")
    lines.append(
        "`*` = the centre setting. floor = failed triggers whose baseline is at eps; AUC = "
        "P(S after a failure > S after a success); flips = failed triggers whose verdict (none/"
        "productive/neutral/divergent) differs from the centre's; p/n/d = kinds of eruptions "
        "after failures."
    )
    return "\n".join(lines) + "\n"


def figure_html(result: dict[str, Any]) -> str:
    """A plotly figure: rows = :data:`FIGURE_METRICS`, columns = swept parameters, one line per
    data set and centre (categorical x for the baseline axis)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    params = ["baseline", *SWEEP]
    fig = make_subplots(
        rows=len(FIGURE_METRICS), cols=len(params), shared_yaxes="rows",
        column_titles=params, row_titles=[t for _, t in FIGURE_METRICS],
        horizontal_spacing=0.02, vertical_spacing=0.04,
    )  # fmt: skip
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    series = [(d, c) for d, by in result["study"].items() for c in by]
    for s, (ds, center) in enumerate(series):
        rows = result["study"][ds][center]
        for j, param in enumerate(params):
            sel = [r for r in rows if r["parameter"] == param]
            x = [str(r["value"]) for r in sel]
            for i, (key, _) in enumerate(FIGURE_METRICS):
                fig.add_trace(
                    go.Scatter(
                        x=x, y=[r[key] for r in sel], mode="lines+markers",
                        name=f"{ds} · {center}", legendgroup=f"{ds}·{center}",
                        showlegend=(i == 0 and j == 0),
                        line={"color": palette[s % len(palette)]},
                    ),
                    row=i + 1, col=j + 1,
                )  # fmt: skip
    fig.update_layout(
        title="Breath analyzer: one parameter at a time (lines: data set · centre baseline)",
        height=220 * len(FIGURE_METRICS), width=260 * len(params), template="plotly_white",
    )  # fmt: skip
    return str(fig.to_html(include_plotlyjs=True, full_html=True))


# ------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Roll out (or read ``--traces``), score under Qwen3 models, sweep, write the outputs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from agentropy.outputs import atomic_write_text, check_output

    out = Path(args.out)
    for name in (JSON_NAME, MD_NAME, HTML_NAME):
        check_output(out / name, force=args.force)  # before any work, not after it
    t0 = time.perf_counter()
    progress = not args.no_progress
    if args.traces:
        from agentropy.agent.loading import load_model
        from agentropy.trace import read_traces

        episodes = read_traces(args.traces)
        tokenizer = load_model(args.model)[1] if args.qwen else None
        source = f"stores {', '.join(args.traces)}"
    else:
        episodes, tokenizer = rollout(args, out, progress)
        source = (
            f"{args.model or 'the shipped agent'}, policies {','.join(args.policies)}, levels "
            f"{','.join(map(str, args.levels))}, faults {args.faults}, {args.episodes} held-out "
            f"tasks per level, seed {args.seed}"
        )
    timings = {"rollout_s": time.perf_counter() - t0}
    datasets: dict[str, TraceTable] = {"testbed": TraceTable.from_episodes(episodes)}
    described = {"testbed": f"Testbed traces: {source}; {len(episodes)} episodes."}
    training: dict[str, Any] | None = None
    if args.qwen:
        t1 = time.perf_counter()
        model = build_qwen3(tokenizer, seed=args.seed)
        n_params = sum(p.numel() for p in model.parameters())
        datasets["qwen3-random"] = TraceTable.from_episodes(rescore(model, tokenizer, episodes))
        described["qwen3-random"] = (
            f"The testbed's token sequences re-scored by a randomly initialised Qwen3ForCausalLM "
            f"({n_params:,} parameters, built from a config: not Qwen weights). Near-uniform "
            "distributions: a plumbing and limit check, not a model."
        )
        if args.qwen_steps > 0:
            with Progress(
                TextColumn("[bold]qwen3 sft"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), disable=not progress,
            ) as bar:  # fmt: skip
                task = bar.add_task("sft", total=args.qwen_steps, loss="-")
                done = [0]

                def step(loss: float) -> None:
                    bar.update(task, advance=1, loss=f"{loss:.3f}")
                    done[0] += 1
                    # A bar drawn to a log file shows nothing until it ends: print a line too.
                    if progress and not bar.console.is_terminal and done[0] % 50 == 0:
                        print(f"qwen3 sft step {done[0]}/{args.qwen_steps} loss {loss:.3f}",
                              flush=True)  # fmt: skip

                training = finetune(
                    model, tokenizer, steps=args.qwen_steps, seed=args.seed, progress=step
                )
            name = f"qwen3-sft{args.qwen_steps}"
            datasets[name] = TraceTable.from_episodes(rescore(model, tokenizer, episodes))
            last = training["losses"][-20:]
            described[name] = (
                f"The same re-scored by that Qwen3 after {args.qwen_steps} AdamW steps (batch 8) "
                f"on {training['transcripts']} expert ToolWorld transcripts (final loss "
                f"{np.mean(last):.2f} nats/token, {training['seconds']:.0f} s): an under-trained "
                "model of another architecture, not a pretrained Qwen."
            )
        timings["qwen_s"] = time.perf_counter() - t1

    centers = list(dict.fromkeys([DEFAULT_CENTER, *args.centers]))
    total = len(datasets) * len(centers) * len(settings(DEFAULT_CENTER))
    t2 = time.perf_counter()
    with Progress(
        TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), disable=not progress
    ) as bar:
        task = bar.add_task("sweep", total=total)
        swept = study(
            datasets, centers, n_boot=args.n_boot, seed=args.seed,
            advance=lambda: bar.update(task, advance=1),
        )  # fmt: skip
    timings["sweep_s"] = time.perf_counter() - t2
    result = {
        "config": {
            "defaults": dataclasses.asdict(BreathConfig()),
            "sweep": {"baseline": list(BASELINES), **{k: list(v) for k, v in SWEEP.items()}},
            "centers": centers,
            "n_boot": args.n_boot,
            "seed": args.seed,
        },
        "datasets": {
            n: {
                "description": described[n],
                "episodes": t.n_episodes,
                "tokens": t.n_tokens,
                "profile": entropy_profile(t),
            }
            for n, t in datasets.items()
        },
        "qwen3_training": _training_record(training),
        "study": swept,
        "timings_s": timings,
    }
    atomic_write_text(out / JSON_NAME, json.dumps(result, indent=2) + "\n", force=args.force)
    atomic_write_text(out / MD_NAME, markdown(result), force=args.force)
    atomic_write_text(out / HTML_NAME, figure_html(result), force=args.force)
    print(f"wrote {out / JSON_NAME}, {MD_NAME}, {HTML_NAME} ({time.perf_counter() - t0:.0f} s)")
    return result


def _training_record(training: dict[str, Any] | None) -> dict[str, Any] | None:
    """The SFT record without the per-step losses (first loss and the mean of the last 20)."""
    if training is None:
        return None
    losses = training["losses"]
    rest = {k: v for k, v in training.items() if k != "losses"}
    return {**rest, "loss_first": losses[0], "loss_last20": float(np.mean(losses[-20:]))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="roll out (or read --traces), score, sweep, write outputs")
    r.add_argument("--out", required=True)
    r.add_argument("--traces", nargs="*", default=None, help="trace stores/files to analyse "
                   "instead of rolling out (re-scoring under Qwen3 needs record_inputs)")  # fmt: skip
    r.add_argument("--model", default=None, help="agent directory (default: the shipped agent)")
    r.add_argument("--episodes", type=int, default=50, help="held-out tasks per level")
    r.add_argument("--levels", default="2,3")
    r.add_argument("--policies", default="greedy,phase")
    r.add_argument("--faults", default="all", choices=("seen", "novel", "all"))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--centers", default="", help=f"extra centre baselines among {BASELINES}")
    r.add_argument("--no-qwen", dest="qwen", action="store_false", help="skip the Qwen3 sets")
    r.add_argument("--qwen-steps", type=int, default=300, help="Qwen3 SFT steps (0: random only)")
    r.add_argument("--n-boot", type=int, default=N_BOOT)
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--force", action="store_true", help="replace an earlier run's outputs")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser()
    args = p.parse_args(argv)
    args.levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    args.centers = [x.strip() for x in args.centers.split(",") if x.strip()]
    unknown = sorted(set(args.centers) - set(BASELINES))
    if unknown:
        p.error(f"unknown centres {unknown}; choose from {', '.join(BASELINES)}")
    if args.qwen_steps < 0 or args.n_boot < 100 or args.episodes < 1:
        p.error("--qwen-steps must be >= 0, --n-boot >= 100, --episodes >= 1")
    return run(args)


if __name__ == "__main__":
    main()

"""Shared trace fixtures for the trace tests: deterministic episodes, comparisons, strategies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from agentropy.trace import (
    PHASES,
    TOOL_STATUSES,
    Episode,
    ToolCall,
    Turn,
)

MINIMAL = {
    "episode_id": "e1",
    "success": True,
    "turns": [
        {"role": "assistant", "entropy": [0.2, 0.1, 0.3]},
        {"role": "tool", "name": "lookup", "status": "error", "content": "upstream failure"},
        {"role": "assistant", "entropy": [1.4, 1.1, 0.6, 0.2]},
    ],
}

# Deterministic episode factory, shared with the killed-writer subprocess (exec'd there).
MAKE_EPISODE_SRC = """
import numpy as np
from agentropy.trace import Episode, ToolCall, Turn

def make_episode(i, n_tokens=64):
    rng = np.random.default_rng(i)
    turns = []
    for k in range(3):
        n = int(rng.integers(1, n_tokens))
        turns.append(Turn(
            role="assistant",
            entropy=rng.random(n, dtype=np.float32) * 3,
            token_ids=rng.integers(0, 50_000, n),
            logprob=-rng.random(n, dtype=np.float32),
            sampling_entropy=rng.random(n, dtype=np.float32),
            temperature=np.full(n, 0.7, dtype=np.float32),
            phase=rng.integers(0, 4, n).astype(np.int8),
            text=f"turn {k} of episode {i}",
        ))
        turns.append(Turn(role="tool", call=ToolCall("lookup", {"q": i, "k": k}),
                          status=("ok", "error", "unexpected")[(i + k) % 3],
                          content="x" * k, latency_s=0.01 * k))
    return Episode(episode_id=f"ep{i}", turns=turns, task_id=f"t{i % 7}", level=i % 4,
                   policy="phase", success=bool(i % 2), reward=float(i % 2),
                   fault_kinds=["transient"] * (i % 2), latency_s=1.5, meta={"i": i})
"""
_ns: dict = {}
exec(MAKE_EPISODE_SRC, _ns)
make_episode = _ns["make_episode"]


# ------------------------------------------------------------------------------------------
# helpers


def assert_turns_equal(a: Turn, b: Turn, where: str = "") -> None:
    for name in ("entropy", "token_ids", "logprob", "sampling_entropy", "temperature", "phase"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), f"{where}.{name}: {x!r} vs {y!r}"
        if x is not None:
            assert x.dtype == y.dtype, f"{where}.{name} dtype {x.dtype} vs {y.dtype}"
            assert np.array_equal(x, y, equal_nan=True), f"{where}.{name}: {x} vs {y}"
    for name in ("role", "text", "call", "status", "content", "latency_s", "wall_s", "meta"):
        assert getattr(a, name) == getattr(b, name), f"{where}.{name}"


def assert_episodes_equal(a: list[Episode], b: list[Episode]) -> None:
    assert [e.episode_id for e in a] == [e.episode_id for e in b]
    for x, y in zip(a, b, strict=True):
        for name in (
            "task_id",
            "level",
            "step",
            "policy",
            "success",
            "reward",
            "fault_kinds",
            "latency_s",
            "meta",
        ):
            assert getattr(x, name) == getattr(y, name), f"{x.episode_id}.{name}"
        assert len(x.turns) == len(y.turns)
        for i, (s, t) in enumerate(zip(x.turns, y.turns, strict=True)):
            assert_turns_equal(s, t, f"{x.episode_id}.turns[{i}]")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# hypothesis strategies

#: Per-token floats within the data model's value rules (entropies and T >= 0, logprob <= 0).
nonneg_f32 = st.floats(min_value=0, width=32, allow_nan=False, allow_infinity=False)
nonpos_f32 = st.floats(max_value=0, width=32, allow_nan=False, allow_infinity=False)
TOKEN_FLOATS = {
    "entropy": nonneg_f32,
    "logprob": nonpos_f32,
    "sampling_entropy": nonneg_f32,
    "temperature": nonneg_f32,
}
seconds = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5)
meta = st.dictionaries(st.text(max_size=5), json_scalar, max_size=3)


@st.composite
def assistant_turns(draw):
    n = draw(st.integers(1, 4))
    values = {name: st.lists(x, min_size=n, max_size=n) for name, x in TOKEN_FLOATS.items()}
    arrays = {"entropy": np.array(draw(values["entropy"]), np.float32)}
    for name in ("logprob", "sampling_entropy", "temperature"):
        if draw(st.booleans()):
            arrays[name] = np.array(draw(values[name]), np.float32)
    if draw(st.booleans()):
        ids = draw(st.lists(st.integers(0, 2**63 - 1), min_size=n, max_size=n))
        arrays["token_ids"] = np.array(ids, dtype=np.int64)
    if draw(st.booleans()):
        codes = draw(st.lists(st.integers(0, len(PHASES) - 1), min_size=n, max_size=n))
        arrays["phase"] = np.array(codes, dtype=np.int8)
    return Turn(
        role="assistant",
        text=draw(st.none() | st.text(max_size=10)),
        wall_s=draw(seconds),
        meta=draw(meta),
        **arrays,
    )


@st.composite
def tool_turns(draw):
    call = draw(
        st.none()
        | st.builds(
            ToolCall,
            st.text(min_size=1, max_size=8),
            st.dictionaries(st.text(max_size=4), json_scalar, max_size=3),
        )
    )
    return Turn(
        role="tool",
        call=call,
        status=draw(st.none() | st.sampled_from(TOOL_STATUSES)),
        content=draw(st.none() | st.text(max_size=10)),
        latency_s=draw(seconds),
        wall_s=draw(seconds),
        meta=draw(meta),
    )


@st.composite
def episode_lists(draw):
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        out.append(
            Episode(
                episode_id=f"e{i}-" + draw(st.text(max_size=4)),
                turns=draw(st.lists(assistant_turns() | tool_turns(), min_size=1, max_size=4)),
                task_id=draw(st.none() | st.text(max_size=5)),
                level=draw(st.none() | st.integers(0, 3)),
                step=draw(st.none() | st.integers(0, 2**62)),
                policy=draw(st.none() | st.text(max_size=5)),
                success=draw(st.none() | st.booleans()),
                reward=draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
                fault_kinds=draw(st.lists(st.text(max_size=5), max_size=3)),
                latency_s=draw(seconds),
                meta=draw(meta),
            )
        )
    return out


#: Episode lists are nested and large, so some draws overrun hypothesis's buffer and count as
#: filtered; on an unlucky seed the health check then failed a correct round trip (CI, session 4).
ROUND_TRIP = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)

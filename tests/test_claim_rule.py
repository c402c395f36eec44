"""The pre-registered verdict rule: examples whose verdict is known, and properties (hypothesis)
that hold for every spec and interval."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.report.claim_rule import VERDICTS, ClaimSpec, Measurement, judge

SPIKE = ClaimSpec(
    id="spike",
    statement="Entropy spikes 3-4x after a failure.",
    metric="median spike ratio",
    null=1.0,
    direction="greater",
    min_effect=2.0,
    rationale="eruption threshold",
    experiment="experiments/x.toml",
    unit="x",
    min_n=10,
)
COST = ClaimSpec(
    id="cheap",
    statement="Forcing low entropy saves tokens.",
    metric="token ratio",
    null=1.0,
    direction="less",
    min_effect=0.8,
    rationale="a fifth fewer tokens",
    experiment="experiments/x.toml",
    unit="x",
)


@pytest.mark.parametrize(
    ("spec", "ci", "n", "verdict", "words"),
    [
        (SPIKE, (2.5, 3.5), 50, "supported", "lies entirely above"),
        # The example: a tiny but tight effect excludes the null and is still refuted.
        (SPIKE, (1.005, 1.015), 10_000, "refuted", "a real effect"),
        (SPIKE, (0.5, 1.5), 50, "refuted", "no effect in the predicted direction"),
        (SPIKE, (1.5, 2.5), 50, "inconclusive", "contains the minimum effect"),
        (SPIKE, (2.0, 3.0), 50, "inconclusive", "contains"),  # touching is not beyond
        (SPIKE, (2.5, None), 50, "supported", "+inf"),  # None: unbounded above
        (SPIKE, (None, 1.9), 50, "refuted", "-inf"),
        (SPIKE, (None, None), 50, "inconclusive", "contains"),
        (SPIKE, (2.5, 3.5), 9, "inconclusive", "below the minimum of 10"),
        (COST, (0.5, 0.7), 50, "supported", "lies entirely below"),
        (COST, (0.9, 1.3), 50, "refuted", "no effect"),
        (COST, (0.85, 0.95), 50, "refuted", "a real effect"),
    ],
)
def test_known_verdicts(spec: ClaimSpec, ci: tuple, n: int, verdict: str, words: str) -> None:
    lo = ci[0] if ci[0] is not None else -5.0
    hi = ci[1] if ci[1] is not None else 5.0
    j = judge(spec, Measurement(value=(lo + hi) / 2, ci=ci, n=n))
    assert j.verdict == verdict
    assert words in j.reason


def test_not_measured_and_no_interval() -> None:
    j = judge(SPIKE, Measurement(missing="no task planned a novel fault"))
    assert (j.verdict, j.reason) == ("not measured", "no task planned a novel fault")
    assert judge(SPIKE, Measurement()).verdict == "not measured"
    j = judge(SPIKE, Measurement(value=3.0, ci=None, n=1))
    assert j.verdict == "inconclusive" and "no interval" in j.reason


def test_caveat_is_part_of_the_reason_and_the_json() -> None:
    j = judge(SPIKE, Measurement(value=3.0, ci=(2.5, 3.5), n=40, caveat="baselines at eps"))
    assert j.verdict == "supported" and j.reason.endswith("Caveat: baselines at eps")
    d = j.to_dict()
    assert d["spec"]["threshold"] == ">= 2.00x" and d["spec"]["null_hypothesis"].endswith("1.00x")
    assert d["measurement"]["ci"] == [2.5, 3.5] and d["verdict"] == "supported"


def test_spec_and_measurement_validation() -> None:
    base = dict(id="k", statement="s", metric="m", null=0.0, rationale="r", experiment="e.toml")
    with pytest.raises(ValueError, match="must lie above the null"):
        ClaimSpec(**base, direction="greater", min_effect=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must lie below the null"):
        ClaimSpec(**base, direction="less", min_effect=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        ClaimSpec(**base, direction="up", min_effect=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unit"):
        ClaimSpec(**base, direction="greater", min_effect=0.1, unit="km")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        ClaimSpec(**base, direction="greater", min_effect=math.inf)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceeds"):
        Measurement(value=1.0, ci=(2.0, 1.0), n=5)
    with pytest.raises(ValueError, match="finite"):
        Measurement(value=math.nan, ci=(0.0, 1.0), n=5)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_x = st.floats(-100, 100, allow_nan=False)
_bound = st.one_of(st.none(), _x)


@st.composite
def _case(draw: st.DrawFn) -> tuple[ClaimSpec, Measurement]:
    direction = draw(st.sampled_from(["greater", "less"]))
    null = draw(_x)
    gap = draw(st.floats(1e-3, 50))
    min_effect = null + gap if direction == "greater" else null - gap
    spec = ClaimSpec(
        id="p", statement="s", metric="m", null=null, direction=direction,
        min_effect=min_effect, rationale="r", experiment="e.toml",
        min_n=draw(st.integers(2, 20)),
    )  # fmt: skip
    lo, hi = draw(_bound), draw(_bound)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    value = draw(st.one_of(st.none(), _x))
    ci = draw(st.sampled_from([None, (lo, hi)]))
    return spec, Measurement(value=value, ci=ci, n=draw(st.integers(0, 40)))


def _on_claim_side(spec: ClaimSpec, x: float) -> bool:
    return x > spec.min_effect if spec.direction == "greater" else x < spec.min_effect


def _short_side(spec: ClaimSpec, x: float) -> bool:
    return x < spec.min_effect if spec.direction == "greater" else x > spec.min_effect


def _ends(m: Measurement) -> tuple[float, float]:
    assert m.ci is not None
    lo = -math.inf if m.ci[0] is None else m.ci[0]
    hi = math.inf if m.ci[1] is None else m.ci[1]
    return lo, hi


@settings(max_examples=400, deadline=None)
@given(_case())
def test_supported_means_the_whole_ci_is_beyond_the_minimum(case: tuple) -> None:
    spec, m = case
    j = judge(spec, m)
    assert j.verdict in VERDICTS and j.reason
    if j.verdict == "supported":
        lo, hi = _ends(m)
        assert _on_claim_side(spec, lo) and _on_claim_side(spec, hi)
        assert m.n >= spec.min_n and m.value is not None
    if j.verdict == "refuted":
        lo, hi = _ends(m)
        assert _short_side(spec, lo) and _short_side(spec, hi)
    if m.value is None:
        assert j.verdict == "not measured"


@settings(max_examples=300, deadline=None)
@given(_case())
def test_the_rule_is_mirror_symmetric(case: tuple) -> None:
    """Negating every number and flipping the direction gives the same verdict."""
    spec, m = case
    flipped = ClaimSpec(
        id=spec.id, statement=spec.statement, metric=spec.metric, null=-spec.null,
        direction="less" if spec.direction == "greater" else "greater",
        min_effect=-spec.min_effect, rationale=spec.rationale, experiment=spec.experiment,
        min_n=spec.min_n,
    )  # fmt: skip
    ci = None
    if m.ci is not None:
        lo, hi = m.ci
        ci = (None if hi is None else -hi, None if lo is None else -lo)
    value = None if m.value is None else -m.value
    mirrored = Measurement(value=value, ci=ci, n=m.n)
    assert judge(flipped, mirrored).verdict == judge(spec, m).verdict


@settings(max_examples=300, deadline=None)
@given(_case(), st.floats(0, 50), st.floats(0, 50))
def test_widening_the_ci_never_makes_a_verdict_stronger(
    case: tuple, wider_lo: float, wider_hi: float
) -> None:
    """A wider interval (less information) can only move a verdict to inconclusive."""
    spec, m = case
    if m.ci is None:
        return
    lo, hi = m.ci
    wide = Measurement(
        value=m.value, n=m.n,
        ci=(None if lo is None else lo - wider_lo, None if hi is None else hi + wider_hi),
    )  # fmt: skip
    before, after = judge(spec, m).verdict, judge(spec, wide).verdict
    assert after == before or after == "inconclusive"


@settings(max_examples=300, deadline=None)
@given(_case(), st.floats(0, 50))
def test_shifting_toward_the_claim_never_hurts_it(case: tuple, shift: float) -> None:
    """Moving the whole interval further in the predicted direction never lowers the verdict
    (refuted < inconclusive < supported)."""
    spec, m = case
    if m.ci is None or m.value is None:
        return
    d = shift if spec.direction == "greater" else -shift
    lo, hi = m.ci
    moved = Measurement(
        value=m.value + d, n=m.n,
        ci=(None if lo is None else lo + d, None if hi is None else hi + d),
    )  # fmt: skip
    rank = {"refuted": 0, "inconclusive": 1, "supported": 2}
    assert rank[judge(spec, moved).verdict] >= rank[judge(spec, m).verdict]

"""Pre-registered claims and the one rule that turns a measurement into a verdict.

A claim is stated *before* the data are seen (:class:`ClaimSpec`): the essay's sentence, the
metric that tests it, the null value (no effect), the direction the essay predicts, and the
**minimum effect that counts** -- the smallest value, on the predicted side, that would make the
essay's sentence true in a sense worth writing down. A CI that excludes the null is not enough:
a 1.01x spike measured on a million triggers excludes 1.0 but says nothing about "a 3-4x spike".

The rule (:func:`judge`, a pure function of the spec and a :class:`Measurement`), for
``direction="greater"`` (mirrored for ``less``):

- **supported**: the whole CI lies beyond the minimum effect (``lo > min_effect``);
- **refuted**: the whole CI lies short of it (``hi < min_effect``): the effect is clearly smaller
  than the minimum, or opposite; the reason says whether the CI still excludes the null (a real
  but too small effect) or not;
- **inconclusive**: the CI contains the minimum effect (touching it counts: a bound at exactly
  the minimum does not show the effect is beyond it), there is no CI (fewer than 2 units) or
  fewer units than the spec's ``min_n``;
- **not measured**: the experiment gave no data for it (no file, an empty bin, an undefined
  ratio); the measurement's ``missing`` says why.

A missing CI bound (None: an infinite bootstrap quantile) is unbounded on its side. Every
verdict carries the numbers and a one-sentence reason, so a reader can check the rule by eye.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DIRECTIONS",
    "UNITS",
    "VERDICTS",
    "ClaimSpec",
    "Direction",
    "Judgement",
    "Measurement",
    "Verdict",
    "format_ci",
    "format_value",
    "judge",
]

Verdict = Literal["supported", "refuted", "inconclusive", "not measured"]
#: Every verdict :func:`judge` can give, from strongest for the claim to no data.
VERDICTS: tuple[str, ...] = ("supported", "refuted", "inconclusive", "not measured")
Direction = Literal["greater", "less"]
DIRECTIONS: tuple[str, ...] = ("greater", "less")
#: Display units: ``x`` (ratio), ``%`` (relative change), ``pp`` (difference of rates,
#: percentage points), ``num`` (signed plain number).
UNITS: tuple[str, ...] = ("x", "%", "pp", "num")


def format_value(value: float | None, unit: str) -> str:
    """Display a measurement or CI bound (``x``: ``2.31x``, ``%``: ``+22.0%``, ``pp``: ``+5.0 pp``,
    ``num``: ``+0.123``)."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{100 * value:+.1f}%"
    if unit == "pp":
        return f"{100 * value:+.1f} pp"
    return f"{value:+.3f}"


def format_ci(ci: Sequence[float | None] | None, unit: str) -> str:
    """``[lo, hi]`` with unbounded sides shown as ``-inf`` / ``+inf``."""
    if ci is None:
        return "-"
    lo = "-inf" if ci[0] is None else format_value(ci[0], unit)
    hi = "+inf" if ci[1] is None else format_value(ci[1], unit)
    return f"[{lo}, {hi}]"


def _finite(x: float, name: str) -> None:
    if not (isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)):
        raise ValueError(f"{name} must be a finite number, got {x!r}")


@dataclass(frozen=True, slots=True)
class ClaimSpec:
    """One claim, stated before the experiment is run (module docstring gives the rule)."""

    id: str
    """Stable identifier, e.g. ``recovery_high_vs_low``."""
    statement: str
    """The essay's sentence, as the essay puts it."""
    metric: str
    """What is measured, with its unit and the comparison (which arms, which unit of analysis)."""
    null: float
    """Value of the metric when there is no effect (1.0 for a ratio, 0.0 for a difference)."""
    direction: Direction
    """The side of ``null`` the essay predicts."""
    min_effect: float
    """Smallest value on the predicted side that counts as the essay's effect."""
    rationale: str
    """Why ``min_effect`` is where it is (written before the data, shown with the verdict)."""
    experiment: str
    """Config file that reproduces the measurement (``agentropy experiment --config FILE``),
    relative to the repository root."""
    unit: str = "num"
    """Display unit of the metric (:data:`agentropy.report.claims.UNITS`)."""
    min_n: int = 2
    """Fewest units (tasks, episodes, eruptions; the smallest group) a verdict needs."""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        _finite(self.null, "null")
        _finite(self.min_effect, "min_effect")
        up = self.direction == "greater"
        if not (self.min_effect > self.null if up else self.min_effect < self.null):
            side = "above" if up else "below"
            raise ValueError(
                f"claim {self.id!r}: min_effect {self.min_effect:g} must lie {side} the null "
                f"{self.null:g} (direction {self.direction!r}); a minimum effect at the null "
                "would count any significant effect, however small"
            )
        if self.min_n < 2:
            raise ValueError(f"min_n must be >= 2 (an interval needs two units), got {self.min_n}")

    @property
    def null_hypothesis(self) -> str:
        """The null in words: ``<metric> = <null>``."""
        return f"{self.metric} = {format_value(self.null, self.unit)}"

    @property
    def threshold(self) -> str:
        """The claim region in words, e.g. ``>= 2.00x``."""
        side = ">=" if self.direction == "greater" else "<="
        return f"{side} {format_value(self.min_effect, self.unit)}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return {
            "id": self.id,
            "statement": self.statement,
            "metric": self.metric,
            "null": self.null,
            "null_hypothesis": self.null_hypothesis,
            "direction": self.direction,
            "min_effect": self.min_effect,
            "threshold": self.threshold,
            "rationale": self.rationale,
            "experiment": self.experiment,
            "unit": self.unit,
            "min_n": self.min_n,
        }


@dataclass(frozen=True, slots=True)
class Measurement:
    """What an experiment measured for one claim (or why it could not)."""

    value: float | None = None
    """Point estimate (None: not measured)."""
    ci: tuple[float | None, float | None] | None = None
    """95 % interval ``(lo, hi)``; a None bound is unbounded on its side; None: no interval."""
    n: int = 0
    """Units behind the estimate (the smallest group for comparisons)."""
    detail: str = ""
    """Units per group, e.g. ``phase 40, forced-low 40 tasks``."""
    missing: str = ""
    """Why there is no measurement (makes the verdict ``not measured``)."""
    caveat: str = ""
    """What limits the reading even when the rule gives a verdict (e.g. baselines at the floor)."""

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if self.value is not None:
            _finite(self.value, "value")
        if self.ci is not None:
            if len(self.ci) != 2:
                raise ValueError(f"ci must be (lo, hi), got {self.ci!r}")
            lo, hi = self.ci
            for b in (lo, hi):
                if b is not None:
                    _finite(b, "a CI bound")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"ci lower bound {lo} exceeds upper bound {hi}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return {
            "value": self.value,
            "ci": None if self.ci is None else list(self.ci),
            "n": self.n,
            "detail": self.detail,
            "missing": self.missing,
            "caveat": self.caveat,
        }


@dataclass(frozen=True, slots=True)
class Judgement:
    """A verdict with the spec and numbers behind it and the reason, in one sentence."""

    spec: ClaimSpec
    measurement: Measurement
    verdict: Verdict
    reason: str
    scope: str = ""
    """Which part of the data the row covers (e.g. a fault class); empty for the whole."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view (spec and measurement nested)."""
        return {
            "id": self.spec.id,
            "scope": self.scope,
            "verdict": self.verdict,
            "reason": self.reason,
            "spec": self.spec.to_dict(),
            "measurement": self.measurement.to_dict(),
        }


def judge(spec: ClaimSpec, m: Measurement, *, scope: str = "") -> Judgement:
    """The verdict of ``m`` under ``spec`` (module docstring); pure and deterministic."""

    def done(verdict: Verdict, reason: str) -> Judgement:
        if m.caveat and verdict != "not measured":
            reason = f"{reason} Caveat: {m.caveat}"
        return Judgement(spec=spec, measurement=m, verdict=verdict, reason=reason, scope=scope)

    if m.missing or m.value is None:
        return done("not measured", m.missing or "the experiment gave no value")
    unit = spec.unit
    if m.ci is None:
        return done("inconclusive", f"no interval (n = {m.n}; an interval needs 2 units).")
    if m.n < spec.min_n:
        return done("inconclusive", f"n = {m.n} is below the minimum of {spec.min_n} units.")
    lo = -math.inf if m.ci[0] is None else float(m.ci[0])
    hi = math.inf if m.ci[1] is None else float(m.ci[1])
    ci = format_ci(m.ci, unit)
    need = format_value(spec.min_effect, unit)
    null = format_value(spec.null, unit)
    if spec.direction == "greater":
        inside, outside = lo > spec.min_effect, hi < spec.min_effect
        excludes_null = lo > spec.null
        side_word = "above"
    else:
        inside, outside = hi < spec.min_effect, lo > spec.min_effect
        excludes_null = hi < spec.null
        side_word = "below"
    if inside:
        return done(
            "supported", f"the CI {ci} lies entirely {side_word} the minimum effect {need}."
        )
    if outside:
        if excludes_null:
            why = f"a real effect (the CI excludes the null {null}) but smaller than {need}."
        else:
            why = (
                f"no effect in the predicted direction (the CI reaches the null {null} or beyond)."
            )
        return done("refuted", f"the CI {ci} excludes the minimum effect {need}: {why}")
    return done(
        "inconclusive",
        f"the CI {ci} contains the minimum effect {need}; more units would decide it.",
    )

"""The vLLM phase logits processor, tested against stand-ins of vLLM's two processor interfaces.

vLLM has no CPU wheel, so nothing here runs vLLM itself: the stand-in base classes mirror the
abstract methods of ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`` (Model
Runner V2) and ``vllm.v1.sample.logits_processor.LogitsProcessor`` (V1) as of vLLM 0.33, and the
batch updates / step contexts are built by hand. Also checks that the optional integrations
import without their frameworks and fail with an actionable message only when used.
"""

from __future__ import annotations

import importlib.metadata
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum, auto
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.control.phases import PhaseTracker
from agentropy.control.temperature import PhaseTemperatureConfig
from agentropy.integrations import (
    EXTRA_ARGS_KEY,
    MarkerIds,
    PhaseStream,
    RequestSpec,
    parse_request,
    processor_class,
    scale_rows,
)
from agentropy.integrations._extras import MissingExtraError
from agentropy.trace import PHASE_CODE, PHASES

PLAN, ACT, RECOVER, ANSWER = (PHASE_CODE[p] for p in ("plan", "act", "recover", "answer"))
TC_OPEN, TC_CLOSE, ANS_A, ANS_B, ANS_CLOSE = 10, 11, 12, 13, 14  # <answer> is two tokens
MARKERS = MarkerIds(
    tool_open=(TC_OPEN,),
    tool_close=(TC_CLOSE,),
    answer_open=(ANS_A, ANS_B),
    answer_close=(ANS_CLOSE,),
)
TEXT = {TC_OPEN: "<tool_call>", TC_CLOSE: "</tool_call>", ANS_A: "<ans", ANS_B: "wer>",
        ANS_CLOSE: "</answer>", 0: "x", 1: " y", 2: "{"}  # fmt: skip
CFG = PhaseTemperatureConfig()
T = {p: getattr(CFG, p) for p in PHASES}
V = 16


def sp(temperature: float = 1.0, **agentropy: Any) -> SimpleNamespace:
    """A stand-in SamplingParams; ``agentropy`` kwargs go to extra_args (markers added)."""
    extra = {EXTRA_ARGS_KEY: {"markers": MARKERS.to_dict(), **agentropy}}
    return SimpleNamespace(temperature=temperature, extra_args=extra)


def plain_sp() -> SimpleNamespace:
    return SimpleNamespace(temperature=0.7, extra_args=None)


# ------------------------------------------------------------------------ stand-in interfaces


class MoveDirectionality(Enum):
    UNIDIRECTIONAL = auto()
    SWAP = auto()


@dataclass(frozen=True)
class BatchUpdate:
    batch_size: int
    removed: list[int] = field(default_factory=list)
    added: list[tuple[int, Any, list[int] | None, list[int]]] = field(default_factory=list)
    moved: list[tuple[int, int, MoveDirectionality]] = field(default_factory=list)


class V1Base(ABC):
    """The V1 LogitsProcessor's abstract interface."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        return None

    @abstractmethod
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None: ...

    @abstractmethod
    def apply(self, logits: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def is_argmax_invariant(self) -> bool: ...

    @abstractmethod
    def update_state(self, batch_update: BatchUpdate | None) -> None: ...


class V2Base(ABC):
    """Model Runner V2's LogitsProcessor interface."""

    def __init__(self, vllm_config: Any, req_states: Any) -> None:  # noqa: B027
        pass

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        return None

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return True

    def apply_staged_writes(self) -> None:  # noqa: B027
        pass

    @abstractmethod
    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor: ...


def v1_processor() -> Any:
    cls = processor_class("v1", base=V1Base)
    assert issubclass(cls, V1Base)
    return cls(None, torch.device("cpu"), False)


def logits(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * 3


# ---------------------------------------------------------------------------------- parsing


def test_parse_request_opt_in_defaults_and_overrides() -> None:
    assert parse_request(None) is None
    assert parse_request({"other": 1}) is None
    spec = parse_request({EXTRA_ARGS_KEY: {}})
    assert spec == RequestSpec(temperatures=tuple(T[p] for p in PHASES))
    spec = parse_request(
        {
            EXTRA_ARGS_KEY: {
                "failure_pending": True,
                "phase_temperatures": {"recover": 1.5, "act": 0},
                "recover_budget": 3,
                "markers": MARKERS.to_dict(),
            }
        }
    )
    assert spec is not None
    assert spec.temperatures[RECOVER] == 1.5 and spec.temperatures[ACT] == 0.0
    assert spec.temperatures[PLAN] == T["plan"]
    assert spec.failure_pending and spec.recover_budget == 3 and spec.markers == MARKERS


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"failure_pendin": True}, "unknown keys"),
        ({"phase_temperatures": {"explore": 1.0}}, "unknown phase"),
        ({"phase_temperatures": {"plan": -0.1}}, "finite number >= 0"),
        ({"phase_temperatures": {"plan": math.nan}}, "finite number >= 0"),
        ({"failure_pending": "yes"}, "true or false"),
        ({"recover_budget": True}, "integer >= 0"),
        ({"markers": {"tool_open": [1]}}, "markers must map exactly"),
        ({"markers": {**MARKERS.to_dict(), "tool_close": [10]}}, "distinct"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_parse_request_rejects_bad_values(raw: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_request({EXTRA_ARGS_KEY: raw})


def test_marker_ids_from_tokenizer_encodes_without_special_tokens() -> None:
    calls = []

    class Tok:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            calls.append(add_special_tokens)
            return [len(text), ord(text[1])]

    ids = MarkerIds.from_tokenizer(Tok())
    assert ids.tool_open == (len("<tool_call>"), ord("t"))
    assert ids.answer_close == (len("</answer>"), ord("/"))
    assert calls == [False] * 4
    assert MarkerIds.from_mapping(ids.to_dict()) == ids


# ----------------------------------------------------------------------------- phase stream


def stream(**kwargs: Any) -> PhaseStream:
    spec = parse_request(sp(**kwargs).extra_args)
    assert spec is not None
    return PhaseStream(spec, MARKERS)


def phases_of(s: PhaseStream, ids: list[int]) -> list[int]:
    out = []
    for i in ids:
        out.append(s.phase)
        s.push(i)
    return out


def test_stream_spans_and_failure_resolution() -> None:
    s = stream(failure_pending=True)
    got = phases_of(s, [0, 1, TC_OPEN, 2, 0, TC_CLOSE, 0, ANS_A, ANS_B, 1, ANS_CLOSE, 0])
    # The token completing an opening marker is sampled under the free-text phase; tokens after
    # it under the span's; the opened tool call resolves the failure, so later text is plan.
    want = [RECOVER, RECOVER, RECOVER, ACT, ACT, ACT, PLAN, PLAN, PLAN, ANSWER, ANSWER, PLAN]
    assert got == want
    assert s.n_recover == 3 and s.n_seen == 12


def test_stream_ignores_answer_marker_inside_a_tool_call() -> None:
    s = stream()
    got = phases_of(s, [TC_OPEN, ANS_A, ANS_B, 0, ANS_CLOSE, TC_CLOSE, 0])
    assert got == [PLAN, ACT, ACT, ACT, ACT, ACT, PLAN]


def test_stream_budget_guard_switches_recover_to_plan_temperature() -> None:
    s = stream(failure_pending=True, recover_budget=2)
    temps = []
    for _ in range(4):
        temps.append(s.temperature)
        s.push(0)
    assert s.phase == RECOVER  # still recover text; only the temperature changes
    assert temps == [T["recover"], T["recover"], T["plan"], T["plan"]]


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.sampled_from(sorted(TEXT)), max_size=30), pending=st.booleans())
def test_stream_phase_equals_text_phase_tracker(ids: list[int], pending: bool) -> None:
    """Marker-id tracking gives the same next-token phase as the core text tracker."""
    s = stream(failure_pending=pending)
    tracker = PhaseTracker()
    tracker.on_tool_result(failed=pending)
    tracker.start_turn()
    for i in ids:
        assert s.phase == tracker.phase
        s.push(i)
        tracker.push(TEXT[i])
    assert s.phase == tracker.phase


# ------------------------------------------------------------------------------ scale_rows


def test_scale_rows_divides_exactly_the_given_rows() -> None:
    z = logits(4)
    ref = z.clone()
    out = scale_rows(z, [0, 2, 3], [0.5, 1.0, 2.0])
    assert out is z  # fp32: in place
    torch.testing.assert_close(out[0], ref[0] / 0.5, rtol=0, atol=0)
    torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(out[2], ref[2], rtol=0, atol=0)
    torch.testing.assert_close(out[3], ref[3] / 2.0, rtol=0, atol=0)


def test_scale_rows_zero_temperature_is_greedy_and_bad_values_raise() -> None:
    z = logits(2, seed=1)
    top = int(z[1].argmax())
    out = scale_rows(z.clone(), [1], [0.0])
    assert int(torch.isfinite(out[1]).sum()) == 1 and int(out[1].argmax()) == top
    half = scale_rows(z.to(torch.bfloat16), [0], [0.5])
    assert half.dtype == torch.float32  # upcast before dividing
    with pytest.raises(ValueError, match=">= 0"):
        scale_rows(z.clone(), [0], [math.nan])
    with pytest.raises(ValueError, match="temperatures"):
        scale_rows(z.clone(), [0, 1], [0.5])


# ---------------------------------------------------------------------------- V1 interface


def test_v1_flags_and_validation() -> None:
    proc = v1_processor()
    assert proc.is_argmax_invariant() is False
    type(proc).validate_params(sp())
    type(proc).validate_params(sp(temperature=0.0))
    type(proc).validate_params(plain_sp())  # not opted in: anything goes
    with pytest.raises(ValueError, match=r"temperature=1\.0"):
        type(proc).validate_params(sp(temperature=0.7))
    with pytest.raises(ValueError, match="unknown keys"):
        type(proc).validate_params(sp(bogus=1))


def test_v1_rows_get_their_phase_temperature_through_add_remove_move() -> None:
    proc = v1_processor()
    out0, out1, out2 = [], [], []
    proc.update_state(
        BatchUpdate(
            3,
            added=[
                (0, sp(failure_pending=True), [5], out0),
                (1, plain_sp(), [5], out1),
                (2, sp(), [5], out2),
            ],
        )
    )

    def check(expected: dict[int, float], n: int) -> None:
        z = logits(n, seed=len(out0) + len(out2))
        ref = z.clone()
        got = proc.apply(z)
        for r in range(n):
            t = expected.get(r, 1.0)
            torch.testing.assert_close(got[r], ref[r] / t, rtol=0, atol=0)

    check({0: T["recover"], 2: T["plan"]}, 3)
    # vLLM appends sampled tokens to the live lists; update_state(None) consumes them.
    out0.append(0)
    out2.append(TC_OPEN)
    out1.append(TC_OPEN)  # a row that did not opt in is never touched
    proc.update_state(None)
    check({0: T["recover"], 2: T["act"]}, 3)
    # Async-scheduling placeholders (-1) wait until vLLM fills them in.
    out0.extend([TC_OPEN, -1])
    proc.update_state(None)
    check({0: T["act"], 2: T["act"]}, 3)
    out0[-1] = 2
    proc.update_state(None)
    assert proc._rows[0][0].n_seen == 3

    # Remove row 0, move row 2 -> 0: the moved request keeps its state (act), row 2 is empty.
    proc.update_state(
        BatchUpdate(2, removed=[0], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)])
    )
    check({0: T["act"]}, 3)
    # A new request added at index 1 replaces the old occupant; then swap rows 0 and 1.
    out3: list[int] = []
    proc.update_state(BatchUpdate(2, added=[(1, sp(failure_pending=True), None, out3)]))
    check({0: T["act"], 1: T["recover"]}, 2)
    proc.update_state(BatchUpdate(2, moved=[(0, 1, MoveDirectionality.SWAP)]))
    check({0: T["recover"], 1: T["act"]}, 2)
    out2.append(TC_CLOSE)  # the act request (now row 1) closes its tool call
    proc.update_state(None)
    check({0: T["recover"], 1: T["plan"]}, 2)
    # An index reused by a request that did not opt in loses the old state.
    proc.update_state(BatchUpdate(2, added=[(0, plain_sp(), None, [])]))
    check({1: T["plan"]}, 2)


# ---------------------------------------------------------------------------- V2 interface


def v2_processor(prompt_len: dict[int, int], n_slots: int = 8) -> tuple[Any, Any]:
    req_states = SimpleNamespace(
        prompt_len=SimpleNamespace(np=np.zeros(n_slots, dtype=np.int32)),
        all_token_ids=SimpleNamespace(gpu=torch.zeros(n_slots, 64, dtype=torch.int32)),
    )
    for s, n in prompt_len.items():
        req_states.prompt_len.np[s] = n
    cls = processor_class("v2", base=V2Base)
    assert issubclass(cls, V2Base)
    return cls(SimpleNamespace(speculative_config=None), req_states), req_states


def ctx(slots: list[int], fed: list[int], pos: list[int]) -> SimpleNamespace:
    return SimpleNamespace(
        idx_mapping_np=np.array(slots, dtype=np.int32),
        input_ids=torch.tensor(fed, dtype=torch.int32),
        pos=torch.tensor(pos, dtype=torch.int64),
    )


def run_v2(proc: Any, c: SimpleNamespace, expected: dict[int, float]) -> None:
    n = len(c.idx_mapping_np)
    z = logits(n, seed=int(c.pos.sum()))
    ref = z.clone()
    got = proc.apply(z, c)
    for r in range(n):
        torch.testing.assert_close(got[r], ref[r] / expected.get(r, 1.0), rtol=0, atol=0)


def test_v2_slots_keep_their_state_across_row_reordering() -> None:
    proc, _ = v2_processor({3: 4, 5: 2})
    assert proc.add_request(5, sp(failure_pending=True)) is True
    assert proc.add_request(3, plain_sp()) is False
    proc.apply_staged_writes()
    # Prefill step: both rows fed their last prompt token (output index -1): nothing pushed.
    run_v2(proc, ctx([3, 5], [7, 7], [3, 1]), {1: T["recover"]})
    # Decode: slot 5 was fed its first output (pos 2 = prompt_len), now in row 0.
    run_v2(proc, ctx([5, 3], [TC_OPEN, 9], [2, 4]), {0: T["act"]})
    run_v2(proc, ctx([5, 3], [2, 9], [3, 5]), {0: T["act"]})
    # The same position fed again (e.g. a re-run step) is not pushed twice.
    run_v2(proc, ctx([3, 5], [9, 2], [5, 3]), {1: T["act"]})
    run_v2(proc, ctx([3, 5], [9, TC_CLOSE], [6, 4]), {1: T["plan"]})
    assert proc._slots[5].n_seen == 3


def test_v2_resumed_request_reads_missed_tokens_and_recycled_slot_is_cleared() -> None:
    proc, req_states = v2_processor({2: 3})
    proc.add_request(2, sp())
    # Resumed after preemption: prompt (3) + 3 outputs re-fed as prefill, last position 5.
    req_states.all_token_ids.gpu[2, :6] = torch.tensor([1, 1, 1, 0, TC_OPEN, 2])
    run_v2(proc, ctx([2], [2], [5]), {0: T["act"]})
    assert proc._slots[2].n_seen == 3
    # The slot is recycled for a request that did not opt in: untouched from now on.
    assert proc.add_request(2, plain_sp()) is False
    run_v2(proc, ctx([2], [0], [9]), {})


def test_v2_rejects_speculative_decoding() -> None:
    cls = processor_class("v2", base=V2Base)
    with pytest.raises(ValueError, match="speculative"):
        cls(SimpleNamespace(speculative_config=object()), None)
    proc, _ = v2_processor({1: 1})
    proc.add_request(1, sp())
    with pytest.raises(RuntimeError, match="speculative"):
        proc.apply(logits(2), ctx([1], [0], [0]))


def test_processor_class_rejects_unknown_interface() -> None:
    with pytest.raises(ValueError, match="'v2' or 'v1'"):
        processor_class("v3", base=object)  # type: ignore[arg-type]


# ----------------------------------------------------------------- optional-extra behaviour


def installed(dist: str) -> bool:
    # The distribution, not find_spec: tests/verl/ on sys.path looks like a "verl" package.
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(installed("vllm"), reason="vLLM is installed")
@pytest.mark.parametrize("name", ["PhaseLogitsProcessor", "PhaseLogitsProcessorV1"])
def test_vllm_classes_need_the_extra_only_when_used(name: str) -> None:
    import importlib

    import agentropy.integrations as mod

    with pytest.raises(MissingExtraError, match=r"pip install 'agentropy\[vllm\]'"):
        getattr(mod, name)
    with pytest.raises(MissingExtraError, match=r"pip install 'agentropy\[vllm\]'"):
        importlib.import_module("agentropy.integrations.vllm")
    with pytest.raises(AttributeError):
        mod.NoSuchThing  # noqa: B018


@pytest.mark.skipif(installed("verl"), reason="verl is installed")
def test_verl_integration_needs_the_extra_only_when_used() -> None:
    import agentropy.integrations as mod

    assert mod.PHASE_KEY == "agentropy_phase"  # pure parts import without verl
    with pytest.raises(MissingExtraError, match=r"pip install 'agentropy\[verl\]'"):
        mod.PhaseToolAgentLoop  # noqa: B018
    with pytest.raises(MissingExtraError, match=r"pip install 'agentropy\[verl\]'"):
        mod.rhythm_ppo_loss(None, {}, None, lambdas=(0.0,) * 4)


def test_package_exports_match_the_submodules() -> None:
    import importlib

    import agentropy.integrations as mod

    for sub in ("_trl_core", "_verl_core", "_vllm_core"):
        names = set(importlib.import_module(f"agentropy.integrations.{sub}").__all__)
        assert names == {n for n, m in mod._EXPORTS.items() if m == sub}, sub
    if installed("trl"):
        trl_all = set(importlib.import_module("agentropy.integrations.trl").__all__)
        core = {n for n, m in mod._EXPORTS.items() if m in ("trl", "_trl_core")}
        assert trl_all == core

"""The framework-free half of the vLLM backend: request options, phase streams on token ids,
row scaling, and the two processor interfaces' logic (the classes vLLM loads are built from them
in :mod:`agentropy.integrations.vllm`, which imports vLLM).

Everything here imports and is tested without vLLM (it has no CPU wheel);
:func:`processor_class` combines an interface's logic with a base class (vLLM's, or a test's
stand-in). See :mod:`agentropy.integrations.vllm` for where the processor runs in vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from agentropy.control.phases import PhaseMarkers
from agentropy.control.temperature import PhaseTemperatureConfig
from agentropy.integrations._extras import require
from agentropy.trace import PHASE_CODE, PHASES

__all__ = [
    "EXTRA_ARGS_KEY",
    "MarkerIds",
    "PhaseStream",
    "RequestSpec",
    "parse_request",
    "processor_class",
    "scale_rows",
]

#: Key of our per-request options in ``SamplingParams.extra_args``.
EXTRA_ARGS_KEY = "agentropy"
_MARKER_NAMES = ("tool_open", "tool_close", "answer_open", "answer_close")
_REQUEST_KEYS = frozenset({"failure_pending", "phase_temperatures", "markers", "recover_budget"})
_PLAN, _ACT, _RECOVER, _ANSWER = (PHASE_CODE[p] for p in ("plan", "act", "recover", "answer"))


@dataclass(frozen=True)
class MarkerIds:
    """Token-id sequences of the four span markers (see :class:`PhaseMarkers`)."""

    tool_open: tuple[int, ...]
    """Ids of the marker opening a tool call (``act``)."""
    tool_close: tuple[int, ...]
    """Ids of the marker closing a tool call."""
    answer_open: tuple[int, ...]
    """Ids of the marker opening the final answer (``answer``)."""
    answer_close: tuple[int, ...]
    """Ids of the marker closing the final answer."""

    def __post_init__(self) -> None:
        for name in _MARKER_NAMES:
            ids = getattr(self, name)
            if (
                not isinstance(ids, tuple)
                or not ids
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
            ):
                raise ValueError(
                    f"MarkerIds.{name} must be a non-empty tuple of token ids >= 0, got {ids!r}"
                )
        values = [getattr(self, n) for n in _MARKER_NAMES]
        if len(set(values)) != 4:
            raise ValueError(f"the four markers must have distinct token ids, got {values!r}")
        a, b = self.tool_open, self.answer_open
        if a[: len(b)] == b or b[: len(a)] == a:
            raise ValueError(f"one opening marker's ids are a prefix of the other's: {a}, {b}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Sequence[int]]) -> MarkerIds:
        """From ``{"tool_open": [ids], "tool_close": [...], ...}`` (all four keys)."""
        if not isinstance(raw, Mapping) or set(raw) != set(_MARKER_NAMES):
            got = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
            raise ValueError(
                f"markers must map exactly {list(_MARKER_NAMES)} to id lists, got {got}"
            )
        return cls(**{k: tuple(_as_int(i, f"markers.{k}") for i in raw[k]) for k in _MARKER_NAMES})

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, markers: PhaseMarkers | None = None) -> MarkerIds:
        """Encode the marker strings with ``tokenizer`` (no special tokens added)."""
        m = markers if markers is not None else PhaseMarkers()
        ids = {}
        for name in _MARKER_NAMES:
            encoded = tokenizer.encode(getattr(m, name), add_special_tokens=False)
            ids[name] = tuple(int(i) for i in encoded)
        return cls(**ids)

    def to_dict(self) -> dict[str, list[int]]:
        """JSON-friendly form, as accepted in ``extra_args["agentropy"]["markers"]``."""
        return {name: list(getattr(self, name)) for name in _MARKER_NAMES}


def _as_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{where}: expected an integer token id, got {v!r}")
    return v


@dataclass(frozen=True)
class RequestSpec:
    """Per-request phase-control options, parsed from ``extra_args["agentropy"]``."""

    temperatures: tuple[float, ...]
    """Temperature per phase code (:data:`agentropy.trace.PHASES` order); 0 = greedy."""
    failure_pending: bool = False
    """The request continues after a failed tool result: free text starts as ``recover``."""
    markers: MarkerIds | None = None
    """Marker ids for this request; None = the processor's default (from the tokenizer)."""
    recover_budget: int = PhaseTemperatureConfig.recover_budget
    """``recover`` tokens sampled at the recover temperature; later ones use ``plan``."""


def parse_request(
    extra_args: Mapping[str, Any] | None, *, defaults: PhaseTemperatureConfig | None = None
) -> RequestSpec | None:
    """Our options from a request's ``extra_args``; None if the request did not opt in.

    Raises ValueError naming the bad field (vLLM turns it into an HTTP 400 at admission).
    """
    if not extra_args or EXTRA_ARGS_KEY not in extra_args:
        return None
    raw = extra_args[EXTRA_ARGS_KEY]
    where = f"extra_args[{EXTRA_ARGS_KEY!r}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _REQUEST_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {unknown}; expected some of {sorted(_REQUEST_KEYS)}"
        )
    base = defaults if defaults is not None else PhaseTemperatureConfig()
    temps = {p: float(getattr(base, p)) for p in PHASES}
    overrides = raw.get("phase_temperatures") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{where}.phase_temperatures must map phase names to temperatures")
    for name, t in overrides.items():
        if name not in temps:
            raise ValueError(
                f"{where}.phase_temperatures: unknown phase {name!r}; phases are {PHASES}"
            )
        if (
            isinstance(t, bool)
            or not isinstance(t, int | float)
            or not (math.isfinite(t) and t >= 0)
        ):
            raise ValueError(
                f"{where}.phase_temperatures.{name} must be a finite number >= 0 (0 = greedy), "
                f"got {t!r}"
            )
        temps[name] = float(t)
    pending = raw.get("failure_pending", False)
    if not isinstance(pending, bool):
        raise ValueError(f"{where}.failure_pending must be true or false, got {pending!r}")
    budget = raw.get("recover_budget", base.recover_budget)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"{where}.recover_budget must be an integer >= 0, got {budget!r}")
    markers = raw.get("markers")
    return RequestSpec(
        temperatures=tuple(temps[p] for p in PHASES),
        failure_pending=pending,
        markers=None if markers is None else MarkerIds.from_mapping(markers),
        recover_budget=budget,
    )


class PhaseStream:
    """Phase of one request's next token, fed the request's generated token ids one by one.

    :attr:`phase` is the phase of the token about to be sampled; :attr:`temperature` applies
    the request's per-phase temperatures and the budget guard.
    """

    def __init__(self, spec: RequestSpec, markers: MarkerIds) -> None:
        self.spec = spec
        self.markers = markers
        self._opens = ((markers.tool_open, markers.tool_close, _ACT),
                       (markers.answer_open, markers.answer_close, _ANSWER))  # fmt: skip
        self._keep = max(len(getattr(markers, n)) for n in _MARKER_NAMES)
        self.failure_pending = spec.failure_pending
        self.span: int | None = None
        """Phase code of the open span (``act`` / ``answer``), None in free text."""
        self._close: tuple[int, ...] = ()
        self._tail: list[int] = []  # last ids since the latest marker, for suffix matching
        self.n_seen = 0
        """Generated tokens pushed so far."""
        self.n_recover = 0
        """Tokens sampled in the ``recover`` phase so far (the budget guard's counter)."""

    @property
    def phase(self) -> int:
        """Phase code of the next token."""
        if self.span is not None:
            return self.span
        return _RECOVER if self.failure_pending else _PLAN

    @property
    def temperature(self) -> float:
        """Temperature of the next token."""
        p = self.phase
        if p == _RECOVER and self.n_recover >= self.spec.recover_budget:
            p = _PLAN  # budget guard: past the budget, recover text is sampled like plan text
        return self.spec.temperatures[p]

    def push(self, token_id: int) -> None:
        """Record the request's next generated token (sampled under the current phase)."""
        if self.phase == _RECOVER:
            self.n_recover += 1
        self.n_seen += 1
        tail = self._tail
        tail.append(int(token_id))
        if len(tail) > self._keep:
            del tail[0]
        if self.span is None:
            for open_ids, close_ids, kind in self._opens:
                if _ends_with(tail, open_ids):
                    self.span, self._close = kind, close_ids
                    self.failure_pending = False  # a tool call or answer starts: resolved
                    tail.clear()  # the closing marker is searched after the opening one
                    return
        elif _ends_with(tail, self._close):
            self.span, self._close = None, ()
            tail.clear()


def _ends_with(tail: list[int], ids: tuple[int, ...]) -> bool:
    n = len(ids)
    return len(tail) >= n and tuple(tail[-n:]) == ids


def scale_rows(logits: torch.Tensor, rows: Sequence[int], temps: Sequence[float]) -> torch.Tensor:
    """Divide ``logits[rows[i]]`` by ``temps[i]``, in place when ``logits`` is fp32.

    ``logits`` is (num_rows, V); other rows are untouched. ``T == 0`` makes the row greedy
    (argmax logit kept, ``-inf`` elsewhere); ``T == 1`` rows are skipped (exact no-op). Non-fp32
    logits are upcast first (DESIGN.md: temperature divides fp32 logits) and a new tensor is
    returned. Returns the (possibly new) logits tensor.
    """
    if len(rows) != len(temps):
        raise ValueError(f"{len(rows)} rows but {len(temps)} temperatures")
    if logits.dtype != torch.float32:
        logits = logits.float()
    todo = [(r, float(t)) for r, t in zip(rows, temps, strict=True) if t != 1.0]
    if not todo:
        return logits
    if any(not (t >= 0.0) for _, t in todo):  # negative or NaN: never a silent garbage row
        raise ValueError(f"temperatures must be >= 0, got {[t for _, t in todo]}")
    idx = torch.tensor([r for r, _ in todo], dtype=torch.long, device=logits.device)
    t = torch.tensor([t for _, t in todo], dtype=torch.float32, device=logits.device)
    sub = logits.index_select(0, idx)
    zero = t == 0
    scaled = sub / torch.where(zero, 1.0, t)[:, None]
    if any(tt == 0.0 for _, tt in todo):
        top = sub.argmax(dim=-1, keepdim=True)
        greedy = torch.full_like(sub, -math.inf).scatter(1, top, sub.gather(1, top))
        scaled = torch.where(zero[:, None], greedy, scaled)
    logits.index_copy_(0, idx, scaled)
    return logits


class _Core:
    """What both processor classes share: defaults, marker ids, building a request's stream."""

    def __init__(self, vllm_config: Any) -> None:
        self.defaults = PhaseTemperatureConfig()
        self.markers: MarkerIds | None = None
        model_config = getattr(vllm_config, "model_config", None)
        name = getattr(model_config, "tokenizer", None)
        if name:
            # Loaded once at engine start-up so a bad tokenizer fails there, loudly.
            transformers = require("transformers", extra="vllm")
            tok = transformers.AutoTokenizer.from_pretrained(
                name, trust_remote_code=bool(getattr(model_config, "trust_remote_code", False))
            )
            self.markers = MarkerIds.from_tokenizer(tok)

    def stream_for(self, sampling_params: Any) -> PhaseStream | None:
        spec = parse_request(getattr(sampling_params, "extra_args", None), defaults=self.defaults)
        if spec is None:
            return None
        markers = spec.markers if spec.markers is not None else self.markers
        if markers is None:
            raise ValueError(
                f"no marker token ids: pass extra_args[{EXTRA_ARGS_KEY!r}]['markers'] "
                "(MarkerIds.from_tokenizer(tokenizer).to_dict()) or serve a model with a tokenizer"
            )
        return PhaseStream(spec, markers)


def _validate(sampling_params: Any) -> None:
    spec = parse_request(getattr(sampling_params, "extra_args", None))
    if spec is None:
        return
    t = getattr(sampling_params, "temperature", 1.0)
    if t not in (0.0, 1.0):
        raise ValueError(
            f"temperature={t} with extra_args[{EXTRA_ARGS_KEY!r}]: set temperature=1.0 (the "
            "logits processor applies the phase temperature; vLLM would divide again)"
        )


def _is_swap(direction: Any) -> bool:
    return getattr(direction, "name", direction) == "SWAP"


# ---------------------------------------------------------------------- interface adapters


class _V1Logic:
    """V1-runner interface: ``update_state(BatchUpdate)`` then ``apply(logits)`` each step.

    Rows are batch indices; ``BatchUpdate`` lists removed rows, added rows ``(index, params,
    prompt_ids, output_ids)`` whose ``output_ids`` is the live list vLLM appends to, and moved
    rows ``(a, b, UNIDIRECTIONAL | SWAP)``, processed in that order.
    """

    def __init__(self, vllm_config: Any, device: Any = None, is_pin_memory: bool = False) -> None:
        self._core = _Core(vllm_config)
        self._rows: dict[int, tuple[PhaseStream, Sequence[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        _validate(sampling_params)

    def is_argmax_invariant(self) -> bool:
        # False keeps us before the request temperature (V1 applies argmax-invariant processors
        # after it); dividing by T > 0 would not change the argmax, but where it runs matters.
        return False

    def update_state(self, batch_update: Any) -> None:
        rows = self._rows
        if batch_update is not None:
            for i in batch_update.removed:
                rows.pop(i, None)
            for i, params, _prompt_ids, output_ids in batch_update.added:
                stream = self._core.stream_for(params)
                if stream is None:
                    rows.pop(i, None)  # the index may be reused by a request that did not opt in
                else:
                    rows[i] = (stream, output_ids)
            for a, b, direction in batch_update.moved:
                ra, rb = rows.pop(a, None), rows.pop(b, None)
                if ra is not None:
                    rows[b] = ra
                if _is_swap(direction) and rb is not None:
                    rows[a] = rb
        for stream, output_ids in rows.values():
            # Async scheduling may append placeholder ids (< 0) that are filled in later.
            while stream.n_seen < len(output_ids) and output_ids[stream.n_seen] >= 0:
                stream.push(output_ids[stream.n_seen])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        rows = [i for i in self._rows if i < n]
        return scale_rows(logits, rows, [self._rows[i][0].temperature for i in rows])


class _V2Logic:
    """Model Runner V2 interface: ``add_request(slot, params)`` then ``apply(logits, ctx)``.

    State is keyed by the persistent request slot; vLLM recycles slots and calls
    ``add_request`` for every new occupant, so a slot of a request that did not opt in is
    cleared there.
    """

    def __init__(self, vllm_config: Any, req_states: Any = None) -> None:
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError(
                "agentropy's phase logits processor does not support speculative decoding"
            )
        self._core = _Core(vllm_config)
        self._req_states = req_states
        self._slots: dict[int, PhaseStream] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        _validate(sampling_params)

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        stream = self._core.stream_for(sampling_params)
        if stream is None:
            self._slots.pop(req_idx, None)
            return False
        self._slots[req_idx] = stream
        return True

    def apply_staged_writes(self) -> None:
        return None

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        slots = [int(s) for s in ctx.idx_mapping_np]
        if logits.shape[0] != len(slots):
            raise RuntimeError(
                f"{logits.shape[0]} logits rows for {len(slots)} requests: speculative decoding "
                "is not supported by agentropy's phase logits processor"
            )
        ours = [(row, s) for row, s in enumerate(slots) if s in self._slots]
        if not ours:
            return logits
        idx = torch.tensor([r for r, _ in ours], dtype=torch.long, device=ctx.input_ids.device)
        # One small device-to-host copy per step: the token fed at each of our rows is the
        # request's latest output token once its position passes the prompt.
        fed = torch.stack([ctx.input_ids.index_select(0, idx).long(),
                           ctx.pos.index_select(0, idx).long()]).cpu().tolist()  # fmt: skip
        prompt_len = self._req_states.prompt_len.np
        temps = []
        for (_row, s), tok, pos in zip(ours, fed[0], fed[1], strict=True):
            stream = self._slots[s]
            j = pos - int(prompt_len[s])  # output index of the fed token; < 0 inside the prompt
            if j == stream.n_seen:
                stream.push(tok)
            elif j > stream.n_seen:
                # Resumed after preemption (outputs re-fed as prefill): read the missed ones.
                start = int(prompt_len[s]) + stream.n_seen
                for t in self._req_states.all_token_ids.gpu[s, start : pos + 1].tolist():
                    stream.push(t)
            temps.append(stream.temperature)
        return scale_rows(logits, [r for r, _ in ours], temps)


# --------------------------------------------------------------------------- class builder

#: Class name of the processor of each vLLM interface (``agentropy.integrations.vllm:<name>``).
PROCESSOR_NAMES = {"v2": "PhaseLogitsProcessor", "v1": "PhaseLogitsProcessorV1"}
_LOGIC: dict[str, type] = {"v2": _V2Logic, "v1": _V1Logic}


def processor_class(interface: Literal["v2", "v1"], *, base: type) -> type:
    """The processor class for vLLM's ``interface`` ("v2": Model Runner V2), subclassing
    ``base`` (vLLM checks ``issubclass`` against its ``LogitsProcessor``; tests pass a
    stand-in). :mod:`agentropy.integrations.vllm` builds the two classes vLLM loads."""
    if interface not in _LOGIC:
        raise ValueError(f"interface must be 'v2' or 'v1', got {interface!r}")
    logic, name = _LOGIC[interface], PROCESSOR_NAMES[interface]
    # Our methods come first in the MRO, so they implement vLLM's abstract ones; the module is
    # the public one, so pickling by name finds the class vLLM loaded.
    return type(name, (logic, base), {"__module__": "agentropy.integrations.vllm",
                                      "__qualname__": name, "__doc__": logic.__doc__})  # fmt: skip

"""Token entropy: exact from logits (chunked, fp32, temperature-aware, masked) and bounded from
top-k log-probabilities.

Definitions (DESIGN.md, "Definitions"):

- Token entropy ``H = -sum_v p_v log p_v`` with ``p = softmax(z / T)``, in nats. Logits are upcast
  to fp32 *before* the division by ``T``, the division happens once, and everything after it is
  fp32. ``-inf`` logits are valid and mean probability 0; ``0 * log 0`` is taken as 0 in values and
  in gradients.
  :func:`apply_temperature` is that division for samplers (the runner, the transformers logits
  processors, the chat-completions server); the entropy kernel uses the same code, so sampled
  tokens and their recorded log-probs and entropies come from the same fp32 numbers.
- Top-k bounds: with the top-k probabilities ``p_1 >= ... >= p_k``, missing mass
  ``r = 1 - sum p_i`` and ``H_k = -sum p_i log p_i``,
  ``H_k - r log min(p_k, r) <= H <= H_k - r log r + r log(V - k)``.

How the exact entropy is computed: rows are processed ``chunk_size`` at a time through two
reusable fp32 buffers: ``log p = log_softmax(z)`` (one fused kernel that subtracts the row max
first, so log-probs keep full fp32 precision), ``p = exp(log p)``, ``Z = sum(p)`` and
``H = log Z - <p, log p> / Z`` (one dot product per row; ``Z`` is 1 up to rounding, and
renormalising by a cascaded sum removes the ~1e-5 relative error of ``log_softmax``'s internal
sum at large V). Each chunk is small enough to stay in cache, unlike the unchunked formulas, which
materialise several N x V tensors. Extra memory is
O(chunk_size x V), never O(N x V), for any input dtype or layout (non-mergeable views such as
``logits[:, :-1]`` are read a chunk at a time rather than flattened). Gradients come from a
custom :class:`torch.autograd.Function` that saves only the input logits (a reference, not a
copy) and one fp32 number per row, and recomputes ``log p`` chunk by chunk in backward; the only
O(N x V) allocation in backward is the gradient itself, which autograd needs anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "EntropyBounds",
    "EntropyReport",
    "NonfinitePolicy",
    "apply_temperature",
    "logprobs_and_entropy",
    "step_entropy",
    "token_entropy",
    "token_entropy_report",
    "topk_entropy_bounds",
]

NonfinitePolicy = Literal["raise", "mask"]
"""What the entropy functions do with a position whose logits hold NaN or ``+inf`` (or are all
``-inf``): ``"raise"`` an error naming it, or ``"mask"`` it (entropy 0, counted). Not the trace's
``NanPolicy`` (``"raise"`` / ``"drop"``), which is about stored entropies, not logits."""

_CHUNK_ELEMENTS = 1 << 20
"""Default chunk: about 1M logits (4 MB per fp32 buffer; 32 rows at V = 32000). Smaller chunks
fit in L2 and do ~15% less work single-threaded, but every kernel is a parallel region whose
synchronisation is paid per chunk; on a busy machine with 2 threads, 8-row chunks ran ~9x slower
than 128-row ones while 1-thread times were equal. 1M logits balances the two."""

_LOG_CLAMP = -1e4
"""Shifted logits / log-probs below this are clamped where they multiply a probability: exp of
anything below about -104 is exactly 0 in fp32, so the clamp changes no probability, but it turns
``0 * (-inf)`` (NaN) into ``0 * (-1e4)`` (0)."""

_LOGPROB_TOLERANCE = 1e-4
"""Top-k logprobs up to this much above 0 are accepted as rounding and clamped to 0."""

TOPK_MASS_TOLERANCE = 1e-3
"""Top-k probabilities may sum to this much above 1 (APIs round each logprob; ~20 of them)."""


class EntropyReport(NamedTuple):
    """What :func:`token_entropy_report` returns."""

    entropy: torch.Tensor
    """fp32, leading shape of the logits, nats; 0 where ``valid`` is False."""
    valid: torch.Tensor
    """bool, leading shape: the entropy at this position was computed (inside ``mask`` and the
    logits were usable)."""
    n_nonfinite: int
    """How many positions inside ``mask`` were dropped because their logits held NaN or ``+inf``
    or were all ``-inf`` (always 0 with ``nan_policy="raise"``, which raises instead)."""


class EntropyBounds(NamedTuple):
    """What :func:`topk_entropy_bounds` returns; all fp32 with the positions' shape, nats."""

    estimate: torch.Tensor
    """Midpoint of ``[lower, upper]``: the value whose worst-case error over every distribution
    consistent with the bounds is smallest (half the interval width)."""
    lower: torch.Tensor
    """``H_k - r log min(p_k, r)``: the missing mass concentrated in as few tokens as possible."""
    upper: torch.Tensor
    """``H_k - r log r + r log(V - k)``: the missing mass spread evenly over the other tokens."""


# --------------------------------------------------------------------------------------------
# Temperature
# --------------------------------------------------------------------------------------------


def apply_temperature(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """``logits / temperature`` in fp32: the one place temperature is applied to logits.

    ``softmax`` of the result is the sampling distribution ``softmax(z / T)`` of DESIGN.md: the
    logits are upcast to fp32 *before* the division, and the division happens once. The entropy
    kernel below divides with the same code, so a sampler that draws from this tensor and the
    log-probs and entropies computed at the same ``temperature`` agree bitwise. Greedy decoding
    (``T = 0``) is not a temperature: callers take the argmax themselves
    (:func:`agentropy.control.hf.warp_scores` does it for transformers).

    Args:
        logits: ``(..., V)`` float tensor of any float dtype and layout; ``-inf`` stays ``-inf``.
        temperature: a positive number, or a positive tensor whose shape is a prefix of the
            leading shape (``(B,)`` per row or ``(B, T)`` per token for ``(B, T, V)`` logits),
            treated as a constant (a tensor requiring grad is an error). ``T <= 0``, NaN or inf
            anywhere raises ``ValueError``.

    Returns:
        A new fp32 tensor with the shape of ``logits``, differentiable with respect to them.

    Example:
        >>> apply_temperature(torch.tensor([[2.0, -1.0]]), 0.5).tolist()
        [[4.0, -2.0]]
    """
    _check_logits(logits)
    lead = tuple(logits.shape[:-1])
    t = _row_temperatures(temperature, lead, logits.device, None)
    rows = logits.reshape(-1, logits.shape[-1])  # (N, V); a copy only for non-mergeable views
    z = rows.to(torch.float32, copy=True) if t is None else _divide(rows, t)
    return z.view(logits.shape)


def _divide(x: torch.Tensor, t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x.float() / t[:, None]`` for rows ``x`` (c, V) and fp32 ``t`` (c,), into ``out`` if given.

    Upcast first, then one fp32 division: the temperature arithmetic of :func:`apply_temperature`
    and of the entropy kernel, written once so both give the same bits."""
    if x.dtype == torch.float32:
        return torch.div(x, t.unsqueeze(1), out=out)
    z = x.to(torch.float32) if out is None else out.copy_(x)
    return z.div_(t.unsqueeze(1))


# --------------------------------------------------------------------------------------------
# Exact entropy from logits
# --------------------------------------------------------------------------------------------


def token_entropy(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    nan_policy: NonfinitePolicy = "raise",
) -> torch.Tensor:
    """Entropy in nats of ``softmax(logits / temperature)`` at every position.

    Args:
        logits: ``(..., V)`` float tensor of any float dtype and layout; ``-inf`` entries mean
            probability 0. NaN and ``+inf`` entries are errors (see ``nan_policy``), as is a
            position whose logits are all ``-inf``.
        temperature: a positive number, or a positive tensor whose shape is a prefix of the
            leading shape (``(B,)`` per row or ``(B, T)`` per token for ``(B, T, V)`` logits).
            It is treated as a constant: no gradient flows to it (a tensor requiring grad is an
            error). ``T <= 0`` (or NaN / inf) inside ``mask`` raises ``ValueError``.
        mask: optional bool tensor with the leading shape; True = compute. Masked positions get
            entropy 0 and gradient 0, and their logits and temperatures are never read (padding
            may hold anything).
        chunk_size: rows per chunk (default: about 1M logits per chunk). Extra memory is
            ``O(chunk_size * V)``.
        nan_policy: ``"raise"`` raises ``ValueError`` naming the first bad position (index into
            ``logits``); ``"mask"`` treats bad positions like masked ones (entropy 0). To get
            how many were dropped, and where, call :func:`token_entropy_report` instead.

    Returns:
        fp32 tensor with the leading shape of ``logits`` (``logits.shape[:-1]``), nats, on the
        logits' device. Differentiable with respect to ``logits``; works under ``torch.no_grad``.

    Example:
        >>> import torch
        >>> token_entropy(torch.zeros(2, 4)).tolist() == [math.log(4)] * 2
        True
    """
    return token_entropy_report(
        logits, temperature=temperature, mask=mask, chunk_size=chunk_size, nan_policy=nan_policy
    ).entropy


def step_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats (T = 1) of each row of one decoding step's logits: the per-token call of
    samplers and logits processors, with :func:`token_entropy`'s arithmetic (the same bits) but
    without its argument checks and chunk loop, whose fixed cost per call is several times the
    arithmetic itself at small vocabularies.

    Args:
        logits: ``(B, V)`` float tensor. Anything else (other shapes, a tensor that needs a
            gradient, more than one chunk of elements, a row whose result is not finite: a
            ``-inf`` logit, NaN or ``+inf``) goes to :func:`token_entropy`, which handles
            ``-inf`` and raises on NaN and ``+inf`` as usual.

    Returns:
        fp32 ``(B,)`` nats.
    """
    if (
        logits.dim() != 2
        or logits.numel() > _CHUNK_ELEMENTS  # chunking keeps big steps in cache: faster there
        or (logits.requires_grad and torch.is_grad_enabled())
        or not logits.is_floating_point()
    ):
        return token_entropy(logits)
    z = logits if logits.dtype == torch.float32 else logits.to(torch.float32)
    ls = torch.log_softmax(z, -1)
    p = torch.exp(ls)
    h = torch.linalg.vecdot(p, ls).neg_()
    sum_p = p.sum(-1)  # renormalised as in _forward (same operations, same bits)
    h = h.div_(sum_p).add_(sum_p.log())
    # A finite row's entropy is at most V / e (each term -p log p <= 1 / e), so the batch's sum
    # is finite iff every row is: one reduction and one sync, where isfinite(h).all() costs
    # half a dozen kernels (a tenth of this function at B = 32, V = 1000).
    if not math.isfinite(h.sum().item()):
        return token_entropy(logits)
    return h.clamp_min_(0.0)


def token_entropy_report(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    nan_policy: NonfinitePolicy = "mask",
) -> EntropyReport:
    """Like :func:`token_entropy`, but also says which positions were computed and how many
    positions inside ``mask`` were dropped for non-finite logits. Defaults to
    ``nan_policy="mask"``, the case where that count is needed."""
    h, _, valid, n_bad = _run(logits, None, temperature, mask, chunk_size, nan_policy)
    return EntropyReport(h, valid, n_bad)


def logprobs_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ``tokens`` and the entropy, both under ``softmax(logits / temperature)``,
    from one pass over the logits.

    Args:
        logits: ``(..., V)`` as in :func:`token_entropy`.
        tokens: integer tensor with the leading shape, values in ``[0, V)`` (inside ``mask``).
        temperature, mask, chunk_size: as in :func:`token_entropy`. Non-finite logits always
            raise here: a trainer must not silently skip tokens.

    Returns:
        ``(logprob, entropy)``: fp32 tensors with the leading shape, nats. Masked positions give
        0 for both. A token whose logit is ``-inf`` gets logprob ``-inf`` (its true value) with a
        finite gradient. Both are differentiable with respect to ``logits``.
    """
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    if tuple(tokens.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"tokens shape {tuple(tokens.shape)} must equal the leading shape of logits "
            f"{tuple(logits.shape[:-1])}"
        )
    h, lp, _, _ = _run(logits, tokens, temperature, mask, chunk_size, "raise")
    return lp, h


def _run(
    logits: torch.Tensor,
    tokens: torch.Tensor | None,
    temperature: float | torch.Tensor,
    mask: torch.Tensor | None,
    chunk_size: int | None,
    nan_policy: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Validate arguments, run the chunked kernel, return (H, logprob, valid, n_bad)."""
    _check_logits(logits)
    if nan_policy not in ("raise", "mask"):
        raise ValueError(f"nan_policy must be 'raise' or 'mask', got {nan_policy!r}")
    lead = tuple(logits.shape[:-1])
    n_rows = math.prod(lead)
    device = logits.device
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    rows = None  # flat indices of the rows to compute; None = all rows
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError("mask must be a bool tensor (True = compute this position)")
        if tuple(mask.shape) != lead:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} must equal the leading shape of logits {lead}"
            )
        flat_mask = mask.reshape(-1).to(device)
        if not bool(flat_mask.all()):
            rows = flat_mask.nonzero().squeeze(1)

    temps = _row_temperatures(temperature, lead, device, rows)
    flat_tokens = None
    if tokens is not None:
        flat_tokens = tokens.reshape(-1).to(device=device, dtype=torch.int64)
        _check_tokens(flat_tokens, rows, logits.shape[-1], lead)

    args = (logits, temps, rows, flat_tokens, chunk_size, nan_policy == "raise")
    if torch.is_grad_enabled() and logits.requires_grad:
        h, lp, bad = _ChunkedEntropy.apply(*args)
    else:
        # No graph to build: skip the autograd.Function machinery, a sizeable share of the cost
        # of the small per-step calls samplers make (the values are the same).
        h, lp, bad, _ = _forward(*args)
    if rows is None:
        valid = ~bad
    else:
        valid = torch.zeros(n_rows, dtype=torch.bool, device=device)
        valid[rows] = True
        valid &= ~bad
    n_bad = 0 if nan_policy == "raise" else int(bad.sum())  # "raise" raised on any bad row
    h = h.reshape(lead)
    lp = lp.reshape(lead) if tokens is not None else lp
    return h, lp, valid.reshape(lead), n_bad


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point torch.Tensor")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")


def _row_temperatures(
    temperature: float | torch.Tensor,
    lead: tuple[int, ...],
    device: torch.device,
    rows: torch.Tensor | None,
) -> torch.Tensor | None:
    """Per-row fp32 temperatures (N,), or None when T = 1 everywhere (no division needed)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.requires_grad:
            raise ValueError(
                "temperature requires grad, but token entropy treats it as a constant; "
                "pass temperature.detach()"
            )
        t = temperature.to(device=device, dtype=torch.float32)
        if t.dim() == 0:
            temperature = float(t)
        else:
            if tuple(t.shape) != lead[: t.dim()]:
                raise ValueError(
                    f"temperature shape {tuple(t.shape)} must be a prefix of the leading shape "
                    f"of logits {lead}: (B,) per row or (B, T) per token"
                )
            t = t.reshape(t.shape + (1,) * (len(lead) - t.dim())).expand(lead).reshape(-1)
            checked = t if rows is None else t[rows]
            bad = ~(torch.isfinite(checked) & (checked > 0))
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                flat = i if rows is None else int(rows[i])
                raise ValueError(
                    f"temperature must be finite and > 0, got {float(checked[i])!r} at position "
                    f"{_unravel(flat, lead)} (use greedy decoding instead of T = 0)"
                )
            return t.contiguous()
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"temperature must be a number or a tensor, got {type(temperature)}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be finite and > 0, got {temperature!r} "
            "(use greedy decoding instead of T = 0)"
        )
    if temperature == 1.0:
        return None
    return torch.full((math.prod(lead),), float(temperature), dtype=torch.float32, device=device)


def _check_tokens(
    tokens: torch.Tensor, rows: torch.Tensor | None, vocab: int, lead: tuple[int, ...]
) -> None:
    checked = tokens if rows is None else tokens[rows]
    bad = (checked < 0) | (checked >= vocab)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        flat = i if rows is None else int(rows[i])
        raise ValueError(
            f"token id {int(checked[i])} at position {_unravel(flat, lead)} is outside the "
            f"vocabulary [0, {vocab})"
        )


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for n in reversed(shape):
        out.append(flat % n)
        flat //= n
    return tuple(reversed(out))


class _Rows:
    """Fetches chunks of rows of ``(..., V)`` logits without ever copying the whole tensor
    (``reshape(-1, V)`` copies when the leading dims cannot be merged, e.g. ``logits[:, :-1]``)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.lead = tuple(logits.shape[:-1])
        self.vocab = logits.shape[-1]
        self.logits = logits
        try:
            self.flat: torch.Tensor | None = logits.view(-1, self.vocab)
        except RuntimeError:
            self.flat = None

    def get(self, start: int, stop: int, idx: torch.Tensor | None) -> torch.Tensor:
        """Rows ``start:stop`` of the flattened logits, or rows ``idx`` if given: (c, V)."""
        if self.flat is not None:
            return self.flat[start:stop] if idx is None else self.flat.index_select(0, idx)
        if idx is None:
            idx = torch.arange(start, stop, device=self.logits.device)
        # Advanced indexing with one index tensor per leading dim gathers just these rows.
        index = []
        rest = idx
        for n in reversed(self.lead):
            index.append(rest % n)
            rest = rest // n
        return self.logits[tuple(reversed(index))]

    def first_bad(self, flat_row: int) -> str:
        """Describe the first NaN / +inf logit of a row, or an all--inf row, for error messages."""
        row = self.get(flat_row, flat_row + 1, None)[0]
        pos = _unravel(flat_row, self.lead)
        bad = torch.isnan(row) | torch.isposinf(row)
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            return f"logits[{', '.join(map(str, (*pos, j)))}] is {float(row[j])}"
        return f"logits[{', '.join(map(str, pos))}, :] are all -inf"


def _chunks(n_rows: int, rows: torch.Tensor | None, chunk_size: int):
    """Yield ``(start, stop, idx)``: positions ``start:stop`` in the computed-rows order, and the
    flat row indices (None when computing all rows, so rows are plain slices)."""
    n = n_rows if rows is None else rows.numel()
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        yield start, stop, (None if rows is None else rows[start:stop])


def _log_probs(
    x: torch.Tensor, t: torch.Tensor | None, zbuf: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``log_softmax(x.float() / t[:, None])`` for a chunk of rows, into ``out`` (c, V).

    The upcast happens before the division (:func:`_divide`). ``log_softmax`` subtracts the row
    max before the log-sum-exp, so log-probs keep full fp32 precision even when the logits
    themselves are large (a separately stored ``logsumexp`` would round to the ulp of the max
    logit)."""
    if t is not None:
        return torch.log_softmax(_divide(x, t, zbuf), -1, out=out)
    z = x if x.dtype == torch.float32 else zbuf.copy_(x)
    return torch.log_softmax(z, -1, out=out)


def _forward(
    logits: torch.Tensor,
    temps: torch.Tensor | None,
    rows: torch.Tensor | None,
    tokens: torch.Tensor | None,
    chunk_size: int,
    raise_on_bad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunked forward pass of :class:`_ChunkedEntropy` (see there): returns
    ``(H (N,), logprob (N,) or (0,), bad (N,) bool, log Z (N,))``, without autograd."""
    src = _Rows(logits)
    n_rows, vocab = math.prod(src.lead), src.vocab
    device = logits.device
    h_out = torch.zeros(n_rows, dtype=torch.float32, device=device)
    lp_out = torch.zeros(n_rows if tokens is not None else 0, dtype=torch.float32, device=device)
    bad_out = torch.zeros(n_rows, dtype=torch.bool, device=device)
    log_z_out = torch.zeros(n_rows, dtype=torch.float32, device=device)
    c_max = min(chunk_size, n_rows if rows is None else rows.numel())
    zbuf = torch.empty(max(c_max, 0), vocab, dtype=torch.float32, device=device)
    lsbuf = torch.empty_like(zbuf)

    for start, stop, idx in _chunks(n_rows, rows, chunk_size):
        c = stop - start
        sel = slice(start, stop) if idx is None else idx
        t = None if temps is None else temps[sel]
        ls = _log_probs(src.get(start, stop, idx), t, zbuf[:c], lsbuf[:c])
        p = torch.exp(ls, out=zbuf[:c])
        h = torch.linalg.vecdot(p, ls).neg_()
        # log_softmax accumulates sum(exp) lane by lane, which is off by ~1e-5 relative at
        # V ~ 32K; torch.sum is cascaded. Renormalising with it makes H = log Z - <p, ls>/Z
        # (Z = sum p, ~1) accurate to ~1e-6 nats for the price of one cheap reduction.
        sum_p = p.sum(-1)
        nan = torch.isnan(h)
        if bool(nan.any()):
            # A -inf logit gives p = 0 and log p = -inf, and 0 * -inf = NaN: recompute those
            # rows with log p clamped (p stays exactly 0). Rows still NaN after that hold a
            # NaN or +inf logit, or only -inf ones (log_softmax is NaN on the whole row).
            h[nan] = torch.linalg.vecdot(p[nan], ls[nan].clamp_min(_LOG_CLAMP)).neg_()
            bad = torch.isnan(h)
            if bool(bad.any()):
                if raise_on_bad:
                    first = int(bad.nonzero()[0, 0])
                    flat_row = start + first if idx is None else int(idx[first])
                    raise ValueError(
                        f"{src.first_bad(flat_row)} (the first bad position); -inf logits "
                        "are allowed, NaN and +inf are not, and a position needs at least "
                        "one finite logit; pass nan_policy='mask' to skip such positions"
                    )
                bad_out[sel] = bad
                h.masked_fill_(bad, 0.0)
        log_z = sum_p.log()
        h = h.div_(sum_p).add_(log_z)
        # Rounding can push a (near) one-hot row a hair below 0; entropy is never negative.
        h_out[sel] = h.nan_to_num_(0.0).clamp_min_(0.0)  # only bad rows are NaN here
        log_z_out[sel] = log_z.nan_to_num_(0.0)
        if tokens is not None:
            lp = ls.gather(1, tokens[sel].unsqueeze(1)).squeeze(1).sub_(log_z)
            lp_out[sel] = lp.masked_fill_(torch.isnan(lp), 0.0)  # only bad rows are NaN
    return h_out, lp_out, bad_out, log_z_out


class _ChunkedEntropy(torch.autograd.Function):
    """Chunked entropy (and optionally token log-probs) with a recomputing backward.

    forward(logits (..., V), temps (N,) | None, rows (M,) | None, tokens (N,) | None,
            chunk_size, raise_on_bad) -> (H (N,), logprob (N,) or (0,), bad (N,) bool)

    Per chunk: ``ls = log_softmax(z)``, ``p = exp(ls)``, ``Z = sum(p)`` (~1),
    ``H = log Z - <p, ls> / Z``: four whole-chunk kernels (plus the upcast / division when
    needed). Few kernels per chunk matters on CPU: each is a parallel region whose
    synchronisation cost is paid per chunk.
    """

    @staticmethod
    def forward(ctx, logits, temps, rows, tokens, chunk_size, raise_on_bad):
        h_out, lp_out, bad_out, log_z_out = _forward(
            logits, temps, rows, tokens, chunk_size, raise_on_bad
        )
        ctx.save_for_backward(logits, temps, rows, tokens, h_out, log_z_out, bad_out)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(bad_out)
        ctx.set_materialize_grads(False)
        return h_out, lp_out, bad_out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_h, g_lp, _g_bad):
        logits, temps, rows, tokens, h_all, log_z_all, bad_all = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (g_h is None and g_lp is None):
            return None, None, None, None, None, None
        src = _Rows(logits)
        n_rows, vocab = math.prod(src.lead), src.vocab
        device = logits.device
        grad = torch.zeros(logits.shape, dtype=logits.dtype, device=device)
        grad_flat = grad.view(-1, vocab)
        c_max = min(ctx.chunk_size, n_rows if rows is None else rows.numel())
        zbuf = torch.empty(max(c_max, 0), vocab, dtype=torch.float32, device=device)
        lsbuf = torch.empty_like(zbuf)
        gh_all = torch.zeros(n_rows, device=device) if g_h is None else g_h.to(torch.float32)
        glp_all = None if g_lp is None else g_lp.to(torch.float32)

        for start, stop, idx in _chunks(n_rows, rows, ctx.chunk_size):
            c = stop - start
            sel = slice(start, stop) if idx is None else idx
            t = None if temps is None else temps[sel]
            g = _log_probs(src.get(start, stop, idx), t, zbuf[:c], lsbuf[:c])  # log p, recomputed
            g.sub_(log_z_all[sel].unsqueeze(1))  # the forward's renormalisation
            g.clamp_min_(_LOG_CLAMP)  # p stays exactly 0 where log p = -inf; no 0 * inf
            p = torch.exp(g, out=zbuf[:c])
            # dH/dz = -p (log p + H);  dlogp_tok/dz = onehot(tok) - p
            # => dz = -p * (g_h (log p + H) + g_lp) + g_lp * onehot(tok)
            g.add_(h_all[sel].unsqueeze(1)).mul_(gh_all[sel].unsqueeze(1))
            if glp_all is not None:
                g.add_(glp_all[sel].unsqueeze(1))
            g.mul_(p).neg_()
            if glp_all is not None:
                g.scatter_add_(1, tokens[sel].unsqueeze(1), glp_all[sel].unsqueeze(1))
            if t is not None:
                g.div_(t.unsqueeze(1))  # z = x / T  =>  dx = dz / T
            row_bad = bad_all[sel]
            if bool(row_bad.any()):
                # rows dropped by nan_policy="mask" get gradient 0, like masked rows
                g.masked_fill_(row_bad.unsqueeze(1), 0.0)
            if idx is None:
                grad_flat[start:stop] = g
            else:
                grad_flat.index_copy_(0, idx, g.to(grad.dtype))
        return grad, None, None, None, None, None


# --------------------------------------------------------------------------------------------
# Bounds from top-k log-probabilities
# --------------------------------------------------------------------------------------------


def topk_entropy_bounds(top_logprobs: torch.Tensor | Sequence, vocab_size: int) -> EntropyBounds:
    """Bounds on the entropy of a next-token distribution seen only through its top-k logprobs.

    With the top-k probabilities (``p_k`` the smallest), missing mass ``r = 1 - sum p_i`` and
    ``H_k = -sum p_i log p_i`` (DESIGN.md)::

        lower = H_k - r log min(p_k, r)      (missing mass in as few tokens as allowed)
        upper = H_k - r log r + r log(V - k) (missing mass spread evenly over the V - k others)

    ``estimate`` is the midpoint of the interval: with nothing known about the missing tokens
    beyond these bounds, it is the value with the smallest worst-case error (half the width).
    It is never the entropy of the renormalised top-k, which ignores the missing mass and can
    fall below ``lower``.

    Args:
        top_logprobs: either a float tensor ``(..., k)`` of natural-log probabilities (``-inf``
            entries are treated as absent, so ragged rows can be padded with ``-inf``), or an
            OpenAI-style list with one item per position, each item a list of
            ``{"token": ..., "logprob": ...}`` entries (objects with a ``logprob`` attribute, and
            items with a ``top_logprobs`` field, as in ``choices[0].logprobs.content``, work too).
        vocab_size: ``V``, at least the number of entries per position.

    Returns:
        :class:`EntropyBounds` ``(estimate, lower, upper)``: fp32 tensors of shape ``(...)`` (the
        tensor's leading shape, or ``(n_positions,)`` for a list), nats.

    Rounding: logprobs a hair above 0 (up to 1e-4) are clamped to 0, ``r`` is clamped to >= 0,
    and if every token of the vocabulary is listed the missing mass is taken as 0. A top-k mass
    above ``1 + TOPK_MASS_TOLERANCE`` is an error (ValueError): no distribution has it.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if isinstance(top_logprobs, torch.Tensor):
        if not top_logprobs.is_floating_point() or top_logprobs.dim() < 1:
            raise ValueError("top_logprobs tensor must be floating point with shape (..., k)")
        lp = top_logprobs.detach().to(torch.float64)
        bad = torch.isnan(lp) | (lp > _LOGPROB_TOLERANCE)
        if bool(bad.any()):
            pos = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"top_logprobs{list(pos)} = {float(lp[pos])}: logprobs must be <= 0 and not NaN"
            )
    else:
        lp = _logprobs_from_list(top_logprobs)
    lp = lp.clamp_max(0.0)
    present = lp > float("-inf")
    k = present.sum(-1)  # entries actually given, per position
    if bool((k > vocab_size).any()):
        raise ValueError(
            f"{int(k.max())} top logprobs given for one position but vocab_size is {vocab_size}"
        )
    p = lp.exp()  # 0 for absent entries
    mass = p.sum(-1)
    over = mass > 1.0 + TOPK_MASS_TOLERANCE
    if bool(over.any()):
        pos = tuple(int(i) for i in over.nonzero()[0])
        raise ValueError(
            f"top-k probabilities at position {list(pos)} sum to {float(mass[pos]):.6g} > 1: "
            "not logprobs of one distribution (duplicated tokens, or not normalised?)"
        )
    h_k = -torch.special.xlogy(p, p).sum(-1)
    p_min = torch.where(present, p, torch.ones_like(p)).amin(-1)  # 1 (no constraint) if k = 0
    rest = (vocab_size - k).to(torch.float64)
    r = (1.0 - p.sum(-1)).clamp_min(0.0)
    r = torch.where(rest > 0, r, torch.zeros_like(r))  # every token listed: r is rounding
    lower = h_k - torch.special.xlogy(r, torch.minimum(p_min, r))
    upper = h_k - torch.special.xlogy(r, r) + torch.special.xlogy(r, rest.clamp_min(1.0))
    estimate = 0.5 * (lower + upper)
    return EntropyBounds(estimate.float(), lower.float(), upper.float())


def _logprobs_from_list(items: Sequence) -> torch.Tensor:
    """OpenAI-style top_logprobs (one list of entries per position) -> (n, k_max), -inf padded."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise ValueError(
            "top_logprobs must be a tensor (..., k) or a list with one item per position"
        )
    rows: list[list[float]] = []
    for i, item in enumerate(items):
        entries = _field(item, "top_logprobs") if _has_field(item, "top_logprobs") else item
        if isinstance(entries, str | bytes | Mapping) or not isinstance(entries, Sequence):
            raise ValueError(
                f"top_logprobs[{i}] must be a list of {{'token', 'logprob'}} entries, "
                f"got {type(entries).__name__}"
            )
        row = []
        for j, entry in enumerate(entries):
            if not _has_field(entry, "logprob"):
                raise ValueError(f"top_logprobs[{i}][{j}] has no 'logprob'")
            value = _field(entry, "logprob")
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or math.isnan(value)
                or value > _LOGPROB_TOLERANCE
            ):
                raise ValueError(
                    f"top_logprobs[{i}][{j}]['logprob'] must be a number <= 0, got {value!r}"
                )
            row.append(float(value))
        rows.append(row)
    k_max = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), k_max), float("-inf"), dtype=torch.float64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return out


def _has_field(obj: object, name: str) -> bool:
    return name in obj if isinstance(obj, Mapping) else hasattr(obj, name)


def _field(obj: object, name: str):
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)

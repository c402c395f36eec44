"""Tests of the transformers backend: per-row temperature LogitsProcessor and the scheduled one."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor

from agentropy.control.base import ConstantTemperature, StepObservation
from agentropy.control.hf import (
    ScheduledTemperatureProcessor,
    TemperatureLogitsProcessor,
    warp_scores,
)
from agentropy.control.temperature import PhaseTemperatureConfig, schedule_from_name
from agentropy.trace import PHASE_CODE, PHASES

VOCAB = 48


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id = None  # fixed length unless a test sets eos
    m.generation_config.pad_token_id = 0
    return m


def _prompt(b=4, t=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    return ids, torch.ones_like(ids)


def _generate(model, procs, n=6, **kw):
    ids, mask = _prompt(**({"b": kw.pop("b")} if "b" in kw else {}))
    kw.setdefault("do_sample", True)
    torch.manual_seed(0)
    return model.generate(
        ids,
        attention_mask=mask,
        logits_processor=procs,
        temperature=1.0,
        top_k=None,
        top_p=None,
        max_new_tokens=n,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        **kw,
    )


# ------------------------------------------------------------------------------ warp_scores


def test_each_row_is_divided_by_its_own_temperature():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(4, 50, generator=g) * 3).to(torch.float16)
    z[1, :5] = -math.inf  # masked tokens stay probability 0
    t = torch.tensor([0.3, 0.7, 1.0, 1.7])
    out = warp_scores(z, t)
    assert out.dtype == torch.float32
    for r in range(4):
        zr = z[r].float()
        assert torch.equal(out[r], zr / t[r])
        assert torch.allclose(torch.softmax(out[r], -1), torch.softmax(zr / t[r], -1))
    assert not torch.isnan(torch.softmax(out, -1)).any()


def test_zero_temperature_row_becomes_its_argmax_and_other_rows_are_untouched():
    z = torch.tensor([[0.1, 2.0, 1.9], [0.5, 0.2, 0.4]])
    out = warp_scores(z, torch.tensor([0.0, 0.5]))
    assert out[0].tolist() == [-math.inf, 2.0, -math.inf]
    assert torch.softmax(out[0], -1).tolist() == [0.0, 1.0, 0.0]
    assert torch.equal(out[1], z[1] / 0.5)
    with pytest.raises(ValueError, match="rows \\[0\\]"):
        warp_scores(z, torch.tensor([0.0, 0.5]), zero_temperature="error")


@pytest.mark.parametrize("bad", [[-0.1, 1.0], [math.nan, 1.0]])
def test_negative_or_nan_temperature_raises(bad):
    with pytest.raises(ValueError, match=">= 0"):
        warp_scores(torch.zeros(2, 3), torch.tensor(bad))


def test_one_temperature_per_row_is_required():
    with pytest.raises(ValueError, match="3 temperatures for 2 rows"):
        warp_scores(torch.zeros(2, 3), torch.ones(3))


def test_processor_from_list_or_callable():
    z = torch.randn(2, 7)
    ids = torch.zeros(2, 3, dtype=torch.long)
    fixed = TemperatureLogitsProcessor([0.5, 2.0])
    by_fn = TemperatureLogitsProcessor(temperatures_fn=lambda _ids: torch.tensor([0.5, 2.0]))
    expected = z / torch.tensor([[0.5], [2.0]])
    assert torch.equal(fixed(ids, z), expected)
    assert torch.equal(by_fn(ids, z), expected)
    with pytest.raises(ValueError, match="exactly one"):
        TemperatureLogitsProcessor()


# ------------------------------------------------------------------------- with model.generate


def test_generate_applies_the_recorded_temperature_per_row_and_token(model):
    phases = ["plan", "act", "recover", "answer"]
    proc = ScheduledTemperatureProcessor(schedule_from_name("phase"), phase_fn=lambda ids: phases)
    out = _generate(model, [proc], n=6)
    cfg = PhaseTemperatureConfig()
    assert [len(t) for t in proc.temperatures] == [6] * 4
    for r, p in enumerate(phases):
        assert proc.temperatures[r] == pytest.approx([getattr(cfg, p)] * 6)
        assert proc.phases[r] == [PHASE_CODE[p]] * 6
    # generate's scores are what it sampled from; logits are the raw model outputs.
    for i, (scores, logits) in enumerate(zip(out.scores, out.logits, strict=True)):
        t = torch.tensor([proc.temperatures[r][i] for r in range(4)])
        assert torch.equal(scores, logits.float() / t[:, None])


def test_dynamic_schedule_records_what_was_applied(model):
    # EDT's temperature changes every token; the phase callback switches phases mid-generation.
    proc = ScheduledTemperatureProcessor(
        schedule_from_name("edt"), phase_fn=lambda ids: ids[:, -1] % len(PHASES)
    )
    out = _generate(model, [proc], n=5)
    temps = torch.tensor(proc.temperatures)  # (B, n)
    assert temps.unique().numel() > 4
    for i, (scores, logits) in enumerate(zip(out.scores, out.logits, strict=True)):
        assert torch.allclose(scores, logits.float() / temps[:, i, None])


def test_greedy_rows_inside_sampling_generate_match_greedy_decoding(model):
    proc = ScheduledTemperatureProcessor(ConstantTemperature(0.0))
    sampled = _generate(model, [proc], n=6).sequences
    greedy = _generate(model, [], n=6, do_sample=False).sequences
    assert torch.equal(sampled, greedy)
    assert proc.temperatures == [[0.0] * 6] * 4


def test_zero_temperature_while_sampling_can_be_an_error(model):
    proc = ScheduledTemperatureProcessor(schedule_from_name("greedy"), zero_temperature="error")
    with pytest.raises(ValueError, match="T must be"):
        _generate(model, [proc], n=2)


class _ForceToken(LogitsProcessor):
    """Force ``token`` for ``row`` at generation step ``step`` (0-based)."""

    def __init__(self, prompt_len, row, step, token):
        self.prompt_len, self.row, self.step, self.token = prompt_len, row, step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len == self.step:
            scores = scores.clone()
            scores[self.row] = -math.inf
            scores[self.row, self.token] = 0.0
        return scores


def test_rows_that_emitted_eos_stop_recording_and_new_generate_resets(model):
    eos = 2
    proc = ScheduledTemperatureProcessor(schedule_from_name("phase"), eos_token_id=eos)
    out = _generate(model, [_ForceToken(5, row=0, step=1, token=eos), proc], n=5, eos_token_id=eos)
    assert out.sequences[0, 5 + 1] == eos
    lengths = [len(t) for t in proc.temperatures]
    assert lengths[0] == 2  # steps 0 and 1; inactive from step 2 on
    gen = out.sequences[:, 5:]
    for r in range(gen.shape[0]):  # any row may also sample eos by chance
        hits = (gen[r] == eos).nonzero().flatten().tolist()
        assert lengths[r] == (hits[0] + 1 if hits else gen.shape[1])
    _generate(model, [proc], n=3, b=2)
    assert [len(t) for t in proc.temperatures] == [3, 3]  # a new generate starts afresh


@pytest.mark.parametrize(
    ("name", "recover_share", "n"),
    [
        ("phase:horizon=2,recover_budget=12,contraction_factor=0.5", 0.5, 40),
        # horizon - window + 1 = 6: the first 5 tokens of a stretch get no sampling entropy.
        ("phase:horizon=8,contraction_window=3,recover_budget=50,contraction_factor=0.5", 0.9, 60),
    ],
)
def test_processor_equals_a_full_observation_replay(model, name, recover_share, n):
    """Same temperatures (so the same tokens for a seed) as stepping the schedule by hand with
    every observation computed for every row: the processor's shortcuts (sampling entropy only
    where the schedule can read it, incremental eos, lazy records) change no result."""
    from agentropy.entropy import token_entropy

    g = torch.Generator().manual_seed(3)
    table = torch.randint(0, 4, (VOCAB,), generator=g)
    # Many recover stretches: triggers, windows, guards.
    table[torch.rand(VOCAB, generator=g) < recover_share] = 2
    proc = ScheduledTemperatureProcessor(
        schedule_from_name(name), lambda ids: table[ids[:, -1]], eos_token_id=7
    )
    out = _generate(model, [proc], n=n, eos_token_id=7)
    sched = schedule_from_name(name)
    seqs, b = out.sequences, out.sequences.shape[0]
    p0 = seqs.shape[1] - len(out.logits)
    state, prev_h = sched.init(b), torch.full((b,), math.nan)
    done = torch.zeros(b, dtype=torch.bool)
    temps_ref: list[list[float]] = [[] for _ in range(b)]
    modes = set()
    for t, logits in enumerate(out.logits):
        if t:
            done |= seqs[:, p0 + t - 1] == 7
        phase = table[seqs[:, p0 + t - 1]]
        obs = StepObservation(
            phase=phase,
            entropy=token_entropy(logits),
            prev_sampling_entropy=prev_h,
            active=~done,
            reset=torch.full((b,), t == 0),
        )
        temps, state = sched.update(state, obs)
        prev_h = torch.where(~done, token_entropy(logits.float() / temps[:, None]), prev_h)
        modes |= set(state.mode[~done].tolist())
        for r in range(b):
            if not done[r]:
                temps_ref[r].append(float(temps[r]))
    assert proc.temperatures == temps_ref
    assert modes >= {1, 2}  # both guards acted
    for key, a, b in zip(state._fields, proc.state, state, strict=True):
        # The processor's (NumPy) state, read as tensors, is the replay's, except in window
        # slots that are never read (NaN there: their sampling entropy was skipped).
        assert a.dtype == b.dtype
        if key == "recover_window":
            a = torch.where(a.isnan(), b, a)
        assert torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0)), key


class _HalfEntropy:
    """A schedule with only the protocol's required members (no ``update_arrays``, no
    ``reads_sampling_entropy``): T = 0.5 + model entropy / 10; records what it was given."""

    name = "half-entropy"

    def __init__(self):
        self.seen: list[StepObservation] = []

    def init(self, batch_size):
        return None

    def update(self, state, obs):
        self.seen.append(obs)
        return 0.5 + obs.entropy / 10, state


def test_a_schedule_without_the_optional_members_gets_every_observation(model):
    from agentropy.entropy import token_entropy

    sched = _HalfEntropy()
    proc = ScheduledTemperatureProcessor(sched)
    out = _generate(model, [proc], n=4)
    assert len(sched.seen) == 4
    for i, (obs, scores, logits) in enumerate(zip(sched.seen, out.scores, out.logits, strict=True)):
        assert isinstance(obs.entropy, torch.Tensor)
        assert torch.equal(obs.entropy, token_entropy(logits))
        assert torch.equal(scores, logits.float() / (0.5 + obs.entropy / 10)[:, None])
        assert obs.reset.tolist() == [i == 0] * 4
        # Sampling entropy of every row's previous token (the schedule did not say which).
        if i:
            assert torch.equal(obs.prev_sampling_entropy, token_entropy(out.scores[i - 1]))
        else:
            assert obs.prev_sampling_entropy.isnan().all()
    assert proc.state is None

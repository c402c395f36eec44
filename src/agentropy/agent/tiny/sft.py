"""Supervised warm-start of the tiny agent: the recipe, the model, copy drills mixed into
transcript batches, the training loop and held-out evaluation.

:class:`TinyRecipe` holds every knob; :func:`fit` trains a ``LlamaForCausalLM`` with the loss
masked to assistant tokens (AdamW, warmup + cosine schedule). Training starts with a copy-drill
warm-up (:func:`~agentropy.agent.tiny.corpus.copy_drill`: short synthetic chats whose reply can
only be predicted by copying from the prompt) and keeps a few drills in every transcript batch.
The warm-up runs until the drills are learnt (``drill_target_loss``), not for a fixed number of
steps: when the loss leaves its plateau varies with library versions and threads, and a fixed
budget made the same recipe give 68 % or 8 % greedy L1 on two machines. Without it the model sits on the pre-induction-head plateau for the whole budget: it learns the
transcript templates but writes a memorised name instead of the question's and a guessed number
instead of the tool result's (0/24 greedy L1 successes with the earlier drill-free recipe). The
shape matters as much as the drills: on echo drills alone a 2-layer, 8-head model's loss fell
from ~2.9 to ~0.7 nats between steps 400 and 800, while the earlier 4-layer, 4-head one was
still at 2.8 after 275 steps at three times the cost per step. The system turn and tool list,
identical in every transcript and most of its tokens, run once per batch and their key/value
cache is shared by the batch (:func:`shared_prefix_length`; exact, tested against a full forward
pass). Saving, caching and loading are in :mod:`agentropy.agent.tiny.store`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from agentropy.agent.tiny.corpus import (
    _expert_conversations,
    _rename_entities,
    _world,
    arith_drill,
    copy_drill,
    decision_drills,
)
from agentropy.agent.tiny.template import (
    CHAT_TEMPLATE,
    Example,
    assistant_labels,
    build_tokenizer,
)
from agentropy.env.toolworld import LEVELS

if TYPE_CHECKING:
    import torch
    from transformers import BatchEncoding, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "FitResult",
    "TinyRecipe",
    "build_model",
    "evaluate",
    "fit",
    "polish",
    "shared_prefix_length",
]

# Bump when the template, tokenizer construction or training procedure changes in a way that
# makes agents cached under the same recipe hash stale.
_FORMAT_VERSION = 5
_DRILL_LOSS_WINDOW = 25
"""Drill steps averaged for :attr:`TinyRecipe.drill_target_loss`."""


_POLISH_FIELDS = ("polish_steps", "polish_lr", "polish_warmup_steps", "decision_groups")


@dataclass(frozen=True)
class TinyRecipe:
    """Every knob of the tiny agent: data, tokenizer, model size and optimisation.

    Two recipes with equal fields produce the same agent (same :attr:`recipe_hash`, same cache
    directory).
    """

    seed: int = 0
    """Seed for model initialisation, batch order and expert sampling."""
    world_seed: int = 0
    """``ToolWorldConfig(seed=...)``: which knowledge base and task generator to train on."""
    levels: tuple[int, ...] = LEVELS
    """ToolWorld levels to draw expert transcripts from."""
    n_tasks_per_level: int = 2500
    """Train-split tasks per level (one expert transcript each). 2,500 (10,000 transcripts,
    about 4.8 epochs over ``steps``): the 1,000 of an earlier recipe with 800 steps left the
    model at 26/52/22/0 % greedy L0-L3 (50 tasks per level; RESULTS.md has this recipe's
    200-task table)."""
    rename_prob: float = 0.8
    """Share of train transcripts whose entity names are replaced by fresh random names.

    With ~90 train entities a small model memorises names instead of learning to copy them
    from the question, and then fails on unseen test-split names; renaming makes copying the
    only way to predict a name. Names are consonant-vowel syllable pairs, never a world entity.
    """
    n_eval_tasks_per_level: int = 16
    """Held-out test-split tasks per level for assistant-token loss and accuracy."""
    tokenizer_tasks_per_level: int = 64
    """Train-split tasks per level whose transcripts train the BPE tokenizer."""
    vocab_size: int = 1024
    """BPE vocabulary size before special and marker tokens are added."""
    hidden_size: int = 128
    """Model width."""
    n_layers: int = 3
    """Decoder layers. 3: the 2-layer model of the session-4 recipe miscopied over L3's longer
    context (second entity name, digits) and solved 5.5 % of held-out L3 tasks greedily; this
    3-layer one solved 42 % (recovering from 42 % of its failures) but memorised L0 sums worse
    (40 % vs 82.5 %) and confused ``times`` with ``+`` on L2 (76 % vs 95.5 %) until the
    arithmetic drills (:attr:`arith_mix`): RESULTS.md."""
    n_heads: int = 8
    """Attention heads (also key/value heads: no grouped-query attention)."""
    intermediate_size: int = 384
    """MLP width (SwiGLU)."""
    max_length: int = 768
    """Transcripts are truncated to this many tokens for training and evaluation."""
    steps: int = 3000
    """Transcript steps (after the ``drill_steps`` warm-up; see :attr:`total_steps`). The
    held-out loss was still falling at 800; 3,000 take about 65 min on one free core (3 layers)."""
    batch_size: int = 16
    """Transcripts per step."""
    lr: float = 3e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 50
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine decays to ``lr * min_lr_ratio``."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    drill_steps: int = 1500
    """Most copy-drill warm-up steps before the transcript steps (see :func:`copy_drill`)."""
    drill_target_loss: float = 0.5
    """The drill warm-up ends early once the mean drill loss of the last 25 steps is below
    this (nats; 0: always run ``drill_steps``). When copying is learnt varies by hundreds of
    steps with library versions and thread counts (the loss leaves a ~2.3-nat plateau
    suddenly); a fixed drill budget turned that into a 8 % vs 68 % greedy-L1 lottery. 0.5
    rather than 1.0: the copies the model then makes in transcripts (entity names, tool values)
    are what L1-L2 need (the 2 x 128 model needed about 1,200 drill steps to get there, the
    3 x 128 one 674)."""
    drill_batch_size: int = 32
    """Copy drills per warm-up step."""
    drill_mix: int = 8
    """Copy drills mixed into every transcript step (0: none), their loss weighted by
    ``drill_weight``, so the copying learnt in the warm-up is not forgotten."""
    drill_weight: float = 1.0
    """Weight of the drill loss added to the transcript loss in mixed steps."""
    arith_mix: int = 8
    """Arithmetic drills (:func:`~agentropy.agent.tiny.corpus.arith_drill`: L0 sums and calc
    operators) mixed into every transcript step (0: none), their own mean loss weighted by
    ``drill_weight``. Without them the 3 x 128 agent answered most held-out L0 questions with
    ``10`` (40.5 % greedy) and wrote ``+`` for ``times`` (L2) and for ``minus`` (L3); with
    them (recipe ``85652a1f710b``) greedy L0 99.5 %, L2 91.5 %, L3 49.5 % (200 held-out tasks
    each), but L1 fell from 97 % to 30.5 % (it converts units the question never asked for:
    RESULTS.md)."""
    polish_steps: int = 300
    """Decision-polish steps after the transcript steps (0: none; see :func:`polish`): a fresh
    AdamW on a fresh sample of train-split transcripts, with copy and arithmetic drills as
    before plus :attr:`decision_groups` minimal-pair decision drills per step. Added on top of
    recipe ``85652a1f710b`` (which converted units on 70 % of held-out L1 tasks): 300 steps
    (~5 min on one thread) took its greedy L1 from 30 % to 100 % and L3 from 50 % to 77 % (100
    held-out tasks each; RESULTS.md has the 200-task table)."""
    polish_lr: float = 1e-3
    """Peak learning rate of the polish (linear warmup over ``polish_warmup_steps``, then a
    cosine decay to ``polish_lr * min_lr_ratio``). 3e-4 for 200 steps moved greedy L1 only to
    22-43 %."""
    polish_warmup_steps: int = 20
    """Warmup steps of the polish."""
    decision_groups: int = 6
    """Groups of four minimal-pair decision drills per polish step
    (:func:`~agentropy.agent.tiny.corpus.decision_drills`), their own mean loss on the decision
    turn, weighted by ``drill_weight``."""

    def __post_init__(self) -> None:
        # Accept any sequence of levels but store a tuple, so the recipe stays hashable.
        object.__setattr__(self, "levels", tuple(self.levels))
        positive = (
            "n_tasks_per_level",
            "n_eval_tasks_per_level",
            "tokenizer_tasks_per_level",
            "hidden_size",
            "n_layers",
            "n_heads",
            "intermediate_size",
            "max_length",
            "steps",
            "batch_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TinyRecipe.{name} must be >= 1, got {getattr(self, name)}")
        if not self.levels or any(level < 0 for level in self.levels):
            raise ValueError(f"TinyRecipe.levels must be non-negative levels, got {self.levels}")
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"TinyRecipe.hidden_size ({self.hidden_size}) must be divisible by n_heads "
                f"({self.n_heads})"
            )
        if self.vocab_size < 300:
            raise ValueError(
                f"TinyRecipe.vocab_size must be >= 300 (256 bytes plus merges), got "
                f"{self.vocab_size}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TinyRecipe.lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TinyRecipe.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"TinyRecipe.warmup_steps must be in [0, steps), got {self.warmup_steps} "
                f"with steps={self.steps}"
            )
        if not 0 <= self.rename_prob <= 1:
            raise ValueError(f"TinyRecipe.rename_prob must be in [0, 1], got {self.rename_prob}")
        for name in (
            "drill_steps",
            "drill_batch_size",
            "drill_mix",
            "arith_mix",
            "drill_weight",
            "drill_target_loss",
            "polish_steps",
            "polish_warmup_steps",
            "decision_groups",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"TinyRecipe.{name} must be >= 0, got {getattr(self, name)}")
        if self.drill_steps and not self.drill_batch_size:
            raise ValueError("TinyRecipe.drill_steps > 0 needs drill_batch_size > 0")
        if not (self.polish_lr > 0 and math.isfinite(self.polish_lr)):
            raise ValueError(
                f"TinyRecipe.polish_lr must be a positive finite number, got {self.polish_lr}"
            )
        if self.polish_steps and self.polish_warmup_steps >= self.polish_steps:
            raise ValueError(
                f"TinyRecipe.polish_warmup_steps must be < polish_steps, got "
                f"{self.polish_warmup_steps} with polish_steps={self.polish_steps}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"TinyRecipe.weight_decay must be >= 0, got {self.weight_decay}")

    @classmethod
    def quick(cls) -> TinyRecipe:
        """A reduced recipe for tests and ``agentropy bootstrap --quick`` (well under a minute)."""
        return cls(
            n_tasks_per_level=48,
            n_eval_tasks_per_level=4,
            tokenizer_tasks_per_level=32,
            hidden_size=64,
            n_layers=2,
            n_heads=2,
            intermediate_size=128,
            max_length=768,
            steps=60,
            batch_size=4,
            warmup_steps=10,
            drill_steps=400,
            drill_batch_size=16,
            drill_mix=4,
            arith_mix=4,
            polish_steps=6,
            polish_warmup_steps=2,
            decision_groups=1,
        )

    @property
    def total_steps(self) -> int:
        """Most optimiser steps: copy-drill warm-up, transcript and polish steps (the warm-up
        may end early, see :attr:`drill_target_loss`)."""
        return self.drill_steps + self.steps + self.polish_steps

    @property
    def recipe_hash(self) -> str:
        """12 hex digits identifying everything that shapes the agent: the recipe fields, the
        training-format version, the ToolWorld version (tasks, tool outputs, expert
        transcripts) and the chat template."""
        from agentropy.env.toolworld import TOOLWORLD_VERSION

        fields = dataclasses.asdict(self)
        if not self.polish_steps:
            # Without a polish stage the polish fields shape nothing: such a recipe keeps the
            # hash it had before they existed (the shipped agent's main stage, 85652a1f710b).
            for name in _POLISH_FIELDS:
                del fields[name]
        payload = {
            "format_version": _FORMAT_VERSION,
            "toolworld_version": TOOLWORLD_VERSION,
            "chat_template": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest(),
            **fields,
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view of the fields."""
        return {**dataclasses.asdict(self), "levels": list(self.levels)}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def build_model(recipe: TinyRecipe, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` sized by ``recipe`` (seeded by ``recipe.seed``)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        num_key_value_heads=recipe.n_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _encode_all(
    tokenizer: PreTrainedTokenizerFast,
    conversations: Sequence[Sequence[dict[str, Any]]],
    tools: Sequence[dict[str, Any]],
    max_length: int,
) -> list[Example]:
    examples = [
        assistant_labels(tokenizer, c, tools=tools, max_length=max_length) for c in conversations
    ]
    return [e for e in examples if any(label != -100 for label in e[1])]


def shared_prefix_length(examples: Sequence[Example]) -> int:
    """Length of the longest token prefix common to all ``examples`` that holds no label.

    Every transcript starts with the same system turn (and tool list), a large share of each
    sequence; training and evaluation run it once per batch and reuse its key/value cache. The
    prefix also stops one token before the first labelled token, whose prediction needs the
    last prefix position inside the suffix pass. At least one token is left in every suffix.
    """
    if not examples:
        return 0
    first = examples[0][0]
    n = min(len(ids) for ids, _ in examples) - 1
    for ids, labels in examples:
        k = 0
        while k < n and ids[k] == first[k] and labels[k] == -100:
            k += 1
        n = k
    # labels[n] may be a label; the token at n-1 predicts it, so keep n-1 in the suffix.
    return max(0, n - 1)


def _collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels, all (B, T)."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _assistant_logits(
    model: LlamaForCausalLM, examples: Sequence[Example], prefix_len: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a label, and those labels: ``(N, V)``, ``(N,)``.

    The shared prefix (``prefix_len`` tokens, identical in every example) is run once and its
    cache repeated over the batch; gradients flow through it. Equivalent to a full forward pass
    over the padded batch (tested), at a fraction of the cost.
    """
    import torch

    from agentropy.agent.runner import forward_kwargs

    batch_size = len(examples)
    cache = None
    # transformers >= 5.24 names the cache `cache`, older 5.x `past_key_values` (both, in and out).
    cache_kw, _ = forward_kwargs(model)
    if prefix_len > 0:
        prefix = torch.tensor([examples[0][0][:prefix_len]])  # (1, P)
        cache = model(input_ids=prefix, use_cache=True)[cache_kw]
        cache.batch_repeat_interleave(batch_size)
    batch = _collate([(ids[prefix_len:], labs[prefix_len:]) for ids, labs in examples], pad_id)
    attention = torch.cat(
        [torch.ones(batch_size, prefix_len, dtype=torch.long), batch["attention_mask"]], dim=1
    )  # (B, P + T)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=attention, use_cache=False, **{cache_kw: cache}
    ).logits  # (B, T, V)
    # Position t predicts token t + 1 (labels are unshifted).
    target = batch["labels"][:, 1:]  # (B, T-1)
    mask = target != -100
    return logits[:, :-1][mask].float(), target[mask]


def _batches(
    n_examples: int, lengths: Sequence[int], recipe: TinyRecipe, *, seed: int | None = None
) -> Iterator[list[int]]:
    """Endless batches of indices; similar lengths share a batch to waste little on padding.
    The order is a function of ``seed`` (default ``recipe.seed``)."""
    rng = random.Random(recipe.seed if seed is None else seed)
    pool = recipe.batch_size * 8
    while True:
        order = list(range(n_examples))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, n_examples, pool):
            chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
            batches.extend(
                chunk[b : b + recipe.batch_size] for b in range(0, len(chunk), recipe.batch_size)
            )
        rng.shuffle(batches)
        yield from batches


def _lr_factor(step: int, recipe: TinyRecipe, *, transcript_step: int | None = None) -> float:
    """LR multiplier of optimiser step ``step``: linear warmup to 1 over the first
    ``warmup_steps``, 1 through the copy-drill warm-up (``transcript_step`` None), then a cosine
    decay to ``min_lr_ratio`` over the transcript steps (``transcript_step`` 0 .. steps - 1).

    The drill warm-up has no fixed length (it ends when the drills are learnt, see
    :attr:`TinyRecipe.drill_target_loss`), so the decay is anchored to the transcript steps."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    if transcript_step is None:
        return 1.0
    progress = min(1.0, transcript_step / max(1, recipe.steps - 1))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine


def _polish_lr_factor(step: int, recipe: TinyRecipe) -> float:
    """LR multiplier of polish step ``step``: linear warmup, then cosine to ``min_lr_ratio``."""
    if step < recipe.polish_warmup_steps:
        return (step + 1) / recipe.polish_warmup_steps
    span = max(1, recipe.polish_steps - 1 - recipe.polish_warmup_steps)
    progress = min(1.0, (step - recipe.polish_warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine


def _adamw(model: LlamaForCausalLM, recipe: TinyRecipe, lr: float) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (no decay on norms, 1-D)."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.95),
    )


def _step(
    model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float
) -> None:
    """One optimiser step at learning rate ``lr`` (gradient norm clipped to 1)."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def _mean_loss(model: LlamaForCausalLM, examples: Sequence[Example], pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens of ``examples`` (nats/token)."""
    import torch

    logits, target = _assistant_logits(model, examples, shared_prefix_length(examples), pad_id)
    return torch.nn.functional.cross_entropy(logits, target)


def _copy_drills(tokenizer: PreTrainedTokenizerFast, rng: random.Random, n: int) -> list[Example]:
    """``n`` copy drills (:func:`~agentropy.agent.tiny.corpus.copy_drill`), encoded."""
    return [assistant_labels(tokenizer, copy_drill(rng)) for _ in range(n)]


def _arith_drills(
    tokenizer: PreTrainedTokenizerFast, rng: random.Random, n: int, *, max_operand: int
) -> list[Example]:
    """``n`` arithmetic drills (:func:`~agentropy.agent.tiny.corpus.arith_drill`), encoded."""
    return [
        assistant_labels(tokenizer, arith_drill(rng, max_operand=max_operand)) for _ in range(n)
    ]


def _last_turn_only(example: Example) -> Example:
    """``example`` with labels kept only on its last run of labelled tokens (the last turn)."""
    ids, labels = example
    end = max(i for i, label in enumerate(labels) if label != -100)
    start = end
    while start > 0 and labels[start - 1] != -100:
        start -= 1
    return ids, [label if i >= start else -100 for i, label in enumerate(labels)]


def polish(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    recipe: TinyRecipe,
    *,
    on_step: Callable[[float], None] | None = None,
) -> list[float]:
    """The last stage of :func:`fit`: ``recipe.polish_steps`` steps of decision polish, in place.

    Each step trains on a batch of train-split expert transcripts freshly sampled for this stage
    (task seed ``recipe.seed + 1``: other tasks and wordings than the main stage's), plus copy
    and arithmetic drills as in the main stage and ``recipe.decision_groups`` groups of
    minimal-pair decision drills (:func:`~agentropy.agent.tiny.corpus.decision_drills`, loss on
    the decision turn only), with a fresh AdamW at ``recipe.polish_lr``. Runnable on a saved
    agent of the same recipe without the polish (that is how the shipped agent was made: the
    main stage is recipe ``85652a1f710b``, RESULTS.md). ``on_step`` receives each step's loss.
    Returns the per-step losses (nats/token, drills included).
    """
    import torch

    if recipe.polish_steps == 0:
        return []
    seed = recipe.seed + 1
    world = _world(recipe.world_seed)
    tools = world.tool_schemas()
    conversations = _expert_conversations(
        world, split="train", levels=recipe.levels, n=recipe.n_tasks_per_level, seed=seed
    )
    conversations = _rename_entities(world, conversations, prob=recipe.rename_prob, seed=seed)
    train = _encode_all(tokenizer, [c for _, c in conversations], tools, recipe.max_length)
    prefix_len = shared_prefix_length(train)
    pad_id = tokenizer.pad_token_id
    batches = _batches(len(train), [len(ids) for ids, _ in train], recipe, seed=seed)
    copy_rng = random.Random(f"polish-drill:{recipe.seed}")
    arith_rng = random.Random(f"polish-arith:{recipe.seed}")
    decision_rng = random.Random(f"polish-decision:{recipe.seed}")
    max_operand = world.config.l0_max_operand
    optimizer = _adamw(model, recipe, recipe.polish_lr)
    model.train()
    losses: list[float] = []
    for step in range(recipe.polish_steps):
        examples = [train[i] for i in next(batches)]
        logits, target = _assistant_logits(model, examples, prefix_len, pad_id)
        loss = torch.nn.functional.cross_entropy(logits, target)
        if recipe.drill_weight:
            if recipe.drill_mix:
                drills = _copy_drills(tokenizer, copy_rng, recipe.drill_mix)
                loss = loss + recipe.drill_weight * _mean_loss(model, drills, pad_id)
            if recipe.arith_mix:
                drills = _arith_drills(
                    tokenizer, arith_rng, recipe.arith_mix, max_operand=max_operand
                )
                loss = loss + recipe.drill_weight * _mean_loss(model, drills, pad_id)
            if recipe.decision_groups:
                chats = decision_drills(
                    world,
                    decision_rng,
                    n_groups=recipe.decision_groups,
                    rename_prob=recipe.rename_prob,
                )
                drills = [
                    _last_turn_only(assistant_labels(tokenizer, chat, tools=tools))
                    for chat in chats
                ]
                loss = loss + recipe.drill_weight * _mean_loss(model, drills, pad_id)
        _step(model, optimizer, loss, recipe.polish_lr * _polish_lr_factor(step, recipe))
        losses.append(loss.item())
        if on_step is not None:
            on_step(losses[-1])
    return losses


def evaluate(
    model: LlamaForCausalLM,
    examples: Sequence[Example],
    *,
    pad_id: int,
    batch_size: int = 8,
) -> dict[str, float]:
    """Assistant-token metrics of ``model`` on ``examples`` (from :func:`assistant_labels`).

    Returns ``loss`` (mean negative log-likelihood, nats/token), ``accuracy`` (greedy top-1 hit
    rate), ``entropy`` (mean model entropy at T = 1, nats) and ``tokens`` (how many). Sums over
    tokens and divides once (no mean of means).
    """
    import torch

    from agentropy.entropy import logprobs_and_entropy

    prefix_len = shared_prefix_length(examples)
    total_loss = total_correct = total_entropy = 0.0
    count = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            logits, target = _assistant_logits(
                model, examples[start : start + batch_size], prefix_len, pad_id
            )
            logprob, entropy = logprobs_and_entropy(logits, target)  # (N,), (N,) nats
            total_loss += -logprob.sum().item()
            total_correct += (logits.argmax(-1) == target).sum().item()
            total_entropy += entropy.sum().item()
            count += target.numel()
    model.train(was_training)
    n = max(count, 1)
    return {
        "loss": total_loss / n,
        "accuracy": total_correct / n,
        "entropy": total_entropy / n,
        "tokens": float(count),
    }


def _sample_generation(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    conversation: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]],
    max_new_tokens: int = 96,
) -> dict[str, str]:
    """Greedy first assistant turn for the prompt of ``conversation`` (up to its first reply)."""
    import torch

    first = next(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    # return_dict=True gives a BatchEncoding (the stubs type every return shape of the call).
    prompt = cast(
        "BatchEncoding",
        tokenizer.apply_chat_template(
            list(conversation[:first]),
            tools=list(tools),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ),
    )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False)
    model.train(was_training)
    new = out[0, prompt["input_ids"].shape[1] :]
    return {
        "question": str(conversation[first - 1].get("content", "")),
        "expected": str(conversation[first].get("content", "")),
        "generated": str(tokenizer.decode(new, skip_special_tokens=False)),  # one sequence
    }


class FitResult(NamedTuple):
    """What :func:`fit` returns: the trained agent and the numbers of its build record."""

    model: LlamaForCausalLM
    """The trained model (train mode)."""
    tokenizer: PreTrainedTokenizerFast
    """Its tokenizer (:func:`~agentropy.agent.tiny.template.build_tokenizer`)."""
    losses: list[float]
    """Per optimiser step: the step's total loss, drill loss included (nats/token)."""
    drill_losses: list[float]
    """The drills' own loss, per warm-up step and then per mixed step (nats/token)."""
    drill_steps_run: int
    """Copy-drill warm-up steps actually run (at most ``drill_steps``; see
    :attr:`TinyRecipe.drill_target_loss`)."""
    heldout: dict[str, float]
    """:func:`evaluate` on held-out test-split transcripts (empty if there are none)."""
    sample: dict[str, str]
    """A greedy first reply to a held-out L1 prompt (empty if there is none)."""
    n_train_transcripts: int
    n_heldout_transcripts: int
    shared_prefix_tokens: int
    """Length of the prefix run once per batch (:func:`shared_prefix_length`)."""
    train_assistant_tokens: int
    """Transcript assistant tokens trained on (drills not counted)."""
    train_seconds: float
    """Wall time from the tokenizer build to the last optimiser step."""
    polish_losses: list[float]
    """Per polish step (:func:`polish`): the step's total loss, drills included (nats/token)."""
    polish_seconds: float
    """Wall time of the polish stage (its data included)."""


def fit(recipe: TinyRecipe, *, progress: bool) -> FitResult:
    """Build the tokenizer and model of ``recipe`` and train the model (nothing is saved)."""
    import torch
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    start = time.perf_counter()
    tokenizer = build_tokenizer(
        vocab_size=recipe.vocab_size,
        world_seed=recipe.world_seed,
        tasks_per_level=recipe.tokenizer_tasks_per_level,
        seed=recipe.seed,
    )
    world = _world(recipe.world_seed)
    tools = world.tool_schemas()
    train_conv = _expert_conversations(
        world, split="train", levels=recipe.levels, n=recipe.n_tasks_per_level, seed=recipe.seed
    )
    train_conv = _rename_entities(world, train_conv, prob=recipe.rename_prob, seed=recipe.seed)
    eval_conv = _expert_conversations(
        world,
        split="test",
        levels=recipe.levels,
        n=recipe.n_eval_tasks_per_level,
        seed=recipe.seed,
    )
    train = _encode_all(tokenizer, [c for _, c in train_conv], tools, recipe.max_length)
    held_out = _encode_all(tokenizer, [c for _, c in eval_conv], tools, recipe.max_length)
    if not train:
        raise ValueError("the recipe produced no training transcripts with assistant tokens")
    prefix_len = shared_prefix_length(train)

    model = build_model(recipe, tokenizer)
    model.train()
    pad_id = tokenizer.pad_token_id
    optimizer = _adamw(model, recipe, recipe.lr)
    batches = _batches(len(train), [len(ids) for ids, _ in train], recipe)
    losses: list[float] = []
    train_tokens = 0

    bar = Progress(
        TextColumn("[bold]tiny agent[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    )
    drill_rng = random.Random(f"drill:{recipe.seed}")
    drill_losses: list[float] = []

    arith_rng = random.Random(f"arith:{recipe.seed}")
    max_operand = world.config.l0_max_operand

    def drill_loss(n: int) -> torch.Tensor:
        loss = _mean_loss(model, _copy_drills(tokenizer, drill_rng, n), pad_id)
        drill_losses.append(loss.item())
        return loss

    def arith_loss(n: int) -> torch.Tensor:
        return _mean_loss(
            model, _arith_drills(tokenizer, arith_rng, n, max_operand=max_operand), pad_id
        )

    def advance(loss: float) -> None:
        bar.update(task_id, advance=1, loss=f"{loss:.3f}")

    def update(loss: torch.Tensor, factor: float) -> None:
        _step(model, optimizer, loss, recipe.lr * factor)
        losses.append(loss.item())
        advance(losses[-1])

    window = _DRILL_LOSS_WINDOW
    drill_steps_run = 0
    with bar:
        task_id = bar.add_task("train", total=recipe.total_steps, loss="-")
        for step in range(recipe.drill_steps):
            update(drill_loss(recipe.drill_batch_size), _lr_factor(step, recipe))
            drill_steps_run += 1
            recent = drill_losses[-window:]
            if len(recent) == window and sum(recent) / window < recipe.drill_target_loss:
                bar.update(task_id, advance=recipe.drill_steps - drill_steps_run)
                break
        for t in range(recipe.steps):
            examples = [train[i] for i in next(batches)]
            logits, target = _assistant_logits(model, examples, prefix_len, pad_id)
            # Mean over assistant tokens.
            loss = torch.nn.functional.cross_entropy(logits, target)
            train_tokens += target.numel()
            if recipe.drill_mix and recipe.drill_weight:
                loss = loss + recipe.drill_weight * drill_loss(recipe.drill_mix)
            if recipe.arith_mix and recipe.drill_weight:
                loss = loss + recipe.drill_weight * arith_loss(recipe.arith_mix)
            update(loss, _lr_factor(drill_steps_run + t, recipe, transcript_step=t))
        polish_start = time.perf_counter()
        polish_losses = polish(model, tokenizer, recipe, on_step=advance)
        polish_seconds = time.perf_counter() - polish_start
    train_seconds = time.perf_counter() - start

    metrics = evaluate(model, held_out, pad_id=pad_id) if held_out else {}
    level1 = [c for lvl, c in eval_conv if lvl == 1] or [c for _, c in eval_conv]
    sample = _sample_generation(model, tokenizer, level1[0], tools) if level1 else {}
    return FitResult(
        model=model,
        tokenizer=tokenizer,
        losses=losses,
        drill_losses=drill_losses,
        drill_steps_run=drill_steps_run,
        heldout=metrics,
        sample=sample,
        n_train_transcripts=len(train),
        n_heldout_transcripts=len(held_out),
        shared_prefix_tokens=prefix_len,
        train_assistant_tokens=train_tokens,
        train_seconds=train_seconds,
        polish_losses=polish_losses,
        polish_seconds=polish_seconds,
    )

"""The embedded tiny agent: an offline tokenizer, a tool-calling chat template and a small Llama
warm-started on ToolWorld expert transcripts.

Everything here runs offline on CPU (DESIGN.md, "Everything runs on CPU with a tiny built-in
agent"):

- :func:`build_tokenizer` trains a byte-level BPE (``tokenizers``) on expert transcripts from the
  ToolWorld *train* split, rendered with the chat template. Digits are split one per token
  (``pre_tokenizers.Digits(individual_digits=True)``) so numbers copy exactly; the byte-level
  alphabet means no string is ever unknown. Entity names are cut out of the corpus and listed
  once each, so merges stop at syllables: train and unseen test-split names alike split into a
  few known pieces (no name is a token of its own that only train transcripts contain). Role markers (``<|im_start|>``, ``<|im_end|>``) are
  special tokens; ``<tool_call>``, ``</tool_call>``, ``<answer>``, ``</answer>`` and the
  ``<tool_response>`` pair are single added (non-special) tokens, so
  ``decode(skip_special_tokens=True)`` keeps them for the parser.
- :data:`CHAT_TEMPLATE` is a Hermes/Qwen-style Jinja template: tools listed in the system turn,
  ``tool`` messages rendered as a user-side ``<tool_response>`` block, assistant content wrapped in
  ``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives the
  tokens the policy produced (content and the closing ``<|im_end|>``; the ``<|im_start|>assistant``
  header and the newline after ``<|im_end|>`` are injected by the runner and never trained on).
- :class:`TinyRecipe` holds every knob; :func:`bootstrap` trains a ``LlamaForCausalLM`` with the loss
  masked to assistant tokens (AdamW, warmup + cosine schedule). Training starts with a copy-drill
  warm-up (:func:`copy_drill`: short synthetic chats whose reply can only be predicted by
  copying from the prompt) and keeps a few drills in every transcript batch. The warm-up runs
  until the drills are learnt (``drill_target_loss``), not for a fixed number of steps: when the
  loss leaves its plateau varies with library versions and threads, and a fixed budget made the
  same recipe give 68 % or 8 % greedy L1 on two machines. Without it the
  model sits on the pre-induction-head plateau for the whole budget: it learns the transcript
  templates but writes a memorised name instead of the question's and a guessed number instead
  of the tool result's (0/24 greedy L1 successes with the earlier drill-free recipe). The
  shape matters as much as the drills: on echo drills alone a 2-layer, 8-head model's loss
  fell from ~2.9 to ~0.7 nats between steps 400 and 800, while the earlier 4-layer, 4-head one
  was still at 2.8 after 275 steps at three times the cost per step. The system turn and tool list,
  identical in every transcript and most of its tokens, run once per batch and their key/value
  cache is shared by the batch (:func:`shared_prefix_length`; exact, tested against a full
  forward pass). Model and tokenizer are saved in Hugging Face format under
  ``$AGENTROPY_HOME/agents/tiny-<recipe hash>/`` (default home ``~/.cache/agentropy``), trained
  in a temporary directory renamed into place at the end; an existing directory is reused.
  :func:`load_agent` loads it back.

The expert chooses among several recovery strategies at random where recovery is ambiguous
(:mod:`agentropy.env.expert`), so the warm-started policy is confident on tool-call syntax and
uncertain exactly at recovery choices: the starting point the RL pieces need.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentropy.env.format import ANSWER_CLOSE, ANSWER_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "MARKER_TOKENS",
    "PAD_TOKEN",
    "ROLE_END",
    "ROLE_START",
    "SPECIAL_TOKENS",
    "TOOL_RESPONSE_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "TinyRecipe",
    "agent_path",
    "agentropy_home",
    "assistant_labels",
    "bootstrap",
    "build_model",
    "build_tokenizer",
    "copy_drill",
    "default_agent_path",
    "evaluate",
    "load_agent",
    "read_agent_info",
    "shared_prefix_length",
]

ROLE_START = "<|im_start|>"
"""Opens a turn; followed by the role name and a newline."""
ROLE_END = "<|im_end|>"
"""Closes a turn; the model's end-of-turn (eos) token."""
PAD_TOKEN = "<|endoftext|>"
"""Padding token (never trained on)."""
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, ROLE_START, ROLE_END)
"""Special tokens (dropped by ``decode(skip_special_tokens=True)``)."""
MARKER_TOKENS: tuple[str, ...] = (
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    ANSWER_OPEN,
    ANSWER_CLOSE,
    TOOL_RESPONSE_OPEN,
    TOOL_RESPONSE_CLOSE,
)
"""Span markers: single added tokens that survive ``skip_special_tokens`` decoding."""

# Bump when the template, tokenizer construction or training procedure changes in a way that
# makes agents cached under the same recipe hash stale.
_FORMAT_VERSION = 4
_DRILL_LOSS_WINDOW = 25
"""Drill steps averaged for :attr:`TinyRecipe.drill_target_loss`."""
INFO_FILE = "agentropy_tiny.json"

# Hermes/Qwen-style tool template. Each tool is one compact signature line inside <tools>
# (``name(arg: type, ...): description``) rather than its full JSON schema: the system turn is in
# every training transcript, and a tiny model on 2 CPU cores cannot afford ~80 tokens per tool.
# Consecutive tool messages share one user-side turn, one <tool_response> block each.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}"
    "{%- set f = tool.function if tool.function is defined else tool %}"
    "{%- set params = f.parameters if f.parameters is defined else {} %}"
    "{{- '\\n' + f.name + '(' }}"
    "{%- for pname, p in (params.properties if params.properties is defined else {}).items() %}"
    "{{- pname + ': ' }}"
    "{%- if p.enum is defined %}{{- p.enum | join('|') }}"
    "{%- elif p.type is defined %}{{- p.type if p.type is string else p.type | join('|') }}"
    "{%- else %}{{- 'any' }}{%- endif %}"
    "{%- if not loop.last %}{{- ', ' }}{%- endif %}"
    "{%- endfor %}"
    "{{- ')' }}"
    "{%- if f.description is defined and f.description %}{{- ': ' + f.description }}{%- endif %}"
    "{%- endfor %}"
    '{{- \'\\n</tools>\\nCall one tool per turn as <tool_call>{"name": ..., "arguments": {...}}'
    "</tool_call>; give the final answer as <answer>...</answer>.<|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'user' or message.role == 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{%- if message.content is string %}{{- message.content }}{%- endif %}"
    "{%- for tc in (message.tool_calls or []) %}"
    "{%- set f = tc.function if tc.function is defined else tc %}"
    "{{- '<tool_call>{\"name\": ' + (f.name | tojson) + ', \"arguments\": ' }}"
    "{{- (f.arguments if f.arguments is string else (f.arguments | tojson)) + '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Jinja chat template (Hermes/Qwen style) with ``tools`` and ``tool`` messages."""


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
    levels: tuple[int, ...] = (0, 1, 2, 3)
    """ToolWorld levels to draw expert transcripts from."""
    n_tasks_per_level: int = 1000
    """Train-split tasks per level (one expert transcript each)."""
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
    n_layers: int = 2
    """Decoder layers."""
    n_heads: int = 8
    """Attention heads (also key/value heads: no grouped-query attention)."""
    intermediate_size: int = 384
    """MLP width (SwiGLU)."""
    max_length: int = 768
    """Transcripts are truncated to this many tokens for training and evaluation."""
    steps: int = 800
    """Transcript steps (after the ``drill_steps`` warm-up; see :attr:`total_steps`)."""
    batch_size: int = 16
    """Transcripts per step."""
    lr: float = 3e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 30
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine decays to ``lr * min_lr_ratio``."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    drill_steps: int = 1500
    """Most copy-drill warm-up steps before the transcript steps (see :func:`copy_drill`)."""
    drill_target_loss: float = 1.0
    """The drill warm-up ends early once the mean drill loss of the last 25 steps is below
    this (nats; 0: always run ``drill_steps``). When copying is learnt varies by hundreds of
    steps with library versions and thread counts (the loss leaves a ~2.3-nat plateau
    suddenly); a fixed drill budget turned that into a 8 % vs 68 % greedy-L1 lottery."""
    drill_batch_size: int = 32
    """Copy drills per warm-up step."""
    drill_mix: int = 8
    """Copy drills mixed into every transcript step (0: none), their loss weighted by
    ``drill_weight``, so the copying learnt in the warm-up is not forgotten."""
    drill_weight: float = 1.0
    """Weight of the drill loss added to the transcript loss in mixed steps."""

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
            "drill_weight",
            "drill_target_loss",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"TinyRecipe.{name} must be >= 0, got {getattr(self, name)}")
        if self.drill_steps and not self.drill_batch_size:
            raise ValueError("TinyRecipe.drill_steps > 0 needs drill_batch_size > 0")
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
        )

    @property
    def total_steps(self) -> int:
        """Most optimiser steps: copy-drill warm-up steps plus transcript steps (the warm-up
        may end early, see :attr:`drill_target_loss`)."""
        return self.drill_steps + self.steps

    @property
    def recipe_hash(self) -> str:
        """12 hex digits identifying everything that shapes the agent: the recipe fields, the
        training-format version, the ToolWorld version (tasks, tool outputs, expert
        transcripts) and the chat template."""
        from agentropy.env.toolworld import TOOLWORLD_VERSION

        payload = {
            "format_version": _FORMAT_VERSION,
            "toolworld_version": TOOLWORLD_VERSION,
            "chat_template": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest(),
            **dataclasses.asdict(self),
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view of the fields."""
        return {**dataclasses.asdict(self), "levels": list(self.levels)}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _world(world_seed: int) -> Any:
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig

    return ToolWorld(ToolWorldConfig(seed=world_seed))


def _expert_conversations(
    world: Any, *, split: str, levels: Sequence[int], n: int, seed: int
) -> list[tuple[int, list[dict[str, Any]]]]:
    """``(level, messages)``: one expert transcript per task, deterministic in the arguments."""
    from agentropy.env.expert import expert_messages

    conversations = []
    for level in levels:
        tasks = world.tasks(split=split, level=level, n=n, seed=seed)
        rng = random.Random(f"{seed}:{split}:{level}")
        conversations.extend((level, expert_messages(world, task, rng)) for task in tasks)
    return conversations


@lru_cache(maxsize=8)
def _tokenizer_json(vocab_size: int, world_seed: int, tasks_per_level: int, seed: int) -> str:
    """Train the BPE and return its serialised form (cached: training takes ~1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    world = _world(world_seed)
    tools = world.tool_schemas()
    conversations = _expert_conversations(
        world, split="train", levels=(0, 1, 2, 3), n=tasks_per_level, seed=seed
    )
    # Train on the rendered transcripts, so the template's own words (and the system turn that
    # every transcript repeats) get merged into few tokens. Rendering needs no vocabulary: an
    # empty BPE wrapped with the template is enough.
    renderer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE()), chat_template=CHAT_TEMPLATE
    )
    texts = [
        renderer.apply_chat_template(conversation, tools=tools, tokenize=False)
        for _level, conversation in conversations
    ]
    # Entity names are cut out of the transcripts and listed once each instead. In the
    # transcripts, frequent train names would become whole tokens while unseen test names split
    # into pieces: the model would learn to copy name tokens it never sees at test time. Listed
    # once, names only teach syllable-level merges (min_frequency=2 forbids whole-name merges),
    # so train and test names alike are a few shared syllable pieces the model learns to copy.
    names = sorted(world.entities["train"], key=len, reverse=True)
    name_re = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b")
    texts = [name_re.sub(" ", text) for text in texts]
    texts.append("\n".join(f"{name} {name}" for name in names))  # both "Kalo" and " Kalo"
    # Every consonant-vowel syllable (world names and renamed ones are made of them), a few
    # times each, so each becomes one piece in every position ("Ka", " Ka", "lo") however many
    # merges the transcripts' own words claim: any name, seen or not, is two or three pieces.
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    texts.extend(" ".join(f"{s.capitalize()} {s}" for s in syllables) for _ in range(4))
    # Markers become added tokens after training; keep them out of the merge statistics.
    markers = (*SPECIAL_TOKENS, *MARKER_TOKENS)

    def strip_markers(text: str) -> str:
        for marker in markers:
            text = text.replace(marker, " ")
        return text

    tokenizer = Tokenizer(models.BPE())
    # Digits first, one per pre-token, so merges can never glue digits to anything.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((strip_markers(t) for t in texts), trainer=trainer)
    return tokenizer.to_str()


def build_tokenizer(
    *, vocab_size: int = 1024, world_seed: int = 0, tasks_per_level: int = 64, seed: int = 0
) -> PreTrainedTokenizerFast:
    """Build the tiny agent's tokenizer offline (deterministic; cached after the first call).

    A byte-level BPE trained on expert transcripts from ``tasks_per_level`` ToolWorld train-split
    tasks per level (``ToolWorldConfig(seed=world_seed)``) plus the chat-template strings. Digits
    are single tokens; role markers are special tokens; ``<tool_call>``, ``</tool_call>``,
    ``<answer>``, ``</answer>``, ``<tool_response>``, ``</tool_response>`` are single added
    tokens. ``eos_token`` is ``<|im_end|>`` (end of an assistant turn), ``pad_token`` is
    ``<|endoftext|>``; the chat template is :data:`CHAT_TEMPLATE`. Returns a fresh object each
    call.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tokenizer_json(vocab_size, world_seed, tasks_per_level, seed))
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=ROLE_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[ROLE_START],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=4096,
    )


def assistant_labels(
    tokenizer: PreTrainedTokenizerFast,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    max_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """Render a conversation and return ``(input_ids, labels)`` for assistant-only training.

    ``labels[i] == input_ids[i]`` for tokens the assistant produced (its content and closing
    ``<|im_end|>``), ``-100`` for everything else (system, user, tool results, turn headers).
    Labels are unshifted, as Hugging Face causal-LM losses expect. Truncated to ``max_length``.
    """
    encoding = tokenizer.apply_chat_template(
        list(messages),
        tools=list(tools) if tools else None,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(encoding["input_ids"])
    mask = list(encoding["assistant_masks"])
    labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


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


Example = tuple[list[int], list[int]]
"""``(input_ids, labels)`` of one transcript (see :func:`assistant_labels`)."""


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


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _rename_entities(
    world: Any,
    conversations: Sequence[tuple[int, list[dict[str, Any]]]],
    *,
    prob: float,
    seed: int,
) -> list[tuple[int, list[dict[str, Any]]]]:
    """Replace, with probability ``prob`` per transcript, its train entity names by fresh ones.

    A name is replaced consistently in every message (question, plans, calls, tool results), so
    the transcript stays coherent: values come from tool results, never from the name. Fresh
    names are two consonant-vowel syllables (``Dupe``), never a name of the world.
    """
    rng = random.Random(f"rename:{seed}")
    taken = set(world.kb)
    name_re = re.compile(
        r"\b(?:" + "|".join(map(re.escape, sorted(world.entities["train"], key=len)[::-1])) + r")\b"
    )

    def fresh() -> str:
        while True:
            name = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2))
            name = name.capitalize()
            if name not in taken:
                return name

    out = []
    for level, messages in conversations:
        if rng.random() >= prob:
            out.append((level, messages))
            continue
        mapping: dict[str, str] = {}

        def substitute(match: re.Match[str], mapping: dict[str, str] = mapping) -> str:
            return mapping.setdefault(match.group(0), fresh())

        renamed = [
            {**m, "content": name_re.sub(substitute, m["content"])}
            if isinstance(m.get("content"), str)
            else m
            for m in messages
        ]
        out.append((level, renamed))
    return out


_DRILL_WORDS = (
    "age", "weight", "height", "distance", "years", "months", "kg", "g", "km", "m", "cm",
    "value", "unit", "lookup", "backup_lookup", "calc", "convert", "plus", "minus", "times",
)  # fmt: skip


def _drill_name(rng: random.Random) -> str:
    """A random two- or three-syllable name (``Zupe``, ``Kalomi``), as in renamed transcripts."""
    n = 2 if rng.random() < 0.8 else 3
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n)).capitalize()


def _drill_number(rng: random.Random) -> str:
    return str(rng.randint(0, 10 ** rng.choice((1, 2, 2, 2, 3, 4, 5)) - 1))


def copy_drill(rng: random.Random) -> list[dict[str, Any]]:
    """One synthetic copy exercise as chat messages (a user turn, then the assistant's reply).

    The replies can only be predicted by copying from the user turn, so nearly every trained
    token is a copy token: induction heads, which the transcripts need for entity names and
    tool-result values but teach slowly (few of their tokens are copies), form far sooner.
    Three kinds, at random (half of them ``echo``):

    - ``echo``: a list of random names, numbers and ToolWorld words, repeated verbatim;
    - ``recall``: several ``the <attr> of <Name> is <n>`` facts, then a question about one; the
      reply is ``<answer>n</answer>`` (attend to the right key, copy the value after it);
    - ``call``: a ToolWorld question (``What is the <attr> of <Name>?``) answered with the
      expert's plan sentence and lookup call, or a tool result answered with its value.
    """
    kind = rng.choices(("echo", "recall", "call"), weights=(2, 1, 1))[0]
    if kind == "echo":
        items = []
        for _ in range(rng.randint(4, 12)):
            r = rng.random()
            if r < 0.4:
                items.append(_drill_name(rng))
            elif r < 0.75:
                items.append(_drill_number(rng))
            else:
                items.append(rng.choice(_DRILL_WORDS))
        text = " ".join(items)
        return [
            {"role": "user", "content": f"Repeat: {text}"},
            {"role": "assistant", "content": text},
        ]
    if kind == "recall":
        attrs = ("age", "weight", "height", "distance")
        facts = [
            (rng.choice(attrs), _drill_name(rng), _drill_number(rng))
            for _ in range(rng.randint(2, 6))
        ]
        attr, name, value = rng.choice(facts)
        lines = "\n".join(f"The {a} of {e} is {v}." for a, e, v in facts)
        return [
            {"role": "user", "content": f"{lines}\nWhat is the {attr} of {name}?"},
            {"role": "assistant", "content": f"{ANSWER_OPEN}{value}{ANSWER_CLOSE}"},
        ]
    attr = rng.choice(("age", "weight", "height", "distance"))
    name = _drill_name(rng)
    if rng.random() < 0.5:
        tool = "lookup" if rng.random() < 0.8 else "backup_lookup"
        call = json.dumps(
            {"name": tool, "arguments": {"entity": name, "attribute": attr}},
            separators=(",", ":"),
        )
        return [
            {"role": "user", "content": f"What is the {attr} of {name}?"},
            {
                "role": "assistant",
                "content": f"I will look up the {attr} of {name}.\n"
                f"{TOOL_CALL_OPEN}{call}{TOOL_CALL_CLOSE}",
            },
        ]
    value = _drill_number(rng)
    unit = rng.choice(("years", "kg", "m", "km", "months", "g", "cm"))
    return [
        {"role": "tool", "content": json.dumps({"value": int(value), "unit": unit})},
        {"role": "assistant", "content": f"I have the answer.\n{ANSWER_OPEN}{value}{ANSWER_CLOSE}"},
    ]


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

    batch_size = len(examples)
    cache = None
    if prefix_len > 0:
        prefix = torch.tensor([examples[0][0][:prefix_len]])  # (1, P)
        cache = model(input_ids=prefix, use_cache=True).cache
        cache.batch_repeat_interleave(batch_size)
    batch = _collate([(ids[prefix_len:], labs[prefix_len:]) for ids, labs in examples], pad_id)
    attention = torch.cat(
        [torch.ones(batch_size, prefix_len, dtype=torch.long), batch["attention_mask"]], dim=1
    )  # (B, P + T)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=attention, cache=cache, use_cache=False
    ).logits  # (B, T, V)
    # Position t predicts token t + 1 (labels are unshifted).
    target = batch["labels"][:, 1:]  # (B, T-1)
    mask = target != -100
    return logits[:, :-1][mask].float(), target[mask]


def _batches(n_examples: int, lengths: Sequence[int], recipe: TinyRecipe) -> Iterator[list[int]]:
    """Endless batches of indices; similar lengths share a batch to waste little on padding."""
    rng = random.Random(recipe.seed)
    pool = recipe.batch_size * 8
    while True:
        order = list(range(n_examples))
        rng.shuffle(order)
        batches = []
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
            logp = torch.log_softmax(logits, dim=-1)  # (N, V)
            total_loss += -logp.gather(1, target[:, None]).sum().item()
            total_correct += (logp.argmax(-1) == target).sum().item()
            total_entropy += -(logp.exp() * logp).sum().item()
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
    prompt = tokenizer.apply_chat_template(
        list(conversation[:first]),
        tools=list(tools),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
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
        "generated": tokenizer.decode(new, skip_special_tokens=False),
    }


@contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (shard writing/loading) for a moment, then restore."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _train(recipe: TinyRecipe, out_dir: Path, *, progress: bool) -> dict[str, Any]:
    """Train the agent described by ``recipe``, save it to ``out_dir`` and return its record."""
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
    # No weight decay on norms (1-D parameters), as usual for transformers.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )
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

    def drill_loss(n: int) -> torch.Tensor:
        drills = [assistant_labels(tokenizer, copy_drill(drill_rng)) for _ in range(n)]
        logits, target = _assistant_logits(model, drills, shared_prefix_length(drills), pad_id)
        loss = torch.nn.functional.cross_entropy(logits, target)
        drill_losses.append(loss.item())
        return loss

    def update(loss: torch.Tensor, factor: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * factor
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.update(task_id, advance=1, loss=f"{losses[-1]:.3f}")

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
            update(loss, _lr_factor(drill_steps_run + t, recipe, transcript_step=t))
    train_seconds = time.perf_counter() - start

    metrics = evaluate(model, held_out, pad_id=pad_id) if held_out else {}
    level1 = [c for lvl, c in eval_conv if lvl == 1] or [c for _, c in eval_conv]
    sample = _sample_generation(model, tokenizer, level1[0], tools) if level1 else {}
    tail = losses[-min(10, len(losses)) :]
    info = {
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.recipe_hash,
        "format_version": _FORMAT_VERSION,
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "n_train_transcripts": len(train),
        "n_heldout_transcripts": len(held_out),
        "shared_prefix_tokens": prefix_len,
        "train_assistant_tokens": train_tokens,
        "train_seconds": train_seconds,
        "initial_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "drill_steps_run": drill_steps_run,
        "losses": losses,
        "drill_losses": drill_losses,
        "heldout": metrics,
        "sample": sample,
    }
    with _no_hf_progress_bars():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


# --------------------------------------------------------------------------------------------
# Cache layout, bootstrap and loading
# --------------------------------------------------------------------------------------------


def agentropy_home(home: str | os.PathLike[str] | None = None) -> Path:
    """``home`` if given, else ``$AGENTROPY_HOME``, else ``~/.cache/agentropy``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("AGENTROPY_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "agentropy"


def agent_path(recipe: TinyRecipe, *, home: str | os.PathLike[str] | None = None) -> Path:
    """Where the agent of ``recipe`` lives: ``<home>/agents/tiny-<recipe_hash>``."""
    return agentropy_home(home) / "agents" / f"tiny-{recipe.recipe_hash}"


def default_agent_path(*, home: str | os.PathLike[str] | None = None) -> Path:
    """Path of the default recipe's agent (it may not exist yet)."""
    return agent_path(TinyRecipe(), home=home)


def _is_complete(path: Path) -> bool:
    return (path / INFO_FILE).is_file() and (path / "config.json").is_file()


def bootstrap(
    recipe: TinyRecipe | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    progress: bool = True,
    force: bool = False,
    num_threads: int | None = None,
) -> Path:
    """Train (or reuse) the tiny agent of ``recipe`` and return its directory.

    Unless ``force``, the agent shipped in the repository (:mod:`agentropy.agent.shipped`) is
    returned when it was built from ``recipe``: the default recipe needs no build.

    The directory (see :func:`agent_path`) holds ``save_pretrained`` output for model and
    tokenizer plus ``agentropy_tiny.json`` (recipe, parameter count, train time, per-step losses
    (``losses``: the step's total, drill loss included; ``drill_losses``: the drills' own), held-out
    metrics, a sample generation). An existing complete directory is reused unless ``force``.
    Training happens in a temporary sibling directory renamed into place at the end, so an
    interrupted run never leaves a half-written agent behind.

    ``num_threads`` sets torch's intra-op threads while training (restored afterwards); None
    keeps the current setting. On a machine shared with other CPU-heavy processes, fewer threads
    than cores avoids OpenMP threads spinning while they wait for each other.
    """
    recipe = recipe if recipe is not None else TinyRecipe()
    if not force:
        from agentropy.agent.shipped import shipped_agent_path

        shipped = shipped_agent_path(recipe)  # the repository's own copy of the default agent
        if shipped is not None:
            return shipped
    path = agent_path(recipe, home=home)
    if _is_complete(path) and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    import torch

    threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        _train(recipe, tmp, progress=progress)
        if path.exists():
            # force, or a leftover incomplete directory: move it aside, then swap in the new one.
            stale = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=path.parent))
            os.replace(path, stale / "agent")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            # Another process finished the same recipe first; its result is equivalent.
            if not _is_complete(path):
                raise
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_agent_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``agentropy_tiny.json`` record written by :func:`bootstrap`."""
    return json.loads((Path(path) / INFO_FILE).read_text())


def load_agent(
    path: str | os.PathLike[str] | None = None, *, progress: bool = True
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Load ``(model, tokenizer)`` from ``path``; the model is returned in eval mode.

    ``path=None`` means the default recipe's agent (:func:`default_agent_path`), trained by
    :func:`bootstrap` on first use (with a progress bar unless ``progress=False``).
    """
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    if path is None:
        path = bootstrap(TinyRecipe(), progress=progress)
    path = Path(path)
    if not (path / "config.json").is_file():
        from agentropy.errors import InputError

        raise InputError(f"no agent saved here (config.json missing): {path}", path=str(path))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    with _no_hf_progress_bars():
        model = LlamaForCausalLM.from_pretrained(path)
    model.eval()
    return model, tokenizer

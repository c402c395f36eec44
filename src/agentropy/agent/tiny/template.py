"""The tiny agent's text format: chat template, special and marker tokens, the offline tokenizer,
and assistant-only training labels.

- :func:`build_tokenizer` trains a byte-level BPE (``tokenizers``) on expert transcripts from the
  ToolWorld *train* split, rendered with the chat template. Digits are split one per token
  (``pre_tokenizers.Digits(individual_digits=True)``) so numbers copy exactly; the byte-level
  alphabet means no string is ever unknown. Entity names are cut out of the corpus and listed
  once each, so merges stop at syllables: train and unseen test-split names alike split into a
  few known pieces (no name is a token of its own that only train transcripts contain). Role
  markers (``<|im_start|>``, ``<|im_end|>``) are special tokens; ``<tool_call>``,
  ``</tool_call>``, ``<answer>``, ``</answer>`` and the ``<tool_response>`` pair are single added
  (non-special) tokens, so ``decode(skip_special_tokens=True)`` keeps them for the parser.
- :data:`CHAT_TEMPLATE` is a Hermes/Qwen-style Jinja template: tools listed in the system turn,
  ``tool`` messages rendered as a user-side ``<tool_response>`` block, assistant content wrapped in
  ``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives the
  tokens the policy produced (content and the closing ``<|im_end|>``; the ``<|im_start|>assistant``
  header and the newline after ``<|im_end|>`` are injected by the runner and never trained on).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from agentropy.agent.tiny.corpus import _CONSONANTS, _VOWELS, _expert_conversations, _world
from agentropy.env.format import ANSWER_CLOSE, ANSWER_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from agentropy.env.toolworld import LEVELS

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "MARKER_TOKENS",
    "PAD_TOKEN",
    "ROLE_END",
    "ROLE_START",
    "SPECIAL_TOKENS",
    "TOOL_RESPONSE_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "Example",
    "assistant_labels",
    "build_tokenizer",
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


Example = tuple[list[int], list[int]]
"""``(input_ids, labels)`` of one transcript (see :func:`assistant_labels`)."""


@lru_cache(maxsize=8)
def _tokenizer_json(vocab_size: int, world_seed: int, tasks_per_level: int, seed: int) -> str:
    """Train the BPE and return its serialised form (cached: training takes ~1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    world = _world(world_seed)
    tools = world.tool_schemas()
    conversations = _expert_conversations(
        world, split="train", levels=LEVELS, n=tasks_per_level, seed=seed
    )
    # Train on the rendered transcripts, so the template's own words (and the system turn that
    # every transcript repeats) get merged into few tokens. Rendering needs no vocabulary: an
    # empty BPE wrapped with the template is enough.
    renderer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE()), chat_template=CHAT_TEMPLATE
    )
    # tokenize=False renders a string (the stubs type every return shape of the call).
    texts = [
        str(renderer.apply_chat_template(conversation, tools=tools, tokenize=False))
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
    # return_dict=True gives a BatchEncoding (the stubs type every return shape of the call).
    encoding = cast(
        "BatchEncoding",
        tokenizer.apply_chat_template(
            list(messages),
            tools=list(tools) if tools else None,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        ),
    )
    ids = list(encoding["input_ids"])
    mask = list(encoding["assistant_masks"])
    labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels

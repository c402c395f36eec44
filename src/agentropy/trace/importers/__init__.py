"""Importers: the logs people already have, read into agentropy's data model.

- :mod:`~agentropy.trace.importers.scalars`: per-step training scalars (TensorBoard event
  directories, CSV exports such as W&B's or TensorBoard's, our trainer's ``metrics.parquet``);
  read by ``agentropy watch`` and by ``agentropy analyze`` (training cycles).
- :mod:`~agentropy.trace.importers.chat`: tool-use transcripts as OpenAI chat-completions
  messages (and the verl / TRL dumps converted to them), validated line by line, ready for
  ``agentropy score`` to put per-token entropy on them.
- :mod:`~agentropy.trace.importers.logprobs`: OpenAI-style responses that carry
  ``logprobs.content[].top_logprobs``: traces whose entropy is the top-k estimate with its bounds,
  no model needed.

Every importer raises :class:`agentropy.errors.InputError` naming the file, line and field.
Nothing here imports torch or a framework at module level.
"""

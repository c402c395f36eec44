"""Thin adapters to other frameworks (TRL, verl, vLLM, OpenAI-compatible servers).

Each submodule imports its framework lazily and fails with an "install agentropy[extra]" message
when the framework is missing; the core never imports these modules.
"""

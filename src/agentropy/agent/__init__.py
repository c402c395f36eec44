"""Agents: the multi-turn rollout runner and the embedded tiny agent."""

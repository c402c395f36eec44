"""Train: multi-turn GRPO with phase-aware entropy objectives."""

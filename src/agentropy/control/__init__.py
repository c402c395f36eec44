"""Control: sampling temperature set per row and per token by the agent's phase."""

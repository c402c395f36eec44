"""ToolWorld: the built-in tool environment with fault injection."""

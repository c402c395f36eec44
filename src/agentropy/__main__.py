"""``python -m agentropy``: the same CLI as the ``agentropy`` console script."""

from agentropy.cli import main

main()

"""`python -m outpost.agent` = `outpost` (useful where the console script is not on PATH)."""

from outpost.agent.cli import main

main()

"""`outpost`, the command line: ``main`` is the console script's entry point.

``main.py`` holds the root app and the daemon commands (run, config check, status, points,
read, reload); each other module is one command group (schedule, buffer, sim, cloud,
discover, local control, demo).
"""

from outpost.agent.cli.main import app, get_app, main

__all__ = ["app", "get_app", "main"]

"""The agent's local HTTP API on its Unix socket: ``app.create_app`` (server side, over an
``view.AgentView`` and the ``LocalControl``) and ``client.AgentClient`` (what the CLI uses)."""

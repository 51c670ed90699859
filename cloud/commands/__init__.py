"""The agent's end of the command channel: long-poll client, executed-ids store, executor.

``CommandChannel`` (client.py) long-polls the receiver, hands each command to the
``CommandExecutor`` (executor.py) exactly once, with ``ExecutedStore`` (store.py) as the
persistent memory of what ran, and posts results back until the receiver confirms them.
``ScheduleApplier`` (schedule_apply.py) carries out ``schedule_apply``: validate, keep the
previous version, apply live, verify by probe, roll back by itself on failure.
"""

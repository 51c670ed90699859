"""Local control: alarms, operating modes and guarded writes (``local.LocalControl``), and
the recorded events they produce (``events``)."""

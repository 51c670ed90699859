"""Shared pytest set-up: assertion rewriting for our fixture modules imported by tests."""

import pytest

pytest.register_assert_rewrite(
    "tests.receiver_fixtures", "tests.modbus_server", "tests.agent_process"
)

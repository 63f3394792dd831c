"""The Prefect server we start for a command: telemetry off unless the caller asks for it (an
offline machine otherwise logs an ERROR at every start, even through the Python API, which
does not set the CLI's defaults). Read from the live child's environment (Linux /proc)."""

import sys

import psutil
import pytest

from distill.flows.server import ApiServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize("caller, expected", [(None, "false"), ("true", "true")])
def test_server_telemetry_is_off_unless_the_caller_turns_it_on(monkeypatch, caller, expected):
    if caller is None:
        monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    else:
        monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", caller)
    server = ApiServer()
    try:
        environment = psutil.Process(server.process.pid).environ()
    finally:
        server.stop()
    assert environment["PREFECT_SERVER_ANALYTICS_ENABLED"] == expected
    assert environment["PREFECT_UI_ENABLED"] == "0"

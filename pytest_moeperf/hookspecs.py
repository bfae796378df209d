"""The hooks pytest-moeperf adds to pytest."""
import pytest


@pytest.hookspec
def pytest_moeperf_register_impls(registry):
    """Register implementations to gate: call `registry.add(name, provider, ...)` (pytest_moeperf/oracle/registry.py).
    Called once per process when a --moeperf run starts; the plugin registers its built-ins the same way."""

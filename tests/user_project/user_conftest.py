"""The user project's conftest.py (tests/test_wheel.py writes it there): registers the legacy implementation by
name, through the hook third parties and the plugin's built-ins use."""


def pytest_moeperf_register_impls(registry):
    import mykernels

    registry.add("mine-legacy", mykernels.vllm_legacy)

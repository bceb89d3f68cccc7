"""Fixtures shared by the integration tests (real processes; see tests/harness.py)."""

import pytest

from tests.harness import OtlpReceiver


@pytest.fixture(scope="module")
def otlp():
    """An in-process OTLP/gRPC trace receiver; each test module gets its own."""
    with OtlpReceiver() as receiver:
        yield receiver

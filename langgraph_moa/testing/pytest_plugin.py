"""Pytest plugin: ``pytest_plugins = ["langgraph_moa.testing.pytest_plugin"]``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from langgraph_moa.testing.server import ModelServer


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    """A started :class:`ModelServer` on an ephemeral port, stopped after the test."""
    with ModelServer() as srv:
        yield srv

"""Shared fixtures of the agent tests.

The other conftest_*.py files are pulled in by import rather than `pytest_plugins`, which
pytest refuses in a conftest below the rootdir once collection has started (`make test`
collects from the repository root).
"""

import pytest
from blockbuster import blockbuster_ctx

from tests.agent.conftest_netns import *  # noqa: F401,F403


@pytest.fixture(autouse=True)
def blockbuster():
    """Fail any test in which agent code makes a blocking call on the event loop: file and
    sysfs work belong in asyncio.to_thread, subprocesses in create_subprocess_exec."""
    with blockbuster_ctx(["nodes.agent"]) as bb:
        yield bb

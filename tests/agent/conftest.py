"""Shared fixtures of the agent tests.

The other conftest_*.py files are pulled in by import rather than `pytest_plugins`, which
pytest refuses in a conftest below the rootdir once collection has started (`make test`
collects from the repository root).
"""

import pytest
from blockbuster import blockbuster_ctx

from tests.agent.conftest_images import *  # noqa: F401,F403
from tests.agent.conftest_netns import *  # noqa: F401,F403
from tests.agent.conftest_vmm import *  # noqa: F401,F403


@pytest.fixture(autouse=True)
def blockbuster():
    """Fail any test in which agent code makes a blocking call on the event loop: file and
    sysfs work belong in asyncio.to_thread, subprocesses in create_subprocess_exec."""
    with blockbuster_ctx(["nodes.agent"]) as bb:
        yield bb


# -- end-to-end fixtures: the real CLI, QEMU and registry; the VMs' network in a test namespace ------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.agent.conftest_vmm import KIT_CACHE  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def agent_shared_dir(tmp_path_factory):
    """Image cache shared by the end-to-end tests of one session."""
    return tmp_path_factory.mktemp("agent-shared")


@pytest.fixture(scope="session")
def agent_kit_cache(vmm_kit):
    """The host-wide kit cache every agent process of the tests shares (`--kit-cache`): the
    one the vmm fixtures built, so no test builds a kit of its own."""
    return KIT_CACHE


@pytest.fixture
def agent_data_dir(tmp_path, agent_shared_dir):
    data = tmp_path / "data"
    data.mkdir()
    (agent_shared_dir / "images").mkdir(exist_ok=True)
    (data / "images").symlink_to(agent_shared_dir / "images")
    return data


class AgentCli:
    """Runs `python -m nodes.agent ... --data-dir D --kit-cache K --netns NS` like an operator
    would: the process itself stays in the test's own namespace (where the local registry
    listens on loopback), only the VMs' network is in NS."""

    def __init__(self, data_dir: Path, netns: str, kit_cache: Path):
        self.data_dir = data_dir
        self.netns = netns
        self.kit_cache = kit_cache

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "nodes.agent", *args, "--data-dir", str(self.data_dir),
                "--kit-cache", str(self.kit_cache), "--netns", self.netns]

    def __call__(self, *args: str, check: bool = True, timeout: float = 240):
        out = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert "Traceback" not in out.stderr + out.stdout, out.stderr
        lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        result = lines[0] if len(lines) == 1 and args[:2] != ("vm", "logs") else lines
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {out.returncode}: {out.stdout} {out.stderr}")
        return out.returncode, result, out.stderr

    def spawn(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def agent_cli(agent_data_dir, node_netns, agent_kit_cache):
    cli = AgentCli(agent_data_dir, node_netns.name, agent_kit_cache)
    yield cli
    # Whatever a failed test left running dies with the namespace (Netns.close kills its pids:
    # QEMU runs in it).

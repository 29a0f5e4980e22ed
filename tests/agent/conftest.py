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


# -- end-to-end fixtures: the real CLI, QEMU, registry and network inside a test namespace ------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REGISTRY_SCRIPT = REPO / "scripts" / "registry" / "registry.py"
HELLO = "127.0.0.1:5000/gantry/hello:latest"


STATE_DIR = Path(os.environ.get("STATE_DIR", REPO / ".state"))


@pytest.fixture(scope="session")
def agent_shared_dir(tmp_path_factory):
    """Image cache shared by the end-to-end tests of one session."""
    return tmp_path_factory.mktemp("agent-shared")


@pytest.fixture(scope="session")
def agent_kit_dir():
    """The guest kit, built here in the root namespace (apt-get download needs the network the
    test namespaces lack) and kept in the state dir across sessions: it only changes with its
    inputs, which ensure_kit checks itself."""
    import asyncio

    from nodes.agent.guest.kit import ensure_kit

    base = STATE_DIR / "agent-test"
    base.mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_kit(base))
    return base / "kit"


@pytest.fixture
def agent_data_dir(tmp_path, agent_shared_dir, agent_kit_dir):
    data = tmp_path / "data"
    data.mkdir()
    (agent_shared_dir / "images").mkdir(exist_ok=True)
    (data / "images").symlink_to(agent_shared_dir / "images")
    (data / "kit").symlink_to(agent_kit_dir)
    return data


def _registry(ns, state_dir: Path, *argv: str) -> None:
    out = subprocess.run(ns.argv(sys.executable, str(REGISTRY_SCRIPT), *argv, "--state-dir", str(state_dir)),
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"registry.py {argv[0]} failed: {out.stdout}{out.stderr}")


@pytest.fixture
def ns_registry(node_netns, agent_shared_dir):
    """The hello image in a registry on 127.0.0.1:5000 *inside* the test namespace, so the
    CLI (which runs entirely in that namespace) pulls without any traffic leaving it."""
    state = agent_shared_dir / "registry-state"
    _registry(node_netns, state, "up", "--addr", "127.0.0.1:5000", "--name", "nsreg")
    _registry(node_netns, state, "push-hello", "--registry", "127.0.0.1:5000")
    return HELLO


class AgentCli:
    """Runs `python -m nodes.agent ... --data-dir D --netns NS` like an operator would."""

    def __init__(self, data_dir: Path, netns: str):
        self.data_dir = data_dir
        self.netns = netns

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "nodes.agent", *args, "--data-dir", str(self.data_dir), "--netns", self.netns]

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
def agent_cli(agent_data_dir, node_netns):
    cli = AgentCli(agent_data_dir, node_netns.name)
    yield cli
    # Whatever a failed test left running dies with the namespace (Netns.close kills its pids).

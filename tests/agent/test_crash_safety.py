"""Agent crashes do not lose VMs or log lines: the CLI is SIGKILLed mid-boot and, again and
again, while it converts the output of a VM that writes lines continuously."""

import json
import random
import signal
import time

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.netns, pytest.mark.timeout(600)]

LINES = 400
WRITER = f"i=0; while [ $i -lt {LINES} ]; do echo line $i; i=$((i+1)); sleep 0.01; done"


def test_sigkilled_agent_adopts_the_vm_and_loses_or_repeats_no_line(agent_cli, local_registry):
    vm_dir = agent_cli.data_dir / "vms" / "writer"
    run = agent_cli.spawn("vm", "run", "writer", "--image", f"{local_registry}/gantry/hello:latest", "--entrypoint",
                          json.dumps(["/bin/sh", "-c", WRITER]))
    # Kill `vm run` as soon as QEMU exists: the boot goes on without any agent.
    deadline = time.monotonic() + 120
    while not (vm_dir / "qemu.pid").exists():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.communicate()

    # A restarted agent adopts it; then it is killed repeatedly while it follows the logs.
    rnd = random.Random(400)
    kills = 0
    while True:
        _, vms, _ = agent_cli("vm", "ls")
        writer = next(v for v in vms if v["name"] == "writer")
        assert writer["state"] not in ("failed",), writer
        if writer["state"] == "stopped":
            break
        follower = agent_cli.spawn("vm", "logs", "writer", "--follow")
        time.sleep(rnd.uniform(0.2, 1.0))
        follower.send_signal(signal.SIGKILL)
        follower.communicate()
        kills += 1
        assert kills < 400, "the writer never finished"

    assert writer["exit_code"] == 0
    _, lines, _ = agent_cli("vm", "logs", "writer")
    assert [x["message"] for x in lines] == [f"line {i}" for i in range(LINES)]
    assert [x["seq"] for x in lines] == list(range(1, LINES + 1))
    assert kills >= 1
    agent_cli("vm", "rm", "writer")

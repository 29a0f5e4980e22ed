"""Secrets on the node (issue 15): a replica's secret env and registry password reach the VM and
the registry, and nothing else. While the VM runs, no file on the node holds either (the spec
file QEMU reads is unlinked before QEMU starts), and neither appears in `vm ls`, the CLI's
output, QEMU's command line or environment, or qemu.log."""

import hashlib
import json
import os
import secrets
from pathlib import Path

import pytest

from protocol.wire import ReplicaSpec

pytestmark = [pytest.mark.vm, pytest.mark.netns, pytest.mark.timeout(600)]


def files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    """Every regular file under `roots` (following the store's symlinked images dir) whose
    bytes contain any needle."""
    found = []
    for root in roots:
        for dirpath, _, filenames in os.walk(root, followlinks=True):
            for name in filenames:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    data = path.read_bytes()
                    found += [f"{path} holds {needle!r}" for needle in needles if needle in data]
    return found


def test_a_spec_never_prints_its_secrets():
    spec = ReplicaSpec(name="r", image="i", registry_username="bot", registry_password="pw-s3cret",
                       secret_env={"API_TOKEN": "tok-s3cret"})
    assert "s3cret" not in repr(spec) and "s3cret" not in str(spec)
    assert "s3cret" not in json.dumps(spec.redacted())


def test_secrets_reach_the_vm_and_no_file_command_line_or_listing(agent_cli, auth_registry, tmp_path):
    token, password = f"tok-{secrets.token_hex(8)}", auth_registry.password
    password_file = tmp_path / "registry-password"  # the operator's own file, outside the data dir
    password_file.write_text(password + "\n")
    # The workload proves it has the token by printing a hash of it, never the token itself.
    rc, info, progress = agent_cli(
        "vm", "run", "sec", "--image", f"{auth_registry.addr}/gantry/hello:latest", "--port", "8080",
        "--insecure-registry", auth_registry.addr, "--trusted-registry", auth_registry.addr,
        "--registry-user", auth_registry.user, "--registry-password-file", str(password_file),
        "--secret-env", f"API_TOKEN={token}",
        "--entrypoint", '["/bin/sh", "-c"]',
        "--arg", 'echo "token $(printf %s "$API_TOKEN" | sha256sum)"; exec /hello.sh serve',
    )
    assert info["state"] == "running", info
    needles = [token.encode(), password.encode()]

    # Not in any file of the agent: VM dir, image store, leases, logs; nor in what the CLI says.
    assert files_holding([agent_cli.data_dir], needles) == []
    _, listing, _ = agent_cli("vm", "ls")
    for text in (json.dumps(info), progress, json.dumps(listing)):
        assert token not in text and password not in text
    vm_dir = agent_cli.data_dir / "vms" / "sec"
    assert not (vm_dir / "guest.sh").exists() and not (vm_dir / "guest.json").exists()
    # Not on QEMU's command line or in its environment, which any process may read or ps shows.
    pid = info["pid"]
    for view in ("cmdline", "environ"):
        data = Path(f"/proc/{pid}/{view}").read_bytes()
        assert token.encode() not in data and password.encode() not in data, view
    assert b"/proc/self/fd/3" in Path(f"/proc/{pid}/cmdline").read_bytes()

    # ... and yet the workload has it.
    _, lines, _ = agent_cli("vm", "logs", "sec")
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert any(line["message"].startswith(f"token {digest}") for line in lines), lines

    agent_cli("vm", "rm", "sec")
    assert files_holding([agent_cli.data_dir], needles) == []

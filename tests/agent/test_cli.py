"""The operator CLI end to end: real QEMU (TCG here), the real registry and hello image, the
real network. `--netns` puts only the VMs' network in a throwaway namespace: the CLI itself,
and the local registry it pulls from, stay in the test's own namespace (on loopback). Each boot
costs a few seconds, so each test checks several behaviours of one VM."""

import json
import os
import subprocess
import time

import pytest

from nodes.agent.cli import main
from nodes.agent.net.nft import vm_owner
from nodes.agent.network import tap_name

pytestmark = [pytest.mark.vm, pytest.mark.netns, pytest.mark.timeout(600)]


def wait_for_state(cli, name, states, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, vms, _ = cli("vm", "ls")
        vms = vms if isinstance(vms, list) else [vms]
        info = next((v for v in vms if v["name"] == name), None)
        if info and info["state"] in states:
            return info
        time.sleep(1)
    raise AssertionError(f"{name} never reached {states}: {info}")


def test_usage_errors_are_json_with_exit_code_2(capsys):
    assert main(["vm", "run", "x"]) == 2
    assert "error" in json.loads(capsys.readouterr().out)
    assert main(["vm", "run", "x", "--image", "i", "--entrypoint", "not json"]) == 2
    assert "JSON list" in json.loads(capsys.readouterr().out)["error"]


def test_missing_netns_is_a_usage_error(capsys):
    assert main(["vm", "ls", "--netns", "gtest-never-made"]) == 2
    assert "network namespace 'gtest-never-made' does not exist" in json.loads(capsys.readouterr().out)["error"]


def test_hello_serves_its_port_with_separate_streams_and_stop_leaves_nothing(agent_cli, local_registry, node_netns):
    # The registry listens on loopback out here, not in the VMs' namespace: the pull below
    # can only have been made from the CLI's own namespace.
    assert ":5000 " not in node_netns.run("ss", "-Htln")
    rc, info, progress = agent_cli(
        "vm", "run", "web", "--image", f"{local_registry}/gantry/hello:latest", "--port", "8080",
        "--publish", "9000", "--env", "GREETING=hi there", "--secret-env", "API_TOKEN=tok-s3cret",
    )
    assert info["state"] == "running" and info["accel"] in ("kvm", "tcg")
    # --publish: one more published port (nothing listens on it; only --port is health-checked).
    assert set(info["host_ports"]) == {"8080", "9000"} and info["host_ports"]["8080"] == info["host_port"]
    events = [json.loads(line) for line in progress.splitlines()]
    assert [e["state"] for e in events][:1] == ["pulling"] and events[-1]["state"] == "running"
    # The published port answers from inside the namespace, from the node itself (DNAT on
    # output) and at the VM address; the health check that made it `running` ran there too.
    assert node_netns.fetch("http", "127.0.0.1", info["host_port"]).strip() == "hi there"
    assert node_netns.fetch("http", info["address"], 8080).strip() == "hi there"
    # QEMU runs in the VMs' namespace (its TAP is there), booting the kit from --kit-cache;
    # the TAP and the port's rules exist in that namespace only.
    pid = info["pid"]
    identify = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True, check=True)
    assert identify.stdout.split() == [node_netns.name]
    cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")
    assert cmdline[cmdline.index("-kernel") + 1].startswith(str(agent_cli.kit_cache / "kit") + "/")
    assert not (agent_cli.data_dir / "kit").exists()
    assert tap_name("web") in node_netns.run("ip", "-o", "link")
    assert tap_name("web") not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    root_rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert vm_owner("web") in node_netns.run("nft", "list", "ruleset") and vm_owner("web") not in root_rules

    _, lines, _ = agent_cli("vm", "logs", "web")
    assert [x["message"] for x in lines if x["stream"] == "stdout"][:1] == ["hi there"]
    assert [x["message"] for x in lines if x["stream"] == "stderr"][:1] == ["hello: mode serve, port 8080"]
    assert [x["seq"] for x in lines] == list(range(1, len(lines) + 1))

    _, ls, _ = agent_cli("vm", "ls")
    vm_dir = agent_cli.data_dir / "vms" / "web"
    for text in (json.dumps(ls), progress, (vm_dir / "spec.json").read_text(), (vm_dir / "state.json").read_text()):
        assert "tok-s3cret" not in text

    _, stopped, _ = agent_cli("vm", "stop", "web")
    assert stopped["state"] == "stopped"
    assert not (vm_dir / "overlay.qcow2").exists()
    pid = info["pid"]
    assert not os.path.exists(f"/proc/{pid}") or "qemu" not in open(f"/proc/{pid}/cmdline").read()
    assert tap_name("web") not in node_netns.run("ip", "-o", "link")
    ruleset = node_netns.run("nft", "list", "ruleset")
    assert "web" not in ruleset and not any(str(port) in ruleset for port in info["host_ports"].values())
    agent_cli("vm", "rm", "web")
    assert not vm_dir.exists()
    _, ls, _ = agent_cli("vm", "ls")
    assert ls == []


def test_entrypoint_args_env_secret_and_exit_code_reach_the_workload(agent_cli, local_registry):
    script = 'echo "$GREETING $API_TOKEN $1"; echo "err-$1" >&2; echo after; exit 0'
    rc, info, progress = agent_cli(
        "vm", "run", "once", "--image", f"{local_registry}/gantry/hello:latest", "--entrypoint", json.dumps(["/bin/sh", "-c", script, "sh"]),
        "--arg", "A1", "--env", "GREETING=g", "--secret-env", "API_TOKEN=tok-2",
    )
    assert "tok-2" not in progress
    info = wait_for_state(agent_cli, "once", {"stopped", "failed"})
    assert (info["state"], info["exit_code"]) == ("stopped", 0)
    _, lines, _ = agent_cli("vm", "logs", "once")
    assert [x["message"] for x in lines if x["stream"] == "stdout"] == ["g tok-2 A1", "after"]
    assert [x["message"] for x in lines if x["stream"] == "stderr"] == ["err-A1"]
    _, later, _ = agent_cli("vm", "logs", "once", "--after-seq", "2")
    assert [x["seq"] for x in later] == [3]
    _, followed, _ = agent_cli("vm", "logs", "once", "--follow", timeout=30)  # ends: the VM has
    assert len(followed) == 3
    agent_cli("vm", "rm", "once")


def test_crash_loop_ends_failed_with_code_and_last_stderr(agent_cli, local_registry):
    agent_cli("vm", "run", "crash", "--image", f"{local_registry}/gantry/hello:latest", "--arg", "exit", "--arg", "3")
    info = wait_for_state(agent_cli, "crash", {"failed", "stopped"}, timeout=180)
    assert info["state"] == "failed" and info["exit_code"] == 3
    assert info["reason"].startswith("exited with code 3 after 3 restarts; last stderr:")
    assert "hello: mode exit" in info["reason"]
    agent_cli("vm", "rm", "crash")


@pytest.mark.parametrize(
    "image, expected",
    [
        ("NOT a reference!", "reference"),
        ("127.0.0.1:5000/gantry/nope:latest", "not found"),
        ("127.0.0.1:5999/gantry/hello:latest", "registry 127.0.0.1:5999 is unreachable"),
    ],
)
def test_bad_image_gives_a_reason_not_a_traceback(agent_cli, local_registry, image, expected):
    rc, result, _ = agent_cli("vm", "run", "bad", "--image", image, "--insecure-registry", "127.0.0.1:5999",
                              "--insecure-registry", "127.0.0.1:5000", "--trusted-registry", "127.0.0.1",
                              check=False)
    assert rc == 1
    assert expected.lower() in result["error"].lower()


def test_wrong_registry_credentials_give_a_reason(agent_cli, auth_registry, tmp_path):
    password = tmp_path / "pw"
    password.write_text("wrong\n")
    rc, result, _ = agent_cli("vm", "run", "auth", "--image", f"{auth_registry.addr}/gantry/hello:latest",
                              "--insecure-registry", auth_registry.addr, "--trusted-registry", auth_registry.addr,
                              "--registry-user", auth_registry.user,
                              "--registry-password-file", str(password), check=False)
    assert rc == 1
    assert any(word in result["error"].lower() for word in ("credential", "unauthorized", "denied", "authentication"))


def test_doctor_reports_accelerator_kit_and_network_prerequisites(agent_cli):
    rc, report, _ = agent_cli("doctor", check=False)
    checks = {c["name"]: c for c in report["checks"]}
    assert {"accelerator", "guest kit", "/dev/net/tun", "ip_forward", "tool nft", "tool nsenter"} <= set(checks)
    assert report["accel"]["name"] in ("kvm", "tcg") and report["accel"]["reason"]
    assert all(c["ok"] or c["fix"] for c in report["checks"])
    assert rc == (0 if report["ok"] else 1)
    # The kit is the one in --kit-cache; the bridge is looked for in the VMs' namespace.
    assert str(agent_cli.kit_cache / "kit") in checks["guest kit"]["detail"]
    assert checks["bridge gantry0"]["detail"].endswith(f"in netns {agent_cli.netns}")

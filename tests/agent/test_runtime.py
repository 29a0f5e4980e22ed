"""MicroVmRuntime against fakes of its far sides (tests/agent/fakes.py): the guest is a host
process that behaves like /init, so these tests run in seconds. The same behaviours are checked
with real QEMU, registry and network in test_cli.py and test_crash_safety.py.

No VM boots and no network device is made (FakeVmm, FakeNetwork). The guests run inside a
network namespace this module made and listen on its 127.0.0.1, where the runtime's health check
(`netns=`) and the test's own calls reach them: no packet touches the host's loopback.
"""

import asyncio
import time
import json
import socket
import sys

import pytest

from nodes.agent.errors import AgentError
from nodes.agent.images import ImageStore, OciImageStore
from nodes.agent.lifecycle import guest_command
from nodes.agent.network import LinuxNetwork, Network, NetworkConfig
from nodes.agent.runtime import MicroVmRuntime
from nodes.agent.vmm import Vmm
from nodes.agent.vmm.qemu import QemuVm
from protocol.wire import ReplicaSpec
from tests.agent.fakes import FakeImageConfig, FakeImageStore, FakeNetwork, FakeVmm, fake_accel, fake_kit
from tests.agent.netns import create_netns

SH = FakeImageConfig(entrypoint=["/bin/sh", "-c"], cmd=["echo default"], env={"FROM_IMAGE": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def ns():
    made = create_netns("gtrt")
    yield made
    made.close()


@pytest.fixture
def parts(tmp_path, ns):
    images = FakeImageStore(tmp_path / "images", {"sh": SH})
    return images, FakeNetwork(), FakeVmm(netns=ns.name)


def make_runtime(tmp_path, parts, *, netns: str | None = None, **kw):
    """The runtime over `parts`, its health checks made inside the namespace its guests run in."""
    images, network, vmm = parts
    return MicroVmRuntime(
        tmp_path / "data", images=images, network=network, vmm=vmm, kit_provider=fake_kit,
        accel_provider=fake_accel, poll_interval=0.02, netns=netns or vmm.netns, **kw,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web(name: str) -> tuple[ReplicaSpec, int]:
    """A replica serving HTTP on a free port of 127.0.0.1 (where FakeVmm's guests live), and the port."""
    port = free_port()
    return ReplicaSpec(name=name, image="sh", traffic_port=port,
                       entrypoint=[sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)]), port


async def wait_state(rt, name, states, timeout=10):
    for _ in range(int(timeout / 0.05)):
        info = await rt.get(name)
        if info.state in states:
            return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} stuck in {info.state}")


async def all_logs(rt, name):
    return [line async for line in rt.logs(name)]


def test_spec_entrypoint_replaces_entrypoint_and_drops_cmd():
    spec = ReplicaSpec(name="a", image="sh", entrypoint=["/bin/echo"])
    assert guest_command(SH, spec)[0] == ["/bin/echo"]
    spec = ReplicaSpec(name="a", image="sh", entrypoint=["/bin/echo"], args=["x"])
    assert guest_command(SH, spec)[0] == ["/bin/echo", "x"]
    spec = ReplicaSpec(name="a", image="sh", args=["echo hi"])
    assert guest_command(SH, spec)[0] == ["/bin/sh", "-c", "echo hi"]
    assert guest_command(SH, ReplicaSpec(name="a", image="sh"))[0] == ["/bin/sh", "-c", "echo default"]
    env = guest_command(SH, ReplicaSpec(name="a", image="sh", env={"A": "1"}, secret_env={"A": "s"}))[1]
    assert env["A"] == "s" and env["FROM_IMAGE"] == "1"
    with pytest.raises(AgentError):
        guest_command(FakeImageConfig(), ReplicaSpec(name="a", image="x"))


async def test_workload_streams_env_and_exit_code_reach_state_and_logs(tmp_path, parts):
    rt = make_runtime(tmp_path, parts)
    events = rt.subscribe()
    spec = ReplicaSpec(
        name="web", image="sh", env={"GREETING": "hi"}, secret_env={"TOKEN": "s3cret-value"},
        args=['echo "$GREETING $TOKEN $FROM_IMAGE"; echo one >&2; echo out2; echo two >&2'],
    )
    await rt.start(spec)
    info = await wait_state(rt, "web", {"stopped", "failed"})
    assert (info.state, info.exit_code) == ("stopped", 0)
    lines = await all_logs(rt, "web")
    assert [line.seq for line in lines] == [1, 2, 3, 4]
    assert [ln.message for ln in lines if ln.stream == "stdout"] == ["hi s3cret-value 1", "out2"]
    assert [ln.message for ln in lines if ln.stream == "stderr"] == ["one", "two"]
    seen = []
    while not events.empty():
        seen.append(events.get_nowait())
    states = [e.state for e in seen]
    assert states[0] == "pulling" and "booting" in states and states[-1] == "stopped"
    assert any(e.total_bytes == 1024 for e in seen)
    vm_dir = tmp_path / "data" / "vms" / "web"
    for f in ("spec.json", "state.json"):
        assert "s3cret-value" not in (vm_dir / f).read_text()
    assert json.loads((vm_dir / "spec.json").read_text())["secret_env"] == ["TOKEN"]
    await rt.close()


async def test_crash_loop_fails_with_code_restarts_and_last_stderr(tmp_path, parts):
    rt = make_runtime(tmp_path, parts)
    events = rt.subscribe()
    spec = ReplicaSpec(name="bad", image="sh", args=["echo boom >&2; exit 3"])
    await rt.start(spec)
    info = await wait_state(rt, "bad", {"failed"}, timeout=20)
    assert info.exit_code == 3 and info.restarts == 3
    assert info.reason.startswith("exited with code 3 after 3 restarts; last stderr: boom")
    seen = [events.get_nowait() for _ in range(events.qsize())]
    assert any(e.state == "restarting" and e.exit_code == 3 for e in seen)
    assert seen[-1].state == "failed" and seen[-1].reason == info.reason
    await rt.close()


async def test_a_state_is_announced_by_the_time_anyone_can_read_it(tmp_path, parts):
    """get() never shows a state whose event is still to come, even when the disk is slow."""
    rt = make_runtime(tmp_path, parts)
    write_info = rt.store.write_info

    def slow_write(info):  # runs in a worker thread
        time.sleep(0.05)
        write_info(info)

    rt.store.write_info = slow_write
    events = rt.subscribe()
    await rt.start(ReplicaSpec(name="bad", image="sh", args=["exit 3"]))
    seen: list[str] = []
    for _ in range(400):
        info = await rt.get("bad")
        while not events.empty():
            seen.append(events.get_nowait().state)
        assert seen and seen[-1] == info.state, f"get() says {info.state}, events so far {seen}"
        if info.state == "failed":
            break
        await asyncio.sleep(0.01)
    assert seen[-1] == "failed"
    await rt.close()


async def test_health_check_gates_running_and_stop_leaves_nothing(tmp_path, parts, ns):
    images, network, vmm = parts
    rt = make_runtime(tmp_path, parts)
    spec, port = web("srv")
    info = await rt.start(spec)
    assert info.state == "running" and info.host_port == port
    assert "Directory listing" in await asyncio.to_thread(ns.fetch, "http", "127.0.0.1", port)  # it answers
    info = await rt.stop("srv")
    assert info.state == "stopped"
    assert not vmm.alive(tmp_path / "data" / "vms" / "srv")
    assert network.taps == set() and network.ports == {}
    assert not (tmp_path / "data" / "vms" / "srv" / "overlay.qcow2").exists()
    await rt.remove("srv")
    assert not (tmp_path / "data" / "vms" / "srv").exists()
    assert await rt.list() == []


async def test_a_health_check_that_keeps_failing_is_announced_once_per_reason(tmp_path, parts, monkeypatch):
    from nodes.agent import runtime_boot

    monkeypatch.setattr(runtime_boot, "HEALTH_QUIET_S", 0.3)
    rt = make_runtime(tmp_path, parts)
    events = rt.subscribe()
    port = free_port()
    # The port opens only after a second and a half: refused until then.
    spec = ReplicaSpec(name="slow", image="sh", args=[f"sleep 1.5; exec {sys.executable} -m http.server -b 127.0.0.1 {port}"],
                       traffic_port=port)
    assert (await rt.start(spec)).state == "running"
    seen = []
    while not events.empty():
        seen.append(events.get_nowait())
    health = [e for e in seen if e.phase == "health"]
    assert [(e.state, e.reason) for e in health] == [("starting", "health check failing: connection refused")]
    assert seen[-1].state == "running" and seen.index(health[0]) < len(seen) - 1
    await rt.stop("slow")
    await rt.close()


async def test_workload_dying_before_health_fails_start_with_its_reason(tmp_path, parts):
    rt = make_runtime(tmp_path, parts, health_timeout=30)
    spec = ReplicaSpec(name="die", image="sh", args=["echo cannot bind >&2; exit 7"], traffic_port=9)
    with pytest.raises(AgentError, match="exited with code 7 after 3 restarts; last stderr: cannot bind"):
        await rt.start(spec)
    assert (await rt.get("die")).state == "failed"


async def test_image_error_fails_start_and_releases_everything(tmp_path, parts):
    images, network, vmm = parts
    rt = make_runtime(tmp_path, parts)
    with pytest.raises(AgentError, match="not found") as err:
        await rt.start(ReplicaSpec(name="x", image="nope"))
    assert err.value.permanent
    info = await rt.get("x")
    assert info.state == "failed" and "not found" in info.reason
    assert network.taps == set()


async def test_second_start_of_same_spec_is_idempotent_and_other_spec_conflicts(tmp_path, parts):
    rt = make_runtime(tmp_path, parts)
    spec = ReplicaSpec(name="long", image="sh", args=["sleep 30"])
    first = await rt.start(spec)
    again = await rt.start(spec)
    assert again.pid == first.pid
    with pytest.raises(AgentError, match="already exists"):
        await rt.start(ReplicaSpec(name="long", image="sh", args=["sleep 5"]))
    await rt.remove("long")


async def test_a_follower_of_raw_records_gets_what_log_lines_show_and_ends_with_the_vm(tmp_path, parts):
    rt = make_runtime(tmp_path, parts)
    await rt.start(ReplicaSpec(name="tick", image="sh",
                               args=['for i in 1 2 3 4 5 6; do echo "$i"; echo "e\\"$i" >&2; sleep 0.1; done']))
    chunks = [chunk async for chunk in rt.log_record_chunks("tick", follow=True)]  # ends as the VM does
    assert (await rt.get("tick")).state == "stopped"
    lines = await all_logs(rt, "tick")
    records = [r for chunk in chunks for r in chunk.records]
    assert [json.loads(r)["message"] for r in records] == [x.message for x in lines] and len(lines) == 12
    assert [(c.first_seq, c.last_seq) for c in chunks] == [
        (json.loads(c.records[0])["seq"], json.loads(c.records[-1])["seq"]) for c in chunks]
    assert len(chunks) > 1  # followed as the VM printed, not read once at the end
    rest = [chunk async for chunk in rt.log_record_chunks("tick", after_seq=10)]
    assert [r for chunk in rest for r in chunk.records] == records[10:]
    with pytest.raises(AgentError):
        [chunk async for chunk in rt.log_record_chunks("no-such-vm")]
    await rt.close()


async def test_new_runtime_adopts_live_vm_and_cleans_crash_leftovers(tmp_path, parts):
    images, network, vmm = parts
    rt = make_runtime(tmp_path, parts)
    await rt.start(ReplicaSpec(name="tick", image="sh", args=["for i in 1 2 3 4 5 6; do echo $i; sleep 0.2; done"]))
    await rt.close()  # the agent "dies": its watchers stop, the guest keeps running
    network.taps.add("orphan")  # a TAP of a VM whose dir never got written
    half = tmp_path / "data" / "vms" / "half"
    half.mkdir()
    (half / "state.json").write_text(json.dumps({"name": "half", "state": "pulling"}))

    rt2 = make_runtime(tmp_path, parts)
    adopted = await rt2.recover()
    assert [i.name for i in adopted] == ["tick"]
    assert "orphan" not in network.taps and not half.exists()
    info = await wait_state(rt2, "tick", {"stopped"})
    assert info.exit_code == 0
    assert [ln.message for ln in await all_logs(rt2, "tick")] == ["1", "2", "3", "4", "5", "6"]
    await rt2.close()


async def test_an_adopted_vm_gets_its_network_checked_again(tmp_path, parts):
    """After a daemon restart (or upgrade) the adopted VM's TAP, rules and published port are
    re-asserted, as for a new VM: flushed or outdated rules do not outlive the restart. Adopting
    alone (what every CLI command does) leaves the network as it is."""
    images, network, vmm = parts
    rt = make_runtime(tmp_path, parts)
    spec, port = web("web")
    await rt.start(spec)
    await rt.close()
    network.calls.clear()

    rt2 = make_runtime(tmp_path, parts)
    await rt2.recover()
    assert [c for c in network.calls if c[0] != "owned"] == []
    await rt2.reassert_networks()

    assert [c for c in network.calls if c[0] != "owned"] == [
        ("ensure_host",), ("ensure_tap", "web"), ("publish_port", "web", port)]
    await rt2.remove("web")


async def test_start_and_stop_of_one_vm_never_interleave(tmp_path, parts):
    images, network, vmm = parts
    rt = make_runtime(tmp_path, parts)
    spec = ReplicaSpec(name="race", image="sh", args=["sleep 30"])
    start = asyncio.create_task(rt.start(spec))
    await asyncio.sleep(0)
    stopped = await rt.stop("race")  # queued behind the start
    assert (await start).state == "running"
    assert stopped.state == "stopped"
    names = [c[0] for c in vmm.calls]
    assert names.index("launch") < names.index("stop")


def only(part, protocol):
    """`part` showing nothing but what `protocol` declares: a runtime that asks it for anything
    else fails with an AttributeError."""
    declared = {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}

    class Only:
        def __getattr__(self, name):
            if name not in declared:
                raise AttributeError(f"{name} is not part of {protocol.__name__}")
            return getattr(part, name)

    return Only()


def test_the_fakes_and_the_real_parts_are_what_the_runtime_asks_for(tmp_path, parts):
    images, network, vmm = parts
    # Constructed only (their constructors do no I/O): no device is made, no packet sent.
    real = OciImageStore(tmp_path / "oci"), LinuxNetwork(NetworkConfig(), tmp_path / "net"), QemuVm()
    for part, protocol in zip((*parts, *real), (ImageStore, Network, Vmm) * 2):
        assert isinstance(part, protocol), (part, protocol)


async def test_the_runtime_asks_its_far_sides_only_what_their_protocols_declare(tmp_path, parts):
    images, network, vmm = parts
    narrowed = only(images, ImageStore), only(network, Network), only(vmm, Vmm)
    rt = make_runtime(tmp_path, narrowed, netns=vmm.netns)
    await rt.start(web("web")[0])
    await rt.close()
    rt2 = make_runtime(tmp_path, narrowed, netns=vmm.netns)
    assert [i.name for i in await rt2.recover()] == ["web"]
    await rt2.reassert_networks()
    await rt2.remove("web")
    called = {c[0] for part in parts for c in part.calls}
    assert {"ensure_disk", "create_overlay", "evict", "ensure_host", "ensure_tap", "publish_port", "remove",
            "launch", "stop"} <= called

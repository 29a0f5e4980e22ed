"""Hostile volume specs: what the plane (or anything that reached the socket) sends about a
replica's volumes is refused at decode, or is safe all the way to the guest. A volume that
decodes names a file inside the volume dir, and reaches /init as exactly one
`serial:mode:path` line that splits back into what was sent. The agent's own runtime refuses
what bypasses decode (a spec built by the CLI or a test) with the same rules.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.agent.errors import AgentError
from nodes.agent.volumes import FileVolumes
from nodes.agent.vmm.spec import GuestSpec, render
from protocol import wire as protocol
from protocol.wire import ProtocolError, ReplicaSpec, VolumeMount
from tests.agent.test_runtime import make_runtime, parts, ns  # noqa: F401 (fixtures)

SPEC = ReplicaSpec(name="r-42", image="127.0.0.1:5000/gantry/hello:latest")

# Ids and paths built from the pieces attacks are made of, beside arbitrary text.
nasty_text = st.lists(st.sampled_from(["..", ".", "/", "proc", "sys", "dev", "run", "gantry", "data", "a", "A",
                                       "-", ":", ",", " ", "\n", "\0", "*", "$", "'", '"', "`", "\\", "é", "%2e"]),
                      max_size=8).map("".join)
clean_paths = st.lists(st.sampled_from(["data", "root", ".ollama", "x*y", "[a]", "a-b", "_", "srv"]),
                       min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
nasty_paths = st.one_of(
    st.lists(st.one_of(nasty_text, st.sampled_from(["data", "proc", "sys", "..", "."])), min_size=1, max_size=4)
    .map(lambda parts: "/" + "/".join(parts)),
    nasty_text, st.text(max_size=300), st.none(), st.integers())
good = st.fixed_dictionaries({
    "volume_id": st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True),
    "size_gib": st.integers(1, protocol.MAX_VOLUME_GIB),
    "mount_path": clean_paths,
    "mode": st.sampled_from(["rw", "ro"]),
})
nasty = {
    "volume_id": st.one_of(nasty_text, st.text(max_size=70), st.integers(), st.none()),
    "size_gib": st.one_of(st.integers(-2, 20000), st.floats(allow_nan=True), st.text(max_size=3), st.booleans(),
                          st.none()),
    "mount_path": nasty_paths,
    "mode": st.one_of(st.sampled_from(["RW", "wo", "", "rw,exec", "ro "]), st.none(), st.integers()),
}
# A valid volume with one field made hostile: each attack reaches decode beside valid neighbours.
hostile = good.flatmap(lambda d: st.sampled_from(sorted(nasty)).flatmap(
    lambda key: nasty[key].map(lambda value: {**d, key: value})))
volume_dicts = st.one_of(good, hostile)

def start_frame(volumes) -> str:
    spec = {**SPEC.to_dict(), "volumes": volumes}
    return json.dumps({"type": "replica.start", "version": protocol.PROTOCOL_VERSION, "command_id": "c-1",
                       "replica": {"replica_id": "r-42", "spec": spec}})


@settings(max_examples=400, deadline=None)
@given(st.lists(volume_dicts, max_size=4))
def test_a_volume_that_decodes_is_a_file_in_the_volume_dir_and_one_clean_line_for_init(tmp_path_factory, volumes):
    try:
        message = protocol.decode(start_frame(volumes), allowed=protocol.PLANE_MESSAGES)
    except ProtocolError:
        return
    decoded = message.replica.spec.volumes
    assert len(decoded) <= protocol.MAX_VOLUMES_PER_REPLICA
    root = tmp_path_factory.getbasetemp() / "volumes"
    backend = FileVolumes(root)
    for v in decoded:
        path = backend.path(v.volume_id)
        assert path.parent == root and path.name == v.volume_id and not path.name.startswith(".")
        assert 0 < v.size_gib <= protocol.MAX_VOLUME_GIB and v.mode in ("rw", "ro")
        assert not any(v.mount_path == r or v.mount_path.startswith(r + "/") for r in ("/proc", "/sys", "/dev"))
        assert ".." not in v.mount_path.split("/")
    fragment = render(GuestSpec(argv=["true"]), hostname="r-42", root_dev="/dev/vda", net=None,
                      volumes=[(f"gantry-vol{i}", v.mode, v.mount_path) for i, v in enumerate(decoded)])
    # The fragment sourced and read back by busybox exactly as /init reads it.
    reader = ('while IFS=: read -r serial mode path; do [ -n "$serial" ] || continue; '
              'printf "%s\\0%s\\0%s\\0" "$serial" "$mode" "$path"; done <<VOLUMES\n$GANTRY_VOLUMES\nVOLUMES\n')
    out = subprocess.run(["/bin/busybox", "sh", "-c", fragment + reader], capture_output=True, check=True).stdout
    fields = out.decode().split("\0")[:-1]
    got = [tuple(fields[i:i + 3]) for i in range(0, len(fields), 3)]
    expected = sorted(((f"gantry-vol{i}", v.mode, v.mount_path) for i, v in enumerate(decoded)), key=lambda t: t[2])
    assert got == expected

@pytest.mark.parametrize("volume, reason", [
    ({"volume_id": "../etc", "size_gib": 1, "mount_path": "/data"}, "volume_id"),
    ({"volume_id": "a/b", "size_gib": 1, "mount_path": "/data"}, "volume_id"),
    ({"volume_id": "ok", "size_gib": 0, "mount_path": "/data"}, "size_gib"),
    ({"volume_id": "ok", "size_gib": 16385, "mount_path": "/data"}, "size_gib"),
    ({"volume_id": "ok", "size_gib": 1, "mount_path": "/proc/sys"}, "mount_path"),
    ({"volume_id": "ok", "size_gib": 1, "mount_path": "/data/../proc"}, "mount_path"),
    ({"volume_id": "ok", "size_gib": 1, "mount_path": "/"}, "mount_path"),
    ({"volume_id": "ok", "size_gib": 1, "mount_path": "/data:rw"}, "mount_path"),
    ({"volume_id": "ok", "size_gib": 1, "mount_path": "/data\nb"}, "mount_path"),
    ({"volume_id": "ok", "size_gib": 1, "mount_path": "/data", "mode": "rwx"}, "mode"),
])
def test_hostile_volumes_are_refused_at_decode_with_a_reason(volume, reason):
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode(start_frame([volume]), allowed=protocol.PLANE_MESSAGES)


@pytest.mark.parametrize("volumes, reason", [
    ([VolumeMount("../x", 1, "/data")], "volume_id"),
    ([VolumeMount("ok", 1, "/sys/kernel")], "mount_path"),
    ([VolumeMount("a", 1, "/data"), VolumeMount("b", 1, "/data")], "distinct"),
    ([VolumeMount(f"v{i}", 1, f"/d{i}") for i in range(9)], "at most 8"),
])
async def test_the_runtime_refuses_what_bypassed_decode_before_anything_is_made(tmp_path, parts, volumes,  # noqa: F811
                                                                                reason):
    rt = make_runtime(tmp_path, parts, volumes=FileVolumes(tmp_path / "volumes"))
    with pytest.raises(AgentError, match=reason) as err:
        await rt.start(ReplicaSpec(name="r-1", image="sh", volumes=volumes))
    assert err.value.permanent
    assert not (tmp_path / "volumes").exists() and await rt.list() == []

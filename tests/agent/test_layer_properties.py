"""Whatever a layer holds, unpacking it changes nothing outside the image's tree (issue 23).

Hypothesis writes layer tarballs from a small alphabet of names, so entries collide and
rebuild each other's paths: `..` and absolute names, symlinks and hard links aimed at the
canaries' real host paths (absolute) and at relative paths that climb out of the tree,
whiteouts (`.wh.<name>`, opaque `.wh..wh..opq`, and the malformed `.wh.`, `.wh..`), a
directory that a later entry turns into a symlink, and random modes (setuid included),
owners, xattrs and mtimes. One to three such layers are applied in turn, as root, to a tree
inside a temporary root that holds canaries beside it (tests/agent/layer_kit.py). Whether
the unpack succeeds or is refused, everything outside the tree must be as it was, down to
each inode's ctime, mode, owner, xattrs, mtime and link count, and a refusal must be an
ImageError with a reason, never another exception.

300 examples a run (about 15 s on the 2-core build machine, 40 s while it is busy; `GANTRY_LAYER_EXAMPLES` sets another
number), derandomized so CI is repeatable: a new case is found by raising the number locally,
and stays found once it is added below as an @example.
"""

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from nodes.agent.images import ImageError
from nodes.agent.oci.layers import UnpackBudget, UnpackLimits, apply_layer
from tests.agent.layer_kit import Entry, compress, make_host, snapshot, tar_bytes

EXAMPLES = int(os.environ.get("GANTRY_LAYER_EXAMPLES", "300"))
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking runs as root on a node (owners)")

# Names that are refused outright (`..`, a leading `/`, `.wh.`) stop a layer at once, so they
# come rarely: most layers should get far enough to build and rebuild paths.
COMPONENTS = ["a"] * 6 + ["b"] * 4 + ["etc"] * 4 + ["shadow"] * 3 + [".", ".wh.a", ".wh.b", ".wh.etc", ".wh..wh..opq",
                                                                    ".wh..wh.plnk", "ü", "..", ".wh.", ".wh.."]
HOST_PATHS = ["", "etc", "etc/shadow", "etc/passwd", "canary", "nowhere"]  # under <base>/host

names = st.builds(
    lambda prefix, parts, slash: prefix + "/".join(parts) + slash,
    st.sampled_from([""] * 12 + ["./", "/"]),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3),
    st.sampled_from(["", "", "/"]),
)
# A link target is built once the example's temporary root is known: ("host", path) is the
# canary's absolute host path, ("climb", n, path) climbs n levels from where the link is,
# ("image", path) names a path inside the image, absolute or relative.
targets = st.one_of(
    st.tuples(st.just("host"), st.sampled_from(HOST_PATHS)),
    st.tuples(st.just("climb"), st.integers(1, 5), st.sampled_from(HOST_PATHS)),
    st.tuples(st.just("image"), st.sampled_from(["/", "/etc", "/a", "a", "a/b", "../a", "etc/shadow", "/etc/../.."])),
)
xattrs = st.dictionaries(st.sampled_from(["user.x", "user.pwned", "trusted.x", "security.capability"]),
                         st.sampled_from(["", "1", "pwned"]), max_size=2)
metadata = st.fixed_dictionaries({
    "mode": st.sampled_from([0o000, 0o555, 0o700, 0o755, 0o777, 0o4755, 0o7777]) | st.integers(0, 0o7777),
    "owner": st.tuples(st.sampled_from([0, 1000, 4242, 65534]), st.sampled_from([0, 42, 4242])),
    "xattrs": xattrs,
    "mtime": st.sampled_from([0, 1, 1704067200, 2**31 + 5]),
})
plain_entry = st.tuples(st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "chardev"]),
                        names, targets, metadata)
# The directory/symlink swap, explicitly, so every run has many: a dir, a dir below it with
# its own metadata, then the first one becomes a symlink.
swap = st.tuples(st.just("swap"), st.lists(st.sampled_from(["a", "b", "etc"]), min_size=1, max_size=2),
                 targets, metadata)
layers = st.lists(st.lists(plain_entry | swap, min_size=1, max_size=12), min_size=1, max_size=3)


def _target(spec: tuple, host: Path, link_name: str) -> str:
    if spec[0] == "host":
        return str(host / spec[1]) if spec[1] else str(host)
    if spec[0] == "climb":
        depth = link_name.strip("/").count("/")  # the link's own directory, below rootfs
        return "/".join([".."] * (depth + spec[1]) + ["host"] + ([spec[2]] if spec[2] else []))
    return spec[1]


def _entries(layer: list[tuple], host: Path) -> list[Entry]:
    out = []
    for kind, name, target, meta in layer:
        if kind == "swap":
            top = "/".join(name)
            out += [Entry(top, "dir", **meta), Entry(f"{top}/shadow", "dir", **meta),
                    Entry(top, "symlink", _target(target, host, top))]
        elif kind in ("symlink", "hardlink"):
            # A hard link's target is a name in the layer: the host path is its absolute form.
            out.append(Entry(name, kind, _target(target, host, name), **meta))
        else:
            out.append(Entry(name, kind, b"pwned" if kind == "file" else b"", **meta))
    return out


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(layers=layers, how=st.sampled_from(["gzip", "plain"]))
@example(layers=[[("swap", ["a"], ("host", "etc"), {"mode": 0o777, "owner": (4242, 4242), "xattrs": {"user.x": "1"},
                                                    "mtime": 0})]], how="gzip")
@example(layers=[[("swap", ["a"], ("climb", 2, "etc"), {"mode": 0o777, "owner": (4242, 4242), "xattrs": {},
                                                        "mtime": 0})]], how="plain")
def test_no_layer_changes_anything_outside_its_tree(layers, how):
    with tempfile.TemporaryDirectory(prefix="gantry-layer-prop-") as tmp:
        base = Path(tmp)
        host = make_host(base)
        blobs = []
        for i, layer in enumerate(layers):
            blob = base / "blobs" / f"layer{i}"
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(compress(tar_bytes(_entries(layer, host.host)), how))
            blobs.append(blob)
        before = snapshot(base, skip=host.rootfs)
        budget = UnpackBudget(UnpackLimits(max_bytes=1 << 20, max_entries=64))

        for i, blob in enumerate(blobs):
            try:
                apply_layer(blob, host.rootfs, f"sha256:layer{i}", budget)
            except ImageError as exc:
                assert exc.message.startswith(f"layer sha256:layer{i} is ")
                event(f"refused: {exc.message.split(': ', 1)[-1][:40]}")
                break
        else:
            event("applied")

        assert snapshot(base, skip=host.rootfs) == before
        assert host.rootfs.is_dir() and not host.rootfs.is_symlink()

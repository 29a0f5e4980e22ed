"""A replica's persistent volumes on this node: the backend interface and the file backend.

`VolumeBackend` is what the runtime asks of volumes: make one ready (`ensure`, which answers
how QEMU opens it), erase one (`delete`), and say what the node holds (`usage`, which the
heartbeat carries). `FileVolumes` keeps each volume as a sparse ext4 file in the agent's volume
directory; a network backend (Ceph RBD through QEMU's own `rbd` driver) would answer `ensure`
with a `file=rbd:...` source instead of a path, and the rest of the agent would not change.
"""

from nodes.agent.volumes.backend import VolumeAttach, VolumeBackend, VolumeUsage
from nodes.agent.volumes.files import FileVolumes

__all__ = ["FileVolumes", "VolumeAttach", "VolumeBackend", "VolumeUsage"]

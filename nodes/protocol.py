"""The wire vocabulary shared by the control plane and the node agent.

Plain dataclasses only: the agent imports this module on GPU hosts that carry no Django, and
the control plane imports it to build the specs it sends. The WebSocket messages themselves
(hello, heartbeat, replica.start, ...) join this module with the agent-protocol issue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Replica/VM states as the runtime reports them. The control plane maps these onto the
# customer-facing deployment status words.
VM_STATES = ("pulling", "booting", "starting", "running", "restarting", "stopping", "stopped", "failed")


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a node needs to run one replica; secrets arrive decrypted and stay in memory
    or in root-only files under the agent's data dir, never in logs or `vm ls` output."""

    name: str
    image: str
    registry_username: str | None = None
    registry_password: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None  # None: the image's own ENTRYPOINT
    args: list[str] | None = None  # None: the image's own CMD
    traffic_port: int | None = None
    vcpus: int = 1
    memory_mib: int = 256
    gpu_bdfs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def redacted(self) -> dict[str, Any]:
        """The spec as it may be shown or logged: secret values and the password removed."""
        data = self.to_dict()
        data["secret_env"] = sorted(self.secret_env)
        data["registry_password"] = None if self.registry_password is None else "***"
        return data

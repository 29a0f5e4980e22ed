"""The `nodes.link.VolumeSink` the agent consumer calls: a heartbeat's volume files, and the
erases a node must do."""

from __future__ import annotations

from volumes import services


class NodeVolumeSink:
    def report(self, *, node_id: int, volumes: dict[str, int]) -> None:
        services.volumes_node_report(node_id=node_id, volumes=volumes)

    def erasable(self, *, node_id: int) -> list[str]:
        return services.volumes_erasable(node_id=node_id)

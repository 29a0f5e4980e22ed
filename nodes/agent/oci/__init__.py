"""The OCI pieces behind nodes.agent.images: references, the registry client, layers, disks."""

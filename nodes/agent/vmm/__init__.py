"""QEMU microVMs: acceleration probe, launch/stop, QMP and the guest spec."""

"""The guest side of a microVM: kernel, initramfs and the /init that runs the workload."""

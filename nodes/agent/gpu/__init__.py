"""GPUs on a node: what the device ids mean (models), what NVML says (nvml), and the
inventory that joins both with sysfs (discover)."""

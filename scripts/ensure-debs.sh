#!/usr/bin/env bash
# The node runtime's Debian packages (DESIGN.md section 2). The guest kernel is not installed
# here: the agent fetches it with `apt-get download` into its own data dir.
set -euo pipefail
# build-essential and gcc-12: the GPU guest kit compiles NVIDIA's open kernel module for the
# guest kernel (nodes/agent/guest/gpukit.py); chromium: the dashboard's browser tests.
# haproxy and openssl: the endpoint gateway (gateway/, docs/gateway.md) runs /usr/sbin/haproxy
# with its own config, sockets and ports under its state dir, and makes its local CA with
# openssl. It never uses Debian's haproxy.service: that unit's default config binds no port, so
# where systemd starts it on install it is harmless, and nothing here starts or stops it.
cd "$(dirname "$0")/.."
scripts/apt-install.sh qemu-system-x86 qemu-utils busybox-static e2fsprogs nftables iproute2 \
  docker-registry skopeo umoci ca-certificates zstd lz4 \
  build-essential gcc-12 \
  haproxy openssl wrk \
  chromium chromium-driver  # the dashboard's browser tests (tests/browser/), driven by Playwright

# The local image registry (Debian's docker-registry on 127.0.0.1:5000, data under STATE_DIR)
# and the gantry/hello image built from busybox-static. Idempotent: a registry that already
# answers is left alone, and hello is pushed only when the registry lacks that exact manifest.
REGISTRY_ADDR ?= 127.0.0.1:5000

.PHONY: registry registry-stop

registry: sysdeps
	@$(PY) scripts/registry/registry.py up --state-dir $(STATE_DIR) --addr $(REGISTRY_ADDR)
	@$(PY) scripts/registry/registry.py push-hello --state-dir $(STATE_DIR) --registry $(REGISTRY_ADDR)

registry-stop:
	@$(PY) scripts/registry/registry.py stop --state-dir $(STATE_DIR)

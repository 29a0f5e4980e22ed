# The local CPU node `make up` runs (scripts/local-node.sh). `make up` sets it up and tears
# nothing down: its namespace, veth pair and NAT table stay for the next run, and its VMs keep
# running. local-node-down removes the network part once no VM runs in the namespace.
.PHONY: local-node-down

local-node-down:
	@scripts/local-node.sh down

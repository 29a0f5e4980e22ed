"""Building blocks of `nodes.agent.network`: the nftables table, the lease file and the
commands that run in the agent's network namespace. Import `nodes.agent.network` instead."""

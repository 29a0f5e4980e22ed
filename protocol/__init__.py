"""What the control plane and the node agent share: plain Python, standard library only.

`wire` (the agent ⇄ plane messages) and `checks` (their validators), `vocabulary` (states,
statuses, roles, log streams, the VM-name and PCI-address rules) and `addresses` (the one SSRF
classifier). The agent imports this package and itself, nothing else of ours; every app may
import it. It lives outside the apps so the import contracts can say so: import-linter's layers
take a package with everything inside it, so the vocabulary inside `nodes` would have made
`accounts` (its roles) depend on `nodes` (docs/architecture.md, "The shared package").
"""

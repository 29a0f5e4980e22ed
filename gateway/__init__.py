"""Gantry's endpoint gateway: HAProxy, configured by the route table the plane pushes (docs/gateway.md).

Django-free like the agent: it imports only itself, `protocol` and the standard library
(the `gateway` contract in pyproject.toml), so it runs on a machine that has none of the plane.
"""

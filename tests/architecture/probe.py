"""Checks the contracts of pyproject.toml against the tree with imports added: run as a script.

It runs in a process of its own because, inside pytest, zope.interface (imported by daphne's
Twisted) has already decorated classes in a way import-linter's option check trips over.
Input on stdin: [[contract_id, importer, imported], ...]; output: for each, whether the tree
keeps the contract before the import is added and after.
"""

from __future__ import annotations

import copy
import json
import sys

import grimp
from importlinter.api import read_configuration
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.layers import LayersContract
from importlinter.contracts.protected import ProtectedContract

from tests.architecture.only_imports import OnlyImportsContract

TYPES = {"only_imports": OnlyImportsContract, "layers": LayersContract, "protected": ProtectedContract,
         "acyclic_siblings": AcyclicSiblingsContract}


def kept(config, graph, contract_id: str) -> bool:
    options = next(c for c in config["contracts_options"] if c.get("id") == contract_id)
    contract = TYPES[options["type"]](
        name=options["name"], session_options=config["session_options"], contract_options=options)
    # A copy, as lint-imports does: a contract with ignore_imports removes them from the graph
    # it checks, and the same graph is checked again once the probe's import is added.
    return contract.check(copy.deepcopy(graph), verbose=False).kept


def main() -> None:
    config = read_configuration("pyproject.toml")
    roots = config["session_options"]["root_packages"]
    results = []
    for contract_id, importer, imported in json.load(sys.stdin):
        graph = grimp.build_graph(*roots, include_external_packages=True)
        before = kept(config, graph, contract_id)
        if imported not in graph.modules:
            graph.add_module(imported, is_squashed=True)
        graph.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
        results.append([before, kept(config, graph, contract_id)])
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()

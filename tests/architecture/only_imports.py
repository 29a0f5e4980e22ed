"""An import-linter contract type the built-in ones cannot express: an allow-list.

import-linter's `forbidden` contract names what a package may not import, so every module added
later beside `protocol/wire.py` or in `cloud/` would be allowed until someone remembered to list
it. The agent's rule is the other way round ("only itself and the protocol modules"), and so is
the plumbing's ("nothing of the apps"): this contract lists what the sources may import, and
anything new is refused until it is added on purpose.
"""

from __future__ import annotations

import sys

import grimp
from importlinter import Contract, ContractCheck, fields, output
from importlinter.domain import helpers

STDLIB = "stdlib"  # in allowed_external: every module of Python's standard library
ANY = "*"  # in allowed_external: any installed package


class OnlyImportsContract(Contract):
    """The source modules import only each other, `allowed_modules` and `allowed_external`.

    Options:
        source_modules:   module expressions, each taken with its descendants.
        exempt_modules:   modules (with descendants) removed from the sources: the wiring that
                          exists to join what the sources must not know about.
        allowed_modules:  modules of the project (with descendants) the sources may import.
        allowed_external: top-level names of installed packages the sources may import;
                          `stdlib` for the standard library, `*` for any.
    """

    type_name = "only_imports"

    source_modules = fields.ListField(subfield=fields.ModuleExpressionField())
    exempt_modules = fields.ListField(subfield=fields.ModuleExpressionField(), required=False)
    allowed_modules = fields.ListField(subfield=fields.ModuleExpressionField(), required=False)
    allowed_external = fields.ListField(subfield=fields.StringField(), required=False)

    def _expand(self, graph: grimp.ImportGraph, expressions) -> set[str]:
        names: set[str] = set()
        for module in helpers.module_expressions_to_modules(graph, expressions or []):
            names.add(module.name)
            names |= graph.find_descendants(module.name)
        return names

    def _external_ok(self, name: str) -> bool:
        allowed = set(self.allowed_external or [])  # type: ignore[arg-type]
        top = name.split(".")[0]
        if ANY in allowed or top in allowed:
            return True
        return STDLIB in allowed and top in sys.stdlib_module_names

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        sources = self._expand(graph, self.source_modules) - self._expand(graph, self.exempt_modules)
        allowed = sources | self._expand(graph, self.allowed_modules)
        broken = []
        for importer in sorted(sources):
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                internal = not graph.is_module_squashed(imported)
                if (imported in allowed) if internal else self._external_ok(imported):
                    continue
                for detail in graph.get_import_details(importer=importer, imported=imported):
                    broken.append((importer, imported, detail["line_number"]))
                if not graph.get_import_details(importer=importer, imported=imported):
                    broken.append((importer, imported, None))
        return ContractCheck(kept=not broken, metadata={"broken": broken}, warnings=[])

    def render_broken_contract(self, check: ContractCheck) -> None:
        for importer, imported, line in check.metadata["broken"]:
            where = f"{importer} (l.{line})" if line else importer
            output.print_error(f"{where} imports {imported}, which it may not.")
            output.new_line()

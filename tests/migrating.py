"""Moving the test database to a migration and back, for tests of a data migration: the apps
named go to the given migrations, every other app stays at its newest (its historical models
must match its tables)."""

from __future__ import annotations

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def newest(*apps: str) -> list[tuple[str, str]]:
    return [leaf for leaf in MigrationExecutor(connection).loader.graph.leaf_nodes() if leaf[0] in apps]


def migrate(targets):
    """The models as of `targets` (a state's `apps`), after migrating there. Every other app goes
    to its newest migration that does not need a later migration of an app named here."""
    executor = MigrationExecutor(connection)
    mine = {app for app, _ in targets}
    graph = executor.loader.graph
    later = {node for target in targets if target[1] is not None for node in graph.nodes
             if node[0] == target[0] and node not in graph.forwards_plan(target)}
    others = []
    for leaf in graph.leaf_nodes():
        if leaf[0] in mine:
            continue
        # Its newest migration that does not stand on what the targets take away (volumes did
        # not exist before deployments 0015; billing 0008 stands on volumes 0001), else none.
        chain = [node for node in graph.forwards_plan(leaf) if node[0] == leaf[0]]
        fitting = [node for node in chain if not later & set(graph.forwards_plan(node))]
        others.append(fitting[-1] if fitting else (leaf[0], None))
    plan = [*targets, *others]
    if _mixed(executor, plan):
        # One plan may not go both ways: backwards first (what the targets and the unapplied
        # apps take away), then forwards.
        executor.migrate([*targets, *(other for other in others if other[1] is None)])
        executor = MigrationExecutor(connection)
    executor.migrate(plan)
    executor.loader.build_graph()
    return executor.loader.project_state([*targets, *(other for other in others if other[1] is not None)]).apps


def _mixed(executor: MigrationExecutor, targets) -> bool:
    directions = {backwards for _, backwards in executor.migration_plan(targets)}
    return len(directions) > 1


"""Moving the test database to a migration and back, for tests of a data migration: the apps
named go to the given migrations, every other app stays at its newest (its historical models
must match its tables)."""

from __future__ import annotations

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def newest(*apps: str) -> list[tuple[str, str]]:
    return [leaf for leaf in MigrationExecutor(connection).loader.graph.leaf_nodes() if leaf[0] in apps]


def migrate(targets):
    """The models as of `targets` (a state's `apps`), after migrating there."""
    executor = MigrationExecutor(connection)
    mine = {app for app, _ in targets}
    targets = [*targets, *(leaf for leaf in executor.loader.graph.leaf_nodes() if leaf[0] not in mine)]
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps

"""The import contracts in pyproject.toml hold, and each one can fail.

`make test` runs `lint-imports` before pytest; these tests show that every contract refuses the
import it exists to refuse (a contract that cannot fail proves nothing), and that a module
added later is covered without anyone listing it.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "cloud", "accounts", "billing", "volumes", "nodes", "templates", "gateway")


PROBES = [
    ("agent", "nodes.agent.runtime", "nodes.models"),
    ("agent", "nodes.agent.client", "django"),
    ("agent", "nodes.agent.oci.egress", "cloud.registries"),
    ("gateway", "gateway.table", "django"),
    ("gateway", "gateway.proxy", "cloud.deployments.routes"),
    ("gateway", "gateway.control", "httpx"),
    ("protocol", "protocol.wire", "nodes.agent.state"),
    ("protocol", "protocol.vocabulary", "django"),
    ("protocol", "protocol.checks", "httpx"),
    ("plumbing", "cloud.auth", "accounts.selectors"),
    ("plumbing", "cloud.errors", "cloud.deployments.models"),
    ("layers", "accounts.services", "billing.services"),
    ("layers", "accounts.services", "nodes.services"),
    ("layers", "nodes.selectors", "cloud.deployments.models"),
    ("layers", "cloud.deployments.api", "cloud.dashboard.views"),
    ("dashboard", "billing.api", "cloud.dashboard.charts"),
    ("services-acyclic", "cloud.deployments.services.events", "cloud.deployments.services.create"),
    ("tables-accounts", "nodes.services", "accounts.models"),
    ("tables-billing", "cloud.deployments.api", "billing.models"),
    ("tables-nodes", "cloud.deployments.api", "nodes.models"),
    ("tables-templates", "cloud.deployments.api", "templates.models"),
    ("tables-cloud.deployments", "cloud.dashboard.views.billing", "cloud.deployments.models"),
]


@pytest.fixture(scope="module")
def probed():
    run = subprocess.run([sys.executable, "-m", "tests.architecture.probe"], cwd=ROOT, input=json.dumps(PROBES),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return dict(zip(PROBES, json.loads(run.stdout)))


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: f"{p[0]}:{p[1]}->{p[2]}")
def test_each_contract_refuses_its_import(probed, probe):
    before, after = probed[probe]
    assert before, f"{probe[0]} is broken on the tree itself"
    assert not after, f"{probe[0]} kept with {probe[1]} importing {probe[2]}"


def test_lint_imports_fails_on_new_modules_nobody_listed(tmp_path):
    """The CLI, as `make test` runs it, on a copy of the tree with a module added to the agent
    and one to the shared package: nobody listed either, and the contracts still cover both."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "migrations", "static", "templates"))
    shutil.copytree(ROOT / "tests" / "architecture", tmp_path / "tests" / "architecture")
    (tmp_path / "tests" / "__init__.py").touch()
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    lint = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    kept = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    (tmp_path / "nodes" / "agent" / "newcomer.py").write_text("from django.conf import settings\n")
    (tmp_path / "protocol" / "newcomer.py").write_text("import os\n\nfrom nodes import selectors\n")
    (tmp_path / "gateway" / "newcomer.py").write_text("import httpx\n")
    broken = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1
    assert "nodes.agent.newcomer (l.1) imports django" in broken.stdout
    assert "protocol.newcomer (l.3) imports nodes.selectors" in broken.stdout
    assert "gateway.newcomer (l.1) imports httpx" in broken.stdout


def _app(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "cloud" and len(parts) > 1 and parts[1] in ("deployments", "dashboard"):
        return ".".join(parts[:2])
    return parts[0]


def test_no_app_imports_another_apps_private_names():
    offences = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                    continue
                if _app(node.module) == _app(module) or node.module.split(".")[0] not in PACKAGES:
                    continue
                offences += [f"{module}:{node.lineno} imports {node.module}.{alias.name}"
                             for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert offences == []

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from cloud.validators import env_errors, validate_image_reference
from nodes.models import HardwareType, Location
from templates.models import Template
from tests.templates.factories import TemplateFactory


def load(*args) -> str:
    out = StringIO()
    call_command("load_catalog", *args, stdout=out)
    return out.getvalue()


def counts() -> tuple[int, int, int]:
    return Location.objects.count(), HardwareType.objects.count(), Template.objects.count()


def test_it_loads_locations_hardware_and_templates(db):
    output = load()
    assert "catalog: 14 created, 0 updated, 0 unchanged" in output
    assert list(Location.objects.values_list("slug", flat=True)) == ["us-east", "us-west", "eu-central", "ap-northeast"]
    assert {"ollama", "vllm", "jupyter-pytorch", "hello"} <= set(Template.objects.values_list("slug", flat=True))
    assert not Template.objects.filter(tenant__isnull=False).exists()
    h100 = HardwareType.objects.get(slug="h100-80gb-sxm-8x")
    assert h100.gpus_per_node == 8 and h100.allowed_gpu_counts == [1, 8] and h100.interconnect == "nvswitch"
    h200 = HardwareType.objects.get(slug="h200-141gb-sxm-8x")
    assert (h200.name, h200.gpu_model, h200.allowed_gpu_counts) == ("8x H200 141GB SXM", "NVIDIA H200", [1, 8])


def test_a_second_run_changes_nothing(db):
    load()
    before = counts()
    stamps = dict(Template.objects.values_list("slug", "updated_at"))
    output = load()
    assert counts() == before
    assert dict(Template.objects.values_list("slug", "updated_at")) == stamps
    assert "catalog: 0 created, 0 updated, 14 unchanged" in output


def test_it_restores_a_changed_row_and_says_so(db):
    load()
    Template.objects.filter(slug="ollama").update(image="ollama/ollama:0.1")
    HardwareType.objects.filter(slug="l40s-48gb-4x").update(vcpus_per_gpu=1)
    summary = json.loads(load("--json"))
    assert summary["templates"]["updated"] == ["ollama"]
    assert summary["hardware_types"]["updated"] == ["l40s-48gb-4x"]
    assert Template.objects.get(slug="ollama").image == "ollama/ollama:latest"


def test_a_rerun_leaves_prices_to_the_price_book(db):
    """Regression (issue 18): a re-run put the catalog's list price back over a price change."""
    from billing.prices import price_set

    load()
    l40s = HardwareType.objects.get(slug="l40s-48gb-4x")
    price_set(hardware_type=l40s, location=None, price=Decimal("1.2500"))
    summary = json.loads(load("--json"))
    assert "l40s-48gb-4x" in summary["hardware_types"]["unchanged"]
    assert HardwareType.objects.get(slug="l40s-48gb-4x").price_per_gpu_hour == Decimal("1.2500")


def test_it_leaves_rows_it_does_not_know_alone(acme):
    load()
    TemplateFactory(slug="operator-special")
    TemplateFactory(slug="ollama", tenant=acme, image="acme/ollama:mine")
    load()
    assert Template.objects.filter(slug="operator-special").exists()
    assert Template.objects.get(slug="ollama", tenant=acme).image == "acme/ollama:mine"


def test_hello_runs_on_the_cpu_only_kind(db):
    load()
    hello = Template.objects.get(slug="hello", tenant__isnull=True)
    assert hello.image == "127.0.0.1:5000/gantry/hello:latest"
    assert hello.traffic_port == 8080 and hello.default_env == {"GREETING": "Hello from Gantry"}
    assert (hello.min_gpus, hello.max_gpus) == (0, 0)
    cpu = HardwareType.objects.get(cpu_only=True)
    assert cpu.allowed_gpu_counts == [0]


@pytest.mark.parametrize("slug,image,port", [
    ("ollama", "ollama/ollama:latest", 11434),
    ("vllm", "vllm/vllm-openai:latest", 8000),
    ("jupyter-pytorch", "quay.io/jupyter/pytorch-notebook:latest", 8888),
])
def test_the_gpu_templates_are_what_the_docs_promise(db, slug, image, port):
    load()
    template = Template.objects.get(slug=slug, tenant__isnull=True)
    assert (template.image, template.traffic_port) == (image, port)


def test_every_shipped_template_passes_the_deployments_validators(db):
    load()
    for template in Template.objects.all():
        try:
            validate_image_reference(template.image)
        except ValidationError:  # pragma: no cover - the assertion below says which
            pytest.fail(f"{template.slug}: bad image {template.image}")
        assert env_errors(template.default_env) is None, template.slug
        assert template.min_gpus <= template.max_gpus

from __future__ import annotations

from decimal import Decimal

from cloud.deployments.models import Deployment
from tests.billing.factories import set_balance
from tests.deployments.factories import deployment_for


def test_form_shows_template_cards_and_hardware(alice_browser, ollama, h100, us_east):
    page = alice_browser.get("/deployments/new/")
    body = page.content.decode()
    assert page.status_code == 200
    assert 'value="ollama"' in body and 'data-image="ollama/ollama:0.3.12"' in body
    assert 'data-counts="1,2,4,8"' in body and "us-east" in body.lower() or us_east.name in body


def test_it_creates_from_a_template(alice_browser, acme, ollama, h100):
    response = alice_browser.post("/deployments/new/", {"source": "template", "template_id": "ollama",
                                                        "hardware_id": str(h100.pk), "gpus_per_container": "1",
                                                        "replica_count": "1", "env": "A=1\nB=two words",
                                                        "secret_name": ["TOKEN", ""], "secret_value": ["s3cret", ""]})
    deployment = Deployment.objects.get(tenant=acme)
    assert response.status_code == 302 and response["Location"] == f"/deployments/{deployment.pk}/"
    assert deployment.env["B"] == "two words" and deployment.secret_env_keys == ["TOKEN"]
    assert b"s3cret" not in alice_browser.get(response["Location"]).content


def test_it_creates_from_a_custom_image(alice_browser, acme, h100):
    response = alice_browser.post("/deployments/new/", {"source": "image", "image_url": "ghcr.io/acme/app:1.0",
                                                        "hardware_id": str(h100.pk), "gpus_per_container": "2",
                                                        "traffic_port": "8080", "entrypoint": "python -m app",
                                                        "args": "--port '8080'"})
    assert response.status_code == 302
    deployment = Deployment.objects.get(tenant=acme)
    assert deployment.entrypoint == ["python", "-m", "app"] and deployment.args == ["--port", "8080"]


def test_bad_input_shows_the_apis_errors_at_the_field(alice_browser, acme, h100):
    response = alice_browser.post("/deployments/new/", {"source": "image", "image_url": "", "replica_count": "0",
                                                        "traffic_port": "70000", "name": "-bad name"})
    assert response.status_code == 200
    errors = response.context["errors"]
    assert {"replica_count", "traffic_port", "name"} <= set(errors)
    assert b'aria-invalid="true"' in response.content
    assert not Deployment.objects.filter(tenant=acme).exists()


def test_a_gpu_count_the_hardware_refuses_is_shown_at_that_field(alice_browser, acme, h100):
    response = alice_browser.post("/deployments/new/", {"source": "image", "image_url": "ghcr.io/acme/app:1.0",
                                                        "hardware_id": str(h100.pk), "gpus_per_container": "3"})
    assert response.status_code == 200
    assert "gpus_per_container" in response.context["errors"]


def test_estimate_updates_from_the_form(alice_browser, h100):
    response = alice_browser.post("/deployments/estimate/", {"source": "image", "hardware_id": str(h100.pk),
                                                             "gpus_per_container": "2", "replica_count": "2",
                                                             "duration_hours": "3"})
    assert response.status_code == 200
    assert b"$10.00" in response.content and b"$30.00" in response.content


def test_the_estimate_counts_what_already_runs(alice_browser, acme, h100):
    """Issue 23: the form's estimate says what create would say once other deployments hold the balance."""
    deployment_for(acme, hardware_id=h100.pk, gpus_per_container=4)  # 10.00 USD/hour
    set_balance(acme, Decimal("12"))
    response = alice_browser.post("/deployments/estimate/", {"source": "image", "hardware_id": str(h100.pk),
                                                             "gpus_per_container": "1", "replica_count": "1"})
    page = response.content.decode()
    assert "$10.00/h already pending or running" in page and "creating it would be refused" in page

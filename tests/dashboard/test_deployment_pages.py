from __future__ import annotations

from pathlib import Path

from cloud.deployments.models import Deployment
from tests.deployments.factories import EventFactory, NodeFactory, deployment_for, place_running
from volumes import services as volume_services
from volumes.models import Volume
from volumes.services import Requested


def test_list_shows_the_tenants_deployments_only(alice_browser, acme, evil, h100):
    deployment_for(acme, name="mine")
    deployment_for(evil, name="theirs")
    page = alice_browser.get("/deployments/")
    assert b"mine" in page.content and b"theirs" not in page.content


def test_list_filters_by_status(alice_browser, acme, h100):
    running = deployment_for(acme, name="up")
    place_running(running)
    deployment_for(acme, name="waiting")
    page = alice_browser.get("/deployments/?status=running")
    assert b"up" in page.content and b"waiting" not in page.content


def test_list_poll_returns_just_the_rows(alice_browser, acme, h100):
    deployment_for(acme, name="polled")
    page = alice_browser.get("/deployments/", HTTP_HX_REQUEST="true")
    assert b"polled" in page.content and b"<html" not in page.content


def test_list_is_paginated(alice_browser, acme, h100):
    acme.max_gpus = acme.max_deployments = 100
    acme.save()
    for n in range(23):
        deployment_for(acme, name=f"d{n:02d}")
    page = alice_browser.get("/deployments/")
    assert page.content.count(b"/deployments/") >= 20 and b"Page 1 of 2" in page.content


def test_deployment_page_shows_status_replicas_and_events(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="web")
    place_running(deployment)
    EventFactory(tenant=acme, deployment=deployment, type="deployment.running", payload={"status": "running"})
    page = alice_browser.get(f"/deployments/{deployment.pk}/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "running" in body and "deployment.running" in body and 'data-log-url="/ws/v1/deployments/' in body


def test_deployment_page_shows_the_gateway_url_its_access_and_the_direct_addresses(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="web", traffic_port=8080)
    (replica,) = place_running(deployment)
    body = alice_browser.get(f"/deployments/{deployment.pk}/").content.decode()
    assert f'href="https://{deployment.endpoint_label}.gantry.localhost"' in body
    assert "private: callers send an endpoint key in the Gantry-Key header" in body and "serving" in body
    assert f'href="http://{replica.node.public_address}:{replica.host_port}"' in body  # the replica's row

    public = deployment_for(acme, name="open", traffic_port=8080, endpoint_access="public")
    body = alice_browser.get(f"/deployments/{public.pk}/").content.decode()
    assert "public: anyone with the URL" in body and "no replica serving yet" in body


def test_another_tenants_deployment_page_is_a_404(mallory_browser, acme, h100):
    deployment = deployment_for(acme, name="secret-project")
    assert mallory_browser.get(f"/deployments/{deployment.pk}/").status_code == 404
    assert mallory_browser.post(f"/deployments/{deployment.pk}/stop/").status_code == 404
    assert mallory_browser.post(f"/deployments/{deployment.pk}/delete/").status_code == 404
    assert Deployment.objects.filter(pk=deployment.pk, deleted_at__isnull=True).exists()


def test_stop_goes_through_the_service(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="web")
    place_running(deployment)
    response = alice_browser.post(f"/deployments/{deployment.pk}/stop/")
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.status in {"stopping", "stopped"}


def test_an_invalid_transition_is_a_message_not_an_error_page(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="web")
    alice_browser.post(f"/deployments/{deployment.pk}/stop/")
    response = alice_browser.post(f"/deployments/{deployment.pk}/restart/", follow=True)
    assert response.status_code == 200


def test_delete_removes_it_from_the_list(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="gone")
    response = alice_browser.post(f"/deployments/{deployment.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/deployments/"
    page = alice_browser.get("/deployments/")
    assert page.context["rows"] == [] and b"Deleted gone." in page.content


def test_log_lines_reach_the_page_as_text_only():
    # Lines only ever reach the page over the WebSocket, through textContent (logs.js); a
    # browser test checks it with hostile lines, this one keeps innerHTML out of the file.
    source = (Path(__file__).resolve().parents[2] / "cloud/dashboard/static/dashboard/logs.js").read_text()
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("//"))
    assert "textContent" in code and "innerHTML" not in code and "insertAdjacentHTML" not in code


def test_every_action_on_another_tenants_deployment_is_a_404(mallory_browser, acme, h100):
    deployment = deployment_for(acme, name="theirs")
    for action in ("start", "stop", "restart", "scale", "delete", "nonsense"):
        response = mallory_browser.post(f"/deployments/{deployment.pk}/{action}/", {"replica_count": "3"})
        assert response.status_code == 404, action
    deployment.refresh_from_db()
    assert deployment.replica_count == 1 and deployment.deleted_at is None


def test_scale_goes_through_the_service(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="web")
    alice_browser.post(f"/deployments/{deployment.pk}/scale/", {"replica_count": "2"})
    deployment.refresh_from_db()
    assert deployment.replica_count == 2


def test_an_unknown_action_is_a_404(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="web")
    assert alice_browser.post(f"/deployments/{deployment.pk}/explode/").status_code == 404


def test_deployment_page_says_billing_starts_at_boot_and_shows_each_billed_interval(alice_browser, as_alice, acme, h100):
    from datetime import timedelta

    from django.utils import timezone

    from billing.services import meter_open
    from cloud.deployments.models import Replica

    deployment = deployment_for(acme, name="web")
    replica = place_running(deployment)[0]
    Replica.objects.filter(pk=replica.pk).update(booted_at=timezone.now() - timedelta(minutes=3))
    replica.refresh_from_db()
    meter_open(replica=replica)
    body = alice_browser.get(f"/deployments/{deployment.pk}/").content.decode()
    assert "billed per second from each replica's boot to its VM's end" in body
    shown = as_alice.get(f"/api/v1/deployments/{deployment.pk}/replicas").json()["replicas"][0]
    assert shown["billed_from"] and shown["billed_to"] is None
    assert f'<time datetime="{shown["billed_from"]}">{shown["billed_from"][:19]}</time> → now' in body


def test_the_estimate_says_start_up_is_billed(alice_browser, h100):
    response = alice_browser.post("/deployments/estimate/", {"source": "image", "hardware_id": str(h100.pk),
                                                             "gpus_per_container": "1", "replica_count": "1"})
    assert b"billed per second from the moment each replica's VM starts booting" in response.content


def test_deployment_page_lists_its_volumes_with_mount_mode_size_node_and_ordinal(alice_browser, acme, us_east):
    shared = volume_services.volume_create(tenant=acme, actor=None, name="weights", size_gib=80, location_id=us_east.pk)
    node = NodeFactory(location=us_east, hostname="gpu-3.example.net")
    Volume.objects.filter(pk=shared.pk).update(node=node, state="ready")
    deployment = deployment_for(acme, name="llm", replica_count=2, volumes=Requested(
        attach=[{"volume_id": str(shared.pk), "mount_path": "/weights", "mode": "ro"}],
        template={"size_gib": 15, "mount_path": "/cache", "keep": False}))
    own = Volume.objects.create(tenant=acme, name="llm-1", size_gib=15, location=us_east, node=node, state="ready",
                                owner_deployment=deployment, ordinal=1)
    body = alice_browser.get(f"/deployments/{deployment.pk}/").content.decode()
    rows = body.split('data-testid="deployment-volume"')[1:]
    assert len(rows) == 2
    assert f'href="/volumes/#volume-{shared.pk}">weights</a>' in rows[0] and "<code>/weights</code>" in rows[0]
    assert "<td>ro</td><td>80 GiB</td>" in rows[0] and "gpu-3.example.net" in rows[0]
    assert f'href="/volumes/#volume-{own.pk}">llm-1</a>' in rows[1] and "replica #1's own" in rows[1]
    assert "<code>/cache</code>" in rows[1] and "<td>rw</td><td>15 GiB</td>" in rows[1]
    assert "Each replica gets its own 15 GiB volume at <code>/cache</code>" in body and "erased when" in body
    # the 3-second poll carries them too (a volume gets its node at the first placement)
    polled = alice_browser.get(f"/deployments/{deployment.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert polled.count('data-testid="deployment-volume"') == 2


def test_a_deployment_without_volumes_shows_no_volume_table(alice_browser, acme, h100):
    deployment = deployment_for(acme, name="plain")
    assert b'id="volumes-h"' not in alice_browser.get(f"/deployments/{deployment.pk}/").content

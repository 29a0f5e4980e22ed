"""The Volumes page against the real database: it lists the tenant's volumes only, creates and
deletes through volumes.services (rows change, events written), shows the service's refusals at
their fields or as the 409's words, and answers another tenant's volume with a 404."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.utils.html import escape
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cloud.deployments.models import Event
from tests.dashboard.conftest import browser_for
from tests.deployments.factories import NodeFactory, deployment_for
from volumes import services as volume_services
from volumes.models import Volume
from volumes.services import Requested

pytestmark = pytest.mark.django_db


def make(tenant, location, name="data", size=50) -> Volume:
    return volume_services.volume_create(tenant=tenant, actor=None, name=name, size_gib=size, location_id=location.pk)


def attached(tenant, volume, *, name="trainer", path="/data", mode="rw"):
    return deployment_for(tenant, name=name, volumes=Requested(
        attach=[{"volume_id": str(volume.pk), "mount_path": path, "mode": mode}]))


def row_of(body: str, volume) -> str:
    start = body.index(f'id="volume-{volume.pk}"')
    return body[start:body.index("</tr>", start)]


def live(tenant):
    return Volume.objects.filter(tenant=tenant).exclude(state="deleted")


def test_the_page_lists_the_tenants_volumes_with_size_used_node_state_and_deployment(bob_browser, acme, evil, us_east):
    fresh = make(acme, us_east, name="models", size=100)
    placed = make(acme, us_east, name="scratch", size=20)
    node = NodeFactory(location=us_east, hostname="gpu-7.example.net")
    Volume.objects.filter(pk=placed.pk).update(node=node, state="ready", used_bytes=3 * 1024**3)
    deployment = attached(acme, placed, path="/scratch", mode="ro")
    make(evil, us_east, name="their-secrets")

    page = bob_browser.get("/volumes/")  # bob is a plain member: volumes are every member's, as deployments
    assert page.status_code == 200
    body = page.content.decode()
    assert 'href="/volumes/"' in body  # in the nav
    rows = {v.name: v for v in page.context["page"]}
    assert set(rows) == {"models", "scratch"} and "their-secrets" not in body
    models_row = row_of(body, fresh)
    assert "100 GiB" in models_row and "<td>—</td>" in models_row and "at first placement" in models_row
    assert "s-pending" in models_row
    scratch_row = row_of(body, placed)
    assert "3.0\xa0GB" in scratch_row and "gpu-7.example.net" in scratch_row and "s-ready" in scratch_row
    assert f'href="/deployments/{deployment.pk}/">trainer</a>' in scratch_row and "/scratch ro" in scratch_row


def test_the_poll_returns_just_the_rows(alice_browser, acme, us_east):
    make(acme, us_east, name="polled")
    page = alice_browser.get("/volumes/", HTTP_HX_REQUEST="true")
    assert b"polled" in page.content and b"<html" not in page.content


def test_a_per_replica_volume_names_its_deployment_and_ordinal(alice_browser, acme, us_east):
    deployment = deployment_for(acme, name="ollama", volumes=Requested(
        template={"size_gib": 30, "mount_path": "/root/.ollama", "keep": False}))
    node = NodeFactory(location=us_east)
    own = Volume.objects.create(tenant=acme, name="ollama-0", size_gib=30, location=us_east, node=node, state="ready",
                                owner_deployment=deployment, ordinal=0)
    body = alice_browser.get("/volumes/").content.decode()
    row = row_of(body, own)
    assert f'href="/deployments/{deployment.pk}/">ollama</a>' in row and "replica #0's own" in row


def test_create_goes_through_the_service(alice_browser, acme, us_east):
    response = alice_browser.post("/volumes/", {"name": "models", "size_gib": "100", "location_id": str(us_east.pk)},
                                  follow=True)
    volume = Volume.objects.get(tenant=acme, name="models")
    assert (volume.size_gib, volume.location_id, volume.state, volume.node_id) == (100, us_east.pk, "pending", None)
    assert Event.objects.filter(tenant=acme, type="volume.created", payload__volume_id=str(volume.pk)).exists()
    assert response.redirect_chain == [("/volumes/", 302)] and "Made the volume models (100 GiB)" in response.content.decode()


@pytest.mark.parametrize(("form", "field"), [
    ({"name": "-bad name", "size_gib": "10"}, "name"),
    ({"name": "ok", "size_gib": "0"}, "size_gib"),
    ({"name": "ok", "size_gib": "ten"}, "size_gib"),
    ({"name": "ok", "size_gib": "99999999"}, "size_gib"),
    ({"name": "ok", "size_gib": "1_0"}, "size_gib"),  # int() would read 10; the API's JSON never does
    ({"name": "ok", "size_gib": "\u0663"}, "size_gib"),  # an Arabic-Indic 3
    ({"name": "ok", "size_gib": "10", "location_id": "987654"}, "location_id"),
    ({"name": "ok", "size_gib": "10", "location_id": "x"}, "location_id"),
    ({"name": "", "size_gib": "10"}, "name"),
])
def test_bad_input_is_shown_at_its_field_and_makes_nothing(alice_browser, acme, us_east, form, field):
    form = {"location_id": str(us_east.pk), **form}
    response = alice_browser.post("/volumes/", form)
    assert response.status_code == 200
    assert field in response.context["errors"], response.context["errors"]
    assert f'id="{field}-errors"' in response.content.decode() or field == "location_id"
    assert not live(acme).exists()


def test_a_taken_name_is_the_services_409_at_the_name(alice_browser, acme, us_east):
    make(acme, us_east, name="models")
    response = alice_browser.post("/volumes/", {"name": "models", "size_gib": "5", "location_id": str(us_east.pk)})
    assert response.context["errors"] == {"name": ["This name is already used by another volume."]}
    assert live(acme).count() == 1


def test_the_quota_is_the_services_words_on_the_form(alice_browser, acme, us_east):
    acme.max_volume_gib = 100
    acme.save()
    make(acme, us_east, name="big", size=90)
    response = alice_browser.post("/volumes/", {"name": "more", "size_gib": "20", "location_id": str(us_east.pk)})
    (message,) = response.context["errors"]["form"]
    assert "max_volume_gib" in message and "90 GiB" in message and escape(message) in response.content.decode()
    assert live(acme).count() == 1


def test_delete_asks_first_then_goes_through_the_service(alice_browser, acme, us_east):
    never_placed = make(acme, us_east, name="tmp")
    confirm = alice_browser.get(f"/volumes/{never_placed.pk}/delete/")
    assert confirm.status_code == 200 and "erased on its node" in confirm.content.decode()
    assert live(acme).count() == 1  # asking deletes nothing

    response = alice_browser.post(f"/volumes/{never_placed.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/volumes/"
    never_placed.refresh_from_db()
    assert never_placed.state == "deleted"  # never had a node: nothing to erase

    placed = make(acme, us_east, name="kept-data")
    Volume.objects.filter(pk=placed.pk).update(node=NodeFactory(location=us_east), state="ready")
    alice_browser.post(f"/volumes/{placed.pk}/delete/")
    placed.refresh_from_db()
    assert placed.state == "deleting"  # its node erases it, then its heartbeat says so
    assert Event.objects.filter(tenant=acme, type="volume.deleting", payload__volume_id=str(placed.pk)).exists()
    assert "erasing" in alice_browser.get("/volumes/").content.decode()


def test_an_attached_volume_shows_the_409s_reason_and_stays(alice_browser, acme, us_east):
    volume = make(acme, us_east, name="models")
    deployment = attached(acme, volume, name="trainer", path="/models")
    confirm = alice_browser.get(f"/volumes/{volume.pk}/delete/").content.decode()
    assert f'href="/deployments/{deployment.pk}/">trainer</a> at <code>/models</code>' in confirm

    response = alice_browser.post(f"/volumes/{volume.pk}/delete/")
    assert response.status_code == 200
    assert response.context["problem"] == ("Volume 'models' is attached to trainer; remove it from the deployment "
                                           "(PATCH its volumes, or delete it) first.")
    assert "Volume &#x27;models&#x27; is attached to trainer" in response.content.decode()
    volume.refresh_from_db()
    assert volume.state == "pending" and volume.attachments.filter(deployment=deployment).exists()


def test_another_tenants_volume_is_a_404(mallory_browser, acme, us_east):
    volume = make(acme, us_east, name="acme-weights")
    assert mallory_browser.get(f"/volumes/{volume.pk}/delete/").status_code == 404
    assert mallory_browser.post(f"/volumes/{volume.pk}/delete/").status_code == 404
    assert mallory_browser.post(f"/volumes/{uuid.uuid4()}/delete/").status_code == 404
    assert mallory_browser.get("/volumes/not-a-uuid/delete/").status_code == 404
    assert b"acme-weights" not in mallory_browser.get("/volumes/").content
    volume.refresh_from_db()
    assert volume.state == "pending"


def test_a_deleted_volume_is_a_404_too(alice_browser, acme, us_east):
    volume = make(acme, us_east)
    alice_browser.post(f"/volumes/{volume.pk}/delete/")
    assert alice_browser.get(f"/volumes/{volume.pk}/delete/").status_code == 404


def test_logged_out_is_sent_to_log_in(us_east):
    response = Client().get("/volumes/")
    assert response.status_code == 302 and "/login" in response["Location"]


def test_writes_need_the_csrf_token(alice, acme, us_east):
    volume = make(acme, us_east, name="kept")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    assert strict.post("/volumes/", {"name": "forged", "size_gib": "1", "location_id": str(us_east.pk)}).status_code == 403
    assert strict.post(f"/volumes/{volume.pk}/delete/").status_code == 403
    assert [v.name for v in live(acme)] == ["kept"]
    assert browser_for(alice).put("/volumes/").status_code == 405


# Whatever a browser posts, the page answers 200 with errors or a redirect after making exactly
# a volume the API would have made: never a 500, never a row the serializer would refuse.
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(exclude_characters="\x00"), max_size=80),
       size=st.one_of(st.text(max_size=12), st.integers(-10, 10**7).map(str)),
       location=st.one_of(st.text(max_size=8), st.integers(-5, 2**40).map(str)))
def test_hostile_form_input_is_an_answer_never_a_500(alice_browser, acme, us_east, name, size, location):
    before = live(acme).count()
    response = alice_browser.post("/volumes/", {"name": name, "size_gib": size, "location_id": location})
    assert response.status_code in (200, 302)
    if response.status_code == 302:
        made = live(acme).order_by("-created_at").first()
        assert made.name == name.strip() and made.size_gib == int(size.strip()) and made.location_id == us_east.pk
        Volume.objects.filter(pk=made.pk).delete()
    else:
        assert response.context["errors"] and live(acme).count() == before
        assert "<script" not in response.content.decode().split("</header>", 1)[1]

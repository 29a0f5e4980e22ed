from templates.models import Template
from tests.templates.factories import TemplateFactory


def test_it_deletes_a_private_template(as_alice, acme):
    template = TemplateFactory(slug="mine", tenant=acme)
    response = as_alice.delete(f"/api/v1/templates/{template.slug}")
    assert response.status_code == 204
    assert not Template.objects.filter(pk=template.pk).exists()
    assert as_alice.get(f"/api/v1/templates/{template.pk}").status_code == 404


def test_a_global_template_cannot_be_deleted(as_alice, db):
    template = TemplateFactory(slug="ollama")
    assert as_alice.delete("/api/v1/templates/ollama").status_code == 403
    assert Template.objects.filter(pk=template.pk).exists()


def test_mallory_gets_404_deleting_acmes_template(as_mallory, acme):
    template = TemplateFactory(slug="mine", tenant=acme)
    assert as_mallory.delete(f"/api/v1/templates/{template.pk}").status_code == 404
    assert as_mallory.delete("/api/v1/templates/mine").status_code == 404
    assert Template.objects.filter(pk=template.pk).exists()


def test_bob_a_member_may_delete_his_tenants_template(as_bob, acme):
    template = TemplateFactory(slug="mine", tenant=acme)
    assert as_bob.delete(f"/api/v1/templates/{template.pk}").status_code == 204

import pytest


@pytest.mark.django_db
def test_unknown_api_url_is_a_problem_document(client):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404 and body["title"] == "Not found" and body["errors"] == []


@pytest.mark.django_db
def test_pages_outside_the_api_keep_djangos_own_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert "problem" not in response["Content-Type"]

"""A page asked for with a query it cannot take (``/runs?page=abc``) answers a small HTML
page naming the parameter, not the API's JSON (an outside audit); the API keeps its
JSON 422."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.mark.parametrize("query", ["page=abc", "page=99999999999", "page=<script>x</script>"])
def test_a_page_with_an_absurd_query_is_an_html_422(viewer_pages: TestClient, query: str) -> None:
    res = viewer_pages.get(f"/runs?{query}", headers=BROWSER)
    assert res.status_code == 422
    assert res.headers["content-type"].startswith("text/html")
    assert "<h1>Invalid request</h1>" in res.text and "page:" in res.text
    assert "<script>" not in res.text  # nothing sent is echoed unescaped


def test_the_api_keeps_its_json_422(viewer_pages: TestClient) -> None:
    res = viewer_pages.get("/api/runs?limit=abc", headers=BROWSER)
    assert res.status_code == 422
    assert res.json()["detail"][0]["loc"][-1] == "limit"
    plain = viewer_pages.get("/runs?page=abc")  # no browser Accept: JSON as before
    assert plain.status_code == 422 and plain.json()["detail"][0]["loc"][-1] == "page"

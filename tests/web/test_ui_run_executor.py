"""The run page names where a container run executed: "Executor docker" and its image;
a local run shows neither (issue 15)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from fastflow.context import Context
from fastflow.db.models import PipelineRun
from tests.seeding import NOW, seed_run


def test_a_docker_run_shows_executor_and_image(app: Context, viewer_pages: TestClient) -> None:
    boxed = seed_run(app, "boxed", NOW)
    local = seed_run(app, "plain", NOW)
    with app.db.session() as s:
        row = s.get(PipelineRun, boxed.id)
        assert row is not None
        row.executor, row.image = "docker", "registry.example.org/etl:<1.2>"
    page = viewer_pages.get(f"/runs/{boxed.id}")
    assert page.status_code == 200
    assert '<dd id="run-executor">docker</dd>' in page.text
    assert '<dd id="run-image" class="mono">registry.example.org/etl:&lt;1.2&gt;</dd>' in page.text
    plain = viewer_pages.get(f"/runs/{local.id}")
    assert plain.status_code == 200
    assert "run-executor" not in plain.text and "run-image" not in plain.text

"""The pipeline page's "Retention" card names every rule in effect — the keep rules
included — and where each value comes from (pipeline.json or the setting)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.conftest import MakePipeline


def _rules(html: str) -> dict[str, str]:
    card = html[html.index('id="pipeline-retention"') :]
    card = card[: card.index("</dl>")]
    pairs = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", card, re.S)
    return {k: re.sub(r"<[^>]+>", "", v).strip() for k, v in pairs}


def test_the_keep_rules_are_shown_with_their_source(
    viewer_pages: TestClient, make_pipeline: MakePipeline
) -> None:
    make_pipeline(
        "kept",
        "print('x')\n",
        config='{"retention": {"keep_failed": 3, "keep_last_success": false}}',
    )
    make_pipeline("plain", "print('x')\n")
    kept = _rules(viewer_pages.get("/pipelines/kept").text)
    assert kept["Newest success"] == "not kept by a rule (pipeline.json)"
    assert kept["Newest failures"] == "the newest 3 always kept (pipeline.json)"
    plain = _rules(viewer_pages.get("/pipelines/plain").text)
    assert plain["Newest success"] == "always kept (LOG_RETENTION_KEEP_LAST_SUCCESS)"
    assert plain["Newest failures"] == "not kept by a rule (LOG_RETENTION_KEEP_FAILED)"

"""The Grafana dashboard in deploy/grafana/: valid JSON, a `name` variable, every metric shown."""

from __future__ import annotations

import json
import re
from typing import Any

from conftest import DAEMON, DASHBOARD, PER_STREAM, expressions


def test_dashboard_has_a_name_variable_over_the_streams() -> None:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert "label_values(streamalchemy_stream_up, name)" in json.dumps(variables["name"])
    assert variables["name"]["multi"] and variables["name"]["includeAll"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_has_a_panel_and_every_panel_a_known_metric() -> None:
    used = set()
    for expr in expressions():
        used.update(re.findall(r"\bstreamalchemy_[a-z_]+", expr))
    assert used == set(PER_STREAM) | set(DAEMON)

"""Each control route's body: wrong types and unknown fields are 400s, never another action."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fakes import make_controller, save_many

from streamalchemy.errors import InvalidInput
from streamalchemy.server import routes
from streamalchemy.server.bodies import BODIES, check_body
from streamalchemy.server.routes import ROUTES


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/restore_streams", {"dry_run": "true"}),
        ("/restore_streams", {"dry_run": 1}),
        ("/stop", {"all": "yes"}),
        ("/stop", {"names": "cam1"}),
        ("/stop", {"names": [1]}),
        ("/stop", {"everything": True}),
        ("/shutdown", {"now": True}),
        ("/clear_persistent_streams", {"confirm": "yes"}),
    ],
)
def test_a_wrong_type_or_field_is_400_and_nothing_happens(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    controller, fake = make_controller(tmp_path)
    save_many(controller, ["a", "b"])
    try:
        status, reply = asyncio.run(routes.handle(controller, "POST", path, {}, body))
    finally:
        controller.writer.close()
    assert status == 400 and "\n" not in reply["message"], reply
    assert fake.launched == [] and not controller.shutdown.is_set()
    assert set(controller.store.load()) == {"a", "b"}  # not cleared, not restored


def test_the_right_types_pass() -> None:
    check_body("POST", "/stop", {"names": ["a"], "all": False})
    check_body("POST", "/restore_streams", {"dry_run": True})
    check_body("POST", "/streams", {"anything": "its reader checks"})
    check_body("GET", "/status", {})
    with pytest.raises(InvalidInput):
        check_body("GET", "/status", {"x": 1})


def test_every_route_in_the_table_exists() -> None:
    routes = {(method, pattern) for method, pattern, _ in ROUTES}
    assert set(BODIES) <= routes

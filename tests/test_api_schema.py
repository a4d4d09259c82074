"""The API against its own OpenAPI document: schemathesis, authenticated as an admin, over every operation
of a real hub on uvicorn (local runtime with a fake IDE, the fake LLM), with bounded examples.

It must find no server error (5xx), no response that violates the documented schema, status code, content
type or headers. Left out, each for a reason: the event streams (``/events``, ``/logs``) never end on their
own, and ``revokeToken`` would revoke the very token the run authenticates with (schemathesis finds its id
through ``GET /api/auth/tokens``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support.fake_llm import serve_fake_llm
from tests.support.runtime import fake_ide_command
from tests.support.server import running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


async def test_every_operation_answers_as_documented(tmp_path: Path, sqlite_url: str) -> None:
    async with serve_fake_llm() as fake:
        settings = make_settings(
            tmp_path,
            database_url=sqlite_url,
            runtime="local",
            local_ide_command=fake_ide_command(),
            llm_base_url=fake.url,
            llm_model="fake-coder",
            llm_rate_per_minute=0,
            api_rate_per_minute=0,
        )
        async with running_hub(settings) as hub:
            async with hub.client() as client:  # something to find: a workspace and a file in it
                ws = (await client.post("/api/workspaces", json={"name": "schema-walk"})).json()
                r = await client.put(f"/api/workspaces/{ws['id']}/files/content?path=a.txt", content=b"one\n")
                assert r.status_code == 201, r.text
            command = [
                str(Path(sys.executable).parent / "st"),
                "run",
                f"{hub.url}/schema/openapi.json",
                "--header",
                f"Authorization: Bearer {hub.admin_token}",
                "--checks",
                ",".join(CHECKS),
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "5",
                "--workers",
                "2",
                "--seed",
                "1",
                "--request-timeout",
                "10",
                "--exclude-path-regex",
                "/(events|logs)$",
                "--exclude-operation-id",
                "revokeToken",
                "--no-color",
            ]
            with anyio.fail_after(240):  # about 20 s on an idle machine
                done = await anyio.run_process(command, check=False, cwd=tmp_path)
            async with hub.client() as client:  # the admin's token survived the run
                assert (await client.get("/api/auth/me")).status_code == 200
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, output[-6000:]
    assert "Authentication failed" not in output, output[-6000:]
    tested = re.search(r"Tested: (\d+)", output)
    assert tested and int(tested.group(1)) >= 35, output[-3000:]  # every operation but the excluded ones


async def test_the_document_names_the_error_body_and_bearer_auth(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url)
    async with running_hub(settings) as hub, httpx.AsyncClient(base_url=hub.url) as anon:
        spec = (await anon.get("/schema/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
            "description": spec["components"]["securitySchemes"]["bearer"]["description"],
        }
        assert spec["security"] == [{"bearer": []}]
        assert spec["paths"]["/health"]["get"]["security"] == []
        assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error", "detail"]
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                for status, response in operation.get("responses", {}).items():
                    if status[0] in "45":
                        schema = response["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)
                    if status == "204":
                        assert "content" not in response, (path, method)
        assert spec["components"]["schemas"]["WorkspaceCreate"]["additionalProperties"] is False
        logout = spec["paths"]["/api/auth/logout"]["post"]["responses"]
        assert "204" in logout and "401" in logout

        # the docs page and its assets are the hub's own: nothing is loaded from another origin
        page = await anon.get("/schema")
        assert page.status_code == 200
        assert "https://" not in page.text and "http://" not in page.text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
            r = await anon.get(f"/schema-assets/{asset}")
            assert r.status_code == 200 and len(r.content) > 1000, asset
        assert (await anon.get("/schema-assets/../settings.py")).status_code == 404
        assert (await anon.get("/schema-assets/%2e%2e/__init__.py")).status_code == 404


async def test_out_of_range_paging_is_a_400(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url)
    async with running_hub(settings) as hub, hub.client() as client:
        for url in (
            "/api/admin/users?offset=99999999999999999999",
            "/api/admin/users?offset=9223372036854775808",
            "/api/admin/users?offset=-1",
            "/api/admin/users?limit=0",
            "/api/admin/users?limit=100000",
            "/api/workspaces?limit=99999999999999999999",
            "/api/workspaces?limit=-5",
            "/api/audit?limit=99999999999999999999",
            "/api/admin/audit?limit=0",
        ):
            r = await client.get(url)
            assert r.status_code == 400, (url, r.status_code, r.text)
            assert r.json()["error"] == "invalid_request", url
        assert (await client.get("/api/admin/users?offset=1000000")).json() == []

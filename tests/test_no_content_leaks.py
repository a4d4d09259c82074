"""A unique marker sent through every content path reaches neither the database nor the hub's logs.

One flow on a real server (local runtime with the fake IDE, the fake LLM): the marker is written into a
file (PUT files), carried by diffs (patch validate/apply, also refused ones), run as an exec argument,
and asked about in an AI prompt. Then the whole database is dumped (``pg_dump``, or the SQLite file with
its WAL) and every log line the hub wrote at debug level is read back: the marker is nowhere, while the
audit table holds a row for each action with the content's sha256.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import inspect, text

from app import db
from tests.support.fake_llm import Behavior, FakeLLM, serve_fake_llm
from tests.support.runtime import fake_ide_command
from tests.support.server import running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio
AUDITED = ("file.write", "patch.apply", "workspace.start", "workspace.execute", "ai.explain", "ai.rewrite")


class Collect(logging.Handler):
    """Every log record, formatted as the hub's own handler formats it, plus its raw fields."""

    def __init__(self, formatter: logging.Formatter | None) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{self.format(record)} {record.__dict__!r}")


async def dump_rows(database_url: str, tmp_path: Path) -> str:
    """Every row of every table, as text."""
    engine = db.create_engine(make_settings(tmp_path / "dump", database_url=database_url))
    parts: list[str] = []
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            for table in tables:
                rows = (await conn.execute(text(f'SELECT * FROM "{table}"'))).all()
                parts.append(f"{table}: {rows!r}")
    finally:
        await engine.dispose()
    return "\n".join(parts)


def dump_bytes(database_url: str) -> bytes:
    """The database as stored: ``pg_dump`` of the whole database, or the SQLite file with its WAL and SHM."""
    if database_url.startswith("sqlite"):
        database = Path(database_url.split(":///", 1)[1])
        return b"".join(path.read_bytes() for path in sorted(database.parent.glob(database.name + "*")))
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run(["pg_dump", "--no-owner", dsn], capture_output=True, check=True, timeout=60).stdout


async def wait_for_audit(client: httpx.AsyncClient, actions: tuple[str, ...]) -> list[dict[str, Any]]:
    """The caller's audit records once every action in ``actions`` has one (the AI row comes as the job ends)."""
    items: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        while not set(actions) <= {item["action"] for item in items}:
            await anyio.sleep(0.05)
            items = (await client.get("/api/audit", params={"limit": 200})).json()["items"]
    return items


async def content_flow(client: httpx.AsyncClient, fake: FakeLLM, ws: str, marker: str) -> dict[str, str]:
    """Send the marker through files, patches, exec and AI; returns the sha256 each action should record."""
    files = f"/api/workspaces/{ws}/files"

    async def put(path: str, content: bytes, **headers: str) -> int:
        r = await client.put(f"{files}/content", params={"path": path}, content=content, headers=headers)
        return r.status_code

    async def patch(diff: str, action: str = "apply") -> httpx.Response:
        return await client.post(f"/api/patch/{action}", json={"workspace_id": ws, "diff": diff})

    content = f"label = '{marker}'\nline two\n".encode()
    assert await put("s.py", content) == 201
    assert marker in (await client.get(f"{files}/content", params={"path": "s.py"})).text
    assert await put("s.py", marker.encode(), **{"If-Match": '"0"'}) == 412
    assert await put("b.bin", b"\x00\x01" + marker.encode()) == 201
    assert (await client.get(f"{files}/content", params={"path": "b.bin"})).status_code == 415

    diff = f"--- a/s.py\n+++ b/s.py\n@@ -1,2 +1,3 @@\n label = '{marker}'\n-line two\n+line 2\n+also = '{marker}'\n"
    assert (await patch(diff, "validate")).json()["ok"]
    assert (await patch(diff)).status_code == 200
    assert (await patch(diff)).status_code == 409  # the conflict (file lines) goes to the owner only
    assert (await patch(f"--- a/s.py\n+++ b/s.py\n@@ -1 +1 @@\n?{marker}\n")).status_code == 400
    assert (await patch(f"--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+{marker}\n")).status_code == 200
    assert (await client.post(f"{files}/move", json={"from": "new.txt", "to": "moved.txt"})).status_code == 200
    assert (await client.delete(f"{files}/content", params={"path": "moved.txt"})).status_code == 200

    r = await client.post(f"/api/workspaces/{ws}/start", params={"wait": "true"})
    assert r.json()["state"] == "running", r.text
    argv = ["sh", "-c", 'echo "$0" && echo "$0" >&2', marker]
    r = await client.post(f"/api/workspaces/{ws}/execute", json={"command": argv})
    assert r.status_code == 200 and r.json()["stdout"] == f"{marker}\n", r.text
    sse = {"Accept": "text/event-stream"}
    async with client.stream("POST", f"/api/workspaces/{ws}/execute", json={"command": argv}, headers=sse) as s:
        assert marker in (await s.aread()).decode()

    r = await client.post(f"/api/workspaces/{ws}/execute", json={"command": f"echo {marker}", "workdir": marker})
    assert r.status_code == 200 and r.json()["exit_code"] == 127, r.text  # no such directory: told the caller only

    question = f"What does {marker} mean here?"
    r = await client.post("/api/ai/explain", json={"workspace_id": ws, "path": "s.py", "question": question})
    assert r.status_code == 200 and marker in r.json()["explanation"], r.text
    fake.script(Behavior(status=400, error_message=f"prompt rejected: {question}"))
    r = await client.post("/api/ai/explain", json={"workspace_id": ws, "path": "s.py", "question": question})
    assert r.status_code == 502, r.text  # the upstream's message (the user's own words) goes back to the user only
    instruction = f"Rename the label to {marker}_new"
    fake.script(Behavior(reply=f"```python\nlabel = '{marker}_new'\nline 2\nalso = '{marker}'\n```"))
    r = await client.post("/api/ai/rewrite", json={"workspace_id": ws, "path": "s.py", "instruction": instruction})
    assert r.status_code == 200 and f"+label = '{marker}_new'" in r.json()["diff"], r.text
    assert (await client.post(f"/api/workspaces/{ws}/stop")).json()["state"] == "stopped"
    return {
        "file.write": hashlib.sha256(content).hexdigest(),
        "patch.apply": hashlib.sha256(diff.encode()).hexdigest(),
        "workspace.execute": hashlib.sha256("\0".join(argv).encode()).hexdigest(),
    }


async def test_marker_reaches_neither_database_nor_logs(
    db_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    marker = f"MARKER{uuid.uuid4().hex}"
    async with serve_fake_llm() as fake:
        fake.default = Behavior(reply=lambda body: f"It is {marker}, echoed by the model.")
        settings = make_settings(
            tmp_path / "data",
            database_url=db_url,
            log_level="debug",
            local_ide_command=fake_ide_command(),
            start_timeout=20,
            llm_base_url=fake.url,
            llm_model="fake-coder",
            llm_rate_per_minute=0,
        )
        root = logging.getLogger()
        async with running_hub(settings) as hub:
            collect = Collect(root.handlers[0].formatter)
            root.addHandler(collect)
            try:
                token = await hub.new_user("leaker")
                async with hub.client(token) as client:
                    ws = (await client.post("/api/workspaces", json={"name": "leak"})).json()["id"]
                    hashes = await content_flow(client, fake, ws, marker)
                    audit = await wait_for_audit(client, AUDITED)
            finally:
                root.removeHandler(collect)
        assert all(marker in request.text for request in fake.chat_requests)  # prompts did carry it out of the hub

    first = {action: next(row for row in reversed(audit) if row["action"] == action) for action in AUDITED}
    for action, sha256 in hashes.items():
        assert first[action]["sha256"] == sha256 and first[action]["outcome"] == "ok", first[action]
    assert len(first["ai.explain"]["details"]["prompt_sha256"]) == 64
    assert len(first["ai.explain"]["details"]["response_sha256"]) == 64
    assert len([row for row in audit if row["action"].startswith(("file.", "patch."))]) == 9

    rows = await dump_rows(db_url, tmp_path)
    stored = dump_bytes(db_url)
    assert "audit_events" in rows and b"audit_events" in stored and b"patch.apply" in stored
    assert marker not in rows
    assert marker.encode() not in stored

    # Info and debug records reach the log at all (an access line per request), so their absence means something.
    assert any("/api/patch/apply" in line and '"route"' in line for line in collect.lines)
    assert [line for line in collect.lines if marker in line] == []
    captured = capfd.readouterr()
    assert "/api/ai/explain" in captured.err
    assert marker not in captured.out and marker not in captured.err

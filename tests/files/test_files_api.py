"""The files, patch and audit APIs over real HTTP, on SQLite and Postgres."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app import db
from tests.support.server import Hub

pytestmark = pytest.mark.anyio


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def new_workspace(client: httpx.AsyncClient, name: str) -> str:
    r = await client.post("/api/workspaces", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_files_roundtrip(hub: Hub) -> None:
    token = await hub.new_user("filer")
    async with hub.client(token) as client:
        ws = await new_workspace(client, "files")
        base = f"/api/workspaces/{ws}/files"
        tree = (await client.get(f"{base}/tree")).json()
        assert tree == {"path": "", "depth": 1, "entries": [], "truncated": False}

        r = await client.put(f"{base}/content", params={"path": "src/app.py"}, content=b"print(1)\n")
        assert r.status_code == 201, r.text
        assert r.headers["etag"] == f'"{sha(b"print(1)\n")}"' and r.json()["created"] is True

        r = await client.get(f"{base}/content", params={"path": "src/app.py"})
        assert r.status_code == 200 and r.json()["content"] == "print(1)\n"
        etag = r.headers["etag"]
        assert r.json()["sha256"] == etag.strip('"')
        r = await client.get(f"{base}/content", params={"path": "src/app.py"}, headers={"If-None-Match": etag})
        assert r.status_code == 304

        r = await client.put(
            f"{base}/content", params={"path": "src/app.py"}, content=b"print(2)\n", headers={"If-Match": '"0000"'}
        )
        assert r.status_code == 412 and r.json()["error"] == "precondition_failed"
        r = await client.put(
            f"{base}/content", params={"path": "src/app.py"}, content=b"print(2)\n", headers={"If-Match": etag}
        )
        assert r.status_code == 200 and r.json()["previous_sha256"] == etag.strip('"')
        r = await client.put(
            f"{base}/content", params={"path": "src/app.py"}, content=b"x", headers={"If-None-Match": "*"}
        )
        assert r.status_code == 412

        r = await client.put(f"{base}/content", params={"path": "img.png"}, content=b"\x89PNG\x00\x01<script>")
        assert r.status_code == 201
        assert (await client.get(f"{base}/content", params={"path": "img.png"})).status_code == 415
        r = await client.get(f"{base}/content", params={"path": "img.png", "raw": "true"})
        assert r.status_code == 200 and r.content == b"\x89PNG\x00\x01<script>"
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["x-content-type-options"] == "nosniff" and "attachment" in r.headers["content-disposition"]

        entries = (await client.get(f"{base}/tree", params={"depth": 3})).json()["entries"]
        listed = [(e["path"], e["type"]) for e in entries]
        assert listed == [("src", "dir"), ("src/app.py", "file"), ("img.png", "file")]

        r = await client.post(f"{base}/move", json={"from": "img.png", "to": "assets/img.png"})
        assert r.status_code == 200 and r.json() == {"from": "img.png", "to": "assets/img.png", "type": "file"}
        r = await client.post(f"{base}/move", json={"from": "src/app.py", "to": "assets/img.png"})
        assert r.status_code == 409
        r = await client.delete(f"{base}/content", params={"path": "assets/img.png"}, headers={"If-Match": '"1"'})
        assert r.status_code == 412
        r = await client.delete(f"{base}/content", params={"path": "assets/img.png"})
        assert r.status_code == 200 and r.json()["sha256"] == sha(b"\x89PNG\x00\x01<script>")
        assert (await client.delete(f"{base}/content", params={"path": "assets/img.png"})).status_code == 404


async def test_refusals_over_http(hub: Hub) -> None:
    token = await hub.new_user("refused")
    async with hub.client(token) as client:
        ws = await new_workspace(client, "refusals")
        base = f"/api/workspaces/{ws}/files"
        for path in ["../etc/passwd", "/etc/passwd", "%2e%2e/x", "a\\..\\b", "a\x00b", "..%2fx"]:
            r = await client.get(f"{base}/content", params={"path": path})
            assert r.status_code == 400 and r.json()["error"] == "bad_path", (path, r.text)
            r = await client.put(f"{base}/content", params={"path": path}, content=b"x")
            assert r.status_code == 400, path
        r = await client.get(f"/api/workspaces/{ws}/files/content?path=%2e%2e%2fetc%2fpasswd")
        assert r.status_code == 400
        big = b"x" * (hub.settings.max_file_bytes + 1)
        r = await client.put(f"{base}/content", params={"path": "big.bin"}, content=big)
        assert r.status_code == 413
        r = await client.put(f"{base}/content", params={"path": "x"}, content=b"x", headers={"If-None-Match": '"a"'})
        assert r.status_code == 400
        assert (await client.get(f"{base}/tree", params={"depth": 0})).status_code == 400
        assert (await client.post(f"{base}/move", json={"from": "a"})).status_code == 400

    other = await hub.new_user("intruder")
    async with hub.client(other) as client:
        base = f"/api/workspaces/{ws}/files"
        assert (await client.get(f"{base}/tree")).status_code == 404
        assert (await client.put(f"{base}/content", params={"path": "x"}, content=b"x")).status_code == 404
        r = await client.post("/api/patch/validate", json={"workspace_id": ws, "diff": "--- a/x\n"})
        assert r.status_code == 404
    async with hub.client("") as anonymous:
        assert (await anonymous.get(f"/api/workspaces/{ws}/files/tree")).status_code == 401


DIFF = "--- a/lib.py\n+++ b/lib.py\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n"


async def test_patches_over_http(hub: Hub) -> None:
    token = await hub.new_user("patcher")
    async with hub.client(token) as client:
        ws = await new_workspace(client, "patches")
        base = f"/api/workspaces/{ws}/files"
        await client.put(f"{base}/content", params={"path": "lib.py"}, content=b"one\ntwo\nthree\n")
        r = await client.post("/api/patch/validate", json={"workspace_id": ws, "diff": DIFF})
        assert r.status_code == 200, r.text
        check = r.json()
        assert check["ok"] and check["files"][0]["base_sha256"] == sha(b"one\ntwo\nthree\n")
        assert check["files"][0]["operation"] == "modify" and check["files"][0]["hunks"] == 1

        wrong = {"lib.py": "0" * 64}
        r = await client.post("/api/patch/apply", json={"workspace_id": ws, "diff": DIFF, "base_hashes": wrong})
        assert r.status_code == 409 and r.json()["error"] == "base_mismatch"
        r = await client.post(
            "/api/patch/apply",
            json={"workspace_id": ws, "diff": DIFF, "base_hashes": {"lib.py": check["files"][0]["base_sha256"]}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["files"][0]["sha256"] == sha(b"one\nTWO\nthree\n")

        r = await client.post("/api/patch/apply", json={"workspace_id": ws, "diff": DIFF})
        body = r.json()
        assert r.status_code == 409 and body["error"] == "patch_conflict"
        conflict = body["files"][0]["conflicts"][0]
        assert conflict == {"hunk": 1, "line": 2, "expected": "two", "found": "TWO"}

        r = await client.post("/api/patch/apply", json={"workspace_id": ws, "diff": "--- a/../x\n+++ b/../x\n"})
        assert r.status_code == 400 and r.json()["error"] == "bad_diff"
        r = await client.post("/api/patch/validate", json={"workspace_id": ws, "diff": "nothing here"})
        assert r.status_code == 400 and r.json()["error"] == "bad_diff"
        r = await client.post("/api/patch/validate", json={"workspace_id": ws, "diff": DIFF, "extra": 1})
        assert r.status_code == 400
        text = (await client.get(f"{base}/content", params={"path": "lib.py"})).json()["content"]
        assert text == "one\nTWO\nthree\n"


async def test_audit_records_hashes_and_chain(hub: Hub) -> None:
    token = await hub.new_user("audited")
    async with hub.client(token) as client:
        ws = await new_workspace(client, "audited")
        base = f"/api/workspaces/{ws}/files"
        await client.put(f"{base}/content", params={"path": "a.txt"}, content=b"alpha\n")
        await client.put(f"{base}/content", params={"path": "a.txt"}, content=b"x", headers={"If-Match": '"00"'})
        await client.post(f"{base}/move", json={"from": "a.txt", "to": "b.txt"})
        await client.delete(f"{base}/content", params={"path": "b.txt"})
        await client.put(f"{base}/content", params={"path": "lib.py"}, content=b"one\ntwo\nthree\n")
        await client.post("/api/patch/apply", json={"workspace_id": ws, "diff": DIFF})

        own = (await client.get("/api/audit", params={"workspace_id": ws, "limit": 50})).json()["items"]
        actions = [(r["action"], r["outcome"]) for r in own]
        assert actions == [
            ("patch.apply", "ok"),
            ("file.write", "ok"),
            ("file.delete", "ok"),
            ("file.move", "ok"),
            ("file.write", "precondition_failed"),
            ("file.write", "ok"),
            ("workspace.create", "ok"),
        ]
        write = own[-2]
        assert write["sha256"] == sha(b"alpha\n") and write["size"] == 6 and write["target"] == "a.txt"
        assert write["actor_name"] == "audited" and write["request_id"] and write["client_addr"]
        patch = own[0]
        assert patch["sha256"] == sha(DIFF.encode()) and patch["size"] == len(DIFF)
        assert patch["details"]["files"][0]["sha256"] == sha(b"one\nTWO\nthree\n")
        assert own[2]["sha256"] == sha(b"alpha\n") and own[3]["details"]["to"] == "b.txt"

        page = (await client.get("/api/audit", params={"workspace": ws, "limit": 3})).json()
        assert len(page["items"]) == 3 and page["next_cursor"]
        rest = (await client.get("/api/audit", params={"workspace": ws, "cursor": page["next_cursor"]})).json()
        assert [r["id"] for r in page["items"] + rest["items"]] == [r["id"] for r in own]
        prefix = (await client.get("/api/audit", params={"action": "file.", "workspace_id": ws})).json()["items"]
        assert {r["action"] for r in prefix} == {"file.write", "file.move", "file.delete"}
        assert (await client.get("/api/admin/audit")).status_code == 403
        assert (await client.get("/api/admin/audit/verify")).status_code == 403

    async with hub.client() as admin:
        r = await admin.get("/api/admin/audit", params={"actor": "audited", "action": "file.write"})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        since = own[-1]["at"]
        r = await admin.get("/api/admin/audit", params={"workspace_id": ws, "since": since, "limit": 500})
        assert len(r.json()["items"]) == len(own)
        r = await admin.get("/api/admin/audit", params={"until": "2000-01-01T00:00:00Z"})
        assert r.json()["items"] == []
        assert (await admin.get("/api/admin/audit", params={"cursor": "nope"})).status_code == 400
        report = (await admin.get("/api/admin/audit/verify")).json()
        assert report["ok"] and report["checked"] >= len(own) and report["first_bad_id"] is None


async def test_verify_finds_tampering(hub: Hub) -> None:
    token = await hub.new_user("tamper")
    async with hub.client(token) as client:
        ws = await new_workspace(client, "tamper")
        await client.put(f"/api/workspaces/{ws}/files/content", params={"path": "t.txt"}, content=b"t\n")
        record = (await client.get("/api/audit", params={"action": "file.write"})).json()["items"][0]
    engine = db.create_engine(hub.settings)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE audit_events SET target = 'forged' WHERE id = :id"), {"id": record["id"]})
        async with hub.client() as admin:
            report: dict[str, Any] = (await admin.get("/api/admin/audit/verify")).json()
            assert not report["ok"] and report["first_bad_id"] == record["id"]
            assert "contents" in report["reason"]
    finally:
        async with engine.begin() as conn:
            restore = text("UPDATE audit_events SET target = :t WHERE id = :id")
            await conn.execute(restore, {"t": "t.txt", "id": record["id"]})
        await engine.dispose()
    async with hub.client() as admin:
        assert (await admin.get("/api/admin/audit/verify")).json()["ok"]

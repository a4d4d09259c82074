"""The project directory of a Docker workspace's home volume belongs to the workspace user from its first start:
handed over by the container's own project wrapper, or (an image without ``sh``, a home the user cannot write)
through the engine's archive API, after which that image skips the wrapper."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.services.runtime.base import ExecRequest
from app.services.runtime.common import resolve_container_user
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.docker_create import PROJECT_SCRIPT
from tests.support.runtime import make_spec, new_workspace_id
from tests.support.services import TEST_IMAGE, need_docker

pytestmark = pytest.mark.anyio
PROJECT = "/home/coder/project"

NO_SHELL_DOCKERFILE = f"""FROM {TEST_IMAGE} AS source
FROM scratch
COPY --from=source /usr/local/bin/wsecho /wsecho
COPY --from=source /home/coder /home/coder
CMD ["/wsecho", "8080"]
"""


@pytest.fixture(scope="module")
def no_shell_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test image's IDE (a static binary) and home, without a shell, built for this module."""
    need_docker(TEST_IMAGE)
    tag = f"codehub/test-no-shell:{secrets.token_hex(4)}"
    context = tmp_path_factory.mktemp("no-shell")
    (context / "Dockerfile").write_text(NO_SHELL_DOCKERFILE)
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True)
    yield tag
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)


@pytest.fixture
async def runtime_of(hub_id: str) -> AsyncIterator[dict[str, DockerRuntime]]:
    """Docker runtimes of this hub id by container user (``auto`` and ``1500:1500``), entered on demand."""
    url = need_docker(TEST_IMAGE)
    opened: dict[str, DockerRuntime] = {}
    for user in ("auto", "1500:1500"):
        opened[user] = await DockerRuntime(
            url, hub_id=hub_id, helper_image=TEST_IMAGE, container_user=user
        ).__aenter__()
    try:
        yield opened
    finally:
        for runtime in opened.values():
            await runtime.__aexit__(None, None, None)


async def start_volume_workspace(runtime: DockerRuntime, hub_id: str, tmp: Path, image: str = TEST_IMAGE) -> str:
    """Start a workspace of ``image`` whose home is a new volume; its id."""
    workspace_id = new_workspace_id()
    spec = make_spec(
        hub_id, tmp, id=workspace_id, image=image, storage=runtime.storage_ref(workspace_id), mount=PROJECT
    )
    await runtime.start(spec, ready_timeout=30)
    return workspace_id


async def project_owner(runtime: DockerRuntime, workspace_id: str) -> str:
    """``uid:gid`` of the project directory, read through the file helper (the workspace's image may lack a shell)."""
    code, out, err = await runtime.volume_files(workspace_id).run(["stat", "-c", "%u:%g", PROJECT])
    assert code == 0, err
    return out.decode().strip()


async def entrypoint(runtime: DockerRuntime, workspace_id: str) -> list[str]:
    """The workspace container's entrypoint."""
    info = await runtime.docker.containers.container(f"codehub-{workspace_id}").show()
    return list(info["Config"]["Entrypoint"] or [])


async def test_wrapper_hands_a_new_volumes_project_to_the_user(
    runtime_of: dict[str, DockerRuntime], hub_id: str, tmp_path: Path
) -> None:
    runtime = runtime_of["auto"]
    workspace_id = await start_volume_workspace(runtime, hub_id, tmp_path)
    try:
        assert (await entrypoint(runtime, workspace_id))[:3] == ["sh", "-c", PROJECT_SCRIPT]
        result = await runtime.exec(workspace_id, ExecRequest(command="pwd; stat -c %u:%g .; echo kept > kept.txt"))
        uid, gid = resolve_container_user("auto")
        assert (result.exit_code, result.stdout) == (0, f"{PROJECT}\n{uid}:{gid}\n"), result.stderr
        await runtime.stop(workspace_id, grace=1)
        await runtime.start(
            make_spec(
                hub_id,
                tmp_path,
                id=workspace_id,
                storage=runtime.storage_ref(workspace_id),
                mount=PROJECT,
            ),
            ready_timeout=30,
        )  # a restart finds its own project and leaves it (and its files) as it is
        result = await runtime.exec(workspace_id, ExecRequest(command="cat kept.txt; stat -c %u:%g ."))
        assert (result.exit_code, result.stdout) == (0, f"kept\n{uid}:{gid}\n"), result.stderr
    finally:
        await runtime.remove(workspace_id, purge=True)


async def test_a_home_the_user_cannot_write_falls_back_to_the_archive(
    runtime_of: dict[str, DockerRuntime], hub_id: str, tmp_path: Path
) -> None:
    runtime = runtime_of["1500:1500"]  # the image's home belongs to 1000: the wrapper cannot replace the project
    first = await start_volume_workspace(runtime, hub_id, tmp_path)
    second = ""
    try:
        assert await project_owner(runtime, first) == "1500:1500"
        assert (await entrypoint(runtime, first))[:3] != ["sh", "-c", PROJECT_SCRIPT]
        second = await start_volume_workspace(runtime, hub_id, tmp_path)  # the image is known now: no wrapper
        assert (await entrypoint(runtime, second))[:3] != ["sh", "-c", PROJECT_SCRIPT]
        assert await project_owner(runtime, second) == "1500:1500"
    finally:
        for workspace_id in (first, second):
            if workspace_id:
                await runtime.remove(workspace_id, purge=True)


async def test_an_image_without_a_shell_falls_back_to_the_archive(
    runtime_of: dict[str, DockerRuntime], hub_id: str, tmp_path: Path, no_shell_image: str
) -> None:
    runtime = runtime_of["auto"]
    workspace_id = await start_volume_workspace(runtime, hub_id, tmp_path, image=no_shell_image)
    try:
        uid, gid = resolve_container_user("auto")
        assert await project_owner(runtime, workspace_id) == f"{uid}:{gid}"
        assert await entrypoint(runtime, workspace_id) == []
    finally:
        await runtime.remove(workspace_id, purge=True)

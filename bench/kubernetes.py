"""Kubernetes benchmark: create → running through the hub vs ``kubectl run`` + waiting for Ready, on the test
cluster (scripts/kubernetes-node.sh).

    uv run python bench/kubernetes.py                       # 10 alternating pairs, then 10 at once
    uv run python bench/kubernetes.py --quick               # 2 pairs, 4 at once (CI: proves it runs)

The hub runs as a subprocess (``codehub serve``, SQLite, ``CODEHUB_RUNTIME=kubernetes`` on the test cluster's
admin kubeconfig and a namespace of the bench's own), so its default server is that namespace.

- hub: ``POST /api/workspaces`` then ``POST …/start?wait=true`` (answers once running: the pod, its home
  PVC and NetworkPolicy created, the pod Ready), timed together.
- raw: ``kubectl run`` of the same image with the same requests = limits, security context and readiness
  probe (``/healthz`` on the IDE port), then ``kubectl wait --for=condition=Ready``; no PVC, no policy.

Where the time goes (pod watch stamps, test cluster): the hub's new claim costs ~1 s in the scheduler (a
``WaitForFirstConsumer`` binding is checked once a second before the pod is bound), the raw emptyDir pod
none; the raw side's ``Ready`` comes 0-2 s after its container runs (the 1.20 prober's random first delay),
so raw times spread ~1.2-3.3 s and the ratio of 10 medians moves by ±0.1 or more from run to run.

Pairs alternate which side goes first. Reported: the median of each side and the ratio of medians (target
≤ 1.15), then N workspaces created and started at once: how many ran, p50 and p99 create → running.
Without the cluster, or without a runtime of kind ``kubernetes`` in the hub, it prints one row saying why
(value null) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.runtime import free_port, hub_burst, hub_run, ok_text, result_row  # noqa: E402

RATIO_TARGET = 1.15
KUBECONFIG = os.environ.get("CODEHUB_TEST_KUBECONFIG", "/run/codehub-k8s/admin.kubeconfig")
KUBECTL = os.environ.get("CODEHUB_TEST_KUBECTL", "/var/cache/codehub-k8s/v1.20.2/bin/kubectl")
NODE_SCRIPT = ROOT / "scripts" / "kubernetes-node.sh"
IDE_PORT = 8080
CPU, MEMORY_MB = "100m", 256  # small: the test cluster's node has 2 cores for a burst of 10
HOME = "/home/coder"


def kubectl(*args: str) -> list[str]:
    """A kubectl command line as the test cluster's admin."""
    return [KUBECTL, "--kubeconfig", KUBECONFIG, "--request-timeout=60s", *args]


def why_not() -> str | None:
    """None when the cluster answers; else why the bench cannot run."""
    if not (os.path.isfile(KUBECONFIG) and os.access(KUBECTL, os.X_OK)):
        return f"no test cluster ({KUBECONFIG}, {KUBECTL}): scripts/kubernetes-node.sh start IMAGE"
    ready = subprocess.run(kubectl("get", "--raw", "/readyz"), capture_output=True, text=True, timeout=30)
    return None if ready.returncode == 0 else f"the test cluster does not answer: {ready.stderr.strip()[:200]}"


def raw_overrides(image: str) -> str:
    """The raw pod: the hub's image, resources, security context, read-only root with a writable home and /tmp,
    and readiness probe; emptyDirs instead of the hub's PVC."""
    resources = {"cpu": CPU, "memory": f"{MEMORY_MB}Mi"}
    container = {
        "name": "ide",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": HOME,
        "env": [{"name": "HOME", "value": HOME}],
        "ports": [{"name": "ide", "containerPort": IDE_PORT}],
        "resources": {"requests": resources, "limits": resources},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": IDE_PORT},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "volumeMounts": [{"name": "home", "mountPath": HOME}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    spec = {
        "containers": [container],
        "volumes": [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return json.dumps({"apiVersion": "v1", "spec": spec})


async def raw_run(image: str, namespace: str, name: str) -> float:
    """``kubectl run`` until the pod is Ready; seconds (the pod is deleted after)."""
    begin = time.perf_counter()
    await anyio.run_process(
        kubectl(
            "-n",
            namespace,
            "run",
            name,
            f"--image={image}",
            "--restart=Never",
            "--labels=codehub.bench=raw",
            f"--overrides={raw_overrides(image)}",
        )
    )
    await anyio.run_process(kubectl("-n", namespace, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=180s"))
    elapsed = time.perf_counter() - begin
    await anyio.run_process(
        kubectl("-n", namespace, "delete", "pod", name, "--grace-period=0", "--force", "--wait=false")
    )
    return elapsed


def hub_env(data: Path, namespace: str, image: str, port: int) -> dict[str, str]:
    """Environment of the benchmarked hub: the Kubernetes runtime on the bench's namespace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        {
            "CODEHUB_DATA_DIR": str(data),
            "CODEHUB_RUNTIME": "kubernetes",
            "CODEHUB_KUBECONFIG": KUBECONFIG,
            "CODEHUB_KUBE_NAMESPACE": namespace,
            "CODEHUB_DOCKER_URL": "none",
            "CODEHUB_HUB_ID": namespace,
            "CODEHUB_DEFAULT_IMAGE": image,
            "CODEHUB_DEFAULT_CPU": "0.1",
            "CODEHUB_KUBE_STORAGE_CLASS": "local",
            "CODEHUB_KUBE_STORAGE_SIZE": "1Gi",
            "CODEHUB_WORKSPACE_HOME": HOME,
            "CODEHUB_DEFAULT_MEMORY_MB": str(MEMORY_MB),
            "CODEHUB_START_TIMEOUT": "180",
            "CODEHUB_LOG_LEVEL": "warning",
            "CODEHUB_MAX_WORKSPACES_PER_USER": "0",
            "CODEHUB_API_RATE_PER_MINUTE": "0",
            "CODEHUB_HOST": "127.0.0.1",
            "CODEHUB_PORT": str(port),
        }
    )
    return env


def report(rows: list[dict[str, object]]) -> None:
    """The protocol's last line."""
    print("BENCH_RESULT " + json.dumps({"bench": "kubernetes", "rows": rows}), flush=True)


async def measure(args: argparse.Namespace, namespace: str, data: Path) -> list[dict[str, object]]:
    """Start the hub, run the pairs and the burst; the rows."""
    port = free_port()
    env = hub_env(data, namespace, args.image, port)
    codehub = [sys.executable, "-m", "app"]
    subprocess.run([*codehub, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    made = subprocess.run(
        [*codehub, "create-user", "bench", "--admin", "--password", "bench-password-1"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    token = made.stdout.strip().splitlines()[-1].split()[-1]
    log = (data / "hub.log").open("w")
    hub = subprocess.Popen([*codehub, "serve"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    rows: list[dict[str, object]] = []
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=600) as client:
            with anyio.fail_after(60):
                while hub.poll() is None:
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)
            if hub.poll() is not None:
                found = re.findall(r"(\w+(?:Error|Unavailable|Exception): [^\\\n]+)", (data / "hub.log").read_text())
                why = found[-1] if found else f"see {data / 'hub.log'}"
                return [result_row(f"kubernetes: skipped (the hub did not start: {why[:200]})", None, "s")]
            await hub_run(client, "warmup")
            await raw_run(args.image, namespace, "raw-warmup")

            hub_times: list[float] = []
            raw_times: list[float] = []
            for i in range(args.pairs):
                for side in ("hub", "raw") if i % 2 == 0 else ("raw", "hub"):
                    if side == "hub":
                        elapsed, workspace_id = await hub_run(client, f"pair-{i}")
                        hub_times.append(elapsed)
                        await client.delete(f"/api/workspaces/{workspace_id}", params={"purge": "true"})
                    else:
                        raw_times.append(await raw_run(args.image, namespace, f"raw-{i}"))
            ratio = statistics.median(hub_times) / statistics.median(raw_times)
            ratio_ok = ratio <= RATIO_TARGET
            print(f"image {args.image}, {args.pairs} alternating pairs (seconds to Ready / running):")
            print(f"  hub create+start       : median {statistics.median(hub_times):.3f}  {hub_times}")
            print(f"  kubectl run + wait     : median {statistics.median(raw_times):.3f}  {raw_times}")
            print(f"  ratio hub/raw (medians): {ratio:.3f}  (target <= {RATIO_TARGET:g}) {ok_text(ratio_ok)}")
            rows += [
                result_row(f"k8s hub create+start, median of {args.pairs}", statistics.median(hub_times), "s"),
                result_row(
                    f"kubectl run + wait Ready, median of {args.pairs}",
                    statistics.median(raw_times),
                    "s",
                    reference=True,
                ),
                result_row("k8s hub / kubectl run (medians)", round(ratio, 3), "x", f"<= {RATIO_TARGET:g}", ratio_ok),
            ]

            rows += (await hub_burst(client, args.concurrent, "k8s "))[1]
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=20)
        except subprocess.TimeoutExpired:
            hub.kill()
        log.close()
    return rows


async def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="codehub/workspace:test")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 pairs and 4 at once: proves the bench runs")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.concurrent = 2, 4
    reason = why_not()
    if reason:
        print(reason, flush=True)
        report([result_row(f"kubernetes: skipped ({reason})", None, "s")])
        return 0
    # every hub workspace takes one hostPath PersistentVolume of class "local"
    if os.getuid() == 0 and NODE_SCRIPT.is_file():
        subprocess.run(["bash", str(NODE_SCRIPT), "pv", str(args.pairs + args.concurrent + 4)], capture_output=True)
    namespace = f"codehub-bench-{secrets.token_hex(3)}"
    subprocess.run(kubectl("create", "namespace", namespace), check=True, capture_output=True)
    data = Path(tempfile.mkdtemp(prefix="codehub-bench-k8s-"))
    try:
        rows = await measure(args, namespace, data)
    finally:
        subprocess.run(kubectl("delete", "namespace", namespace, "--wait=false"), capture_output=True)
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))

"""Building Kubernetes runtimes for registered servers, and registering the ``kubernetes`` kind (on servers)."""

from __future__ import annotations

from app.services.runtime.cache import StatusCache
from app.services.runtime.kubernetes.runtime import KIND, KubernetesRuntime
from app.services.runtime.registry import RuntimeOptions, register_runtime
from app.settings import Settings


def kubernetes_for_server(options: RuntimeOptions) -> KubernetesRuntime:
    """The runtime of one registered Kubernetes server (``Server.kubeconfig``, ``Server.namespace``);
    ``CODEHUB_RUNTIME=kubernetes`` registers the cluster of ``CODEHUB_KUBECONFIG`` / ``CODEHUB_KUBE_NAMESPACE``
    as the default server (``Engines.boot``)."""
    server = options.server
    if server is None or not server.kubeconfig:
        raise ValueError("a Kubernetes runtime serves one registered Kubernetes server")
    namespace = server.namespace or options.settings.kube_namespace
    return kubernetes_runtime(options.settings, server.kubeconfig, namespace, options.cache)


def kubernetes_runtime(
    settings: Settings, kubeconfig: str, namespace: str, cache: StatusCache | None
) -> KubernetesRuntime:
    """A runtime on ``namespace`` of the cluster ``kubeconfig`` names, with the hub's settings."""
    return KubernetesRuntime(
        kubeconfig,
        namespace,
        container_user=settings.container_user,
        pull=settings.pull_images,
        status_cache=cache,
        status_ttl=settings.status_cache_ttl,
        egress=settings.workspace_egress,
        hub_id=settings.hub_id,
        home=settings.workspace_home,
        helper_image=settings.default_image,
        storage_size=settings.kube_storage_size,
        storage_class=settings.kube_storage_class,
        read_only_root=settings.kube_read_only_root,
        cpu_request_ratio=settings.kube_cpu_request_ratio,
    )


register_runtime(KIND, kubernetes_for_server, on_servers=True)

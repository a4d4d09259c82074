"""The Kubernetes runtime: one workspace = one pod ``codehub-<id>`` with a PVC for its home (see ``runtime``)."""

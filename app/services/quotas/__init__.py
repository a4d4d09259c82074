"""Quotas: how much a user may hold (workspaces) and run at once (count, CPU, memory).

Owns: ``service`` (limits per subject, the effective limit of a user, usage, and the admission checks that
create and start run inside their own transaction under a per-user lock so limits hold under concurrency).
"""

__all__ = ["service"]

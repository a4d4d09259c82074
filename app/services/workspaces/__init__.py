"""Workspaces: their records, their lifecycle, and what the hub does with them.

Owns: ``records`` (create, read, list, update, delete with visibility rules; ``page_cache`` for list
pages), ``lifecycle`` (the state machine: start, stop, restart, delete, each transition persisted then
published), ``provisioning`` (placement at create, clone after), ``ops`` (status, logs, exec),
``grants`` (a workspace shared with users and groups, subdomain mode only; see docs/sharing.md),
``reconcile`` (the database kept true to the engines; idle stops), ``log_pump`` (workspace output as
events), ``servers`` (registered engines and placement), ``git`` (cloning), ``monitoring`` (scrape-time
gauges).
"""

__all__ = ["grants", "lifecycle", "log_pump", "monitoring", "ops", "provisioning", "reconcile", "records", "servers"]

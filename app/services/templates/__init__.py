"""Templates: admin-owned, versioned recipes users create workspaces from.

Owns: ``service`` (create, list, read, update as a new version, archive or delete; the default template of a
fresh install; the plan of a workspace created from a template and what its start gets), ``drafts`` (the
fields an admin sends, checked), ``crypto`` (template secrets sealed with AES-GCM under a key derived from
the hub's server key), ``images`` (which servers hold a template's image, the create-time check, pre-pulls
with progress events).
"""

__all__ = ["crypto", "drafts", "images", "service"]

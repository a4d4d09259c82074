"""Groups: admin management of local groups and memberships, and the group limits of templates and servers.

Owns: ``service`` (``GroupService``: list with member counts, create/rename/delete local groups, add and remove
members; groups synced from the OpenID provider are read-only), ``limits`` (a user's group ids read fresh at
every check, whether a list of allowed groups lets them in, the check that named groups exist).
"""

__all__ = ["limits", "service"]

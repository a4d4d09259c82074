"""Identity and access: users, passwords and API tokens, and the rules every edge applies.

Owns: ``users`` (``AuthService``: users, argon2 passwords, hashed opaque tokens), ``access`` (credential
parsing, the session cookie, the origin rule for cookie-authenticated writes, safe sign-in targets, the one
verified-token cache, the owner-or-admin rule, audit entries built from a request), ``revocations``
(revocations reaching other hub processes over Redis), ``ratelimit`` (token buckets in Redis or in this
process), ``oidc`` (single sign-on as an OpenID relying party: authorization code + PKCE, ID-token checks),
``oidc_cookie`` (the signed cookie of a sign-in in progress), ``identities`` (users keyed by issuer and
subject, groups and memberships synced at each sign-in), ``workspace_entry`` (one-time tickets into a
workspace's own origin and its workspace cookies).
"""

__all__ = ["access", "identities", "oidc", "oidc_cookie", "ratelimit", "revocations", "users", "workspace_entry"]

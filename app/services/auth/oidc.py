"""Single sign-on with an OpenID provider: authorization code + PKCE, through Authlib and joserfc.

- ``OidcClient.begin``: a fresh ``state``, ``nonce`` and PKCE verifier travel in a short-lived login cookie
  signed with the hub's key (HttpOnly); the signature proves the hub issued them, so starting writes nothing.
- ``OidcClient.finish`` at the callback: the cookie must verify, be unexpired and carry the same ``state``,
  whose digest is then recorded in ``oidc_login_states`` until the cookie expires (a replay, in any hub
  process, finds it there); the code is exchanged with the verifier; the ID token's signature is checked
  against the provider's JWKS (asymmetric algorithms it announces, never ``none``), then its issuer,
  audience, expiry and nonce. Only when the ID token lacks the groups claim or a name hint is the userinfo
  endpoint asked (its ``sub`` must match). The result is an ``OidcIdentity``.
- Every refusal is a ``DomainError`` with a stable code and a sentence a person can act on (no token or secret).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from authlib.common.urls import add_params_to_uri
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from app.db import SessionMaker
from app.errors import BadGateway, DomainError, Forbidden, ServiceUnavailable
from app.models import OidcLoginState, utcnow
from app.services.auth.oidc_cookie import LOGIN_TTL, LoginCookie, refused
from app.settings import Settings

log = logging.getLogger(__name__)

METADATA_TTL = 3600.0
JWKS_MIN_REFRESH = 30.0  # an unknown key id fetches the JWKS again, at most this often
CLOCK_LEEWAY = 60
SWEEP_INTERVAL = 60.0  # seconds between deletions of expired login states
HTTP_TIMEOUT = 10.0
ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_GROUPS = 256
MAX_SUBJECT = 255  # the column holding it
_ERROR_CODE_RE = re.compile(r"[a-z_]{1,64}")


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """Who the provider says signed in: (issuer, subject) is the key; the rest are hints and groups."""

    issuer: str
    subject: str
    preferred_username: str
    email: str
    name: str
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LoginStart:
    """Where to send the browser (``url``) and the login cookie's value to set before it goes."""

    url: str
    cookie: str


@dataclass(frozen=True, slots=True)
class Finished:
    """A verified sign-in and the hub path the browser was going to."""

    identity: OidcIdentity
    next: str


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def groups_of(claims: Mapping[str, Any], claim: str) -> tuple[str, ...]:
    """The group names in ``claims[claim]`` (a list of strings, or one string), cleaned and deduplicated."""
    value = claims.get(claim)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    names = [v.strip() for v in value if isinstance(v, str) and 0 < len(v.strip()) <= 128]
    return tuple(dict.fromkeys(names))[:MAX_GROUPS]


class OidcClient:
    """The hub as an OpenID relying party of ``settings.oidc_issuer`` (see the module docstring)."""

    def __init__(self, settings: Settings, sessionmaker: SessionMaker, key: bytes) -> None:
        self.settings = settings
        self.issuer = settings.oidc_issuer.rstrip("/")
        self._sessionmaker = sessionmaker
        self._cookies = LoginCookie(key)
        # one keep-alive pool per client for every sign-in (a client per request costs milliseconds); Authlib's
        # does the code exchange (on httpx2 when installed) and the token it keeps is cleared after each use
        self._tls = ssl.create_default_context()
        self._http = httpx.AsyncClient(verify=self._tls, timeout=HTTP_TIMEOUT, follow_redirects=False)
        secret = settings.oidc_client_secret
        self._token_client = AsyncOAuth2Client(
            client_id=settings.oidc_client_id,
            client_secret=secret or None,
            token_endpoint_auth_method="client_secret_basic" if secret else "none",
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT,
            verify=self._tls,
        )
        self._metadata: dict[str, Any] | None = None
        self._metadata_until = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0
        self._lock = anyio.Lock()
        self._swept_at = -SWEEP_INTERVAL

    @property
    def enabled(self) -> bool:
        """True when an issuer is configured."""
        return bool(self.issuer)

    @property
    def provider_name(self) -> str:
        """The name on the "Sign in with …" button."""
        return self.settings.oidc_provider_name or urlsplit(self.issuer).hostname or "single sign-on"

    async def aclose(self) -> None:
        """Close the connections to the provider."""
        await self._http.aclose()
        await self._token_client.aclose()

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (cached); 502/503 when it cannot be had or does not fit."""
        if self._metadata is not None and time.monotonic() < self._metadata_until:
            return self._metadata
        async with self._lock:
            if self._metadata is not None and time.monotonic() < self._metadata_until:
                return self._metadata
            url = f"{self.issuer}/.well-known/openid-configuration"
            try:
                response = await self._http.get(url)
                response.raise_for_status()
                found = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("OpenID discovery at %s failed: %s", url, type(exc).__name__)
                raise ServiceUnavailable(
                    "the OpenID provider did not answer; try again later", code="oidc_unavailable"
                ) from None
            if not isinstance(found, dict) or str(found.get("issuer", "")).rstrip("/") != self.issuer:
                raise BadGateway("the OpenID provider's discovery names another issuer", code="oidc_discovery")
            for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(found.get(field), str) or not found[field].startswith(("https://", "http://")):
                    raise BadGateway(f"the OpenID provider's discovery lacks {field}", code="oidc_discovery")
            self._metadata, self._metadata_until = found, time.monotonic() + METADATA_TTL
            return found

    async def begin(self, redirect_uri: str, next_path: str) -> LoginStart:
        """Start a sign-in: the provider's authorization URL and the login cookie for this browser."""
        metadata = await self.metadata()
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        verifier += secrets.token_urlsafe(24)  # 43..128 characters (RFC 7636)
        expires = int(time.time()) + LOGIN_TTL
        scopes = list(dict.fromkeys(["openid", *self.settings.oidc_scopes]))
        params = {
            "response_type": "code",
            "client_id": self.settings.oidc_client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        payload = {"s": state, "n": nonce, "v": verifier, "x": next_path, "e": expires}
        return LoginStart(add_params_to_uri(metadata["authorization_endpoint"], params), self._cookies.sign(payload))

    async def finish(self, redirect_uri: str, query: Mapping[str, str], cookie: str | None) -> Finished:
        """Verify the provider's answer at the callback (see the module docstring); the identity it proves."""
        login = self._cookies.unsign(cookie)
        state = query.get("state", "")
        if not state or not hmac.compare_digest(state.encode(), str(login.get("s", "")).encode()):
            raise refused("oidc_state", "the sign-in answer does not belong to this browser's sign-in (state differs)")
        code = query.get("code", "")
        problem = _answer_problem(query, self.issuer)
        metadata = await self.metadata() if problem is None else {}
        exchanged: list[dict[str, Any] | DomainError] = []

        async def exchange() -> None:
            try:
                exchanged.append(await self._exchange(metadata, redirect_uri, code, str(login["v"])))
            except DomainError as exc:
                exchanged.append(exc)

        # the state is recorded while the code is exchanged (both wait on I/O); the answer is used only once
        # the state proved unused, so a replay is refused (oidc_state_used) whatever the provider said
        async with anyio.create_task_group() as tasks:
            if problem is None:
                tasks.start_soon(exchange)
            if not (fresh := await self._consume(state, int(login["e"]))):
                tasks.cancel_scope.cancel()
        if not fresh:
            raise refused("oidc_state_used", "this sign-in answer was already used or has expired: sign in again")
        if problem is not None:
            raise problem
        if isinstance(token := exchanged[0], DomainError):
            raise token
        claims = await self._verify_id_token(metadata, token, str(login["n"]))
        if not self._complete(claims):  # the ID token lacks the groups or a name: ask userinfo (one more request)
            claims = {**await self._userinfo(metadata, token, str(claims["sub"])), **claims}
        groups = groups_of(claims, self.settings.oidc_groups_claim)
        identity = OidcIdentity(
            issuer=self.issuer,
            subject=str(claims["sub"]),
            preferred_username=str(claims.get("preferred_username") or ""),
            email=str(claims.get("email") or ""),
            name=str(claims.get("name") or ""),
            groups=groups,
        )
        return Finished(identity, str(login.get("x") or "/"))

    def _complete(self, claims: Mapping[str, Any]) -> bool:
        """True when the verified ID token already carries what the hub uses: the groups claim, and a name hint
        (``preferred_username`` or ``email``) for a user's first sign-in."""
        return self.settings.oidc_groups_claim in claims and bool(
            claims.get("preferred_username") or claims.get("email")
        )

    async def _consume(self, state: str, expires: int) -> bool:
        """Record ``state`` as used until its cookie expires; False when it already was."""
        async with self._sessionmaker() as session:
            if time.monotonic() - self._swept_at > SWEEP_INTERVAL:  # expired rows go now and then, not per sign-in
                self._swept_at = time.monotonic()
                await session.execute(delete(OidcLoginState).where(OidcLoginState.expires_at <= utcnow()))
            until = datetime.fromtimestamp(expires, UTC)
            session.add(OidcLoginState(state_hash=_digest(state), expires_at=until))
            try:
                await session.commit()
            except IntegrityError:
                return False
        return True

    async def _exchange(self, metadata: dict[str, Any], redirect_uri: str, code: str, verifier: str) -> dict[str, Any]:
        client = self._token_client
        try:
            token = await client.fetch_token(
                metadata["token_endpoint"],
                grant_type="authorization_code",
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=verifier,
            )
        except OAuthError as exc:  # the provider's error answer (invalid_grant: a used or expired code, …)
            log.warning("OpenID token request refused: %s", exc.error)
            raise refused("oidc_code_refused", "the OpenID provider refused the sign-in code: sign in again") from None
        except Exception as exc:  # no answer (httpx or httpx2, whichever Authlib runs on), or no token response
            log.warning("OpenID token request failed: %s", type(exc).__name__)
            raise ServiceUnavailable("the OpenID provider did not answer; try again", code="oidc_unavailable") from None
        finally:
            client.token = None  # Authlib keeps the last token it fetched; the hub never uses it again
        if not isinstance(token, dict) or not isinstance(token.get("id_token"), str):
            raise refused("oidc_no_id_token", "the OpenID provider sent no ID token")
        return dict(token)

    async def _keys(self, metadata: dict[str, Any], *, refresh: bool = False) -> KeySet:
        if self._jwks is not None and not (refresh and time.monotonic() - self._jwks_at > JWKS_MIN_REFRESH):
            return self._jwks
        try:
            response = await self._http.get(metadata["jwks_uri"])
            response.raise_for_status()
            self._jwks = KeySet.import_key_set(response.json())
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            log.warning("OpenID JWKS fetch failed: %s", type(exc).__name__)
            raise ServiceUnavailable("the OpenID provider's keys could not be read", code="oidc_unavailable") from None
        self._jwks_at = time.monotonic()
        return self._jwks

    async def _verify_id_token(self, metadata: dict[str, Any], token: dict[str, Any], nonce: str) -> dict[str, Any]:
        announced = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [alg for alg in announced if alg in ASYMMETRIC_ALGS]
        if not algorithms:
            raise BadGateway("the OpenID provider signs ID tokens with no algorithm the hub accepts", code="oidc_alg")
        registry = JWSRegistry(algorithms=algorithms)
        raw = token["id_token"]
        try:
            try:
                decoded = jwt.decode(raw, await self._keys(metadata), registry=registry)
            except InvalidKeyIdError:  # the provider rotated its keys
                decoded = jwt.decode(raw, await self._keys(metadata, refresh=True), registry=registry)
        except (BadSignatureError, InvalidKeyIdError):
            raise refused("oidc_bad_signature", "the ID token's signature does not verify: refused") from None
        except (DecodeError, JoseError, ValueError):
            raise refused(
                "oidc_bad_id_token", "the ID token is malformed or uses an algorithm the hub refuses"
            ) from None
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.issuer},
            "aud": {"essential": True, "value": self.settings.oidc_client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
            "nonce": {"essential": True, "value": nonce},
        }
        params = {"nonce": nonce, "client_id": self.settings.oidc_client_id, "access_token": token.get("access_token")}
        subject = decoded.claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT:
            raise refused("oidc_bad_claim", "the ID token's subject is missing or too long: refused")
        claims = CodeIDToken(decoded.claims, decoded.header, options, params)
        try:
            claims.validate(leeway=CLOCK_LEEWAY)
        except ExpiredTokenError:
            raise refused("oidc_expired", "the ID token has expired: refused (is the hub's clock right?)") from None
        except (InvalidClaimError, MissingClaimError) as exc:
            claim = str(getattr(exc, "claim", "") or "a claim")
            fallback = ("oidc_bad_claim", f"the ID token's {claim} claim is missing or wrong: refused")
            raise refused(*_CLAIM_REFUSALS.get(claim, fallback)) from None
        except JoseError:
            raise refused("oidc_bad_id_token", "the ID token does not validate: refused") from None
        return dict(claims)

    async def _userinfo(self, metadata: dict[str, Any], token: dict[str, Any], subject: str) -> dict[str, Any]:
        endpoint, access_token = metadata.get("userinfo_endpoint"), token.get("access_token")
        if not isinstance(endpoint, str) or not isinstance(access_token, str):
            return {}
        try:
            response = await self._http.get(endpoint, headers={"Authorization": f"Bearer {access_token}"})
            response.raise_for_status()
            info = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("OpenID userinfo request failed: %s", type(exc).__name__)
            raise ServiceUnavailable("the OpenID provider's userinfo did not answer", code="oidc_unavailable") from None
        if not isinstance(info, dict) or info.get("sub") != subject:
            raise refused("oidc_userinfo", "the provider's userinfo is about someone else: refused")
        return info

    async def logout_url(self, post_logout_redirect_uri: str) -> str | None:
        """The provider's end-session URL (RP-initiated logout) coming back to ``post_logout_redirect_uri``,
        or None when the provider offers none or cannot be reached."""
        try:
            endpoint = (await self.metadata()).get("end_session_endpoint")
        except DomainError:
            return None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            return None
        params = {"client_id": self.settings.oidc_client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        return str(add_params_to_uri(endpoint, params))


def _answer_problem(query: Mapping[str, str], issuer: str) -> DomainError | None:
    """Why the provider's answer cannot be used, before any exchange: its own error, another issuer (mix-up
    defence), or no code; None when it can."""
    if "error" in query:
        code = query["error"] if _ERROR_CODE_RE.fullmatch(query["error"]) else "error"
        return Forbidden(f"the OpenID provider refused the sign-in ({code})", code="oidc_provider_refused")
    if "iss" in query and query["iss"].rstrip("/") != issuer:
        return refused("oidc_issuer", "the sign-in answer comes from another issuer")
    code = query.get("code", "")
    if not code or len(code) > 2048:
        return refused("oidc_no_code", "the sign-in answer carries no authorization code")
    return None


_AUDIENCE = ("oidc_audience", "the ID token was issued for another client (audience differs): refused")
_CLAIM_REFUSALS = {
    "aud": _AUDIENCE,
    "azp": _AUDIENCE,
    "iss": ("oidc_issuer", "the ID token was issued by another issuer: refused"),
    "nonce": ("oidc_nonce", "the ID token does not answer this sign-in (nonce differs): refused"),
}

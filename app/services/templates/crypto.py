"""Template secrets at rest: AES-256-GCM under a key derived (HKDF-SHA256) from the hub's server key.

The server key is the one the IDE secret derives from (``CODEHUB_SECRET_KEY``, or the key generated once into
``<data dir>/secret_key``); HKDF with its own ``info`` gives templates a key of their own. Each value is sealed
with a fresh 96-bit nonce and the template id and secret name as associated data, so a ciphertext copied to
another template or name does not open. Stored as ``v1.<base64url(nonce | ciphertext | tag)>``.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.errors import Unprocessable
from app.services.runtime.ide_secret import server_key
from app.settings import Settings

_INFO = b"codehub template secrets v1"
_PREFIX = "v1."
_NONCE = 12


class SecretUnreadable(Unprocessable):
    """A stored secret does not open with this hub's key (the key changed, or the row was tampered with)."""

    default_code = "template_secret_unreadable"


class SecretBox:
    """Seals and opens template secret values. Holds only the derived key; never logs values."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(key)
        self._aead = AESGCM(derived)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """Over the hub's server key (``CODEHUB_SECRET_KEY`` or the generated one)."""
        return cls(server_key(settings))

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    @staticmethod
    def _aad(template_id: str, name: str) -> bytes:
        return f"{template_id}\0{name}".encode()

    def seal(self, template_id: str, name: str, value: str) -> str:
        """The stored form of secret ``name`` of a template."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, value.encode(), self._aad(template_id, name))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, template_id: str, name: str, stored: str) -> str:
        """The clear value of a stored secret; ``SecretUnreadable`` (naming only the secret) when it does not open."""
        try:
            if not stored.startswith(_PREFIX):
                raise ValueError
            raw = base64.urlsafe_b64decode(stored[len(_PREFIX) :])
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], self._aad(template_id, name)).decode()
        except (ValueError, InvalidTag, binascii.Error, UnicodeDecodeError):
            raise SecretUnreadable(
                f"template secret {name!r} cannot be decrypted with this hub's key (was CODEHUB_SECRET_KEY "
                "changed?); an admin must set it again",
            ) from None

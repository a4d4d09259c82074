"""Template secrets at rest: AES-GCM bound to template and name, refused under another key or when altered."""

from __future__ import annotations

import pytest

from app.services.templates.crypto import SecretBox, SecretUnreadable

KEY = b"k" * 40


def test_roundtrip_and_fresh_nonces() -> None:
    box = SecretBox(KEY)
    first, second = box.seal("t1", "TOKEN", "hunter2-value"), box.seal("t1", "TOKEN", "hunter2-value")
    assert first != second and "hunter2" not in first
    assert box.open("t1", "TOKEN", first) == "hunter2-value"
    assert "hunter2" not in repr(box) and "k" * 10 not in repr(box)


@pytest.mark.parametrize(
    ("template_id", "name", "key"),
    [("t2", "TOKEN", KEY), ("t1", "OTHER", KEY), ("t1", "TOKEN", b"x" * 40)],
    ids=["other-template", "other-name", "other-key"],
)
def test_ciphertext_does_not_open_elsewhere(template_id: str, name: str, key: bytes) -> None:
    stored = SecretBox(KEY).seal("t1", "TOKEN", "hunter2-value")
    with pytest.raises(SecretUnreadable) as caught:
        SecretBox(key).open(template_id, name, stored)
    assert "hunter2" not in caught.value.detail and name in caught.value.detail


@pytest.mark.parametrize("stored", ["", "v1.", "v1.!!!", "v2.AAAA", "plain-text-secret"])
def test_garbage_and_tampering_are_refused(stored: str) -> None:
    with pytest.raises(SecretUnreadable):
        SecretBox(KEY).open("t1", "TOKEN", stored)


def test_a_flipped_bit_is_refused() -> None:
    box = SecretBox(KEY)
    stored = box.seal("t1", "TOKEN", "hunter2-value")
    body = bytearray(stored.encode())
    body[-3] = ord("A") if body[-3] != ord("A") else ord("B")
    with pytest.raises(SecretUnreadable):
        box.open("t1", "TOKEN", body.decode())

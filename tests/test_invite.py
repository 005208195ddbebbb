"""Invites: compact, signed, sealed when made --for someone, and hostile input never crashes."""

import base64
import contextlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.identity import Identity
from relay.core.invite import (
    SEAL_CONTEXT_V2,
    SIG_LEN,
    SIGN_DOMAIN,
    TEXT_PREFIX,
    VERSION_SEALED,
    RoomInfo,
    decode_invite,
    encode_invite,
)
from relay.core.sealed import open_sealed, seal_for
from relay.errors import UsageError

MOD = Identity.from_private_bytes(bytes(range(64)))
MEMBER = Identity.from_private_bytes(bytes(range(64, 128)))
OTHER = Identity.from_private_bytes(bytes(range(128, 192)))
INFO = RoomInfo(
    room_id=bytes.fromhex("0011223344556677"),
    name="market",
    preset="SHORT_FAST",
    mode="1600",
    epoch=3,
    key=bytes(range(32)),
    moderators=(MOD.public,),
)
OPEN = encode_invite(INFO, MOD, None, 1_700_000_000)
SEALED = encode_invite(INFO, MOD, MEMBER.public, 1_700_000_000)


def to_blob(text: str) -> bytes:
    body = text[len(TEXT_PREFIX) :]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def to_text(blob: bytes) -> str:
    return TEXT_PREFIX + base64.urlsafe_b64encode(blob).decode().rstrip("=")


def resign(blob: bytes, signer: Identity = MOD) -> bytes:
    body = blob[:-SIG_LEN]
    return body + signer.sign(SIGN_DOMAIN + body)


def test_open_invite_round_trip_and_size():
    assert OPEN.startswith(TEXT_PREFIX) and "=" not in OPEN
    invite = decode_invite(OPEN, None)
    assert invite.room == INFO
    assert (invite.issued_at, invite.inviter, invite.recipient) == (1_700_000_000, 0, None)
    assert invite.signer == MOD.public
    assert len(OPEN) < 280


def test_sealed_invite_opens_only_for_its_member():
    assert INFO.key not in to_blob(SEALED)
    invite = decode_invite(SEALED, MEMBER)
    assert invite.room.key == INFO.key and invite.recipient == MEMBER.public
    with pytest.raises(UsageError, match="made for someone else"):
        decode_invite(SEALED, OTHER)
    with pytest.raises(UsageError, match="sealed for one member"):
        decode_invite(SEALED, None)
    assert len(SEALED) < 420


def test_key_never_in_repr():
    assert INFO.key.hex() not in repr(INFO) and repr(INFO.key) not in repr(INFO)
    assert INFO.key.hex() not in repr(decode_invite(OPEN, None))


def test_whitespace_from_copy_and_paste_is_tolerated():
    wrapped = "  " + "\n".join(OPEN[i : i + 60] for i in range(0, len(OPEN), 60)) + "\n"
    assert decode_invite(wrapped, None).room == INFO


def test_any_flipped_character_is_refused():
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i in range(len(TEXT_PREFIX), len(OPEN) - 1):  # the last char may carry padding bits
        c = OPEN[i]
        swapped = alphabet[(alphabet.index(c) + 1) % 64]
        with pytest.raises(UsageError):
            decode_invite(OPEN[:i] + swapped + OPEN[i + 1 :], None)


def test_tampered_body_is_a_signature_failure():
    blob = bytearray(to_blob(OPEN))
    blob[-SIG_LEN - 1] ^= 1  # a bit of the room key
    with pytest.raises(UsageError, match="signature does not verify"):
        decode_invite(to_text(bytes(blob)), None)


def test_self_made_invite_for_a_moderator_it_does_not_list_is_refused():
    with pytest.raises(UsageError, match="only a moderator"):
        encode_invite(INFO, OTHER, None, 0)


def test_resigned_by_a_non_moderator_fails():
    blob = resign(to_blob(OPEN), OTHER)
    with pytest.raises(UsageError, match="signature does not verify"):
        decode_invite(to_text(blob), None)


def test_sealed_for_an_old_identity_with_the_same_signing_key_fails():
    # Same Ed25519 key, new X25519 key: the seal does not open, clearly.
    raw = MEMBER.private_bytes()[:32] + bytes(range(200, 232))
    newer = Identity.from_private_bytes(raw)
    with pytest.raises(UsageError, match="does not open"):
        decode_invite(SEALED, newer)


def test_multiple_moderators_and_inviter_index():
    info = RoomInfo(
        os.urandom(8),
        "two mods",
        "LONG_FAST",
        "700C",
        0,
        os.urandom(32),
        (OTHER.public, MOD.public),
    )
    invite = decode_invite(encode_invite(info, MOD, None, 5), None)
    assert invite.inviter == 1 and invite.signer == MOD.public and invite.room == info


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "starts with relay1:"),
        ("relayid1:abc", "starts with relay1:"),
        ("relay1:", "empty"),
        ("relay1:!!!!", "base64url"),
        ("relay1:A", "cut short"),
        ("relay1:" + "A" * 5000, "too long"),
        (to_text(b"\x03" + to_blob(OPEN)[1:]), "version 3"),
        (OPEN[:-10], "cut short|signature"),
        (OPEN[:100], "cut short"),
        (to_text(to_blob(OPEN) + b"\x00"), "signature|extra"),
    ],
)
def test_malformed_invites_have_clear_messages(text, message):
    with pytest.raises(UsageError, match=message):
        decode_invite(text, None)


def test_unknown_flags_refused_even_when_signed():
    blob = bytearray(to_blob(OPEN))
    blob[1] |= 0x80
    with pytest.raises(UsageError, match="unknown flags"):
        decode_invite(to_text(resign(bytes(blob))), None)


def test_signed_but_nonsense_fields_refused():
    blob = to_blob(OPEN)
    # name "market" -> "mar\x1bet": a terminal escape, correctly signed
    i = blob.index(b"market")
    evil = blob[:i] + b"mar\x1bet" + blob[i + 6 :]
    with pytest.raises(UsageError, match="control"):
        decode_invite(to_text(resign(evil)), None)
    # preset "SHORT_FAST" -> "SHORT_FOOT"
    j = blob.index(b"SHORT_FAST")
    evil = blob[:j] + b"SHORT_FOOT" + blob[j + 10 :]
    with pytest.raises(UsageError, match="unknown radio preset"):
        decode_invite(to_text(resign(evil)), None)
    # codec mode index 7 is unassigned
    k = j + 10
    evil = blob[:k] + b"\x07" + blob[k + 1 :]
    with pytest.raises(UsageError, match="codec mode"):
        decode_invite(to_text(resign(evil)), None)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=600), st.text(max_size=600).map(TEXT_PREFIX.__add__)))
def test_arbitrary_text_only_raises_usage_error(text):
    with contextlib.suppress(UsageError):
        decode_invite(text, MEMBER)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.binary(max_size=700), st.binary(max_size=700).map(b"\x01".__add__)))
def test_arbitrary_bytes_only_raise_usage_error(blob):
    with contextlib.suppress(UsageError):
        decode_invite(to_text(blob), MEMBER)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.sampled_from([OPEN, SEALED]),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(-3, 3),
)
def test_mutated_and_resigned_invites_only_raise_usage_error(text, edits, resize):
    """Past the signature check too: a moderator signing garbage still cannot crash a joiner."""
    blob = bytearray(to_blob(text)[:-SIG_LEN])
    for pos, value in edits:
        if blob:
            blob[pos % len(blob)] = value
    if resize > 0:
        blob += bytes(resize)
    elif resize < 0:
        del blob[resize:]
    signed = bytes(blob) + MOD.sign(SIGN_DOMAIN + bytes(blob))
    with contextlib.suppress(UsageError):
        decode_invite(to_text(signed), MEMBER)


def test_sealed_invite_shows_nothing_identifying():
    """Sealed whole: no room name, preset, room id, moderator key, recipient or issue time
    in the bytes; two invites for the same member share nothing but the version byte."""
    blob = to_blob(SEALED)
    assert blob[0] == VERSION_SEALED
    for secret in (
        b"market",
        b"SHORT_FAST",
        INFO.room_id,
        INFO.key,
        MOD.public.signing_key,
        MOD.public.agreement_key,
        MEMBER.public.signing_key,
        MEMBER.public.agreement_key,
        (1_700_000_000).to_bytes(4, "big"),
    ):
        assert secret not in blob
    again = to_blob(encode_invite(INFO, MOD, MEMBER.public, 1_700_000_000))
    assert again != blob and not any(blob[i : i + 8] in again for i in range(1, len(blob) - 8))
    # The name's length shows only to 64 bytes: names of 1 and 25 bytes give one size.
    short = RoomInfo(INFO.room_id, "m", "SHORT_FAST", "1600", 3, INFO.key, INFO.moderators)
    longer = RoomInfo(INFO.room_id, "m" * 25, "SHORT_FAST", "1600", 3, INFO.key, INFO.moderators)
    sizes = {len(encode_invite(i, MOD, MEMBER.public, 0)) for i in (short, longer)}
    assert len(sizes) == 1


def test_a_member_cannot_reseal_their_invite_to_someone_else():
    blob = to_blob(SEALED)
    inner = open_sealed(MEMBER, blob[1:33], blob[33:], SEAL_CONTEXT_V2)
    eph, sealed = seal_for(OTHER.public.agreement_key, inner, context=SEAL_CONTEXT_V2)
    with pytest.raises(UsageError, match="made for someone else"):
        decode_invite(to_text(bytes([VERSION_SEALED]) + eph + sealed), OTHER)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=700))
def test_arbitrary_sealed_content_only_raises_usage_error(inner):
    """Whoever can seal to a member (anyone: the X25519 key is public) sends garbage."""
    eph, sealed = seal_for(MEMBER.public.agreement_key, inner, context=SEAL_CONTEXT_V2)
    with contextlib.suppress(UsageError):
        decode_invite(to_text(bytes([VERSION_SEALED]) + eph + sealed), MEMBER)


def test_version_1_sealed_invites_are_still_read():
    """Made by an older relay: the room key alone sealed (everything else in clear)."""
    from relay.core.invite import FLAG_SEALED, _seal_context

    name = INFO.name.encode()
    body = (
        bytes([1, FLAG_SEALED]) + INFO.room_id + bytes([len(name)]) + name + b"\x0aSHORT_FAST"
        + bytes([2]) + INFO.epoch.to_bytes(2, "big") + (5).to_bytes(4, "big") + b"\x01"
        + MOD.public.signing_key + MOD.public.agreement_key + b"\x00"
    )  # fmt: skip
    context = _seal_context(INFO.room_id, INFO.epoch, MEMBER.public.signing_key,
                            MOD.public.signing_key)  # fmt: skip
    eph, sealed = seal_for(MEMBER.public.agreement_key, INFO.key, context=context)
    body += MEMBER.public.signing_key + eph + sealed
    invite = decode_invite(to_text(body + MOD.sign(SIGN_DOMAIN + body)), MEMBER)
    assert invite.room.key == INFO.key and invite.recipient == MEMBER.public


# -- key-tree paths in sealed invites (relay.core.keytree) -----------------------------------


def _path(members: int = 100):
    from relay.core.keytree import KeyTree, ratchet_step

    tree = KeyTree(ratchet_step(1_780_000_000))
    for _ in range(members - 1):
        tree.add(os.urandom(32))
    return tree.add(MEMBER.public.signing_key)


def test_sealed_invite_carries_the_members_path_at_its_issue_hour():
    from relay.core.keytree import ratchet_step

    path = _path()
    text = encode_invite(INFO, MOD, MEMBER.public, 1_780_000_000, path)
    invite = decode_invite(text, MEMBER)
    assert invite.room.key == INFO.key
    assert invite.path.keys == path.keys and invite.path.position == path.position
    assert invite.path.step == ratchet_step(1_780_000_000)
    assert path.keys[0] not in to_blob(text)  # sealed, never in clear
    assert len(text) < len(SEALED) + 560  # 12 path keys (a tree of 2048 leaves): 520 characters
    with pytest.raises(UsageError, match="someone else"):
        decode_invite(text, OTHER)
    with pytest.raises(UsageError, match="sealed"):
        encode_invite(INFO, MOD, None, 1_780_000_000, path)


class _Garbage:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def pack(self) -> bytes:
        return self.data


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(min_size=1, max_size=500))
def test_a_moderator_sealing_a_garbage_path_only_raises_usage_error(data):
    text = encode_invite(INFO, MOD, MEMBER.public, 1_780_000_000, _Garbage(data))
    with contextlib.suppress(UsageError):
        invite = decode_invite(text, MEMBER)
        assert invite.path.pack() == data

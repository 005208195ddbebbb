"""The room's key tree (sans-I/O): removals rekey in O(log N), every key ratchets hourly.

A logical key hierarchy (RFC 2627) with TreeKEM's path secrets. The moderator who enrolls
members (the *tree holder*) keeps a binary tree whose leaves are enrolled members; each member
holds the keys of the nodes on its leaf-to-root path, delivered sealed in its invite. Nodes are
named by (level, position): leaves are level 0, the parent of (l, p) is (l + 1, p >> 1). The
depth is fixed (TREE_DEPTH, 2048 leaves): a tree that grew a root later would leave early
members without the keys of nodes created after them (and a grown key derived from an old
one cannot ratchet in step with it), while a fixed depth costs nothing on the air: copath
subtrees without members get no wrap, so a removal still sends about log2(N) wraps. Leaves
are drawn at random.

Removing the member at leaf p: the holder draws a random path secret s_1 for p's parent and
chains s_(l+1) = H(s_l) up the path; node (l, p >> l) gets the key N(s_l) and the new room key
is R(s_(depth+1)). Each s_l is wrapped (AES key wrap, RFC 3394) under the key of the *copath*
node (l - 1, (p >> (l - 1)) ^ 1), the sibling subtree that does not contain p, if anybody is
in it. A member under that sibling unwraps s_l and hashes its way to the root and the room
key: one wrap per level, about log2(N) in all, and any one wrap is enough for its whole
subtree. The removed member holds only keys on the replaced path, none of the copath.

Forward secrecy: every node key and the room key ratchet once per RATCHET_SECONDS
(K <- HKDF-Expand(K, label)), by the clock, with no packet sent; older values are erased. A
rekey names the ratchet step its wraps were made at, so a device seized after a ratchet holds
no key that opens a rekey (or speech) recorded before it.

Wraps are named by node, not by member: a removed member learns which subtrees along its old
path still have members (the tree's shape), never who they are.
"""

from __future__ import annotations

import hmac
import os
import random
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from relay.errors import PacketError, UsageError

KEY_LEN = 32
WRAPPED_LEN = KEY_LEN + 8  # RFC 3394 adds one 64-bit integrity block
NODE_LEN = 2
WRAP_LEN = NODE_LEN + WRAPPED_LEN
LEVEL_BITS = 4
POSITION_BITS = 12
MAX_DEPTH = 12  # what the wire format can name
TREE_DEPTH = 11  # every room's tree: 2048 leaves, rooms of a thousand and then some
RATCHET_SECONDS = 3600
RATCHET_BASE = 0  # steps are hours since 1970 (UTC)
_RNG = random.SystemRandom()


def ratchet_step(now: float) -> int:
    """The ratchet step (hour) of ``now``: every room key and tree key moves on with it."""
    return max(0, int((now - RATCHET_BASE) // RATCHET_SECONDS))


def step_start(step: int) -> float:
    return RATCHET_BASE + step * RATCHET_SECONDS


def _expand(key: bytes, label: bytes) -> bytes:
    """HKDF-Expand (RFC 5869) of one 32-byte block: HMAC-SHA256(key, label || 0x01)."""
    return hmac.digest(key, b"relay/v1 " + label + b"\x01", "sha256")


def ratchet(key: bytes, steps: int = 1) -> bytes:
    """The key ``steps`` ratchet steps later (one way: earlier keys cannot be recovered)."""
    if steps < 0:
        raise UsageError("a key only ratchets forward")
    for _ in range(steps):
        key = _expand(key, b"ratchet")
    return key


def node_id(level: int, position: int) -> int:
    if not 0 <= level <= MAX_DEPTH or not 0 <= position < 1 << POSITION_BITS:
        raise UsageError("key tree node out of range")
    return level << POSITION_BITS | position


def split_node(node: int) -> tuple[int, int]:
    return node >> POSITION_BITS, node & ((1 << POSITION_BITS) - 1)


def _next_secret(secret: bytes) -> bytes:
    return _expand(secret, b"lkh path")


def _node_key(secret: bytes) -> bytes:
    return _expand(secret, b"lkh node")


def _room_key(secret: bytes, context: bytes) -> bytes:
    return _expand(secret, b"lkh room" + context)


def _kek(key: bytes, context: bytes, node: int) -> bytes:
    return _expand(key, b"lkh kek" + context + node.to_bytes(NODE_LEN, "big"))


def wrap_secret(under_key: bytes, secret: bytes, context: bytes, node: int) -> bytes:
    return aes_key_wrap(_kek(under_key, context, node), secret)


def unwrap_secret(under_key: bytes, wrapped: bytes, context: bytes, node: int) -> bytes | None:
    try:
        return aes_key_unwrap(_kek(under_key, context, node), wrapped)
    except (InvalidUnwrap, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Rekey:
    """What a removal produces: the new room key and the wraps members need to derive it."""

    key: bytes = field(repr=False)
    step: int
    depth: int
    wraps: tuple[tuple[int, bytes], ...]  # (node the secret is wrapped under, wrapped secret)


def _derive_up(secret: bytes, level: int, depth: int, context: bytes) -> tuple[dict, bytes]:
    """Node keys from ``level`` to the root, and the room key, from the path secret of
    ``level`` (the secret of the level above the root gives only the room key)."""
    keys = {}
    for lvl in range(level, depth + 1):
        keys[lvl] = _node_key(secret)
        secret = _next_secret(secret)
    return keys, _room_key(secret, context)


class KeyTree:
    """The tree holder's whole tree: every node key at ``step``, and who sits at which leaf."""

    def __init__(self, step: int, depth: int = TREE_DEPTH) -> None:
        if not 0 <= depth <= MAX_DEPTH:
            raise UsageError(f"a key tree is 0..{MAX_DEPTH} levels deep")
        self.step = step
        self.depth = depth
        self.keys: dict[int, bytes] = {}  # node -> key at self.step (only occupied subtrees)
        self.leaves: dict[bytes, int] = {}  # member identity -> leaf position
        self._count: dict[int, int] = {}  # node -> members below it
        self.known: set[bytes] = set()  # every member this object has seen (see adopt)

    def __repr__(self) -> str:
        return f"KeyTree(members={len(self.leaves)}, depth={self.depth}, step={self.step})"

    def __contains__(self, member: bytes) -> bool:
        return member in self.leaves

    def __len__(self) -> int:
        return len(self.leaves)

    def _path(self, position: int) -> list[int]:
        return [node_id(lvl, position >> lvl) for lvl in range(self.depth + 1)]

    def ratchet_to(self, step: int) -> None:
        if step > self.step:
            n = step - self.step
            self.keys = {node: ratchet(key, n) for node, key in self.keys.items()}
            self.step = step

    def add(self, member: bytes) -> MemberPath:
        """Give ``member`` a leaf (or find theirs) and return the path keys for its invite."""
        if member not in self.leaves:
            self.known.add(member)
            if len(self.leaves) >= 1 << self.depth:
                raise UsageError(f"a room's key tree holds at most {1 << self.depth} members")
            # A random free leaf among the first 2^k, the fewest that hold everyone: positions
            # say little of join order, and copaths above 2^k stay empty (no wraps), so a
            # removal sends at most ceil(log2(N)) wraps.
            span = 1 << max(1, len(self.leaves).bit_length())
            position = _RNG.randrange(span)
            while self._count.get(node_id(0, position)):
                position = _RNG.randrange(span)
            self.leaves[member] = position
            for node in self._path(position):
                self._count[node] = self._count.get(node, 0) + 1
                if node not in self.keys:
                    self.keys[node] = os.urandom(KEY_LEN)
        return self.path_of(member)

    def path_of(self, member: bytes) -> MemberPath:
        position = self.leaves[member]
        keys = {lvl: self.keys[node] for lvl, node in enumerate(self._path(position))}
        return MemberPath(position, self.depth, self.step, keys)

    def remove(self, member: bytes | None, context: bytes) -> Rekey:
        """Replace every key on ``member``'s path (``None``: refresh only the room key, for
        a member who never had a leaf) and wrap the new path secrets for everyone else."""
        wraps: list[tuple[int, bytes]] = []
        if member is None or member not in self.leaves:
            secret = os.urandom(KEY_LEN)
            root = node_id(self.depth, 0)
            if self._count.get(root):
                wraps.append((root, wrap_secret(self.keys[root], secret, context, root)))
            return Rekey(_room_key(secret, context), self.step, self.depth, tuple(wraps))
        position = self.leaves.pop(member)
        self.known.add(member)
        path = self._path(position)
        for node in path:
            self._count[node] -= 1
            if not self._count[node]:
                del self._count[node]
        self.keys.pop(path[0], None)
        secret = os.urandom(KEY_LEN)
        for lvl in range(1, self.depth + 1):
            copath = node_id(lvl - 1, (position >> (lvl - 1)) ^ 1)
            if self._count.get(copath):
                wraps.append((copath, wrap_secret(self.keys[copath], secret, context, copath)))
            if self._count.get(path[lvl]):
                self.keys[path[lvl]] = _node_key(secret)
            else:
                self.keys.pop(path[lvl], None)  # nobody left below: nothing to keep
            secret = _next_secret(secret)
        return Rekey(_room_key(secret, context), self.step, self.depth, tuple(wraps))

    # -- state, for the store -------------------------------------------------------------
    def nodes(self) -> list[tuple[int, bytes]]:
        return sorted(self.keys.items())

    def adopt(self, member: bytes, position: int, keys: dict[int, bytes]) -> bool:
        """Take in a leaf another process gave (``relay room invite --for`` while this tree
        was loaded): nodes we hold keep our keys. False if the leaf is taken meanwhile."""
        if member in self.known or self._count.get(node_id(0, position)):
            return False
        path = self._path(position)
        if any(node not in self.keys and node not in keys for node in path):
            return False
        self.known.add(member)
        self.leaves[member] = position
        for node in path:
            self._count[node] = self._count.get(node, 0) + 1
            if node not in self.keys:
                self.keys[node] = keys[node]
        return True

    @classmethod
    def restore(
        cls,
        step: int,
        depth: int,
        nodes: list[tuple[int, bytes]],
        leaves: dict[bytes, int],
    ) -> KeyTree:
        tree = cls(step, depth)
        tree.keys = dict(nodes)
        for member, position in leaves.items():
            if not 0 <= position < 1 << depth:
                raise UsageError("a stored key tree is damaged (leaf out of range)")
            tree.leaves[member] = position
            tree.known.add(member)
            for node in tree._path(position):
                tree._count[node] = tree._count.get(node, 0) + 1
                if node not in tree.keys:
                    raise UsageError("a stored key tree is damaged (missing node key)")
        return tree


@dataclass
class MemberPath:
    """One member's keys: its leaf position and the key of every node above it, at ``step``.

    ``_previous``: the keys of the step before, in memory only, so a rekey made by a
    moderator whose clock is a little behind still opens after we ratcheted.
    """

    position: int
    depth: int
    step: int
    keys: dict[int, bytes] = field(repr=False)  # level -> key
    _previous: tuple[int, dict[int, bytes]] | None = field(default=None, repr=False)

    def ratchet_to(self, step: int, keep_previous: bool = True) -> None:
        if step > self.step:
            if keep_previous:
                before = {lvl: ratchet(k, step - 1 - self.step) for lvl, k in self.keys.items()}
                self._previous = (step - 1, before)
            else:
                self._previous = None
            self.keys = {lvl: ratchet(k, step - self.step) for lvl, k in self.keys.items()}
            self.step = step

    def forget_previous(self) -> None:
        self._previous = None

    def _keys_at(self, step: int) -> dict[int, bytes] | None:
        """Our path keys at ``step`` (a later step, or the one before within the grace)."""
        if step >= self.step:
            return {lvl: ratchet(k, step - self.step) for lvl, k in self.keys.items()}
        if self._previous is not None and self._previous[0] == step:
            return dict(self._previous[1])
        return None

    def apply(self, rekey_step: int, depth: int, wraps, context: bytes) -> bytes | None:
        """The new room key if one of ``wraps`` is under a node on our path; our path keys
        are updated (at ``rekey_step``, ratcheted on to ours). None if nothing is for us."""
        if depth != self.depth:
            return None
        keys = self._keys_at(rekey_step)
        if keys is None:
            return None
        for node, wrapped in wraps:
            level, position = split_node(node)
            if level > depth or position != self.position >> level:
                continue
            secret = unwrap_secret(keys[level], wrapped, context, node)
            if secret is None:
                continue
            above, room_key = _derive_up(secret, level + 1, depth, context)
            keys.update(above)
            behind = max(0, self.step - rekey_step)
            self.keys = {lvl: ratchet(k, behind) for lvl, k in keys.items()}
            self.step = max(self.step, rekey_step)
            self._previous = None
            return ratchet(room_key, behind)
        return None

    # -- in an invite -----------------------------------------------------------------------
    def pack(self) -> bytes:
        """depth (1) | leaf position (2) | key of each level 0..depth (32 each); the step is
        the invite's issue time's."""
        return (
            bytes((self.depth,))
            + self.position.to_bytes(2, "big")
            + b"".join(self.keys[lvl] for lvl in range(self.depth + 1))
        )

    @classmethod
    def parse(cls, data: bytes, step: int) -> MemberPath:
        if len(data) < 3:
            raise PacketError("malformed", "key path is truncated")
        depth, position = data[0], int.from_bytes(data[1:3], "big")
        if depth > MAX_DEPTH or position >= 1 << depth:
            raise PacketError("malformed", "key path names an impossible leaf")
        if len(data) != 3 + (depth + 1) * KEY_LEN:
            raise PacketError("malformed", "key path has the wrong length")
        keys = {
            lvl: bytes(data[3 + lvl * KEY_LEN : 3 + (lvl + 1) * KEY_LEN])
            for lvl in range(depth + 1)
        }
        return cls(position, depth, step, keys)

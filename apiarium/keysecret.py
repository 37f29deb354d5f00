"""How keys are made: ``api-`` + 16 characters of ``[a-z0-9]``, derived as
HMAC-SHA256(secret, "ip|generation"); the secret file beside the database (mode 0600, in a
folder created 0700); and HMAC-SHA256(secret, key), all the database keeps of a key, so a
copy of the database without the secret file reveals nothing that can be checked.  What else
the gateway signs (its compaction items) is signed with a subkey of the secret, one per
purpose, never with the secret itself.

The database also keeps the secret's ``fingerprint`` (HMAC-SHA256 of a fixed string), written
by the first process that opens it: a process whose secret gives another one is refused,
since it would revoke the keys the others issue, one IP at a time."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
KEY_PREFIX = "api-"
_FINGERPRINT = b"apiarium key secret fingerprint v1"


class KeyStoreError(Exception):
    """The key store cannot be opened (a damaged secret file, an unusable database)."""


def hash_key(secret: bytes, key: str) -> str:
    """What the database keeps of a key."""
    return hmac.digest(secret, key.encode(), "sha256").hex()


def subkey(secret: bytes, purpose: str) -> bytes:
    """The key for one ``purpose`` (``"compaction"``: signing compaction items), derived as
    HMAC-SHA256(secret, "apiarium subkey|" + purpose): no IP, key or other purpose gives the
    same message, so what one purpose signs is no use to another."""
    return hmac.digest(secret, f"apiarium subkey|{purpose}".encode(), "sha256")


def rehash_legacy(secret: bytes, ip: str, generation: int, stored: str) -> str | None:
    """For a key stored as older databases kept it (a bare SHA-256), its hash as kept now;
    None if this secret does not derive that key (it was made with another secret)."""
    key = derive(secret, ip, generation)
    if hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), stored):
        return hash_key(secret, key)
    return None


def fingerprint(secret: bytes) -> str:
    """What the database keeps to recognise the secret (it reveals nothing of it)."""
    return hmac.digest(secret, _FINGERPRINT, "sha256").hex()


async def check_recorded(secret: bytes, claim: Callable[[str], Awaitable[str]], path: Path,
                         database: str) -> None:
    """Record the secret's fingerprint if the database has none yet (``claim``:
    ``Storage.claim_secret``); a KeyStoreError, with the fix, if it records another
    secret's (``path``: this secret's file; ``database``: as messages name it)."""
    mine = fingerprint(secret)
    recorded = await claim(mine)
    if hmac.compare_digest(recorded, mine):
        return
    raise KeyStoreError(
        f"{path}: this key secret is not the one the database {database} was first used "
        f"with (the database records the fingerprint {recorded[:8]}…, this secret's is "
        f"{mine[:8]}…). With it, this process would revoke the keys the other processes "
        f"issue, one IP at a time, so it does not start. Copy the secret file of the host "
        f"that first used this database (its secret_file) to {path} (mode 0600, owned by "
        f"the user the gateway runs as) and start again. To give up every key issued so "
        f"far and use this secret instead, see docs/scaling.md (One secret file for all).")


def looks_like_key(text: str) -> bool:
    """Whether ``text`` has the shape of a whole key."""
    return (len(text) == 20 and text.startswith(KEY_PREFIX)
            and all(c in _ALPHABET for c in text[4:]))


def derive(secret: bytes, ip: str, generation: int) -> str:
    """The IP's key of that generation."""
    digest = hmac.new(secret, f"{ip}|{generation}".encode(), hashlib.sha256).digest()
    n = int.from_bytes(digest, "big")
    chars = []
    for _ in range(16):
        n, r = divmod(n, 36)
        chars.append(_ALPHABET[r])
    return KEY_PREFIX + "".join(chars)


def load_secret(path: Path) -> bytes:
    """The secret in ``path``, created (atomically, mode 0600) if there is none."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return _create_secret(path)
    _owner_only(path)
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise KeyStoreError(
            f"{path}: the key secret is damaged (expected 64 hex digits). "
            f"Restore it from a backup, or copy it from another host on this database "
            f"(the database remembers the secret it was first used with, and refuses "
            f"another; docs/scaling.md: One secret file for all).")
    return secret


def _owner_only(path: Path) -> None:
    """Take group and other access away from a file made before it was created 0600."""
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
    except OSError:             # not ours to change: it is still readable, so carry on
        pass


def _create_secret(path: Path) -> bytes:
    """Write the secret to a temporary file, fsync it, then link it into place: the
    secret file either does not exist or is whole, whenever the process dies."""
    secret = secrets.token_bytes(32)
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secret.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)       # fails if another process won the race
        except FileExistsError:
            return load_secret(path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)
    return secret

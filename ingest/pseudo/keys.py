"""The secret key and everything derived from it: pseudonyms, UIDs and date shifts.

All derivations are HMAC-SHA256 with a domain label, so the same original gives the same
pseudonym on every run and every machine holding the key, nobody without the key can
recompute or reverse it, and an ID, a UID and a date shift derived from one string never
collide with each other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field

from ..errors import ConfigError

#: Shorter keys are refused: a guessable key lets anyone recompute pseudonyms from IDs.
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class PseudoKey:
    secret: bytes = field(repr=False)

    def digest(self, domain: str, value: str) -> bytes:
        msg = domain.encode("ascii") + b"\x00" + value.encode("utf-8")
        return hmac.new(self.secret, msg, hashlib.sha256).digest()

    @property
    def fingerprint(self) -> str:
        """Identifies the key (not the secret) so a mapping table made with another key is noticed."""
        return self.digest("key-fingerprint", "rtlake").hex()[:16]

    def pseudonym(self, domain: str, value: str, prefix: str = "P", length: int = 16) -> str:
        """`prefix` + `length` base32 characters (80 bits for 16): safe as a DICOM ID and an XNAT label."""
        text = base64.b32encode(self.digest(domain, value)).decode("ascii")
        return prefix + text[:length]

    def uid(self, value: str, root: str) -> str:
        """A UID under `root` derived from `value`, at most 64 characters, no leading zeros."""
        room = 64 - len(root) - 1
        if room < 10:
            raise ConfigError(f"[pseudo] uid_root {root!r} is too long to leave room for remapped UIDs")
        digest = self.digest("uid", value)
        if root == "2.25":
            # PS3.5 B.2: under 2.25 the number is a UUID, i.e. below 2**128.
            n = int.from_bytes(digest[:16], "big")
        else:
            n = int.from_bytes(digest, "big") % (10 ** min(room, 39))
        return f"{root}.{n}"

    def date_shift_days(self, patient_key: str, max_days: int) -> int:
        """Days to move this patient's dates back: 1..max_days, the same for all their studies."""
        if max_days <= 0:
            return 0
        return 1 + int.from_bytes(self.digest("date-shift", patient_key)[:8], "big") % max_days


def load_key(env_var: str) -> PseudoKey:
    """Read the key from the environment.

    Raises:
        ConfigError: the variable is unset, empty or shorter than MIN_KEY_BYTES.
    """
    value = os.environ.get(env_var, "")
    if not value:
        raise ConfigError(
            f"[pseudo] key_env: environment variable {env_var} is not set; "
            "export the pseudonymisation key there (never put it in the config file)"
        )
    secret = value.encode("utf-8")
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigError(
            f"[pseudo] key_env: the key in {env_var} is shorter than {MIN_KEY_BYTES} bytes; use a long random key"
        )
    return PseudoKey(secret)


def check_uid_root(root: str) -> str:
    """A UID root must be dotted numbers without leading zeros (PS3.5 9.1)."""
    parts = root.split(".")
    if not root or any(not p.isdigit() or (len(p) > 1 and p[0] == "0") for p in parts):
        raise ConfigError(f"[pseudo] uid_root {root!r} is not a valid UID root (dotted numbers, no leading zeros)")
    return root

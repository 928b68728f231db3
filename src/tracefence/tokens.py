"""User tokens: what the application signs to tell the database which user is calling.

Format: ``tfu_<base64url JSON {"sub": user id, "exp": unix time}>.<base64url HMAC-SHA256>``,
the MAC taken over everything before the dot with the secret set by iam.set_token_secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from uuid import UUID

PREFIX = "tfu_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def user_token(secret: bytes, user_id: UUID | str, ttl: float = 60.0) -> str:
    """A token asserting `user_id`, valid for `ttl` seconds."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    claims = {"sub": str(UUID(str(user_id))), "exp": int(time.time() + ttl)}
    signed = PREFIX + _b64(json.dumps(claims, separators=(",", ":")).encode())
    mac = hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()
    return f"{signed}.{_b64(mac)}"

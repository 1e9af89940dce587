"""The PostgreSQL backend: ``postgresql://`` locations (see :mod:`.engine`).

Needs psycopg 3 and psycopg_pool: ``pip install "persistqueue_liteq[postgres]"``.
The rest of the package never imports this one unless such a location is
opened.
"""

try:
    import psycopg
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "postgresql:// locations need psycopg 3 and psycopg_pool (%s): install them with "
        "pip install 'persistqueue_liteq[postgres]'" % exc, name=exc.name) from exc

from .engine import PostgresEngine  # noqa: E402

#: The drivers this backend runs on (imported above, so that a missing one
#: is named before anything else fails).
DRIVERS = (psycopg, psycopg_pool)

__all__ = ["PostgresEngine"]

"""PostgreSQL specifics beyond the contract: errors a department meets, types, WAL-based cache."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal

import polars as pl
import pytest
from yumen.connectors._sources import SourceSpec, frame_digest, open_source

from yumen.errors import Code, YumenError

pytestmark = pytest.mark.postgres

ENV = "YUMEN_TEST_PG_SOURCE_DSN"


@pytest.fixture
def pg(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator["Pg"]:
    monkeypatch.setenv(ENV, postgres_dsn)
    db = Pg(postgres_dsn)
    yield db
    db.cleanup()


class Pg:
    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.tables: list[str] = []
        self.roles: list[str] = []

    def table(self, ddl: str, *rows: tuple) -> str:
        name = f"t_{uuid.uuid4().hex[:10]}"
        self.tables.append(name)
        self.conn.execute(f"CREATE TABLE {name} ({ddl})")
        for row in rows:
            marks = ", ".join(["%s"] * len(row))
            self.conn.execute(f"INSERT INTO {name} VALUES ({marks})", row)
        return name

    def source(self, table: str, **options: object):
        return open_source(SourceSpec(kind="postgres", table=table, dsn_env=ENV, **options))  # type: ignore[arg-type]

    def cleanup(self) -> None:
        for t in self.tables:
            self.conn.execute(f"DROP TABLE IF EXISTS {t}")
        for r in self.roles:
            self.conn.execute(f'DROP ROLE IF EXISTS "{r}"')
        self.conn.close()


def test_an_unreachable_server_is_reported_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(YumenError) as err:
        open_source(SourceSpec(kind="postgres", table="t", dsn_env=ENV)).check()
    assert err.value.code is Code.CONFIG
    assert "cannot be reached" in err.value.message and "port" in err.value.hint


def test_wrong_credentials_are_reported_without_the_password(
    pg: "Pg", monkeypatch: pytest.MonkeyPatch
) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(pg.dsn)
    params["password"] = "wrong-Secret-123"
    monkeypatch.setenv(ENV, make_conninfo(**params))
    with pytest.raises(YumenError) as err:
        open_source(SourceSpec(kind="postgres", table="t", dsn_env=ENV)).check()
    assert "refused the credentials" in err.value.message
    assert "wrong-Secret-123" not in str(err.value)


def test_a_role_without_select_permission_is_told_what_to_grant(
    pg: "Pg", monkeypatch: pytest.MonkeyPatch
) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    table = pg.table("id int PRIMARY KEY", (1,))
    role = f"r_{uuid.uuid4().hex[:10]}"
    pg.roles.append(role)
    pg.conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'")
    params = conninfo_to_dict(pg.dsn)
    params.update(user=role, password=f"pw-{role}")
    monkeypatch.setenv(ENV, make_conninfo(**params))
    with pytest.raises(YumenError) as err:
        pg.source(table).check()
    assert f"role '{role}' has no SELECT permission" in err.value.message
    assert "GRANT SELECT" in err.value.hint
    pg.conn.execute(f"GRANT SELECT ON {table} TO {role}")
    pg.source(table).check()


def test_an_unsupported_column_type_is_named(pg: "Pg") -> None:
    table = pg.table("id int PRIMARY KEY, spot point")
    with pytest.raises(YumenError, match="column 'spot' has type point"):
        pg.source(table).check()


def test_typed_columns_round_trip(pg: "Pg") -> None:
    at = dt.datetime(2025, 3, 1, 8, 30, 0, 250, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    table = pg.table(
        "id int2 PRIMARY KEY, price numeric(10,2), ratio real, ok boolean, at timestamptz, code uuid, note varchar(20)",
        (1, Decimal("12.50"), 0.5, True, at, uuid.UUID(int=1), "兰州"),
        (2, None, None, None, None, None, ""),
    )
    got = pg.source(table).scan().collect()
    assert got.schema == pl.Schema(
        {
            "id": pl.Int16,
            "price": pl.Decimal(10, 2),
            "ratio": pl.Float32,
            "ok": pl.Boolean,
            "at": pl.Datetime("us", "UTC"),
            "code": pl.String,
            "note": pl.String,
        }
    )
    first = got.row(0, named=True)
    assert first["price"] == Decimal("12.50") and first["ok"] is True
    assert first["at"] == at.astimezone(dt.timezone.utc)
    assert got.row(1, named=True)["note"] == "" and got.row(1, named=True)["price"] is None


def test_a_table_without_key_is_exported_in_a_locale_independent_order(pg: "Pg") -> None:
    table = pg.table("name text, n int", ("b", 1), ("B", 2), ("a", 3), ("a", 0))
    got = pg.source(table).scan().collect()
    assert got.rows() == [("B", 2), ("a", 0), ("a", 3), ("b", 1)]  # byte order: uppercase first
    assert pg.source(table).version() == frame_digest(got)


def test_an_uncommitted_change_is_invisible_and_its_commit_changes_the_version(pg: "Pg") -> None:
    import psycopg

    table = pg.table("id int PRIMARY KEY, x float8", *[(i, i / 4) for i in range(50)])
    source = pg.source(table)
    before = source.version()
    with psycopg.connect(pg.dsn) as writer:  # a transaction left open
        writer.execute(f"UPDATE {table} SET x = -1 WHERE id = 7")
        assert source.version() == before
        writer.commit()
    assert source.version() != before


def test_version_is_served_from_the_cache_when_the_cluster_is_quiet(
    quiet_postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yumen.connectors._source_postgres as module

    monkeypatch.setenv(ENV, quiet_postgres_dsn)
    pg = Pg(quiet_postgres_dsn)
    table = pg.table("id int PRIMARY KEY", *[(i,) for i in range(10)])
    source = pg.source(table)
    real = module.digest_batches
    calls = []

    def counting(*args: object) -> str:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(module, "digest_batches", counting)
    try:
        source.version()
        calls.clear()
        source.version()
        assert not calls, "the version was recomputed on every call although nothing changed"
        pg.conn.execute(f"UPDATE {table} SET id = id + 100 WHERE id = 3")
        source.version()
        assert calls, "a write moved the WAL, yet the cached version was served"
    finally:
        pg.cleanup()


def test_order_by_option_sets_the_export_order(pg: "Pg") -> None:
    table = pg.table("id int PRIMARY KEY, rank int", (1, 30), (2, 10), (3, 20))
    got = pg.source(table, order_by=("rank",)).scan().collect()
    assert got.get_column("id").to_list() == [2, 3, 1]
    with pytest.raises(YumenError, match="order_by names column"):
        pg.source(table, order_by=("missing",)).check()


def test_a_literal_dsn_without_password_connects_through_a_passfile(
    pg: "Pg", tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(pg.dsn)
    password = params.pop("password")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{params['host']}:{params['port']}:{params['dbname']}:{params['user']}:{password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    table = pg.table("id int PRIMARY KEY", (1,))
    source = open_source(SourceSpec(kind="postgres", table=table, dsn=make_conninfo(**params)))
    assert source.scan().collect().height == 1

"""The chat path's writes, each with one statement built once per model and database, and its
reads, each compiled by the ORM once per database.

`Model.objects.create()` and `QuerySet.update()` build their statement anew for every call (the
query, its compiler, the SQL text): on the chat path that is most of the Python a write
transaction runs, and on SQLite it runs while the database's one write lock is held
(chatproject/db/sqlite3/base.py), so it bounds how many turns per second every process together
can start and finish (docs/serving.md).
`insert(instance)` writes the row `instance.save(force_insert=True)` would write, from a
statement made once: the values still go through each field's own `pre_save` (`auto_now_add`,
`auto_now`) and `get_db_prep_save`, so both databases store exactly what `save()` stores
(tests/test_db_prepared.py compares the rows). `update(model, where, values)` is
`model.objects.filter(**where).update(**values)` for equality conditions, the same way.

What it leaves out, so it is for the chat path's own models only: the `pre_save` / `post_save`
signals (the models it writes have no receivers; the tests fail if one is connected), models
with parents (multi-table inheritance) and fields with a database default or generated value.

Reads are the same story: building a queryset (`filter()`'s lookups, a subquery's aliases) and
compiling it cost 0.3-1.2 ms of Python a query on this project's machines, its SQL and rows
~0.05-0.15 ms. `Read` keeps the ORM as the author of the SQL: it builds and compiles the
queryset once per database, checks that the parameters the ORM bound are the ones it will bind
(so the statement means what the queryset means), and runs that SQL from then on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import connections, models, router
from django.db.backends.base.base import BaseDatabaseWrapper

M = TypeVar("M", bound=models.Model)


@dataclass(frozen=True)
class _Statement:
    sql: str
    fields: tuple[models.Field, ...]  # in the statement's order
    returns_pk: bool  # the primary key comes back (INSERT ... RETURNING)


def insert(instance: models.Model, *, using: str | None = None) -> models.Model:
    """Write the new `instance` as `save(force_insert=True)` would; returns it, saved.

    Related objects set on it must be saved already (their ids are read now).
    """
    model = type(instance)
    alias = using or router.db_for_write(model, instance=instance)
    connection = connections[alias]
    meta = model._meta
    instance._prepare_related_fields_for_save(operation_name="insert")
    statement = _statement(model, alias, pk_given=instance.pk is not None)
    values = [
        field.get_db_prep_save(field.pre_save(instance, True), connection)
        for field in statement.fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, values)
        if statement.returns_pk:
            (pk,) = connection.ops.fetch_returned_insert_columns(cursor, ())
            setattr(instance, meta.pk.attname, pk)
        elif instance.pk is None:
            pk = connection.ops.last_insert_id(cursor, meta.db_table, meta.pk.column)
            setattr(instance, meta.pk.attname, pk)
    instance._state.adding = False
    instance._state.db = alias
    return instance


@functools.cache
def _statement(model: type[models.Model], alias: str, *, pk_given: bool) -> _Statement:
    meta = model._meta
    if meta.parents:
        raise TypeError(f"insert() does not write models with parents ({meta.label})")
    fields = tuple(
        field for field in meta.local_concrete_fields if pk_given or field is not meta.auto_field
    )
    for field in fields:
        if field.has_db_default() or getattr(field, "generated", False):
            raise TypeError(f"insert() does not write {meta.label}.{field.name}'s default")
    connection = connections[alias]
    quote = connection.ops.quote_name
    returns_pk = not pk_given and connection.features.can_return_columns_from_insert
    returning = connection.ops.return_insert_columns([meta.pk])[0] if returns_pk else ""
    # Names from the model's own meta; every value a parameter.
    sql = "INSERT INTO {} ({}) VALUES ({}) {}".format(  # noqa: S608
        quote(meta.db_table),
        ", ".join(quote(field.column) for field in fields),
        ", ".join(["%s"] * len(fields)),
        returning,
    ).rstrip()
    return _Statement(sql=sql, fields=fields, returns_pk=returns_pk)


def update(
    model: type[models.Model],
    *,
    where: Mapping[str, Any],
    values: Mapping[str, Any],
    using: str | None = None,
) -> int:
    """`model.objects.filter(**where).update(**values)` for equality conditions on the model's
    own fields (names, not lookups); returns the number of rows updated."""
    alias = using or router.db_for_write(model)
    connection = connections[alias]
    sql, set_fields, where_fields = _update_statement(model, alias, tuple(values), tuple(where))
    params = [field.get_db_prep_save(values[field.name], connection) for field in set_fields] + [
        field.get_db_prep_value(where[field.name], connection, prepared=False)
        for field in where_fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@functools.cache
def _update_statement(
    model: type[models.Model], alias: str, set_names: tuple[str, ...], where_names: tuple[str, ...]
) -> tuple[str, list[models.Field], list[models.Field]]:
    meta = model._meta
    set_fields = [meta.get_field(name) for name in set_names]
    where_fields = [meta.get_field(name) for name in where_names]
    for field in (*set_fields, *where_fields):
        if not field.concrete or field.model is not model or field.many_to_many:
            raise TypeError(f"update() writes and matches {meta.label}'s own columns only")
    quote = connections[alias].ops.quote_name
    # Names from the model's own meta; every value a parameter.
    sql = "UPDATE {} SET {} WHERE {}".format(  # noqa: S608
        quote(meta.db_table),
        ", ".join(f"{quote(field.column)} = %s" for field in set_fields),
        " AND ".join(f"{quote(field.column)} = %s" for field in where_fields),
    )
    return sql, set_fields, where_fields


class Read(Generic[M]):
    """A read of `model` whose SQL the ORM writes once per database and shape.

    `build(*values, **shape)` returns the queryset as the ORM would run it; `params(connection,
    *values)` returns the parameters its SQL takes, in the order the ORM binds them, prepared for
    that database (`field.get_db_prep_value`). `shape` is what changes the SQL itself (a slice's
    bound is written into it): each shape is compiled once. The first call on a database compiles
    the queryset and raises `ValueError` if the ORM bound other parameters than `params` gives,
    so a statement never runs with values in the wrong places.

    Only for querysets whose SQL does not depend on the values (no `None`, no lists) and whose
    columns are plain columns of the model or its relations (`rows`) or the model's own
    (`instances`). Values come through the same converters the ORM applies (`from_db_value`, the
    backend's own).
    """

    def __init__(
        self,
        model: type[M],
        build: Callable[..., models.QuerySet],
        params: Callable[..., Sequence[Any]],
    ) -> None:
        self.model = model
        self._build = build
        self._params = params
        self._statements: dict[tuple, _ReadStatement] = {}

    def rows(self, *values: Any, using: str | None = None, **shape: Any) -> list[tuple]:
        """The rows, each column through its field's converters (from the database's form)."""
        statement, params, connection = self._prepare(values, shape, using)
        return [tuple(row) for row in self._fetch(statement, params, connection)]

    def instances(self, *values: Any, using: str | None = None, **shape: Any) -> list[M]:
        """The rows as `model` instances, as the ORM's own iteration makes them (the queryset
        must select `model`'s own columns)."""
        statement, params, connection = self._prepare(values, shape, using)
        if statement.attnames is None:
            raise TypeError(f"{self.model._meta.label} read: its queryset selects no instances")
        alias, attnames = connection.alias, statement.attnames
        return [
            self.model.from_db(alias, attnames, row)
            for row in self._fetch(statement, params, connection)
        ]

    @staticmethod
    def _fetch(statement: _ReadStatement, params: tuple, connection) -> list:
        with connection.cursor() as cursor:
            cursor.execute(statement.sql, params)
            rows = cursor.fetchall()
        if not statement.converters:
            return rows
        converted = []
        for row in rows:
            row = list(row)
            for position, (functions, expression) in statement.converters:
                value = row[position]
                for convert in functions:
                    value = convert(value, expression, connection)
                row[position] = value
            converted.append(row)
        return converted

    def _prepare(
        self, values: tuple, shape: dict, using: str | None
    ) -> tuple[_ReadStatement, tuple, BaseDatabaseWrapper]:
        alias = using or router.db_for_read(self.model)
        connection: BaseDatabaseWrapper = connections[alias]
        params = tuple(self._params(connection, *values))
        key = (alias, *sorted(shape.items()))
        statement = self._statements.get(key)
        if statement is None:
            queryset = self._build(*values, **shape)
            compiler = queryset.query.get_compiler(alias)
            sql, orm_params = compiler.as_sql()
            if tuple(orm_params) != params:
                raise ValueError(
                    f"{self.model._meta.label} read: the ORM binds {tuple(orm_params)!r}, "
                    f"params() gave {params!r}"
                )
            statement = self._statements[key] = _ReadStatement.of(queryset, compiler, sql)
        return statement, params, connection


@dataclass(frozen=True)
class _ReadStatement:
    sql: str
    attnames: tuple[str, ...] | None  # the model's columns, in the SELECT's order
    converters: tuple  # (position, (converter functions, expression)) of the columns that have any

    @classmethod
    def of(cls, queryset: models.QuerySet, compiler, sql: str) -> _ReadStatement:
        columns = [expression for expression, _, _ in compiler.select]
        model = queryset.model
        own = (
            queryset._iterable_class is models.query.ModelIterable
            and not compiler.klass_info.get("related_klass_infos")
            and not compiler.annotation_col_map
            and all(getattr(column, "target", None) is not None for column in columns)
            and all(column.target.model is model for column in columns)
        )
        attnames = tuple(column.target.attname for column in columns) if own else None
        return cls(sql, attnames, tuple(compiler.get_converters(columns).items()))

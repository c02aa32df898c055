"""The prediction log in PostgreSQL: the team stack's database ``predictions``, one row per served image.

Table ``predictions``: the record's fields (:mod:`pipeline.core.predictions`) as columns
(``time`` a ``timestamptz``, ``pixel_histogram`` an ``integer[]``) and ``pixels``, the image as 784
bytes when it was sampled (NULL otherwise). Created when first written to. Records read back are the
dictionaries the files hold, to the digit, so ``fmnist monitor`` computes the same figures from either.

One connection, opened at the first write and again after a failure: a database that went away
costs the records of the writes that failed (counted by the log), never a request.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from pipeline.core.predictions import FIELDS, stamp

SCHEMA = """
create table if not exists predictions (
    id bigserial primary key,
    time timestamptz not null,
    version text not null,
    class_index smallint not null,
    class_name text not null,
    top_probability double precision not null,
    pixel_mean double precision not null,
    pixel_std double precision not null,
    pixel_max double precision not null,
    pixel_histogram integer[] not null,
    pixels bytea
);
create index if not exists predictions_time on predictions (time);
"""


class Table:
    """The ``predictions`` table of the database at ``url``: the same methods as :class:`~pipeline.adapters.prediction_log.Files`."""

    def __init__(self, url: str):
        self.url, self._conn = url, None

    def _connect(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, connect_timeout=5, application_name="fmnist prediction log")
            with self._conn.transaction():
                self._conn.execute("select pg_advisory_xact_lock(7461) ; " + SCHEMA)  # one creator at a time
        return self._conn

    def write(self, when: datetime, records: list[dict], pixels: np.ndarray, keep: np.ndarray) -> None:
        """Insert ``records`` in one transaction, with the images ``keep`` indexes (``pixels``: (N, 28, 28) uint8)."""
        kept = set(keep.tolist())
        rows = [(when, *(r[f] for f in FIELDS[1:]), pixels[i].tobytes() if i in kept else None) for i, r in enumerate(records)]
        try:
            conn = self._connect()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    f"insert into predictions ({', '.join(FIELDS)}, pixels) values ({', '.join(['%s'] * (len(FIELDS) + 1))})",
                    rows,
                )
        except Exception:
            self.close()  # the next write connects again
            raise

    def _select(self, columns: str, since: datetime | None, until: datetime | None, more: str = "") -> list[tuple]:
        where = ["time >= %s" if since else "true", "time <= %s" if until else "true", more or "true"]
        args = [t for t in (since, until) if t]
        with self._connect().cursor() as cur:
            cur.execute(f"select {columns} from predictions where {' and '.join(where)} order by id", args)
            return cur.fetchall()

    def records(self, since: datetime | None = None, until: datetime | None = None) -> list[dict]:
        """Every record from ``since`` to ``until`` (both included, either open), oldest first."""
        return [_record(row) for row in self._select(", ".join(FIELDS), _ms(since), _ms(until, up=True))]

    def sampled(self, since: datetime | None = None, until: datetime | None = None) -> tuple[np.ndarray, list[dict]]:
        """The images kept from ``since`` to ``until``, as uint8 (N, 28, 28), and their records."""
        rows = self._select(f"{', '.join(FIELDS)}, pixels", _ms(since), _ms(until, up=True), "pixels is not null")
        images = np.frombuffer(b"".join(r[-1] for r in rows), np.uint8).reshape(-1, 28, 28)
        return images, [_record(r[:-1]) for r in rows]

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _ms(when: datetime | None, up: bool = False) -> datetime | None:
    """A bound at the milliseconds the records keep (``stamp``), so a window selects what the files would."""
    if when is None:
        return None
    when = when.astimezone(UTC)
    return when.replace(microsecond=when.microsecond // 1000 * 1000 + (999 if up else 0))


def _record(row: tuple) -> dict:
    record = dict(zip(FIELDS, row))
    record["time"] = stamp(record["time"])
    return record

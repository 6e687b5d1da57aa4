"""The catalog: SQLAlchemy Core tables in a SQLite file in the workspace (or any SQLAlchemy URL).

Images are keyed by content (sha256); ``image_paths`` keeps every place an image was found, so an
exact duplicate under two names is stored once and both paths are kept. Writes go through
``Catalog`` methods, one transaction per batch, so a run killed halfway leaves whole batches only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

from blurset.errors import BlursetError, ConflictError, InputError, ServiceError

metadata = MetaData()

sources = Table(
    "sources", metadata,
    Column("name", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("root", Text, nullable=False),
    Column("created_at", String, nullable=False),
    Column("updated_at", String, nullable=False),
)

images = Table(
    "images", metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the original bytes
    Column("format", String, nullable=False),
    Column("width", Integer, nullable=False),  # after EXIF orientation (as displayed)
    Column("height", Integer, nullable=False),
    Column("mode", String, nullable=False),
    Column("exif_orientation", Integer, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("object_path", Text, nullable=False),
    Column("phash", String(16), nullable=False),
    Column("thumb", LargeBinary, nullable=False),
    Column("created_at", String, nullable=False),
    Column("chroma", LargeBinary),  # 8×8 (Cb, Cr) grid of a colour image (dedup); None if grey
)

image_paths = Table(
    "image_paths", metadata,
    Column("source", String, ForeignKey("sources.name"), primary_key=True),
    Column("rel_path", Text, primary_key=True),
    Column("image_id", String(64), ForeignKey("images.id"), nullable=False, index=True),
    Column("signature", String, nullable=False),  # size and mtime of the image and its mask
    Column("blur_type", String),
    Column("excluded", Text),  # why this path is not a candidate any more (None = kept)
    Column("created_at", String, nullable=False),
)

masks = Table(
    "masks", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image_id", String(64), ForeignKey("images.id"), nullable=False, index=True),
    Column("source", String, nullable=False),
    Column("rel_path", Text, nullable=False),
    Column("kind", String, nullable=False),  # blur | saliency
    Column("origin", String, nullable=False),  # ground-truth | annotation | provenance
    Column("object_path", Text, nullable=False),  # blur: normalised 8-bit PNG, 255 = blurred
    Column("original_id", String(64), nullable=False),  # sha256 of the mask file as found
    Column("inverted", Boolean, nullable=False),
    Column("blur_degree", Float),
    Column("created_at", String, nullable=False),
    UniqueConstraint("image_id", "source", "rel_path", "kind", "original_id"),
)

quarantine = Table(
    "quarantine", metadata,
    Column("source", String, primary_key=True),
    Column("rel_path", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("signature", String, nullable=False),
    Column("object_path", Text),  # the bad bytes, kept in the store under their sha256
    Column("created_at", String, nullable=False),
)

dedup_runs = Table(
    "dedup_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reference", String, nullable=False),
    Column("threshold", Integer),
    Column("params", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("created_at", String, nullable=False),
)

duplicate_findings = Table(
    "duplicate_findings", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("dedup_runs.id"), nullable=False),
    Column("candidate_source", String, nullable=False),
    Column("candidate_path", Text, nullable=False),
    Column("candidate_id", String(64), nullable=False),
    Column("reference_source", String, nullable=False),
    Column("reference_path", Text, nullable=False),
    Column("reference_id", String(64), nullable=False),
    Column("distance", Integer, nullable=False),
    Column("method", String, nullable=False),
    Column("score", Float),
    Column("verdict", String, nullable=False),  # duplicate | uncertain | rejected
    UniqueConstraint("candidate_source", "candidate_path", "reference_source", "reference_path"),
    Column("decided", String),  # a person's decision that set the verdict (duplicate | distinct)
)

dedup_decisions = Table(  # a person's word on a pair of images; outlives every dedup run
    "dedup_decisions", metadata,
    Column("image_a", String(64), primary_key=True),  # the smaller of the two image ids
    Column("image_b", String(64), primary_key=True),
    Column("decision", String, nullable=False),  # duplicate | distinct
    Column("candidate", Text, nullable=False),  # source/path as the person named them
    Column("reference", Text, nullable=False),
    Column("decided_at", String, nullable=False),
)


annotation_tasks = Table(
    "annotation_tasks", metadata,
    Column("server", String, primary_key=True),  # Label Studio URL
    Column("project_id", Integer, primary_key=True),
    Column("task_id", Integer, primary_key=True),
    Column("project", String, nullable=False),  # project title
    Column("image_id", String(64), ForeignKey("images.id"), nullable=False, index=True),
    Column("source", String, nullable=False),
    Column("rel_path", Text, nullable=False),
    Column("prelabel", String),  # model_version of the prediction pushed with the task
    Column("status", String, nullable=False),  # pushed | annotated | rejected | deleted
    Column("current_annotation_id", Integer),
    Column("blur_type", String),  # what the annotator chose (never the model's guess)
    Column("blur_type_hint", String),  # the model's guess shown to the annotator, and ...
    Column("hint_version", String),  # ... the model_version that made it
    Column("resolved_annotation_id", Integer),  # `annotate resolve`: the release takes this one
    Column("annotators", Text),  # JSON list of everyone who submitted an annotation
    Column("agreement_iou", Float),  # mean pairwise IoU of the annotators' latest masks
    # the current annotation against the pre-label it started from (see labelling.pull)
    Column("prelabel_version", String),  # model_version of the prediction compared
    Column("prelabel_iou", Float),
    Column("prelabel_accepted", Boolean),  # IoU ≥ 0.99 or the very same RLE
    Column("pushed_at", String, nullable=False),
    Column("updated_at", String, nullable=False),
    UniqueConstraint("server", "project_id", "image_id"),
)

annotations = Table(
    "annotations", metadata,
    Column("server", String, primary_key=True),
    Column("project_id", Integer, primary_key=True),
    Column("annotation_id", Integer, primary_key=True),
    Column("task_id", Integer, nullable=False),
    Column("image_id", String(64), nullable=False, index=True),
    Column("annotator", String, nullable=False),
    Column("created_at", String),
    Column("updated_at", String),
    Column("lead_time", Float),
    Column("blur_type", String),  # the annotator's choice; None when rejected or not chosen
    Column("blur_type_hint", String),  # the model's guess it started from, and its model_version
    Column("hint_version", String),
    Column("rejected", String),  # the reject choice, or None
    Column("mask_object", Text),  # normalised 8-bit PNG in the object store, 255 = blurred
    Column("blur_degree", Float),
    Column("problem", Text),  # why this annotation's mask was not used (size mismatch, empty…)
    Column("snapshot", Text, nullable=False),  # the raw export file it was read from
)


releases = Table(
    "releases", metadata,
    Column("name", String, primary_key=True),
    Column("version", String, primary_key=True),  # semantic version, e.g. 1.0.0
    Column("path", Text, primary_key=True),  # where it was written (one version may be built twice)
    Column("parent", String),  # the version it is compared with in its changelog, or None
    Column("created_at", String, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CatalogUnusableError(BlursetError):
    """The catalog database cannot be opened or read (a damaged file, a full disk)."""


class CatalogUrlError(InputError):
    """The catalog URL is not one SQLAlchemy can use."""


class CatalogDriverMissingError(BlursetError, ImportError):
    """The database driver the catalog URL needs is not installed (psycopg for PostgreSQL)."""


class CatalogUnreachableError(ServiceError, ConnectionError):
    """The catalog's database server cannot be reached or refuses the login."""


class SourceConflictError(ConflictError, ValueError):
    """A source name is reused for another folder or kind."""


@dataclass(frozen=True)
class ImageRow:
    id: str
    format: str
    width: int
    height: int
    mode: str
    exif_orientation: int
    size_bytes: int
    object_path: str
    phash: str
    thumb: bytes
    chroma: bytes | None = None


@dataclass(frozen=True)
class PathRow:
    rel_path: str
    image_id: str
    signature: str
    blur_type: str | None


@dataclass(frozen=True)
class MaskRow:
    image_id: str
    rel_path: str
    kind: str
    origin: str
    object_path: str
    original_id: str
    inverted: bool
    blur_degree: float | None


@dataclass(frozen=True)
class QuarantineRow:
    rel_path: str
    reason: str
    signature: str
    object_path: str | None


@dataclass(frozen=True)
class AnnotatedMask:
    """The current mask of an annotated task (for a release)."""

    server: str
    project: str
    project_id: int
    task_id: int
    image_id: str
    source: str
    rel_path: str
    prelabel: str | None
    current_annotation_id: int
    blur_type: str | None  # the task's
    annotators: tuple[str, ...]  # everyone who submitted an annotation of the task
    agreement_iou: float | None
    updated_at: str
    mask_object: str
    blur_degree: float | None
    annotation_blur_type: str | None  # the current annotation's
    annotator: str  # who submitted the current annotation
    annotation_ids: tuple[int, ...]  # every annotation of the task, in id order


@dataclass(frozen=True)
class GroundTruthMask:
    id: int
    image_id: str
    source: str
    object_path: str
    blur_degree: float | None


@dataclass(frozen=True)
class SourcePath:
    """A path of an image in its source, with the image's size, hash and object."""

    source: str
    rel_path: str
    image_id: str
    blur_type: str | None
    excluded: str | None
    width: int
    height: int
    phash: str
    object_path: str


@dataclass(frozen=True)
class ReleaseCandidates:
    """Everything a release selection reads from the catalog, and the SQL that read it."""

    annotated: list[AnnotatedMask]  # by project, newest task first
    ground_truth: list[GroundTruthMask]  # by mask id
    rejected: set[str]  # image ids of tasks people rejected
    paths: dict[tuple[str, str], list[SourcePath]]  # (source, image id) → paths, by rel_path
    queries: dict[str, str]


@dataclass(frozen=True)
class PrelabelMeasurement:
    """What ``annotate pull`` measured of a task's model pre-label against the final mask."""

    image_id: str
    iou: float
    accepted: bool


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


POSTGRES_DRIVER = "postgresql+psycopg"  # psycopg 3: the ``postgres`` extra
CONNECT_TIMEOUT = 10  # seconds to reach a database server (a URL's own connect_timeout wins)
SCHEMA_LOCK = 0x626C7572736574  # "blurset": the advisory lock held while the schema is created


def engine_url(url: str) -> URL:
    """The SQLAlchemy URL of a catalog URL. ``postgresql://`` and ``postgres://`` (as psql, libpq
    and hosting services write them) use psycopg 3, the driver of ``blurset[postgres]``; a URL
    naming its driver (``postgresql+psycopg2://``) and any other URL are used as given."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CatalogUrlError(
            f"the catalog URL {_hide_password(url)!r} is not a database URL; write e.g. "
            "postgresql://user@host:5432/db or sqlite:////abs/path/catalog.sqlite") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=POSTGRES_DRIVER)
    return parsed


def _hide_password(url: str) -> str:
    return re.sub(r"(^|://)([^:/@]*):[^@/]*@", r"\1\2:***@", url)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _unreachable(url: URL, shown: str, error: BaseException) -> str:
    """What went wrong reaching the catalog's server, on one line, with the fix."""
    host, port = url.host or "localhost", url.port or 5432
    detail = _one_line(error)
    # libpq's "connection failed: connection to server at "h" (ip), port p failed: FATAL: …"
    detail = re.sub(r'^(connection failed: |connection is bad: )?(connection to server (at|on) '
                    r'"[^"]*"( \([^)]*\))?,( port \d+)? failed: )?', "", detail)
    detail = re.sub(r" Is the server running .*$", "", detail.replace("FATAL: ", "")).strip()
    low = detail.lower()
    if "password" in low:
        fix = (f"check the user ({url.username}) and the password in the catalog URL, or set "
               "$PGPASSWORD or ~/.pgpass")
    elif "database" in low and "does not exist" in low:
        fix = (f"create it (createdb -h {host} -p {port} -U {url.username} {url.database}) or "
               "name another in the catalog URL")
    elif "resolve" in low or "translate host name" in low:
        fix = "check the host name in --catalog-url (or $BLURSET_CATALOG_URL)"
    else:
        fix = ("is the server running there and accepting connections? Check --catalog-url "
               "(or $BLURSET_CATALOG_URL)")
    return f"cannot reach the catalog database at {host}:{port} ({shown}): {detail}; {fix}"


class Catalog:
    """Typed access to the catalog tables."""

    def __init__(self, url: str):
        self.url = url
        target = engine_url(url)
        shown = target.set(drivername=make_url(url).drivername).render_as_string(
            hide_password=True)
        options: dict[str, Any] = {}
        if target.get_backend_name() == "postgresql" and "connect_timeout" not in target.query:
            options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        try:
            self.engine: Engine = create_engine(target, **options)
        except ImportError as e:  # the dialect imports its driver here
            if target.get_backend_name() == "postgresql":
                fix = "pip install 'blurset[postgres]'"
            else:
                fix = (f"install the package that provides {e.name or 'it (see -v)'}; "
                       "blurset is tested with SQLite and PostgreSQL")
            raise CatalogDriverMissingError(
                f"the catalog {shown} needs the database driver {e.name or target.drivername}, "
                f"which is not installed: {fix}") from e
        except ArgumentError as e:  # an unknown database or driver name
            raise CatalogUrlError(f"the catalog URL {shown} cannot be used: {_one_line(e)}; "
                                  "blurset is tested with sqlite:/// and postgresql://") from None
        if self.engine.dialect.name == "sqlite":
            db = self.engine.url.database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            try:
                with self.engine.connect():
                    pass
            except OperationalError as e:
                self.engine.dispose()
                raise CatalogUnreachableError(_unreachable(target, shown, e.orig or e)) from e
        try:
            self._create_tables()
        except DatabaseError as e:
            self.engine.dispose()
            cause = getattr(e, "orig", None) or e
            if self.engine.dialect.name != "sqlite":
                hint = ""
                if "permission denied" in str(cause):
                    user = self.engine.url.username
                    hint = (f". The user {user} must be allowed to create tables: make it the "
                            f"database's owner (ALTER DATABASE {self.engine.url.database} OWNER "
                            f"TO {user}) or GRANT CREATE ON SCHEMA public TO {user}")
                raise CatalogUnusableError(f"the catalog {shown} cannot be used: "
                                           f"{_one_line(cause)}{hint}") from e
            raise CatalogUnusableError(
                f"the catalog {self.engine.url.database or shown} cannot be opened: "
                f"{cause}. If the disk is full, free space; if the file "
                "is damaged, restore it from a backup or move it away and ingest again (the "
                "objects/ folder is kept)") from None

    def _create_tables(self, attempts: int = 5) -> None:
        """Create what is missing.

        PostgreSQL: in one transaction that first takes an advisory lock, so commands started at
        once on an empty database queue up and the first creates the schema (creating a table
        at the same moment as another session otherwise fails in PostgreSQL's own catalog,
        ``pg_type_typname_nsp_index``); its DDL commits or rolls back as a whole.

        SQLite: two processes opening a new catalog at once can both see a table missing and
        both create it: the loser's "already exists" means the winner did the work, so look
        again (``create_all`` skips what exists)."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as c:
                c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
                metadata.create_all(c)
                self._add_missing_columns(c)
            return
        for attempt in range(attempts):
            try:
                metadata.create_all(self.engine)
                with self.engine.begin() as c:
                    self._add_missing_columns(c)
                return
            except DatabaseError as e:
                lost_race = "already exists" in str(e) or "duplicate column" in str(e)
                if not lost_race or attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _add_missing_columns(self, c: Connection) -> None:
        """Add the nullable columns a newer blurset declares to a catalog made by an older one.

        ``create_all`` creates missing tables only; an existing table keeps its columns, so a
        column added later (e.g. ``annotation_tasks.prelabel_iou``) is added here with
        ``ALTER TABLE … ADD COLUMN`` (SQLite and PostgreSQL alike). Only nullable columns are
        ever added this way; anything else needs a real migration.
        """
        insp = inspect(c)
        for table in metadata.sorted_tables:
            have = {col["name"] for col in insp.get_columns(table.name)}
            for col in table.columns:
                if col.name in have:
                    continue
                if not col.nullable:
                    raise RuntimeError(f"catalog table {table.name} lacks the required column "
                                       f"{col.name}; it needs a migration")
                kind = col.type.compile(dialect=self.engine.dialect)
                c.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}'))

    def close(self) -> None:
        self.engine.dispose()

    # -- sources -----------------------------------------------------------------------------
    def register_source(self, name: str, kind: str, root: str) -> None:
        """Add a source, or confirm that NAME is the same folder and kind as before."""
        with self.engine.begin() as c:
            row = c.execute(select(sources).where(sources.c.name == name)).mappings().first()
            if row is None:
                c.execute(insert(sources).values(name=name, kind=kind, root=root,
                                                 created_at=now(), updated_at=now()))
            elif row["kind"] != kind or row["root"] != root:
                raise SourceConflictError(
                    f"source {name!r} was ingested as kind {row['kind']} from {row['root']}; "
                    f"now asked for kind {kind} from {root}. Use another --name for another folder.")
            else:
                c.execute(update(sources).where(sources.c.name == name).values(updated_at=now()))

    def source(self, name: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(sources).where(sources.c.name == name)).mappings().first()
            return dict(row) if row else None

    def list_sources(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(select(sources).order_by(sources.c.name)).mappings()]

    def known_signatures(self, source: str) -> dict[str, str]:
        """rel_path → signature for every path of a source already ingested or quarantined."""
        with self.engine.connect() as c:
            known = dict(c.execute(select(image_paths.c.rel_path, image_paths.c.signature)
                                   .where(image_paths.c.source == source)).all())
            known.update(c.execute(select(quarantine.c.rel_path, quarantine.c.signature)
                                   .where(quarantine.c.source == source)).all())
        return known

    # -- ingest ------------------------------------------------------------------------------
    def record_batch(self, source: str, imgs: Sequence[ImageRow], paths: Sequence[PathRow],
                     mask_rows: Sequence[MaskRow], bad: Sequence[QuarantineRow]) -> None:
        """Write one batch's results in a single transaction (all or nothing)."""
        ts = now()
        with self.engine.begin() as c:
            for im in imgs:
                c.execute(self._insert_ignore(images).values(**asdict(im), created_at=ts))
            for p in paths:
                c.execute(delete(quarantine).where(quarantine.c.source == source,
                                                   quarantine.c.rel_path == p.rel_path))
                values = dict(asdict(p), source=source, created_at=ts)
                stmt = self._upsert(image_paths, values, ["source", "rel_path"],
                                    ["image_id", "signature", "blur_type"])
                c.execute(stmt)
            for m in mask_rows:
                c.execute(self._insert_ignore(masks).values(**asdict(m), source=source,
                                                            created_at=ts))
            for q in bad:
                values = dict(asdict(q), source=source, created_at=ts)
                c.execute(self._upsert(quarantine, values, ["source", "rel_path"],
                                       ["reason", "signature", "object_path", "created_at"]))

    def _insert_ignore(self, table: Table):
        if self.engine.dialect.name == "sqlite":
            return sqlite_insert(table).prefix_with("OR IGNORE")
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert(table).on_conflict_do_nothing()

    def _upsert(self, table: Table, values: dict, keys: list[str], changing: list[str]):
        if self.engine.dialect.name == "sqlite":
            stmt = sqlite_insert(table).values(**values)
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert
            stmt = pg_insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=keys,
                                          set_={k: values[k] for k in changing})

    # -- queries -----------------------------------------------------------------------------
    def quarantined(self, source: str | None = None) -> list[dict]:
        q = select(quarantine).order_by(quarantine.c.source, quarantine.c.rel_path)
        if source:
            q = q.where(quarantine.c.source == source)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def hash_rows(self, source_names: Iterable[str] | None = None) -> list[dict]:
        """Every (source, path) with its image's hashes, in a stable order."""
        q = (select(image_paths.c.source, image_paths.c.rel_path, image_paths.c.image_id,
                    images.c.phash, images.c.thumb, images.c.chroma)
             .join(images, images.c.id == image_paths.c.image_id)
             .order_by(image_paths.c.source, image_paths.c.rel_path))
        if source_names is not None:
            q = q.where(image_paths.c.source.in_(list(source_names)))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def counts(self) -> dict[str, int]:
        from sqlalchemy import func
        with self.engine.connect() as c:
            def n(t: Table, *where) -> int:
                return c.execute(select(func.count()).select_from(t).where(*where)).scalar_one()
            return {
                "sources": n(sources),
                "images": n(images),
                "paths": n(image_paths),
                "excluded": n(image_paths, image_paths.c.excluded.is_not(None)),
                "blur_masks": n(masks, masks.c.kind == "blur"),
                "saliency_masks": n(masks, masks.c.kind == "saliency"),
                "quarantined": n(quarantine),
                "duplicates": n(duplicate_findings, duplicate_findings.c.verdict == "duplicate"),
            }

    def path_counts(self) -> dict[str, int]:
        from sqlalchemy import func
        with self.engine.connect() as c:
            return dict(c.execute(select(image_paths.c.source, func.count())
                                  .group_by(image_paths.c.source)).all())

    # -- dedup -------------------------------------------------------------------------------
    def replace_findings(self, reference: str, threshold: int | None, params: dict,
                         summary: dict, findings: Sequence[dict],
                         exclusions: dict[tuple[str, str], str]) -> int:
        """Store a dedup run: its findings replace the previous ones, exclusions are recomputed.

        One transaction, so a killed run leaves the previous findings in place.
        """
        with self.engine.begin() as c:
            run_id = c.execute(insert(dedup_runs).values(
                reference=reference, threshold=threshold, params=json.dumps(params, sort_keys=True),
                summary=json.dumps(summary, sort_keys=True), created_at=now())).inserted_primary_key[0]
            c.execute(delete(duplicate_findings))
            if findings:
                c.execute(insert(duplicate_findings), [dict(f, run_id=run_id) for f in findings])
            c.execute(update(image_paths).where(image_paths.c.excluded.like("duplicate%"))
                      .values(excluded=None))
            for (src, path), reason in exclusions.items():
                c.execute(update(image_paths).where(image_paths.c.source == src,
                                                    image_paths.c.rel_path == path)
                          .values(excluded=reason))
        return run_id

    def findings(self, verdict: str | None = "duplicate", *,
                 open_only: bool = False) -> list[dict]:
        """The last run's pairs with this verdict (all if None).

        ``open_only``: only the pairs whose candidate path is still kept, i.e. the ones a
        person's decision would change (an uncertain pair whose candidate a verified duplicate
        already excludes changes nothing, whatever a person says)."""
        f = duplicate_findings.c
        q = select(duplicate_findings).order_by(f.candidate_source, f.candidate_path,
                                                f.reference_source, f.reference_path)
        if verdict:
            q = q.where(f.verdict == verdict)
        if open_only:
            q = q.join(image_paths, (image_paths.c.source == f.candidate_source)
                       & (image_paths.c.rel_path == f.candidate_path)
                       ).where(image_paths.c.excluded.is_(None))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def record_decisions(self, rows: Sequence[dict]) -> None:
        """Record people's decisions (``image_a``, ``image_b``, ``decision``, ``candidate``,
        ``reference``); a later decision on the same pair replaces the earlier one."""
        ts = now()
        with self.engine.begin() as c:
            for r in rows:
                a, b = sorted((r["image_a"], r["image_b"]))
                values = dict(r, image_a=a, image_b=b, decided_at=ts)
                c.execute(self._upsert(dedup_decisions, values, ["image_a", "image_b"],
                                       ["decision", "candidate", "reference", "decided_at"]))

    def decisions(self) -> dict[tuple[str, str], dict]:
        """(smaller image id, larger image id) → the decision row."""
        with self.engine.connect() as c:
            return {(r["image_a"], r["image_b"]): dict(r)
                    for r in c.execute(select(dedup_decisions)).mappings()}

    def last_dedup_run(self) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(dedup_runs).order_by(dedup_runs.c.id.desc())).mappings().first()
            return dict(row) if row else None

    def excluded_paths(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(
                select(image_paths.c.source, image_paths.c.rel_path, image_paths.c.excluded)
                .where(image_paths.c.excluded.is_not(None))
                .order_by(image_paths.c.source, image_paths.c.rel_path)).mappings()]

    def image(self, image_id: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(images).where(images.c.id == image_id)).mappings().first()
            return dict(row) if row else None

    def blur_masks(self, image_id: str) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(
                select(masks).where(masks.c.image_id == image_id, masks.c.kind == "blur"))
                .mappings()]

    def saliency_masks(self, image_id: str) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(
                select(masks).where(masks.c.image_id == image_id, masks.c.kind == "saliency"))
                .mappings()]

    def paths_of(self, source: str) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(
                select(image_paths).where(image_paths.c.source == source)
                .order_by(image_paths.c.rel_path)).mappings()]

    # -- annotation --------------------------------------------------------------------------
    def push_candidates(self, sources: Sequence[str], server: str, project_id: int) -> list[dict]:
        """Images of ``sources`` that passed dedup (not excluded) and have no task in the project.

        One row per image (the first path in source order); each with its size, object path and
        ground-truth blur mask if any.
        """
        tasked = select(annotation_tasks.c.image_id).where(
            annotation_tasks.c.server == server, annotation_tasks.c.project_id == project_id)
        q = (select(image_paths.c.source, image_paths.c.rel_path, image_paths.c.image_id,
                    image_paths.c.blur_type, images.c.width, images.c.height,
                    images.c.object_path, images.c.exif_orientation)
             .join(images, images.c.id == image_paths.c.image_id)
             .where(image_paths.c.source.in_(list(sources)), image_paths.c.excluded.is_(None),
                    image_paths.c.image_id.not_in(tasked))
             .order_by(image_paths.c.source, image_paths.c.rel_path))
        rank = {s: i for i, s in enumerate(sources)}
        seen: set[str] = set()
        out = []
        with self.engine.connect() as c:
            rows = sorted(c.execute(q).mappings(), key=lambda r: (rank[r["source"]], r["rel_path"]))
            for r in rows:
                if r["image_id"] in seen:
                    continue
                seen.add(r["image_id"])
                gt = c.execute(select(masks.c.object_path).where(
                    masks.c.image_id == r["image_id"], masks.c.kind == "blur",
                    masks.c.origin == "ground-truth").order_by(masks.c.id)).first()
                out.append(dict(r, gt_mask=gt[0] if gt else None))
        return out

    def record_tasks(self, rows: Sequence[dict]) -> None:
        ts = now()
        with self.engine.begin() as c:
            for r in rows:
                c.execute(self._insert_ignore(annotation_tasks).values(
                    **r, status="pushed", pushed_at=ts, updated_at=ts))

    def set_missing_prelabels(self, server: str, project_id: int, task_ids: Sequence[int],
                              model_version: str) -> None:
        """Name ``model_version`` as the pre-label of those tasks that were pushed without one."""
        if not task_ids:
            return
        with self.engine.begin() as c:
            c.execute(update(annotation_tasks).where(
                annotation_tasks.c.server == server, annotation_tasks.c.project_id == project_id,
                annotation_tasks.c.task_id.in_(list(task_ids)),
                annotation_tasks.c.prelabel.is_(None))
                .values(prelabel=model_version, updated_at=now()))

    def tasks(self, server: str, project_id: int) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(
                select(annotation_tasks).where(annotation_tasks.c.server == server,
                                               annotation_tasks.c.project_id == project_id)
                .order_by(annotation_tasks.c.task_id)).mappings()]

    def task_projects(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(
                select(annotation_tasks.c.server, annotation_tasks.c.project,
                       annotation_tasks.c.project_id).distinct()).mappings()]

    def record_pull(self, server: str, project_id: int, task_updates: Sequence[dict],
                    annotation_rows: Sequence[dict], mask_rows: Sequence[MaskRow],
                    sources_of: dict[str, tuple[str, str]]) -> None:
        """One transaction: annotation rows upserted, task status updated, current masks linked."""
        ts = now()
        with self.engine.begin() as c:
            for a in annotation_rows:
                values = dict(a, server=server, project_id=project_id)
                c.execute(self._upsert(annotations, values,
                                       ["server", "project_id", "annotation_id"],
                                       [k for k in values if k not in
                                        ("server", "project_id", "annotation_id")]))
            for m in mask_rows:
                src, _rel = sources_of[m.image_id]
                c.execute(self._insert_ignore(masks).values(**asdict(m), source=src,
                                                            created_at=ts))
            for u in task_updates:
                c.execute(update(annotation_tasks).where(
                    annotation_tasks.c.server == server,
                    annotation_tasks.c.project_id == project_id,
                    annotation_tasks.c.task_id == u["task_id"])
                    .values(**{k: v for k, v in u.items() if k != "task_id"}, updated_at=ts))

    def resolve_task(self, server: str, project_id: int, task_id: int,
                     annotation_id: int | None) -> None:
        """Record which annotation of a task the release takes (None: the most recent again);
        the next pull makes it the task's current one."""
        with self.engine.begin() as c:
            c.execute(update(annotation_tasks).where(
                annotation_tasks.c.server == server, annotation_tasks.c.project_id == project_id,
                annotation_tasks.c.task_id == task_id)
                .values(resolved_annotation_id=annotation_id, updated_at=now()))

    def hint_agreement(self, image_ids: Sequence[str]) -> tuple[int, int]:
        """Of these images' tasks where a person chose a blur type and the model had guessed
        one: how many, and in how many the two agree."""
        t = annotation_tasks
        q = select(t.c.blur_type, t.c.blur_type_hint).where(
            t.c.image_id.in_(list(image_ids)), t.c.blur_type.is_not(None),
            t.c.blur_type_hint.is_not(None))
        with self.engine.connect() as c:
            pairs = list(c.execute(q))
        return len(pairs), sum(b == h for b, h in pairs)

    def annotations_of(self, server: str, project_id: int) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(
                select(annotations).where(annotations.c.server == server,
                                          annotations.c.project_id == project_id)
                .order_by(annotations.c.annotation_id)).mappings()]

    # -- releases ----------------------------------------------------------------------------
    def record_release(self, name: str, version: str, path: str, parent: str | None,
                       manifest_sha256: str, rows: int, created_at: str | None = None) -> None:
        """Remember a release written at ``path`` (a rebuild at the same path replaces the row)."""
        values = {"name": name, "version": version, "path": path, "parent": parent,
                  "created_at": created_at or now(), "manifest_sha256": manifest_sha256,
                  "rows": rows}
        with self.engine.begin() as c:
            c.execute(self._upsert(releases, values, ["name", "version", "path"],
                                   ["parent", "created_at", "manifest_sha256", "rows"]))

    def releases(self, name: str | None = None) -> list[dict]:
        q = select(releases).order_by(releases.c.name, releases.c.created_at, releases.c.version)
        if name is not None:
            q = q.where(releases.c.name == name)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def release_candidates(self, sources: Sequence[str],
                           projects: Sequence[str]) -> ReleaseCandidates:
        """The current masks of the annotated tasks of ``projects``, the ground-truth blur masks
        of ``sources``, the rejected images and every path, for a release selection."""
        from sqlalchemy import and_
        t, a = annotation_tasks, annotations
        ann_q = (select(t.c.server, t.c.project, t.c.project_id, t.c.task_id, t.c.image_id,
                        t.c.source, t.c.rel_path, t.c.prelabel, t.c.current_annotation_id,
                        t.c.blur_type, t.c.annotators, t.c.agreement_iou, t.c.updated_at,
                        a.c.mask_object, a.c.blur_degree,
                        a.c.blur_type.label("annotation_blur_type"), a.c.annotator)
                 .join(a, and_(a.c.server == t.c.server, a.c.project_id == t.c.project_id,
                               a.c.annotation_id == t.c.current_annotation_id))
                 .where(t.c.status == "annotated", a.c.mask_object.is_not(None),
                        t.c.project.in_(list(projects)))
                 .order_by(t.c.project, t.c.updated_at.desc(), t.c.task_id))
        ids_q = (select(a.c.server, a.c.project_id, a.c.task_id, a.c.annotation_id)
                 .join(t, and_(a.c.server == t.c.server, a.c.project_id == t.c.project_id,
                               a.c.task_id == t.c.task_id))
                 .where(t.c.project.in_(list(projects))).order_by(a.c.annotation_id))
        gt_q = (select(masks.c.id, masks.c.image_id, masks.c.source, masks.c.object_path,
                       masks.c.blur_degree)
                .where(masks.c.kind == "blur", masks.c.origin == "ground-truth",
                       masks.c.source.in_(list(sources)))
                .order_by(masks.c.id))
        rejected_q = select(t.c.image_id).where(t.c.status == "rejected").distinct()
        paths_q = (select(image_paths.c.source, image_paths.c.rel_path, image_paths.c.image_id,
                          image_paths.c.blur_type, image_paths.c.excluded, images.c.width,
                          images.c.height, images.c.phash, images.c.object_path)
                   .join(images, images.c.id == image_paths.c.image_id)
                   .order_by(image_paths.c.source, image_paths.c.rel_path))
        with self.engine.connect() as c:
            ann_rows = [dict(r) for r in c.execute(ann_q).mappings()]
            ids_of: dict[tuple, list[int]] = {}
            for r in c.execute(ids_q).mappings():
                key = (r["server"], r["project_id"], r["task_id"])
                ids_of.setdefault(key, []).append(r["annotation_id"])
            gt = [GroundTruthMask(**r) for r in c.execute(gt_q).mappings()]
            rejected = {r[0] for r in c.execute(rejected_q)}
            paths: dict[tuple[str, str], list[SourcePath]] = {}
            for r in c.execute(paths_q).mappings():
                paths.setdefault((r["source"], r["image_id"]), []).append(SourcePath(**r))
        annotated = [AnnotatedMask(**dict(
            r, annotators=tuple(json.loads(r["annotators"] or "[]")),
            annotation_ids=tuple(ids_of.get((r["server"], r["project_id"], r["task_id"]), ()))))
            for r in ann_rows]

        def sql(q: Any) -> str:
            return str(q.compile(self.engine, compile_kwargs={"literal_binds": True}))
        queries = {"annotated": sql(ann_q), "annotation_ids": sql(ids_q),
                   "ground_truth": sql(gt_q), "rejected": sql(rejected_q), "paths": sql(paths_q)}
        return ReleaseCandidates(annotated, gt, rejected, paths, queries)

    def prelabel_measurements(self, image_ids: Sequence[str]) -> list[PrelabelMeasurement]:
        """The pre-label IoU and acceptance ``annotate pull`` measured for these images' tasks,
        by image id."""
        q = (select(annotation_tasks.c.image_id, annotation_tasks.c.prelabel_iou,
                    annotation_tasks.c.prelabel_accepted)
             .where(annotation_tasks.c.image_id.in_(list(image_ids)),
                    annotation_tasks.c.prelabel_iou.is_not(None))
             .order_by(annotation_tasks.c.image_id))
        with self.engine.connect() as c:
            return [PrelabelMeasurement(image_id, float(iou), bool(ok))
                    for image_id, iou, ok in c.execute(q)]

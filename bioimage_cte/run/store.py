"""A local results database, so that ranking a zoo again scores only what is new or changed.

One SQLite file holds one row per (model package, target dataset, estimator + settings,
bioimage-cte version): the model's per-image scores, its true metrics when the target has
labels, whether scoring succeeded (``"ok"``) or not (``"failed"``, with the error) and when, and
the clean masks, for the estimators and predicted Dice that compare every model's masks once all models of a
target ran (:func:`encode_masks`).
The key is content-addressed (:func:`result_key`), so moving a folder does not invalidate
anything, and changing a model's weights, an image, a label or a setting does.

The file uses SQLite's write-ahead log: every :meth:`ResultStore.put` is one transaction, and a
process killed in the middle of a run (even with SIGKILL) leaves every row it had committed
intact. Several threads or processes on one machine may read and write the same file at once;
do not put it on a network file system (SQLite's WAL needs shared memory between the writers).

Planning and running a zoo-wide run over this database is :mod:`bioimage_cte.run.jobs`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import sqlite3
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bioimage_cte.base.errors import BioimageCteError
from bioimage_cte.base.version import __version__
from bioimage_cte.zoo.sources import RDF_NAMES

__all__ = [
    "MAX_STORED_MASK_PIXELS",
    "SCHEMA_VERSION",
    "InvalidStoreError",
    "ResultStore",
    "ScoreRecord",
    "decode_masks",
    "default_store_path",
    "encode_masks",
    "package_fingerprint",
    "result_key",
]

#: Version of the table layout; a file written by a newer layout is refused, not misread.
SCHEMA_VERSION = 1
#: Most mask pixels one record keeps (16 MiB as bits, before compression); beyond, the masks are not stored and
#: the cross-model signals of that target fall back as in a run with too few models.
MAX_STORED_MASK_PIXELS = 2**27

_BUSY_TIMEOUT_S = 60.0  # writers wait for each other (one put is milliseconds) instead of failing
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS results (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        dataset TEXT NOT NULL,
        estimator TEXT NOT NULL,
        settings TEXT NOT NULL,
        version TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
        created TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS results_by_dataset ON results (dataset, estimator)",
)
_ANNOTATION_NAMESPACE, _ANNOTATION_KEY = "bioimage_cte", "transferability"


class InvalidStoreError(BioimageCteError, ValueError):
    """The results database cannot be used (not SQLite, or written by a newer bioimage-cte)."""


def default_store_path() -> Path:
    """Where the results database lives unless the caller says otherwise: ``~/.cache/bioimage-cte/results.sqlite``."""
    return Path.home() / ".cache" / "bioimage-cte" / "results.sqlite"


def _canonical(value: Any) -> str:
    # sorted keys and no spaces: equal settings give equal text whatever order they were built in
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def result_key(
    model: str,
    dataset: str,
    estimator: str,
    settings: Mapping[str, Any],
    *,
    version: str = __version__,
) -> str:
    """The store key of one model scored on one dataset: sha256 over everything that changes the scores.

    Parameters
    ----------
    model : str
        The package's content fingerprint (:func:`package_fingerprint`).
    dataset : str
        The target images' fingerprint (:func:`bioimage_cte.predict.images.dataset_fingerprint`).
    estimator : str
        Estimator name, e.g. ``"cte-dropout"``.
    settings : mapping
        The estimator's settings plus the run options that change scores (seed, axes, layer, ...);
        JSON-serialisable, key order does not matter.
    version : str
        bioimage-cte version (default: this one); a new version scores everything again.

    Returns
    -------
    str
        64 hexadecimal digits.

    Examples
    --------
    >>> a = result_key("m", "d", "cte-dropout", {"p": 0.2, "seed": 0})
    >>> a == result_key("m", "d", "cte-dropout", {"seed": 0, "p": 0.2})
    True
    >>> a == result_key("m", "d", "cte-dropout", {"p": 0.3, "seed": 0})
    False
    """
    payload = _canonical({"model": model, "dataset": dataset, "estimator": estimator, "settings": dict(settings),
                          "version": version})
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ScoreRecord:
    """What the store keeps for one model on one dataset.

    Attributes
    ----------
    model, dataset, estimator, settings, version
        The parts of the key (see :func:`result_key`); :attr:`key` recomputes it.
    status : {"ok", "failed"}
        Whether the model could be scored.
    name, source : str
        The model's display name and source when it was scored (not part of the key).
    sha256 : str or None
        sha256 of the package file when it was scored (:func:`bioimage_cte.run.ranking.file_sha256`).
    images : tuple of str
        File names of the images, in scoring order.
    per_image : dict
        Estimator name -> one score per image (``nan`` where an image had nothing to score).
    true : dict
        True metric (dice, f1, map) -> one value per image; empty without labels.
    failures : dict
        Estimator name -> (stage, reason): why it could not run for this model (e.g. no grey-box weights).
    layer : str or None
        The layer a grey-box estimator perturbed.
    foreground : list of float
        Fraction of the pixels the clean prediction marks as foreground, per image.
    error : str or None
        One-line reason when ``status == "failed"``.
    stage : str or None
        Where a failed model dropped out (:class:`bioimage_cte.cte.outcomes.Stage`), when ``status == "failed"``.
    weights : dict or None
        The weights the model ran with (format, access, reason; :class:`bioimage_cte.zoo.weights.WeightChoice`).
    kind : str or None
        The :class:`bioimage_cte.cte.outcomes.FailureKind` of a failed model, when ``status == "failed"``.
    rdf_format : dict or None
        Which format version of the description ran (:class:`bioimage_cte.zoo.models.FormatUse`).
    masks : str or None
        The clean masks, one per image (:func:`encode_masks`); None when the run kept none, ``""`` when they were
        larger than :data:`MAX_STORED_MASK_PIXELS`.
    volumetric : bool
        The model predicted volumes (the Dice calibration saw 2D only).
    seconds : float
        Scoring time.
    created : str
        When the record was made, ISO 8601 in UTC.
    """

    model: str
    dataset: str
    estimator: str
    settings: dict[str, Any]
    version: str
    status: Literal["ok", "failed"]
    name: str = ""
    source: str = ""
    sha256: str | None = None
    images: tuple[str, ...] = ()
    per_image: dict[str, list[float]] = field(default_factory=dict)
    true: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    layer: str | None = None
    error: str | None = None
    seconds: float = 0.0
    created: str = ""
    foreground: list[float] = field(default_factory=list)
    stage: str | None = None
    weights: dict[str, str] | None = None
    kind: str | None = None
    rdf_format: dict[str, Any] | None = None
    masks: str | None = None
    volumetric: bool = False

    @property
    def key(self) -> str:
        """The store key this record belongs under."""
        return result_key(self.model, self.dataset, self.estimator, self.settings, version=self.version)


def encode_masks(masks: list[np.ndarray] | None) -> str | None:
    """Boolean masks as one compact text for a record: their shapes, then their bits, compressed.

    None for no masks, ``""`` when they hold more than :data:`MAX_STORED_MASK_PIXELS` pixels.

    Examples
    --------
    >>> masks = [np.eye(3, dtype=bool), np.zeros((2, 4, 5), dtype=bool)]
    >>> back = decode_masks(encode_masks(masks))
    >>> [m.shape for m in back], bool((back[0] == masks[0]).all())
    ([(3, 3), (2, 4, 5)], True)
    """
    if masks is None:
        return None
    if sum(m.size for m in masks) > MAX_STORED_MASK_PIXELS:
        return ""
    shapes = json.dumps([list(m.shape) for m in masks]).encode()
    bits = np.packbits(np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])) if masks else b""
    payload = len(shapes).to_bytes(4, "little") + shapes + bytes(bits)
    return base64.b64encode(zlib.compress(payload, 6)).decode("ascii")


def decode_masks(text: str | None) -> list[np.ndarray] | None:
    """The masks :func:`encode_masks` wrote; None when there were none or they were not stored."""
    if not text:
        return None
    payload = zlib.decompress(base64.b64decode(text))
    n = int.from_bytes(payload[:4], "little")
    shapes = [tuple(s) for s in json.loads(payload[4:4 + n])]
    flat = np.unpackbits(np.frombuffer(payload[4 + n:], dtype=np.uint8)).astype(bool)
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[start:start + size].reshape(shape))
        start += size
    return out


def now() -> str:
    """The current time, ISO 8601 in UTC, as records carry it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class ResultStore:
    """The results database: one SQLite file, safe for concurrent use by threads and processes on one machine.

    Every call opens its own short-lived connection, so one ``ResultStore`` may be shared by
    threads and pickled to worker processes (it holds only the path).

    Parameters
    ----------
    path : str or Path, optional
        The SQLite file; created with its folder if missing. Default: :func:`default_store_path`.

    Raises
    ------
    InvalidStoreError
        The file is not an SQLite database, or was written by a newer bioimage-cte.

    Examples
    --------
    >>> import tempfile
    >>> store = ResultStore(Path(tempfile.mkdtemp()) / "results.sqlite")
    >>> record = ScoreRecord("m", "d", "cte-dropout", {"p": 0.2}, "0.1.0", "ok", per_image={"cte-dropout": [0.9]})
    >>> store.put(record.key, record)
    >>> store.get(record.key).per_image
    {'cte-dropout': [0.9]}
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as conn:
                # WAL: readers never block the writer, and a killed writer loses only its open transaction
                conn.execute("PRAGMA journal_mode=WAL")
                with self._transaction(conn):  # two processes opening a new file at once create it once
                    found = conn.execute("PRAGMA user_version").fetchone()[0]
                    if found > SCHEMA_VERSION:
                        raise InvalidStoreError(
                            f"results database {self.path} was written by a newer bioimage-cte (layout {found}, "
                            f"this version reads {SCHEMA_VERSION}); upgrade bioimage-cte or pass another store path")
                    if found < SCHEMA_VERSION:
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise InvalidStoreError(f"{self.path} is not a bioimage-cte results database ({e}); delete it or pass "
                                    "another store path") from e

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), never opened behind our back
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            # NORMAL is crash-safe in WAL mode: a killed process never corrupts the file; only a power cut
            # may drop the last commits
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking on an upgrade
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def get(self, key: str) -> ScoreRecord | None:
        """The record stored under ``key``, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT record FROM results WHERE key = ?", (key,)).fetchone()
        return None if row is None else _decode(row[0])

    def put(self, key: str, record: ScoreRecord) -> None:
        """Store ``record`` under ``key`` in one transaction, replacing what was there.

        Raises
        ------
        ValueError
            ``key`` is not ``record.key`` (the record would be found under the wrong settings).
        """
        if key != record.key:
            raise ValueError(f"key {key[:12]}... does not match the record's own key {record.key[:12]}...; "
                             "pass record.key")
        row = (key, record.model, record.dataset, record.estimator, _canonical(record.settings), record.version,
               record.status, record.created or now(), _encode(record))
        with self._connect() as conn, self._transaction(conn):
            conn.execute("INSERT OR REPLACE INTO results (key, model, dataset, estimator, settings, version, status, "
                         "created, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def delete(self, key: str) -> bool:
        """Forget one record (e.g. to force it to be scored again); True if there was one."""
        with self._connect() as conn, self._transaction(conn):
            return conn.execute("DELETE FROM results WHERE key = ?", (key,)).rowcount > 0

    def records(
        self,
        *,
        model: str | None = None,
        dataset: str | None = None,
        estimator: str | None = None,
        status: Literal["ok", "failed"] | None = None,
    ) -> dict[str, ScoreRecord]:
        """Every stored record matching all the given filters, key -> record, oldest first."""
        filters = {"model": model, "dataset": dataset, "estimator": estimator, "status": status}
        where = [f"{column} = ?" for column, value in filters.items() if value is not None]
        sql = "SELECT key, record FROM results" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY created, key", [v for v in filters.values() if v is not None])
            return {key: _decode(text) for key, text in rows}

    def __len__(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def _encode(record: ScoreRecord) -> str:
    # NaN (an image with nothing to score) is kept as JSON's NaN token, which json.loads reads back
    return json.dumps(asdict(record), separators=(",", ":"))


def _decode(text: str) -> ScoreRecord:
    data = json.loads(text)
    data["images"] = tuple(data.get("images", ()))
    # (stage, reason) pairs come back from JSON as lists; a record of 0.1 kept the reason alone
    data["failures"] = {k: ("estimator", v) if isinstance(v, str) else tuple(v)
                        for k, v in data.get("failures", {}).items()}
    known = {f.name for f in fields(ScoreRecord)}  # a field added by a later version is left out, not an error
    return ScoreRecord(**{k: v for k, v in data.items() if k in known})


# --- what a model and a target are, by content -------------------------------------------------------------------


def _rdf_fingerprint(raw: bytes) -> bytes:
    """The RDF's values without bioimage-cte's own transferability entries, as canonical bytes.

    Writing a ranking back onto a package (bioimage_cte.outputs.annotate) rewrites its rdf.yaml; that
    must not look like a new model, or every annotated model would be scored again.
    """
    from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml

    try:  # parsed as YAML 1.2, as bioimageio.spec and bioimage_cte.outputs.annotate read it
        data = load_untrusted_yaml(raw, where="rdf.yaml")
    # an unreadable RDF, or one refused as an alias bomb or oversized, is fingerprinted by its bytes;
    # loading it will report the problem
    except Exception:
        return raw
    config = data.get("config") if isinstance(data, dict) else None
    ours = config.get(_ANNOTATION_NAMESPACE) if isinstance(config, dict) else None
    if isinstance(ours, dict):
        ours.pop(_ANNOTATION_KEY, None)
    return _canonical(data).encode()


def _add_file(digest: Any, name: str, data: bytes) -> None:
    content = _rdf_fingerprint(data) if name in RDF_NAMES else data
    # name and length first, so the boundary between two files is unambiguous
    digest.update(f"{name}\0{len(content)}\0".encode())
    digest.update(content)


def package_fingerprint(location: str) -> str:
    """sha256 over a model package's files, ignoring the transferability entries bioimage-cte writes onto it.

    Any change to the weights, the RDF or another file of the package changes the fingerprint;
    annotating the package with a ranking (:mod:`bioimage_cte.outputs.annotate`) does not.

    Parameters
    ----------
    location : str
        :attr:`ModelSource.location`: a package .zip, an rdf.yaml (its folder is the package) or a URL.

    Returns
    -------
    str
        64 hexadecimal digits; for a URL, ``"url:<location>"`` (URLs are not downloaded, so a URL
        is trusted to name one immutable version, as the zoo's versioned URLs do). A file that is
        not a valid zip is fingerprinted by its bytes, so a broken package still gets a key.
    """
    path = Path(location)
    if not path.exists():
        return f"url:{location}"
    digest = hashlib.sha256()
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if not info.is_dir():
                        _add_file(digest, info.filename, zf.read(info))
            return digest.hexdigest()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            from bioimage_cte.zoo.sources import file_sha256

            return str(file_sha256(path))
    from bioimage_cte.base.fileutils import is_temporary

    folder = path if path.is_dir() else path.parent
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = file.relative_to(folder).as_posix()
        # annotate's backups of the rdf.yaml, and the temporary file of a write-back killed mid-write, are not
        # part of the package: counting them would score an unchanged model again
        if ".bak" in file.suffixes or any(is_temporary(part) for part in file.relative_to(folder).parts):
            continue
        _add_file(digest, relative, file.read_bytes())
    return digest.hexdigest()

"""Ingest stage: decode, check, hash and store a batch of source files (no Prefect here).

Every file ends either ingested (original bytes in the object store, a catalog row with its hashes)
or quarantined with a reason (its bytes kept in the quarantine store). Nothing raises out of
``ingest_batch`` for a bad file, so one bad file never stops a run.
"""

from __future__ import annotations

import errno
import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from blurset.errors import BlursetError
from blurset.pipeline.catalog import (
    Catalog,
    ImageRow,
    MaskRow,
    PathRow,
    QuarantineRow,
    SourceConflictError,
)
from blurset.pipeline.stages.hashing import hash_opened
from blurset.pipeline.stages.sources import (
    OrphanMask,
    RemoteSource,
    Scan,
    SourceItem,
    SourceRoot,
    file_signature,
    read_file,
)
from blurset.pipeline.store import (
    FORMAT_EXTENSIONS,
    ObjectStore,
    RemoteObjectStore,
    extension_for,
    sha256_hex,
)

Store = ObjectStore | RemoteObjectStore

DEFAULT_MAX_PIXELS = 100_000_000
EXIF_ORIENTATION = 0x0112
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


class BadFile(BlursetError):
    """A file that cannot be ingested; the message is the quarantine reason."""


class StorageFullError(BlursetError):
    """The disk (or the catalog's database) is full: nothing more can be stored until space is
    freed; every batch finished before is kept."""


def storage_full(e: BaseException, where: str | os.PathLike) -> StorageFullError | None:
    """A :class:`StorageFullError` naming ``where`` if ``e`` says the disk or the database is
    full (``ENOSPC``, ``EDQUOT``, SQLite's "database or disk is full"), else None."""
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "database or disk is full" in str(e)
    if not full:
        return None
    return StorageFullError(f"no space left writing to {where}: free space there and run the "
                            "ingest again (every batch finished before is kept)")


@dataclass
class BatchResult:
    images: list[ImageRow] = field(default_factory=list)
    paths: list[PathRow] = field(default_factory=list)
    masks: list[MaskRow] = field(default_factory=list)
    quarantined: list[QuarantineRow] = field(default_factory=list)


def item_signature(root: SourceRoot, item: SourceItem) -> str:
    """Changes whenever the image file or its mask file changes."""
    sig = file_signature(root, item.rel_path)
    if item.mask_path:
        sig += "|" + file_signature(root, item.mask_path)
    return sig


PIXEL_LIMIT = "pixel limit"  # how a quarantine reason for too many pixels begins


def limited_signature(signature: str, max_pixels: int) -> str:
    """The signature kept for a file quarantined for the pixel limit: it holds the limit, so a
    run with another ``--max-pixels`` checks the file again."""
    return f"{signature}|max_pixels={max_pixels}"


def is_unchanged(known: str | None, signature: str, max_pixels: int,
                 pixel_limited: bool = False) -> bool:
    """Whether an item ingested or quarantined before (``known``: its stored signature) can be
    left alone: same bytes, and for one quarantined for the pixel limit, the same limit."""
    if pixel_limited:
        return known == limited_signature(signature, max_pixels)
    return known == signature


def items_to_ingest(catalog: Catalog, source: str, root: SourceRoot, items: Sequence[SourceItem],
                    max_pixels: int) -> list[SourceItem]:
    """The items not ingested or quarantined before with the same bytes (and, for one
    quarantined for the pixel limit, under the same limit)."""
    known = catalog.known_signatures(source)
    limited = {q["rel_path"] for q in catalog.quarantined(source)
               if q["reason"].startswith(PIXEL_LIMIT)}
    return [it for it in items
            if not is_unchanged(known.get(it.rel_path), item_signature(root, it), max_pixels,
                                it.rel_path in limited)]


REBIND_SAMPLE = 8  # files read (and hashed) to tell that another root holds the same source


class SourceRootMismatch(SourceConflictError):
    """A source is ingested from another root whose files differ from the ones recorded."""


def bind_source(catalog: Catalog, name: str, kind: str, root: SourceRoot, scan: Scan) -> str | None:
    """Register source ``name`` at ``root``, or accept ``root`` when the source was recorded at
    another root (a teammate's mount of the same files, or their copy on S3) that holds the
    same files: every recorded image path is there, with the recorded size, and a sample of
    :data:`REBIND_SAMPLE` of them has the recorded content. The catalog keeps the first root;
    returns it when it differs from ``root`` (else None). A different kind, or different files,
    is refused (:class:`SourceConflictError`, :class:`SourceRootMismatch`): nothing is written."""
    row = catalog.source(name)
    if row is None or row["root"] == str(root) or row["kind"] != kind:
        catalog.register_source(name, kind, str(root))  # new, the same, or the kind refused
        return None
    recorded = catalog.paths_of(name)
    here = {i.rel_path for i in scan.items}
    absent = [r["rel_path"] for r in recorded if r["rel_path"] not in here]
    refuse = (f"source {name!r} was ingested from {row['root']}; {root} does not hold the same "
              "files ({}). Use another --name for another set of files")
    if absent:
        raise SourceRootMismatch(refuse.format(
            f"{len(absent)} of its {len(recorded)} images are not there, e.g. {absent[0]}"))
    for r in recorded:
        size, now = r["signature"].split(":", 1)[0], file_signature(root, r["rel_path"])
        if size != now.split(":", 1)[0]:
            raise SourceRootMismatch(refuse.format(
                f"{r['rel_path']} is {now.split(':', 1)[0]} bytes there, {size} recorded"))
    step = max(1, len(recorded) // REBIND_SAMPLE)
    for r in recorded[::step][:REBIND_SAMPLE]:
        if sha256_hex(read_file(root, r["rel_path"])) != r["image_id"]:
            raise SourceRootMismatch(refuse.format(
                f"{r['rel_path']} has other content there than the image recorded"))
    catalog.register_source(name, kind, row["root"])  # the recorded root, touched
    return row["root"]


@dataclass(frozen=True)
class Opened:
    image: Image.Image
    format: str
    width: int  # as displayed, after EXIF orientation
    height: int
    orientation: int


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable), read without decoding pixels.

    ``Image.getexif()`` would load a whole PNG to look for a late eXIf chunk, and a failed load
    leaves a half-decoded image that no longer raises: only the header's EXIF is read here.
    """
    try:
        if im.format == "TIFF":
            value = im.getexif().get(EXIF_ORIENTATION, 1)
        elif raw := im.info.get("exif"):
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(EXIF_ORIENTATION, 1)
        else:
            return 1
        value = int(value or 1)
    except (*DECODE_ERRORS, TypeError, KeyError):
        return 1
    return value if 1 <= value <= 8 else 1


def open_checked(data: bytes, max_pixels: int) -> Opened:
    """Open image bytes lazily and check them at the boundary; raises BadFile with the reason."""
    if not data:
        raise BadFile("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadFile("not an image: Pillow cannot identify the file's format") from None
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1))} pixels" if found else "its size"
        raise BadFile(f"{PIXEL_LIMIT}: {size} exceeds the limit of {max_pixels} (a decompression "
                      "bomb or a huge scan; raise --max-pixels to accept it)") from None
    except DECODE_ERRORS as e:
        raise BadFile(f"corrupt image header: {e}") from None
    if im.format not in FORMAT_EXTENSIONS:
        raise BadFile(f"unsupported format {im.format}; supported: {', '.join(sorted(FORMAT_EXTENSIONS))}")
    w, h = im.size
    if w <= 0 or h <= 0:
        raise BadFile(f"zero-size image ({w}×{h})")
    if w * h > max_pixels:
        raise BadFile(f"{PIXEL_LIMIT}: {w}×{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                      "(a decompression bomb or a huge scan; raise --max-pixels to accept it)")
    orientation = exif_orientation(im)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return Opened(im, im.format, w, h, orientation)


def normalise_blur_mask(data: bytes, inverted: bool) -> np.ndarray:
    """Any mask file → uint8 0/255 with 255 = blurred (RGBA/P masks read with convert("L"))."""
    with Image.open(io.BytesIO(data)) as m:
        if m.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(m, dtype=np.float64)
            arr = arr * (255.0 / 65535.0) if arr.max() > 255 else arr
        else:
            arr = np.asarray(m.convert("L"), dtype=np.float64)
    binary = np.where(arr >= 128, 255, 0).astype(np.uint8)
    return 255 - binary if inverted else binary


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _quarantine(result: BatchResult, qstore: Store, rel: str, reason: str, sig: str,
                data: bytes | None) -> None:
    obj = qstore.put(data, Path(rel).suffix.lower() or ".bin") if data else None
    result.quarantined.append(QuarantineRow(rel_path=rel, reason=reason, signature=sig,
                                            object_path=obj))


def _ingest_mask(root: SourceRoot, item: SourceItem, image_id: str, size: tuple[int, int],
                 store: Store, qstore: Store, max_pixels: int,
                 result: BatchResult) -> None:
    """Store the mask beside an image; the caller calls this only for items that have one."""
    if not (item.mask_path and item.mask_kind):
        raise ValueError(f"{item.rel_path} has no mask to ingest")  # a caller's bug, not input
    sig = file_signature(root, item.mask_path)
    data = read_file(root, item.mask_path)
    try:
        opened = open_checked(data, max_pixels)
        if (opened.width, opened.height) != size:
            raise BadFile(f"mask size {opened.width}×{opened.height} differs from its image "
                          f"{item.rel_path} ({size[0]}×{size[1]})")
        if item.mask_kind == "blur":
            arr = normalise_blur_mask(data, item.mask_inverted)
            png = encode_png(arr)
            obj = store.put(png, ".png")
            degree = float(arr.mean() / 255.0)
        else:
            opened.image.load()
            obj = store.put(data, extension_for(opened.format))
            degree = None
    except BadFile as e:
        _quarantine(result, qstore, item.mask_path, str(e), sig, data)
        return
    except DECODE_ERRORS as e:
        _quarantine(result, qstore, item.mask_path, f"corrupt or truncated mask: {e}", sig, data)
        return
    result.masks.append(MaskRow(
        image_id=image_id, rel_path=item.mask_path, kind=item.mask_kind,
        origin="ground-truth" if item.mask_kind == "blur" else "provenance",
        object_path=obj, original_id=sha256_hex(data), inverted=item.mask_inverted,
        blur_degree=degree))


def ingest_item(root: SourceRoot, item: SourceItem, store: Store, qstore: Store,
                max_pixels: int, result: BatchResult) -> None:
    sig = item_signature(root, item)
    data = read_file(root, item.rel_path)
    try:
        opened = open_checked(data, max_pixels)
        mode = opened.image.mode  # as the file holds it (hashing drafts a reduced decode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            hashes = hash_opened(opened.image)
    except BadFile as e:
        if str(e).startswith(PIXEL_LIMIT):
            sig = limited_signature(sig, max_pixels)
        _quarantine(result, qstore, item.rel_path, str(e), sig, data)
        return
    except DECODE_ERRORS as e:
        _quarantine(result, qstore, item.rel_path,
                    f"corrupt or truncated {opened.format} data: {e}", sig, data)
        return
    image_id = sha256_hex(data)
    obj = store.put(data, extension_for(opened.format), digest=image_id)
    result.images.append(ImageRow(
        id=image_id, format=opened.format, width=opened.width, height=opened.height,
        mode=mode, exif_orientation=opened.orientation, size_bytes=len(data),
        object_path=obj, phash=f"{hashes.phash:016x}", thumb=hashes.thumb_bytes(),
        chroma=hashes.chroma_bytes()))
    result.paths.append(PathRow(rel_path=item.rel_path, image_id=image_id, signature=sig,
                                blur_type=item.blur_type))
    if item.mask_path:
        _ingest_mask(root, item, image_id, (opened.width, opened.height), store, qstore,
                     max_pixels, result)


def _store(where: Store | str | os.PathLike) -> Store:
    return where if isinstance(where, ObjectStore | RemoteObjectStore) else ObjectStore(Path(where))


def _root(root: SourceRoot | str | os.PathLike) -> SourceRoot:
    return root if isinstance(root, RemoteSource) else Path(root)


def ingest_batch(root: SourceRoot, items: Sequence[SourceItem], objects: Store | Path,
                 quarantine: Store | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> BatchResult:
    """Ingest a batch of files of one source (a folder or a :class:`RemoteSource`) into the
    ``objects`` store (a store, or a local store's folder). Bad files are quarantined, never
    raised."""
    store, qstore = _store(objects), _store(quarantine)
    # Pillow refuses images over twice this limit before we can: keep its guard above ours.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
    result = BatchResult()
    for item in items:
        try:
            ingest_item(_root(root), item, store, qstore, max_pixels, result)
        except FileNotFoundError as e:
            result.quarantined.append(QuarantineRow(
                rel_path=item.rel_path, reason=f"file vanished during ingest: {e}",
                signature="missing", object_path=None))
    return result


def quarantine_orphans(root: SourceRoot, orphans: Sequence[OrphanMask],
                       quarantine: Store | Path) -> BatchResult:
    """Masks with no image of their stem: kept in quarantine with a reason, never ingested."""
    qstore, root = _store(quarantine), _root(root)
    result = BatchResult()
    for o in orphans:
        _quarantine(result, qstore, o.rel_path,
                    f"{o.kind} mask without an image of the same name",
                    file_signature(root, o.rel_path), read_file(root, o.rel_path))
    return result

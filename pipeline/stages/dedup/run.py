"""Dedup stage around the catalog: exact duplicates by sha256, near duplicates by
:func:`blurset.pipeline.stages.dedup.find_duplicates`, findings expanded to source paths,
people's decisions applied, exclusions decided; reports, the contact sheet, and recording a
person's decision on a pair (:func:`record_decisions`).

Only ``duplicate`` findings exclude a path: an ``uncertain`` pair stays in until a person
decides it, and a decision overrides the verifier in every later run. No Prefect here;
``blurset.pipeline.flows.dedup_flow`` wraps :func:`run_dedup`.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from blurset.errors import InputError, NotFoundError
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.stages.dedup import HashRecord, Match, Matches, find_duplicates
from blurset.pipeline.stages.dedup.search import DEFAULT_THRESHOLD, is_exact, resolve_index
from blurset.pipeline.stages.hashing import ImageHashes
from blurset.pipeline.store import ObjectStore

REPORT_COLUMNS = ["candidate_source", "candidate_path", "reference_source", "reference_path",
                  "distance", "method"]


DECISIONS = ("duplicate", "distinct")


class UnknownSourceError(NotFoundError, ValueError):
    """The reference source named for dedup was never ingested."""


class UnknownImageError(NotFoundError):
    """A decision names an image that is not in the catalog."""


class DecisionError(InputError):
    """A decision (or a decisions CSV) is malformed."""


@dataclass(frozen=True)
class DedupOutcome:
    findings: list[dict]
    exclusions: dict[tuple[str, str], str]
    summary: dict


def _order_sources(catalog: Catalog) -> list[str]:
    return [s["name"] for s in sorted(catalog.list_sources(), key=lambda s: (s["created_at"], s["name"]))]


def run_dedup(catalog: Catalog, reference: str, threshold: int | None = None,
              progress: Callable[[int, int], None] | None = None, *,
              executor: Executor | None = None, index: str = "auto",
              verify: str = "all") -> DedupOutcome:
    """Find every candidate path that duplicates the reference source or another candidate;
    ``executor`` (e.g. a Dask cluster's) verifies the pairs instead of local processes.
    ``verify="first"`` verifies each candidate's pairs only until its first duplicate (people's
    decisions taken into account): the same paths are excluded, fewer pairs are listed."""
    order = _order_sources(catalog)
    if reference not in order:
        raise UnknownSourceError(
            f"reference source {reference!r} is not in the catalog; ingested sources: "
            f"{', '.join(order) or 'none'}. Run `blurset ingest --name {reference} …` first.")
    rank = {name: i for i, name in enumerate(order)}
    rows = sorted(catalog.hash_rows(), key=lambda r: (rank[r["source"]], r["rel_path"]))

    paths_by_id: dict[str, list[tuple[str, str]]] = defaultdict(list)
    hashes_by_id: dict[str, ImageHashes] = {}
    for r in rows:
        paths_by_id[r["image_id"]].append((r["source"], r["rel_path"]))
        if r["image_id"] not in hashes_by_id:
            hashes_by_id[r["image_id"]] = ImageHashes.from_stored(int(r["phash"], 16), r["thumb"],
                                                                r.get("chroma"))

    ref_ids = [i for i, ps in paths_by_id.items() if any(s == reference for s, _ in ps)]
    ref_set = set(ref_ids)
    cand_ids = [i for i in paths_by_id if i not in ref_set]

    findings: list[dict] = []
    exclusions: dict[tuple[str, str], str] = {}

    def add(cand: tuple[str, str], cand_id: str, ref: tuple[str, str], ref_id: str,
            distance: int, method: str, score: float | None, verdict: str,
            decided: str | None = None) -> None:
        findings.append({"candidate_source": cand[0], "candidate_path": cand[1],
                         "candidate_id": cand_id, "reference_source": ref[0],
                         "reference_path": ref[1], "reference_id": ref_id, "distance": distance,
                         "method": method, "score": score, "verdict": verdict,
                         "decided": decided})
        if verdict == "duplicate":
            kind = "reference" if ref[0] == reference else "candidate"
            reason = f"duplicate of {kind} {ref[0]}/{ref[1]} ({method})"
            if cand not in exclusions or kind == "reference":
                exclusions[cand] = reason

    # Exact duplicates: one content id found under several paths.
    for image_id, ps in paths_by_id.items():
        refs = [p for p in ps if p[0] == reference]
        others = [p for p in ps if p[0] != reference]
        anchor = refs[0] if refs else (others[0] if others else None)
        for p in others:
            if p != anchor:
                add(p, image_id, anchor, image_id, 0, "sha256", 1.0, "duplicate")

    # Near duplicates among distinct contents; a person's decision overrides the verifier.
    decided = catalog.decisions()
    matches: Matches = find_duplicates(
        [HashRecord(i, hashes_by_id[i]) for i in ref_ids],
        [HashRecord(i, hashes_by_id[i]) for i in cand_ids],
        threshold=threshold, progress=progress, executor=executor, index=index,
        verify_pairs=verify, decided={pair: d["decision"] for pair, d in decided.items()})
    verified = len(matches)  # before the pairs only a person found are added
    # A person's "duplicate" adds a pair the search did not find.
    position = {image_id: i for i, image_id in enumerate([*ref_ids, *cand_ids])}
    found = {tuple(sorted((m.candidate, m.reference))) for m in matches}
    for (a, b), d in sorted(decided.items()):
        if (a, b) in found or d["decision"] != "duplicate" or a not in position or b not in position:
            continue
        later, earlier = (a, b) if position[a] > position[b] else (b, a)
        if later in ref_set:  # two references: never compared
            continue
        matches.append(Match(later, earlier, -1, "person", 1.0, "duplicate"))
    for m in matches:
        ref_path = _primary(paths_by_id[m.reference], reference)
        d = decided.get(tuple(sorted((m.candidate, m.reference))))
        verdict, method = m.verdict, m.method
        if d is not None:
            verdict = "duplicate" if d["decision"] == "duplicate" else "rejected"
            method = m.method if m.method == "person" else m.method + "+person"
        for p in paths_by_id[m.candidate]:
            if p[0] != reference:
                add(p, m.candidate, ref_path, m.reference, max(m.distance, 0), method, m.score,
                    verdict, d["decision"] if d is not None else None)

    radius = DEFAULT_THRESHOLD if threshold is None else threshold
    resolved = resolve_index(index, len(ref_ids) + len(cand_ids), radius)
    by_method = Counter(f["method"] for f in findings if f["verdict"] == "duplicate")
    summary = {
        "reference": reference,
        "reference_images": len(ref_ids),
        "candidate_images": len(cand_ids),
        "duplicates": sum(by_method.values()),
        "rejected_lookalikes": sum(1 for f in findings if f["verdict"] == "rejected"),
        "uncertain": sum(1 for f in findings if f["verdict"] == "uncertain"),
        # the uncertain pairs a person's decision would change: their candidate is still kept
        "uncertain_open": sum(1 for f in findings if f["verdict"] == "uncertain"
                              and (f["candidate_source"], f["candidate_path"]) not in exclusions),
        "decided": sum(1 for f in findings if f["decided"] is not None),
        "excluded_paths": len(exclusions),
        "excluded_as_reference_duplicates": sum(1 for r in exclusions.values() if "of reference" in r),
        "by_method": dict(sorted(by_method.items())),
        "index": resolved,
        # False: the block index beyond its exact radius may have missed pairs far apart
        "search_exact": is_exact(resolved, radius),
        # "first": each candidate's pairs verified until its first duplicate, the rest skipped
        "verify": verify,
        "pairs_proposed": matches.proposed,
        "pairs_verified": verified,
    }
    return DedupOutcome(findings, exclusions, summary)


def _primary(paths: Sequence[tuple[str, str]], reference: str) -> tuple[str, str]:
    refs = [p for p in paths if p[0] == reference]
    return refs[0] if refs else paths[0]


def report(findings: Sequence[dict], fmt: str) -> str:
    """The `blurset dups` output: one row per duplicate pair, paths relative to the ingested folder."""
    rows = [{k: f[k] for k in REPORT_COLUMNS} for f in findings]
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def contact_sheet(catalog: Catalog, store: ObjectStore, findings: Sequence[dict], out: Path,
                  tile: int = 160, limit: int = 120, kind: str = "duplicate") -> Path:
    """A PNG with one row per pair found: candidate | reference, captioned, for a person to eyeball."""
    shown = list(findings)[:limit]
    caption_h, pad = 28, 6
    width = 2 * tile + 3 * pad
    row_h = tile + caption_h + pad
    sheet = Image.new("RGB", (max(width, 760), max(1, len(shown)) * row_h + pad + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), f"{len(findings)} {kind} pairs (candidate | reference)"
              + (f", first {limit} shown" if len(findings) > limit else ""), fill="black")
    for i, f in enumerate(shown):
        y = 20 + i * row_h
        for j, key in enumerate(("candidate_id", "reference_id")):
            row = catalog.image(f[key])
            if row is None:
                continue
            with Image.open(io.BytesIO(store.read(row["object_path"]))) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((tile, tile))
                sheet.paste(im, (pad + j * (tile + pad), y))
        draw.text((pad, y + tile + 2),
                  f"{f['candidate_source']}/{f['candidate_path']}  ~  "
                  f"{f['reference_source']}/{f['reference_path']}", fill="black")
        draw.text((pad, y + tile + 14), f"{f['method']}  distance={f['distance']}  "
                  f"score={f['score']}", fill="gray")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


# --------------------------------------------------------------------------------------------
# A person's decisions


@dataclass(frozen=True)
class Decision:
    """A person's word on one pair: ``candidate`` and ``reference`` as ``source/path`` (or an
    image id), ``decision`` ``duplicate`` or ``distinct``."""

    candidate: str
    reference: str
    decision: str


def _resolve(catalog: Catalog, name: str) -> str:
    """``source/path`` (as ``blurset dups`` prints it) or an image id → the image id."""
    if (len(name) == 64 and all(ch in "0123456789abcdef" for ch in name)
            and catalog.image(name) is not None):
        return name
    source, _, rel = name.partition("/")
    for p in catalog.paths_of(source) if rel else []:
        if p["rel_path"] == rel:
            return p["image_id"]
    raise UnknownImageError(
        f"no image {name!r} in the catalog; name it as SOURCE/PATH the way `blurset dups` "
        f"prints it (candidate_source/candidate_path), or by its sha256 image id")


def record_decisions(catalog: Catalog, decisions: Sequence[Decision]) -> int:
    """Record each decision (all or none); the next ``dedup`` run applies them. Returns the
    number recorded."""
    rows = []
    for d in decisions:
        if d.decision not in DECISIONS:
            raise DecisionError(f"decision {d.decision!r} for {d.candidate} ~ {d.reference} "
                                f"is neither of {', '.join(DECISIONS)}")
        a, b = _resolve(catalog, d.candidate), _resolve(catalog, d.reference)
        if a == b:
            raise DecisionError(f"{d.candidate} and {d.reference} are the same image (sha256 "
                                f"{a[:12]}…): byte-identical files are duplicates by definition")
        rows.append({"image_a": a, "image_b": b, "decision": d.decision,
                     "candidate": d.candidate, "reference": d.reference})
    catalog.record_decisions(rows)
    return len(rows)


def read_decisions_csv(path: Path) -> list[Decision]:
    """Decisions from a CSV: either ``candidate,reference,decision`` columns, or the report of
    ``blurset dups`` (``candidate_source,candidate_path,reference_source,reference_path``) with
    a ``decision`` column added."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        report_form = {"candidate_source", "candidate_path", "reference_source",
                       "reference_path", "decision"} <= columns
        if not report_form and not {"candidate", "reference", "decision"} <= columns:
            raise DecisionError(
                f"{path}: columns {sorted(columns)} hold no decisions; give candidate,reference,"
                f"decision or the `blurset dups` columns plus a decision column")
        out = []
        for line, row in enumerate(reader, start=2):
            decision = (row.get("decision") or "").strip().lower()
            if not decision:  # an undecided row of the report: skipped
                continue
            if report_form:
                cand = f"{row['candidate_source']}/{row['candidate_path']}"
                ref = f"{row['reference_source']}/{row['reference_path']}"
            else:
                cand, ref = row["candidate"].strip(), row["reference"].strip()
            if decision not in DECISIONS:
                raise DecisionError(f"{path}:{line}: decision {decision!r} is neither of "
                                    f"{', '.join(DECISIONS)}")
            out.append(Decision(cand, ref, decision))
    return out

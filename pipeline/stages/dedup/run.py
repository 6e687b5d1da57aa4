"""Dedup stage around the catalog: exact duplicates by sha256, near duplicates by ``blurset.pipeline.stages.dedup.search``,
findings expanded to source paths, exclusions decided, reports and the contact sheet.

No Prefect here; ``blurset.pipeline.flows.dedup_flow`` wraps ``run_dedup``.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from blurset.errors import NotFoundError
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.stages.dedup.search import HashRecord, Match, find_duplicates
from blurset.pipeline.stages.hashing import ImageHashes
from blurset.pipeline.store import ObjectStore

REPORT_COLUMNS = ["candidate_source", "candidate_path", "reference_source", "reference_path",
                  "distance", "method"]


class UnknownSourceError(NotFoundError, ValueError):
    """The reference source named for dedup was never ingested."""


@dataclass(frozen=True)
class DedupOutcome:
    findings: list[dict]
    exclusions: dict[tuple[str, str], str]
    summary: dict


def _order_sources(catalog: Catalog) -> list[str]:
    return [s["name"] for s in sorted(catalog.list_sources(), key=lambda s: (s["created_at"], s["name"]))]


def run_dedup(catalog: Catalog, reference: str, threshold: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> DedupOutcome:
    """Find every candidate path that duplicates the reference source or another candidate."""
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
            hashes_by_id[r["image_id"]] = ImageHashes.from_stored(int(r["phash"], 16), r["thumb"])

    ref_ids = [i for i, ps in paths_by_id.items() if any(s == reference for s, _ in ps)]
    ref_set = set(ref_ids)
    cand_ids = [i for i in paths_by_id if i not in ref_set]

    findings: list[dict] = []
    exclusions: dict[tuple[str, str], str] = {}

    def add(cand: tuple[str, str], cand_id: str, ref: tuple[str, str], ref_id: str,
            distance: int, method: str, score: float | None, verdict: str) -> None:
        findings.append({"candidate_source": cand[0], "candidate_path": cand[1], "candidate_id": cand_id,
                             "reference_source": ref[0], "reference_path": ref[1], "reference_id": ref_id,
                             "distance": distance, "method": method, "score": score, "verdict": verdict})
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

    # Near duplicates among distinct contents.
    matches: list[Match] = find_duplicates(
        [HashRecord(i, hashes_by_id[i]) for i in ref_ids],
        [HashRecord(i, hashes_by_id[i]) for i in cand_ids],
        threshold=threshold, progress=progress)
    for m in matches:
        ref_path = _primary(paths_by_id[m.reference], reference)
        for p in paths_by_id[m.candidate]:
            if p[0] != reference:
                add(p, m.candidate, ref_path, m.reference, m.distance, m.method, m.score, m.verdict)

    by_method = Counter(f["method"] for f in findings if f["verdict"] == "duplicate")
    summary = {
        "reference": reference,
        "reference_images": len(ref_ids),
        "candidate_images": len(cand_ids),
        "duplicates": sum(by_method.values()),
        "rejected_lookalikes": sum(1 for f in findings if f["verdict"] == "rejected"),
        "excluded_paths": len(exclusions),
        "excluded_as_reference_duplicates": sum(1 for r in exclusions.values() if "of reference" in r),
        "by_method": dict(sorted(by_method.items())),
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
                  tile: int = 160, limit: int = 120) -> Path:
    """A PNG with one row per pair found: candidate | reference, captioned, for a person to eyeball."""
    shown = list(findings)[:limit]
    caption_h, pad = 28, 6
    width = 2 * tile + 3 * pad
    row_h = tile + caption_h + pad
    sheet = Image.new("RGB", (max(width, 760), max(1, len(shown)) * row_h + pad + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), f"{len(findings)} duplicate pairs (candidate | reference)"
              + (f", first {limit} shown" if len(findings) > limit else ""), fill="black")
    for i, f in enumerate(shown):
        y = 20 + i * row_h
        for j, key in enumerate(("candidate_id", "reference_id")):
            row = catalog.image(f[key])
            if row is None:
                continue
            with Image.open(store.root / row["object_path"]) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((tile, tile))
                sheet.paste(im, (pad + j * (tile + pad), y))
        draw.text((pad, y + tile + 2),
                  f"{f['candidate_source']}/{f['candidate_path']}  ~  "
                  f"{f['reference_source']}/{f['reference_path']}", fill="black")
        draw.text((pad, y + tile + 14), f"{f['method']}  distance={f['distance']}", fill="gray")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out

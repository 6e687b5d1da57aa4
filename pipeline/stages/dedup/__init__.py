"""Near-duplicate detection: :func:`find_duplicates` searches hash variants
(:mod:`.search`), then verifies every pair found (:mod:`.verify`); :mod:`.run` is the stage
around the catalog. Design and limits: ``docs/dedup.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from blurset.pipeline.stages.dedup import search, verify
from blurset.pipeline.stages.hashing import ImageHashes

__all__ = ["HashRecord", "Match", "find_duplicates"]


@dataclass(frozen=True)
class HashRecord:
    """One image to deduplicate: an opaque ``key`` and its hashes."""

    key: str
    hashes: ImageHashes


@dataclass(frozen=True)
class Match:
    """A pair found by the search: ``candidate`` (later in input order) and ``reference``.

    ``distance`` is the Hamming distance of the best hash variant; ``method`` says which variant
    kind matched and on what evidence it was judged (``phash-crop+ecc``: fine band;
    ``+coarse``: coarse structure; ``+flat``: too little to tell; ``+colour``: colours differ
    (or, for a duplicate, agree to the noise floor); ``+structure``: structures differ;
    ``+warp``: no plausible alignment; ``+none``: pixels disagree); ``score`` is the deciding
    correlation (-1…1); ``verdict`` is ``"duplicate"``, ``"uncertain"`` (a person decides) or
    ``"rejected"`` (a look-alike).
    """

    candidate: str
    reference: str
    distance: int
    method: str
    score: float
    verdict: str


_SUFFIX = {"fine": "+ecc"}


def find_duplicates(
    references: Sequence[HashRecord],
    candidates: Sequence[HashRecord],
    *,
    threshold: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    bars: verify.Bars = verify.BARS,
) -> list[Match]:
    """Every candidate against every reference and every other candidate.

    Returns one :class:`Match` per pair found by the search, verified: ``candidate`` is the
    candidate (the later one of two candidates in input order), ``reference`` the reference or
    the earlier candidate. Sorted by candidate then reference in input order; deterministic.
    ``progress(done, total)`` is called as images are searched and pairs verified.
    """
    threshold = search.DEFAULT_THRESHOLD if threshold is None else int(threshold)
    if not 0 <= threshold <= 32:
        raise ValueError(f"threshold must be a Hamming distance in 0…32, got {threshold}")
    records = [*references, *candidates]
    n_ref, n = len(references), len(references) + len(candidates)
    if not candidates or n < 2:
        return []
    keys = [r.key for r in records]
    if len(set(keys)) != n:
        raise ValueError("record keys must be unique across references and candidates")
    thumbs = np.stack([search.thumb64(r.hashes) for r in records])
    stored = np.array([r.hashes.phash for r in records], dtype=np.uint64)

    def searched(done: int) -> None:
        if progress is not None:
            progress(done, n)

    pairs = search.search_pairs(thumbs, stored, n_ref, threshold, searched)
    prepared: dict[tuple[int, bool], verify.Prepared] = {}

    def prep(i: int, mirrored: bool = False) -> verify.Prepared:
        if (i, mirrored) not in prepared:
            prepared[(i, mirrored)] = verify.prepare(thumbs[i], records[i].hashes.chroma,
                                                     mirrored=mirrored)
        return prepared[(i, mirrored)]

    matches: list[Match] = []
    ordered = sorted(pairs.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    for done, ((earlier, later), hits) in enumerate(ordered):
        inits = search.initialisations(hits)
        starts = [verify.Start(prep(h.target), prep(h.query, h.mirrored),
                               search.initial_warp(h.variant), h.distance) for h in inits]
        index, verdict = verify.verify_pair(starts, bars)
        best = inits[index]
        suffix = _SUFFIX.get(verdict.evidence, "+" + verdict.evidence)
        matches.append(Match(candidate=keys[later], reference=keys[earlier],
                             distance=best.distance, method=search.method(best) + suffix,
                             score=round(verdict.score, 4), verdict=verdict.verdict))
        if progress is not None:
            progress(n + done + 1, n + len(pairs))
    return matches

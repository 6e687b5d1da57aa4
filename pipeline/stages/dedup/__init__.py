"""Near-duplicate detection: :func:`find_duplicates` searches hash variants
(:mod:`.search`), then verifies every pair found (:mod:`.verify`); :mod:`.run` is the stage
around the catalog. Design and limits: ``docs/dedup.md``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import cv2
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
    workers: int | None = None,
    executor: Executor | None = None,
    index: str = "auto",
) -> list[Match]:
    """Every candidate against every reference and every other candidate.

    Returns one :class:`Match` per pair found by the search, verified: ``candidate`` is the
    candidate (the later one of two candidates in input order), ``reference`` the reference or
    the earlier candidate. Sorted by candidate then reference in input order; deterministic.
    ``progress(done, total)`` is called as images are searched and pairs verified.
    ``workers`` processes verify the pairs (default: one per core the process may use, and
    one per 4,000 pairs at most: the verdicts are the same whatever the number). An
    ``executor`` (``concurrent.futures``, e.g. a Dask cluster's ``client.get_executor()``)
    verifies them instead, in chunks that each carry the thumbs they need: the same verdicts.
    ``index`` is the search's (:func:`search.resolve_index`): ``flat`` is exhaustive and exact,
    ``blocks`` exact only within 5 bits, ``auto`` takes ``blocks`` above 10^5 images.
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

    pairs = search.search_pairs(thumbs, stored, n_ref, threshold, searched, index=index)
    ordered = sorted(pairs.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    jobs = [(earlier, later, search.initialisations(hits)) for (earlier, later), hits in ordered]
    chromas = [r.hashes.chroma for r in records]

    def verified(done: int) -> None:
        if progress is not None:
            progress(n + done, n + len(jobs))

    workers = _workers(workers, len(jobs))
    if executor is not None:
        verdicts = _verify_with(executor, thumbs, chromas, jobs, bars, verified)
    elif workers == 1:
        verdicts = _verify_jobs(thumbs, chromas, jobs, bars, verified)
    else:
        verdicts = _verify_in_processes(thumbs, chromas, jobs, bars, workers, verified)
    matches: list[Match] = []
    for (earlier, later, inits), (tried, verdict) in zip(jobs, verdicts, strict=True):
        best = inits[tried]
        suffix = _SUFFIX.get(verdict.evidence, "+" + verdict.evidence)
        matches.append(Match(candidate=keys[later], reference=keys[earlier],
                             distance=best.distance, method=search.method(best) + suffix,
                             score=round(verdict.score, 4), verdict=verdict.verdict))
    return matches


# Pairs per process below which one process verifies them all (starting a process, importing
# OpenCV and numpy there and sending it the thumbs costs about a second).
_PAIRS_PER_WORKER = 4000
_CHUNK = 500  # pairs per task sent to a worker


def _workers(asked: int | None, jobs: int) -> int:
    if asked is not None:
        if asked < 1:
            raise ValueError(f"workers must be at least 1, got {asked}")
        return min(asked, max(1, jobs))
    return max(1, min(search.usable_cores(), jobs // _PAIRS_PER_WORKER))


def _verify_jobs(thumbs: np.ndarray, chromas: Sequence[np.ndarray | None],
                 jobs: Sequence[tuple[int, int, list]], bars: verify.Bars,
                 progress: Callable[[int], None] | None = None,
                 prepared: dict[tuple[int, bool], verify.Prepared] | None = None
                 ) -> list[tuple[int, verify.Verdict]]:
    """The verdict of each (earlier, later, initial hits) job, in order. ``prepared`` caches
    the prepared thumbs (a worker keeps one for all its chunks)."""
    prepared = {} if prepared is None else prepared

    def prep(i: int, mirrored: bool = False) -> verify.Prepared:
        if (i, mirrored) not in prepared:
            prepared[(i, mirrored)] = verify.prepare(thumbs[i], chromas[i], mirrored=mirrored)
        return prepared[(i, mirrored)]

    out = []
    for done, (_, _, inits) in enumerate(jobs):
        starts = [verify.Start(prep(h.target), prep(h.query, h.mirrored),
                               search.initial_warp(h.variant), h.distance) for h in inits]
        out.append(verify.verify_pair(starts, bars))
        if progress is not None:
            progress(done + 1)
    return out


_SHARED: dict = {}  # a worker process's thumbs and chroma grids, set once by its initializer


def _init_worker(thumbs: np.ndarray, chromas: list, bars: verify.Bars) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    _SHARED.update(thumbs=thumbs, chromas=chromas, bars=bars, prepared={})


def _verify_chunk(jobs: list[tuple[int, int, list]]) -> list[tuple[int, verify.Verdict]]:
    return _verify_jobs(_SHARED["thumbs"], _SHARED["chromas"], jobs, _SHARED["bars"],
                        prepared=_SHARED["prepared"])


def _verify_in_processes(thumbs: np.ndarray, chromas: Sequence[np.ndarray | None],
                         jobs: Sequence[tuple[int, int, list]], bars: verify.Bars, workers: int,
                         progress: Callable[[int], None] | None) -> list[tuple[int, verify.Verdict]]:
    """The same verdicts as :func:`_verify_jobs`, from ``workers`` processes (spawned: safe
    beside the threads of a Prefect run). Each process prepares the thumbs its chunks need
    once, in a cache of its own; chunks are contiguous runs of the pair order."""
    chunks = [list(jobs[i:i + _CHUNK]) for i in range(0, len(jobs), _CHUNK)]
    ctx = multiprocessing.get_context("spawn")
    out: list[tuple[int, verify.Verdict]] = []
    with ctx.Pool(workers, initializer=_init_worker, initargs=(thumbs, list(chromas), bars)) as pool:
        for result in pool.imap(_verify_chunk, chunks):
            out.extend(result)
            if progress is not None:
                progress(len(out))
    return out


def _packed_chunk(thumbs: np.ndarray, chromas: Sequence[np.ndarray | None],
                  jobs: Sequence[tuple[int, int, list]]
                  ) -> tuple[np.ndarray, list, list[tuple[int, int, list]]]:
    """A chunk that travels alone: the thumbs and chroma grids its pairs use, and its jobs with
    the images renumbered into them."""
    used = sorted({i for earlier, later, inits in jobs
                   for i in (earlier, later, *(h.target for h in inits),
                             *(h.query for h in inits))})
    local = {i: k for k, i in enumerate(used)}
    renumbered = [(local[earlier], local[later],
                   [replace(h, target=local[h.target], query=local[h.query]) for h in inits])
                  for earlier, later, inits in jobs]
    return thumbs[used], [chromas[i] for i in used], renumbered


def _verify_packed(chunk: tuple[np.ndarray, list, list[tuple[int, int, list]]],
                   bars: verify.Bars) -> list[tuple[int, verify.Verdict]]:
    cv2.setNumThreads(1)
    thumbs, chromas, jobs = chunk
    return _verify_jobs(thumbs, chromas, jobs, bars)


def _verify_with(executor: Executor, thumbs: np.ndarray, chromas: Sequence[np.ndarray | None],
                 jobs: Sequence[tuple[int, int, list]], bars: verify.Bars,
                 progress: Callable[[int], None] | None) -> list[tuple[int, verify.Verdict]]:
    """The same verdicts as :func:`_verify_jobs`, chunk by chunk through ``executor.map`` (in
    the pair order)."""
    chunks = [_packed_chunk(thumbs, chromas, jobs[i:i + _CHUNK])
              for i in range(0, len(jobs), _CHUNK)]
    out: list[tuple[int, verify.Verdict]] = []
    for result in executor.map(_verify_packed, chunks, [bars] * len(chunks)):
        out.extend(result)
        if progress is not None:
            progress(len(out))
    return out

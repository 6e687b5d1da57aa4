"""Near-duplicate detection: :func:`find_duplicates` searches hash variants
(:mod:`.search`), then verifies every pair found (:mod:`.verify`); :mod:`.run` is the stage
around the catalog. Design and limits: ``docs/dedup.md``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache

import cv2
import numpy as np

from blurset.pipeline.stages.dedup import search, verify
from blurset.pipeline.stages.hashing import ImageHashes

__all__ = ["VERIFY_MODES", "HashRecord", "Match", "Matches", "find_duplicates"]

# Which of the pairs the search proposes are verified: ``all`` of them, or for each candidate
# only ``first`` up to its first duplicate (the same candidates are excluded; fewer pairs listed).
VERIFY_MODES = ("all", "first")


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


class Matches(list[Match]):
    """The verified pairs :func:`find_duplicates` returns; ``proposed``: how many pairs the
    search found (more than were verified when only each candidate's first duplicate is)."""

    def __init__(self, matches: Sequence[Match] = (), *, proposed: int = 0) -> None:
        super().__init__(matches)
        self.proposed = proposed


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
    verify_pairs: str = "all",
    decided: Mapping[tuple[str, str], str] | None = None,
) -> Matches:
    """Every candidate against every reference and every other candidate.

    Returns one :class:`Match` per pair found by the search, verified: ``candidate`` is the
    candidate (the later one of two candidates in input order), ``reference`` the reference or
    the earlier candidate. Sorted by candidate then reference in input order; deterministic.
    ``progress(done, total)`` is called as images are searched and pairs verified.
    ``workers`` processes verify the pairs (default: one per core the process may use, and
    one per 4,000 pairs at most: the verdicts are the same whatever the number). An
    ``executor`` (``concurrent.futures``, e.g. a Dask cluster's ``client.get_executor()``)
    verifies them instead, in chunks that each carry the thumbs they need, and runs the flat
    search's shards (:func:`search.search_hits`): the same pairs and verdicts.
    ``index`` is the search's (:func:`search.resolve_index`): ``flat`` is exhaustive and exact,
    ``blocks`` exact only within 5 bits, ``auto`` takes ``blocks`` above 10^5 images.

    ``verify_pairs="first"`` verifies each candidate's pairs, references first and then
    nearest first, only until one is a duplicate: every candidate with a duplicate still has
    one (its exclusion is the same), the pairs after it are left unverified and unreported.
    ``decided`` (sorted key pair → ``duplicate``/``distinct``, a person's word) then stands
    for the verdict in that choice, so a pair a person called distinct never ends the search.
    """
    threshold = search.DEFAULT_THRESHOLD if threshold is None else int(threshold)
    if verify_pairs not in VERIFY_MODES:
        raise ValueError(f"verify_pairs must be one of {', '.join(VERIFY_MODES)}, "
                         f"got {verify_pairs!r}")
    if not 0 <= threshold <= 32:
        raise ValueError(f"threshold must be a Hamming distance in 0…32, got {threshold}")
    records = [*references, *candidates]
    n_ref, n = len(references), len(references) + len(candidates)
    if not candidates or n < 2:
        return Matches()
    keys = [r.key for r in records]
    if len(set(keys)) != n:
        raise ValueError("record keys must be unique across references and candidates")
    thumbs = np.stack([search.thumb64(r.hashes) for r in records])
    stored = np.array([r.hashes.phash for r in records], dtype=np.uint64)

    def searched(done: int) -> None:
        if progress is not None:
            progress(done, n)

    pairs = search.search_pairs(thumbs, stored, n_ref, threshold, searched, index=index,
                                executor=executor)
    chromas = [r.hashes.chroma for r in records]

    def verified(done: int) -> None:
        if progress is not None:
            progress(n + done, n + len(pairs))

    @cache
    def job(p: int) -> Job:
        return int(pairs.earlier[p]), int(pairs.later[p]), search.initialisations(pairs.hits(p))

    with _verifier(thumbs, chromas, bars, _workers(workers, len(pairs)), executor) as run:
        if verify_pairs == "all":
            chosen = list(range(len(pairs)))
            verdicts = run([job(p) for p in chosen], verified)
        else:
            chosen, verdicts = _until_first_duplicate(pairs, job, n_ref, keys, decided or {},
                                                      run, verified)
    matches = Matches(proposed=len(pairs))
    for p, (tried, verdict) in zip(chosen, verdicts, strict=True):
        earlier, later, inits = job(p)
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
                 prepared: _PreparedCache | None = None, *, full: bool = False
                 ) -> list[tuple[int, verify.Verdict]]:
    """The verdict of each (earlier, later, initial hits) job, in order. ``prepared`` caches
    the prepared thumbs (a worker keeps one for all its chunks); ``full`` as
    :func:`verify.verify_pair`."""
    prepared = _PreparedCache() if prepared is None else prepared

    def prep(i: int, mirrored: bool = False) -> verify.Prepared:
        got = prepared.get((i, mirrored))
        if got is None:
            got = prepared[(i, mirrored)] = verify.prepare(thumbs[i], chromas[i],
                                                           mirrored=mirrored)
        return got

    out = []
    for done, (_, _, inits) in enumerate(jobs):
        starts = [verify.Start(prep(h.target), prep(h.query, h.mirrored),
                               search.initial_warp(h.variant), h.distance) for h in inits]
        out.append(verify.verify_pair(starts, bars, full=full))
        if progress is not None:
            progress(done + 1)
    return out


_PREPARED_MAX = 8192  # prepared thumbs a process keeps (about 60 KB each)


class _PreparedCache(OrderedDict):
    """The prepared thumbs of the images verified last, at most :data:`_PREPARED_MAX` (pairs
    come in candidate order, so a candidate's and its neighbours' stay; memory stays bounded
    at 10^5 images and more)."""

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if len(self) > _PREPARED_MAX:
            self.popitem(last=False)


_SHARED: dict = {}  # a worker process's thumbs and chroma grids, set once by its initializer


def _init_worker(thumbs: np.ndarray, chromas: list, bars: verify.Bars) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    _SHARED.update(thumbs=thumbs, chromas=chromas, bars=bars, prepared=_PreparedCache())


def _verify_chunk(jobs: list[tuple[int, int, list]]) -> list[tuple[int, verify.Verdict]]:
    return _verify_jobs(_SHARED["thumbs"], _SHARED["chromas"], jobs, _SHARED["bars"],
                        prepared=_SHARED["prepared"])


def _verify_in_pool(pool, workers: int, jobs: Sequence[Job],
                    progress: Callable[[int], None] | None) -> list[tuple[int, verify.Verdict]]:
    """The same verdicts as :func:`_verify_jobs`, from the processes of ``pool`` (spawned: safe
    beside the threads of a Prefect run). Each process prepares the thumbs its chunks need
    once, in a cache of its own; chunks are contiguous runs of the pair order, small enough
    that every process gets some."""
    size = max(1, min(_CHUNK, -(-len(jobs) // (4 * workers))))
    chunks = [list(jobs[i:i + size]) for i in range(0, len(jobs), size)]
    out: list[tuple[int, verify.Verdict]] = []
    for result in pool.imap(_verify_chunk, chunks):
        out.extend(result)
        if progress is not None:
            progress(len(out))
    return out


Job = tuple[int, int, list]  # (earlier image, later image, the hits to start aligning from)
Verifier = Callable[[Sequence[Job], Callable[[int], None] | None],
                    list[tuple[int, verify.Verdict]]]


@contextmanager
def _verifier(thumbs: np.ndarray, chromas: Sequence[np.ndarray | None], bars: verify.Bars,
              workers: int, executor: Executor | None) -> Iterator[Verifier]:
    """A function verifying a list of jobs (verdicts in order): through ``executor``, in this
    process, or in ``workers`` processes started once for all its calls."""
    if executor is not None:
        yield lambda jobs, progress: _verify_with(executor, thumbs, chromas, jobs, bars, progress)
    elif workers == 1:
        prepared = _PreparedCache()
        yield lambda jobs, progress: _verify_jobs(thumbs, chromas, jobs, bars, progress, prepared)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker,
                      initargs=(thumbs, list(chromas), bars)) as pool:
            yield lambda jobs, progress: _verify_in_pool(pool, workers, jobs, progress)


_MAX_ROUND = 16  # pairs per candidate in a round of first-duplicate verification


def _until_first_duplicate(pairs: search.PairHits, job: Callable[[int], Job], n_ref: int,
                           keys: Sequence[str], decided: Mapping[tuple[str, str], str],
                           run: Verifier, progress: Callable[[int], None] | None
                           ) -> tuple[list[int], list[tuple[int, verify.Verdict]]]:
    """The pairs verified (indices into ``pairs``, in order) and their verdicts, when each
    candidate's pairs are verified only until one is a duplicate (``decided``: a person's word
    instead of the verifier's). Each candidate's pairs go references first, then nearest
    first; rounds take 1, 2, 4 … :data:`_MAX_ROUND` pairs of every candidate not yet settled,
    all verified at once."""
    earlier, later = pairs.earlier, pairs.later
    order = np.lexsort((earlier, pairs.distance, earlier >= n_ref, later))
    bounds = np.append(np.flatnonzero(np.diff(later[order])) + 1, len(order))
    queues: dict[int, list[int]] = {}
    start = 0
    for end in bounds:  # per candidate: its pairs, the next to verify last (for pop())
        queues[int(later[order[start]])] = [int(p) for p in order[start:end][::-1]]
        start = end
    results: dict[int, tuple[int, verify.Verdict]] = {}
    take, done = 1, 0
    while queues:
        batch = [queues[c].pop() for c in sorted(queues) for _ in range(min(take, len(queues[c])))]
        out = run([job(p) for p in batch],
                  None if progress is None else (lambda k, done=done: progress(done + k)))
        done += len(batch)
        for p, result in zip(batch, out, strict=True):
            results[p] = result
            c = int(later[p])
            word = decided.get(tuple(sorted((keys[int(earlier[p])], keys[c]))))
            if (result[1].verdict if word is None else word) == "duplicate" and c in queues:
                done += len(queues.pop(c))  # the rest of its pairs: left unverified
        for c in [c for c, queue in queues.items() if not queue]:
            del queues[c]
        if progress is not None:
            progress(done)
        take = min(2 * take, _MAX_ROUND)
    chosen = sorted(results)
    return chosen, [results[p] for p in chosen]


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

"""The block index of the dedup search: exactly the flat search's hits within its exact radius,
a subset of them (with true distances) beyond; ``auto`` switches by size and threshold; the
bundled sample gets the same verdicts whichever index searches it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from blurset.pipeline.demo import sample as S
from blurset.pipeline.stages.dedup import HashRecord, find_duplicates, search
from blurset.pipeline.stages.hashing import hash_opened


def planted_hashes(rng: np.random.Generator, n: int, max_distance: int) -> np.ndarray:
    """``n`` random uint64 hashes, a third of them near copies of others at every distance
    0…max_distance (cycling), the flipped bits anywhere in the 64."""
    db = rng.integers(0, 1 << 63, n, dtype=np.uint64) ^ (
        rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(63))
    copies = rng.choice(n, n // 3, replace=False)
    for i, c in enumerate(copies):
        bits = rng.choice(64, i % (max_distance + 1), replace=False)
        db[c] = db[rng.integers(0, n)] ^ np.uint64(sum(1 << int(b) for b in bits))
    return db


def hits(columns: tuple[np.ndarray, ...]) -> set[tuple[int, int, int, int]]:
    d, q, v, t = columns
    return set(zip(d.tolist(), q.tolist(), v.tolist(), t.tolist(), strict=True))


def others(qi: np.ndarray, tj: np.ndarray) -> np.ndarray:
    return qi != tj


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", range(search.BLOCK_EXACT_RADIUS + 1))
def test_block_index_is_the_flat_search_within_its_exact_radius(seed, threshold):
    rng = np.random.default_rng(seed)
    db = planted_hashes(rng, 3000, threshold)
    # three query hashes per image: itself, one bit off, and a near copy at a random distance
    near = [db ^ np.uint64(1 << int(rng.integers(64)))]
    near.append(np.array([h ^ np.uint64(sum(1 << int(b) for b in
                                            rng.choice(64, rng.integers(threshold + 1),
                                                       replace=False))) for h in db.tolist()],
                         dtype=np.uint64))
    queries = np.stack([db, *near], axis=1)
    flat = hits(search._range_search(queries, db, threshold, others))
    blocks = hits(search._block_search(queries, db, threshold, others))
    assert blocks == flat
    found = np.bincount([d for d, *_ in flat], minlength=threshold + 1)
    assert (found > 0).all()  # every distance 0…threshold occurs among the pairs compared


@pytest.mark.parametrize("seed", range(3))
def test_beyond_its_exact_radius_the_block_index_finds_a_subset_with_true_distances(seed):
    rng = np.random.default_rng(seed)
    db = planted_hashes(rng, 4000, search.DEFAULT_THRESHOLD)
    queries = np.stack([db, db ^ np.uint64(0b1001 << 30)], axis=1)
    flat = hits(search._range_search(queries, db, search.DEFAULT_THRESHOLD, others))
    blocks = hits(search._block_search(queries, db, search.DEFAULT_THRESHOLD, others))
    assert blocks <= flat  # the distance is part of each hit: true distances
    exact = {h for h in flat if h[0] <= search.BLOCK_EXACT_RADIUS}
    assert exact <= blocks
    assert len(flat - blocks) > 0  # it is approximate beyond: the claim is not vacuous


def test_rotations_and_odd_block_widths_stay_exact():
    rng = np.random.default_rng(7)
    db = planted_hashes(rng, 2000, 3)
    queries = db[:, None] ^ np.uint64(1 << 63)  # the top bit: where a rotation wraps around
    # one rotation each, so that no unrotated table hides a wrong rotation
    for blocks, flips, rotations in [(2, 1, (33,)), (5, 0, (3,)), (4, 0, (63,)), (3, 1, (7,))]:
        index = search.BlockIndex(db, blocks, flips, rotations)
        got = hits(search._block_search(queries, db, index.exact_radius, others, index=index))
        assert got == hits(search._range_search(queries, db, index.exact_radius, others))


def test_auto_switches_by_threshold_and_size(monkeypatch):
    assert search.resolve_index("auto", 10, search.BLOCK_EXACT_RADIUS) == "blocks"
    assert search.resolve_index("auto", 10, search.DEFAULT_THRESHOLD) == "flat"
    assert search.resolve_index("auto", search.FLAT_MAX_IMAGES + 1,
                                search.DEFAULT_THRESHOLD) == "blocks"
    assert search.resolve_index("flat", 10**7, 3) == "flat"
    with pytest.raises(ValueError, match="index must be one of auto, flat, blocks, got 'hnsw'"):
        search.resolve_index("hnsw", 10, 12)


@pytest.fixture(scope="module")
def sample_records(tmp_path_factory) -> tuple[list[HashRecord], list[HashRecord]]:
    """The bundled demo sample, hashed: (references, candidates), bad files left out."""
    info = S.write_sample(tmp_path_factory.mktemp("sample") / "sample", seed=0)
    truth = json.loads(info.truth.read_text(encoding="utf-8"))
    root = info.truth.parent

    def hashed(path: str) -> HashRecord:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(root / path) as im:
                return HashRecord(path, hash_opened(im))

    refs = [hashed(r["path"]) for r in truth["references"]]
    cands = [hashed(im["path"]) for im in truth["images"] if im["photo"] is not None]
    return refs, cands


def verdicts(matches) -> dict[tuple[str, str], str]:
    return {(m.candidate, m.reference): m.verdict for m in matches}


def test_the_bundled_sample_gets_the_same_verdicts_from_the_block_index(sample_records,
                                                                        monkeypatch):
    refs, cands = sample_records
    flat = verdicts(find_duplicates(refs, cands, workers=1))
    monkeypatch.setattr(search, "FLAT_MAX_IMAGES", 0)  # what auto does above the size switch
    assert search.resolve_index("auto", len(refs) + len(cands),
                                search.DEFAULT_THRESHOLD) == "blocks"
    blocks = verdicts(find_duplicates(refs, cands, workers=1))
    assert sum(v == "duplicate" for v in flat.values()) > 10
    kept = {pair: v for pair, v in flat.items() if v != "rejected"}
    assert {pair: blocks.get(pair) for pair in kept} == kept  # no duplicate or uncertain lost
    assert {pair: flat.get(pair) for pair in blocks} == blocks  # the same verdict where found


@pytest.mark.parametrize("index", ["flat", "blocks"])
@pytest.mark.parametrize("n_ref", [0, 1, 250, 599, 600])
def test_references_are_searched_against_candidates_only(index, n_ref):
    """search_hits skips the reference × reference lookups, and finds every other hit: the
    same hits as brute force over all pairs with the reference pairs filtered out, the nearest
    of each (query, target, mirror state, band) kept (the lowest variant on a tie)."""
    rng = np.random.default_rng(n_ref)
    stored = planted_hashes(rng, 600, search.BLOCK_EXACT_RADIUS)
    variants = np.stack([stored, stored ^ np.uint64(1 << 40), stored ^ np.uint64(0b11)], axis=1)
    bands = np.stack([stored ^ np.uint64(0b110), stored ^ np.uint64(1 << 60)], axis=1)
    r = search.BLOCK_EXACT_RADIUS
    d, q, v, t, band = search.search_hits(variants, bands, stored, n_ref, r, index=index)
    got = sorted(zip(d.tolist(), q.tolist(), v.tolist(), t.tolist(), band.tolist(), strict=True))
    nearest: dict[tuple, tuple] = {}
    dv = np.bitwise_count(variants[:, :, None] ^ stored[None, None, :])
    for i, k, j in sorted(zip(*np.nonzero(dv <= r), strict=True),
                          key=lambda h: (dv[h], h[1])):  # nearest, then lowest variant
        hit = (int(dv[i, k, j]), int(i), int(k), int(j), False)
        nearest.setdefault((i, j, bool(search._is_mirrored(k))), hit)
    expected = list(nearest.values())
    for b in range(bands.shape[1]):
        db = np.bitwise_count(bands[:, b, None] ^ bands[None, :, b])
        expected += [(int(db[i, j]), int(i), 0, int(j), True)
                     for i, j in zip(*np.nonzero(db <= r), strict=True)]
    expected = sorted(h for h in expected if h[1] != h[3] and max(h[1], h[3]) >= n_ref)
    assert got == expected
    assert len(expected) > 0 or n_ref >= 599

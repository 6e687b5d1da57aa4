"""blurset.pipeline.stages.dedup on real photos: every transformation caught, look-alikes not
paired; smooth copies found, distinct smooth fields kept apart, uncertain pairs left to a person,
whose decisions survive re-runs."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from blurset.pipeline.demo.transforms import (
    TRANSFORMS,
    distinct_crops,
    encode_jpeg,
    flat_images,
    jpeg_quality,
    parse_crop_name,
    photo_pool,
)
from blurset.pipeline.stages.dedup import HashRecord, Match, find_duplicates
from blurset.pipeline.stages.dedup import search as dedup
from blurset.pipeline.stages.hashing import ImageHashes, hash_opened

REFERENCE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china", "flower")


def record(key: str, image: Image.Image, quality: int = 90) -> HashRecord:
    with Image.open(io.BytesIO(encode_jpeg(image, quality))) as im:
        return HashRecord(key, hash_opened(im))


@dataclass(frozen=True)
class Case:
    references: list[HashRecord]
    candidates: list[HashRecord]
    photo: dict[str, str]  # key -> photo it shows
    matches: list[Match]

    def duplicates(self) -> set[frozenset[str]]:
        return {frozenset((m.candidate, m.reference)) for m in self.matches
                if m.verdict == "duplicate"}


@pytest.fixture(scope="module")
def case() -> Case:
    """References: one crop of each of six photos. Candidates: every transform of every
    reference; a photo and its cropped copy (a candidate pair); two crops of one large photo;
    flat images."""
    rng = np.random.default_rng(7)
    crops = distinct_crops(photo_pool(), np.random.default_rng(0))
    first: dict[str, tuple[str, Image.Image]] = {}
    for name, image in crops:
        first.setdefault(parse_crop_name(name)[0], (name, image))
    references, candidates, photo = [], [], {}
    for base in REFERENCE_PHOTOS:
        name, image = first[base]
        references.append(record(name, image, 92))
        photo[name] = name
        for transform, fn in TRANSFORMS.items():
            key = f"{name}~{transform}"
            candidates.append(record(key, fn(image, rng), jpeg_quality(transform)))
            photo[key] = name
    name, image = first["camera"]
    candidates.append(record(name, image))
    candidates.append(record(f"{name}~crop", TRANSFORMS["crop"](image, rng)))
    photo[name] = photo[f"{name}~crop"] = name
    hubble = [(n, im) for n, im in crops if n.startswith("hubble_deep_field@")][:3]
    for n, im in hubble:
        candidates.append(record(n, im))
        photo[n] = n
    for n, im in flat_images(6, rng):
        candidates.append(record(n, im))
        photo[n] = n
    return Case(references, candidates, photo, find_duplicates(references, candidates))


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_every_transformation_is_caught(case, transform):
    found = case.duplicates()
    missed = [r.key for r in case.references
              if frozenset((f"{r.key}~{transform}", r.key)) not in found]
    assert not missed, f"{transform} copies not found for {missed}"


def test_every_match_is_between_copies_of_one_photo(case):
    wrong = [m for m in case.matches if m.verdict == "duplicate"
             and case.photo[m.candidate] != case.photo[m.reference]]
    assert not wrong


def test_crops_of_one_photo_and_flat_images_are_not_paired(case):
    distractors = {k for k in case.photo if k.startswith(("hubble", "flat-"))}
    paired = [m for m in case.matches if m.verdict == "duplicate"
              and {m.candidate, m.reference} & distractors]
    assert not paired
    for m in case.matches:  # flats the search finds are never called duplicates
        if m.candidate.startswith("flat-") and m.reference.startswith("flat-"):
            assert m.verdict in ("rejected", "uncertain")


def test_candidate_pairs_are_found_once_later_against_earlier(case):
    camera = [m for m in case.matches if case.photo[m.candidate].startswith("camera@")]
    assert len(camera) == 1
    (m,) = camera
    assert m.verdict == "duplicate"
    assert m.reference.startswith("camera@") and m.candidate == f"{m.reference}~crop"
    # Copies of one reference are candidate pairs too: found, each pair once.
    ref = case.references[0].key
    copies = [m for m in case.matches if m.verdict == "duplicate"
              and case.photo[m.candidate] == ref and m.reference != ref]
    pairs = [frozenset((m.candidate, m.reference)) for m in copies]
    assert len(pairs) == len(set(pairs)) >= 60


def test_matches_are_well_formed_and_ordered(case):
    order = {r.key: i for i, r in enumerate([*case.references, *case.candidates])}
    ref_keys = {r.key for r in case.references}
    for m in case.matches:
        assert m.candidate not in ref_keys
        assert order[m.reference] < order[m.candidate]
        assert m.verdict in ("duplicate", "uncertain", "rejected")
        assert 0 <= m.distance <= dedup.DEFAULT_THRESHOLD
        assert -1.0 <= m.score <= 1.0
        assert m.method.startswith("phash") and m.method.endswith(
            ("+ecc", "+coarse", "+colour", "+flat", "+warp", "+none"))
    keys = [(order[m.candidate], order[m.reference]) for m in case.matches]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_output_is_deterministic_and_survives_the_catalog_round_trip(case):
    stored = [HashRecord(r.key, ImageHashes.from_stored(int(f"{r.hashes.phash:016x}", 16),
                                                        r.hashes.thumb_bytes(),
                                                        r.hashes.chroma_bytes()))
              for r in [*case.references, *case.candidates]]
    n = len(case.references)
    assert find_duplicates(stored[:n], stored[n:]) == case.matches


def test_references_are_not_compared_with_each_other(case):
    ref = case.references[0]
    twin = HashRecord("twin", ref.hashes)
    assert find_duplicates([ref, twin], []) == []
    (m,) = find_duplicates([ref], [twin])
    assert (m.candidate, m.reference, m.verdict, m.distance) == ("twin", ref.key, "duplicate", 0)


def test_progress_is_reported_up_to_the_total(case):
    calls: list[tuple[int, int]] = []
    refs, cands = case.references[:2], case.candidates[:20]
    find_duplicates(refs, cands, progress=lambda done, total: calls.append((done, total)))
    assert calls and all(0 < d <= t for d, t in calls)
    assert calls[-1][0] == calls[-1][1]


def test_arguments_are_checked(case):
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(case.references, case.candidates[:1], threshold=40)
    with pytest.raises(ValueError, match="unique"):
        find_duplicates(case.references[:1], case.references[:1])
    assert find_duplicates(case.references, []) == []


def test_variant_hashes_contain_the_stored_phash(case):
    records = [*case.references, *case.candidates]
    thumbs = np.stack([r.hashes.thumb for r in records])
    whole = dedup.variant_hashes(thumbs)[:, 0, 0]
    stored = np.array([r.hashes.phash for r in records], dtype=np.uint64)
    assert np.mean(whole == stored) > 0.95  # equal up to float rounding at the median
    assert int(np.bitwise_count(whole ^ stored).max()) <= 2


def test_range_search_equals_numpy_brute_force():
    rng = np.random.default_rng(3)
    db = rng.integers(0, 1 << 62, 500, dtype=np.uint64) * np.uint64(3)
    db[::7] = db[1::7][: len(db[::7])] ^ np.uint64(0b1011)  # planted near-copies
    queries = np.stack([db, db ^ np.uint64(1 << 40)], axis=1)  # (N, 2)

    def everything(qi: np.ndarray, tj: np.ndarray) -> np.ndarray:
        return qi != tj

    dist, qi, var, tj = dedup._range_search(queries, db, 12, everything)
    got = sorted(zip(qi.tolist(), var.tolist(), tj.tolist(), dist.tolist(), strict=True))
    d = np.bitwise_count(queries[:, :, None] ^ db[None, None, :])
    expected = sorted((int(i), int(k), int(j), int(d[i, k, j]))
                      for i, k, j in zip(*np.nonzero(d <= 12), strict=True) if i != j)
    assert got == expected and len(expected) > 100

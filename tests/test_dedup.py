"""blurset.pipeline.stages.dedup on real photos: every transformation caught, look-alikes not
paired; smooth copies found, distinct smooth fields kept apart, uncertain pairs left to a person,
whose decisions survive re-runs."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pytest
from PIL import Image

from blurset.pipeline.demo.smooth import fog, sky
from blurset.pipeline.demo.transforms import (
    TRANSFORMS,
    distinct_crops,
    encode_jpeg,
    flat_images,
    jpeg_quality,
    parse_crop_name,
    photo_pool,
)
from blurset.pipeline.stages.dedup import HashRecord, Match, Matches, find_duplicates
from blurset.pipeline.stages.dedup import search as dedup
from blurset.pipeline.stages.dedup.verify import prepare
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
            ("+ecc", "+coarse", "+colour", "+flat", "+structure", "+warp", "+none"))
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


# --------------------------------------------------------------------------------------------
# Smooth images, the uncertain verdict, people's decisions


def smooth_field(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth colour photo stand-in: a two-colour gradient with low-frequency colour shading."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (0.6 * xx / w + 0.4 * yy / h)[..., None]
    a, b = rng.uniform(40, 220, size=(2, 3))
    field = a * (1 - ramp) + b * ramp
    shade = np.asarray(Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
                       .resize((w, h), Image.Resampling.BICUBIC), np.float32)
    field += 0.25 * (shade - 128)
    return Image.fromarray(np.clip(np.rint(field), 0, 255).astype(np.uint8), "RGB")


def fine_texture(thumb: np.ndarray) -> float:
    """Std of the thumb's DoG σ 0.7/2 band (its finest detail), grey levels."""
    import cv2

    grey = thumb.astype(np.float32)
    return float((cv2.GaussianBlur(grey, (0, 0), 0.7) - cv2.GaussianBlur(grey, (0, 0), 2.0)).std())


def verdict_of(matches: list[Match], a: str, b: str) -> str | None:
    for m in matches:
        if {m.candidate, m.reference} == {a, b}:
            return m.verdict
    return None


@pytest.mark.parametrize("edit", ["brighter20", "blur1", "reencode"])
def test_copies_of_a_smooth_photo_are_found(edit):
    from PIL import ImageEnhance, ImageFilter
    rng = np.random.default_rng(11)
    original = smooth_field(rng)
    copy = {"brighter20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
            "blur1": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
            "reencode": lambda im: Image.open(io.BytesIO(encode_jpeg(im, 70))).convert("RGB"),
            }[edit](original)
    ref, cand = record("smooth", original, 92), record(f"smooth~{edit}", copy)
    assert ref.hashes.chroma is not None and fine_texture(ref.hashes.thumb) < 0.75  # smooth
    (m,) = find_duplicates([ref], [cand])
    assert m.verdict == "duplicate", m


def test_distinct_skies_are_kept_apart():
    """200 different skies: the search pairs many (one ramp, soft clouds), none is a duplicate
    (a mirror-padded band made ramps agree at the border and paired 3 of these)."""
    rng = np.random.default_rng(3)
    skies = [record(f"sky-{i}", sky(rng)) for i in range(200)]
    matches = find_duplicates([], skies)
    assert len(matches) > 100
    assert not [m for m in matches if m.verdict == "duplicate"]


def test_distinct_smooth_colour_fields_are_kept_apart():
    """Random 8×8 colour fields upscaled to 96×72: the search pairs some, none is a duplicate."""
    rng = np.random.default_rng(5)
    fields = [record(f"field-{i}", Image.fromarray(
        rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((96, 72),
                                                               Image.Resampling.BICUBIC))
              for i in range(400)]
    matches = find_duplicates([], fields)
    assert matches  # the hash search does pair some of them
    assert not [m for m in matches if m.verdict == "duplicate"]


def test_distinct_fogs_on_one_lattice_are_kept_apart():
    """Grey fogs whose horizon bumps and banks sit on the same lattice (one size, one cell
    count): their fine bands line up at the knots (scores up to 0.9) and there is no colour to
    veto that; the coarse structures, which differ, must. Before the weak-band rule 5 distinct
    fogs of the seed-1 real set were paired; this set pairs 2 with the rule switched off.
    (Not every such pair is caught: docs/dedup.md.)"""
    from blurset.pipeline.stages.dedup.verify import BARS

    rng = np.random.default_rng(18)
    fogs = [record(f"fog-{i}", fog(rng)) for i in range(400)]
    matches = find_duplicates([], fogs)
    assert len(matches) > 100
    assert not [m for m in matches if m.verdict == "duplicate"]
    without_rule = find_duplicates([], fogs, bars=replace(BARS, max_z_weak_fine=0.0))
    assert [m for m in without_rule if m.verdict == "duplicate"], "the set no longer tests the rule"


def test_worker_processes_give_the_same_verdicts(case):
    assert find_duplicates(case.references, case.candidates, workers=2) == case.matches


def test_the_fast_measure_gives_the_verdicts_of_the_full_one(case):
    """``measure(full=False)`` skips the coarse measures where ``decide`` would not look at
    them: copies, look-alikes, flat images and unrelated photos at a few warps (most of them
    rejected on colour, as chance pairs are) get the same verdict, evidence and score."""
    from blurset.pipeline.stages.dedup import verify
    records = case.references + case.candidates
    prepared = [prepare(r.hashes.thumb, r.hashes.chroma) for r in records]
    rng = np.random.default_rng(3)
    seen = Counter()
    for _ in range(1500):
        a, b = rng.choice(len(prepared), 2, replace=False)
        warp = dedup.initial_warp(int(rng.choice([0, 1, 40, 81, 120])))
        full = verify.decide(verify.measure(prepared[a], prepared[b], warp), 3)
        fast = verify.decide(verify.measure(prepared[a], prepared[b], warp, full=False), 3)
        assert fast == full, (records[a].key, records[b].key)
        seen[full.evidence] += 1
    assert seen["colour"] > 100 and seen["fine"] > 10, seen  # both shortcuts were taken


@pytest.mark.parametrize("colour, fine, refined", [(1.2, 0.2, False), (0.85, 0.2, True),
                                                   (1.2, 0.35, True), (0.3, 0.05, False)])
def test_ecc_refines_only_pairs_it_could_turn(monkeypatch, colour, fine, refined):
    """A pair rejected on colour is refined by ECC when its fine band is half there, unless its
    colours are farther apart than ``max_colour_error_for_ecc`` and its band is weak."""
    from blurset.pipeline.stages.dedup import verify
    calls = []
    monkeypatch.setattr(verify, "measure", lambda *a, **k: verify.Evidence(
        True, fine, 1.0, r2=0.0, residual=9.0, structure=0.0, rho=0.0, colour_error=colour))
    monkeypatch.setattr(verify, "refine", lambda *a: calls.append(a) or None)
    thumb = prepare(np.full((64, 64), 128, np.uint8))
    _, verdict = verify.verify_pair([verify.Start(thumb, thumb, dedup.initial_warp(0), 9)])
    assert (verdict.verdict, verdict.evidence) == ("rejected", "colour")
    assert bool(calls) == refined


def excluded(matches, decided=None) -> set[str]:
    """The candidates a duplicate excludes (a person's word, where given, instead)."""
    decided = decided or {}
    return {m.candidate for m in matches
            if decided.get(tuple(sorted((m.candidate, m.reference))), m.verdict) == "duplicate"}


def test_first_duplicate_verification_excludes_the_same_candidates(case):
    first = find_duplicates(case.references, case.candidates, verify_pairs="first")
    assert excluded(first) == excluded(case.matches)
    assert first.proposed == case.matches.proposed == len(case.matches)
    assert 0 < len(first) < len(case.matches) / 2, "the case no longer has pairs to skip"
    by_pair = {(m.candidate, m.reference): m for m in case.matches}
    assert all(by_pair[(m.candidate, m.reference)] == m for m in first)  # same verdicts
    # each candidate's pairs stop at its first duplicate, references first
    ref_keys = {r.key for r in case.references}
    dups: dict[str, list[Match]] = {}
    for m in first:
        if m.verdict == "duplicate":
            dups.setdefault(m.candidate, []).append(m)
    for cand, ms in dups.items():
        full = [m for m in case.matches if m.candidate == cand and m.verdict == "duplicate"]
        if any(m.reference in ref_keys for m in full):
            assert any(m.reference in ref_keys for m in ms), cand
    assert find_duplicates(case.references, case.candidates, verify_pairs="first",
                           workers=2) == first


def test_first_duplicate_verification_goes_on_past_a_pair_a_person_called_distinct(case):
    first = find_duplicates(case.references, case.candidates, verify_pairs="first")
    m = next(m for m in first if m.verdict == "duplicate"
             and sum(x.candidate == m.candidate and x.verdict == "duplicate"
                     for x in case.matches) > 1)
    decided = {tuple(sorted((m.candidate, m.reference))): "distinct"}
    again = find_duplicates(case.references, case.candidates, verify_pairs="first",
                            decided=decided)
    assert excluded(again, decided) == excluded(case.matches, decided)
    assert m.candidate in excluded(again, decided)  # by another pair, verified this time
    with pytest.raises(ValueError, match="verify_pairs"):
        find_duplicates(case.references, case.candidates, verify_pairs="some")


RAMP = np.tile(np.linspace(60, 200, 320, dtype=np.float32), (240, 1))  # grey, left to right


def png_record(key: str, pixels: np.ndarray) -> HashRecord:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(pixels).astype(np.uint8), "L").save(buffer, format="PNG")
    with Image.open(buffer) as im:
        return HashRecord(key, hash_opened(im))


def test_a_pair_with_nothing_to_compare_is_uncertain():
    """A grey linear gradient and a darker copy, aligned: no colour, no structure beyond the
    plane, nothing to tell a copy from another gradient. (A pure ramp's hash bits are float
    noise, so the pair is judged directly, as the search would hand it over.)"""
    from blurset.pipeline.stages.dedup import verify
    ramp, darker = png_record("ramp", RAMP), png_record("ramp~darker", RAMP * 0.8)
    whole = dedup.initial_warp(0)
    start = verify.Start(prepare(ramp.hashes.thumb), prepare(darker.hashes.thumb), whole, 0)
    _, verdict = verify.verify_pair([start])
    assert (verdict.verdict, verdict.evidence) == ("uncertain", "flat")


@pytest.fixture
def decided_workspace(tmp_path):
    """A catalog with a reference source (a grey gradient) and a candidate source (its pixels
    saved again, and an unrelated photo): the copy is uncertain to the verifier."""
    from blurset.pipeline.stages.ingest import ingest_batch
    from blurset.pipeline.stages.sources import scan_source
    from blurset.pipeline.workspace import Workspace

    ramp = Image.fromarray(np.rint(RAMP).astype(np.uint8), "L")
    for folder in ("ref", "cand"):
        (tmp_path / folder).mkdir(exist_ok=True)
    ramp.save(tmp_path / "ref" / "ramp.png")
    ramp.save(tmp_path / "cand" / "ramp_dark.png", compress_level=1)  # other bytes, same pixels
    first = distinct_crops(photo_pool(), np.random.default_rng(0))[0][1]
    first.save(tmp_path / "cand" / "photo.jpg", quality=90)
    ws = Workspace.open(tmp_path / "ws")
    catalog = ws.catalog()
    for name in ("ref", "cand"):
        src = tmp_path / name
        catalog.register_source(name, "folder", str(src))
        res = ingest_batch(src, scan_source("folder", src).items, ws.objects.root,
                           ws.quarantine_store.root)
        catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)
    return ws, catalog


def rerun(catalog):
    from blurset.pipeline.stages.dedup.run import run_dedup
    out = run_dedup(catalog, "ref")
    catalog.replace_findings("ref", None, {}, out.summary, out.findings, out.exclusions)
    return out


def test_decisions_override_the_verifier_and_survive_reruns(decided_workspace):
    from blurset.pipeline.stages.dedup.run import Decision, record_decisions
    _ws, catalog = decided_workspace
    out = rerun(catalog)
    (f,) = out.findings
    assert f["decided"] is None and out.summary["decided"] == 0

    record_decisions(catalog, [Decision("cand/ramp_dark.png", "ref/ramp.png", "distinct")])
    for _ in range(2):  # the decision holds in every later run
        out = rerun(catalog)
        (f,) = out.findings
        assert (f["verdict"], f["decided"], out.summary["decided"]) == ("rejected", "distinct", 1)
        assert f["method"].endswith("+person")
        assert catalog.excluded_paths() == []

    record_decisions(catalog, [Decision("ref/ramp.png", "cand/ramp_dark.png", "duplicate")])
    (f,) = rerun(catalog).findings
    assert (f["verdict"], f["decided"]) == ("duplicate", "duplicate")
    assert [p["rel_path"] for p in catalog.excluded_paths()] == ["ramp_dark.png"]


def test_uncertain_pairs_are_kept_out_of_both_lists(decided_workspace, monkeypatch):
    from blurset.pipeline.stages.dedup import run as stage
    _ws, catalog = decided_workspace

    def uncertain(refs, cands, **kw):
        return Matches([Match(cands[0].key, refs[0].key, 0, "phash+flat", 0.0, "uncertain")],
                       proposed=1)

    monkeypatch.setattr(stage, "find_duplicates", uncertain)
    out = rerun(catalog)
    assert out.summary["uncertain"] == 1 and out.summary["duplicates"] == 0
    assert catalog.excluded_paths() == [] and catalog.findings("uncertain")


def test_only_open_uncertain_pairs_are_left_to_a_person(decided_workspace, monkeypatch):
    """An uncertain pair whose candidate a verified duplicate already excludes is moot: no
    decision on it changes what is kept. `dups --uncertain` lists the open ones; a person who
    overturns the duplicate makes the moot pair open again."""
    from click.testing import CliRunner

    from blurset.pipeline.cli.main import cli
    from blurset.pipeline.stages.dedup import run as stage
    from blurset.pipeline.stages.dedup.run import Decision, record_decisions
    ws, catalog = decided_workspace

    def found(refs, cands, **kw):
        photo, dark = cands  # in input order: photo.jpg, ramp_dark.png
        return Matches([Match(dark.key, refs[0].key, 0, "phash+coarse", 0.9, "duplicate"),
                        Match(dark.key, photo.key, 10, "phash+flat", 0.8, "uncertain"),
                        Match(photo.key, refs[0].key, 12, "phash+flat", 0.7, "uncertain")],
                       proposed=3)

    monkeypatch.setattr(stage, "find_duplicates", found)
    out = rerun(catalog)
    assert (out.summary["uncertain"], out.summary["uncertain_open"]) == (2, 1)
    assert len(catalog.findings("uncertain")) == 2
    (open_pair,) = catalog.findings("uncertain", open_only=True)
    assert open_pair["candidate_path"] == "photo.jpg"

    r = CliRunner().invoke(cli, ["-w", str(ws.root), "dups", "--uncertain"])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines()[1:] if line]
    assert len(rows) == 1 and rows[0].startswith("cand,photo.jpg"), r.stdout
    assert "1 more" in r.stderr and "--include-moot" in r.stderr
    r = CliRunner().invoke(cli, ["-w", str(ws.root), "dups", "--uncertain", "--include-moot"])
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 3, r.stdout

    # a person says the verified duplicate is not one: the moot pair is open again
    record_decisions(catalog, [Decision("cand/ramp_dark.png", "ref/ramp.png", "distinct")])
    out = rerun(catalog)
    assert (out.summary["uncertain"], out.summary["uncertain_open"]) == (2, 2)
    assert len(catalog.findings("uncertain", open_only=True)) == 2


def test_a_duplicate_decision_adds_a_pair_the_search_missed(decided_workspace):
    from blurset.pipeline.stages.dedup.run import Decision, record_decisions
    _ws, catalog = decided_workspace
    record_decisions(catalog, [Decision("cand/photo.jpg", "ref/ramp.png", "duplicate")])
    found = {f["candidate_path"]: f for f in rerun(catalog).findings}
    assert found["photo.jpg"]["verdict"] == "duplicate"
    assert found["photo.jpg"]["method"] == "person"


def test_decide_verb_and_csv_form(decided_workspace, tmp_path):
    from click.testing import CliRunner

    from blurset.pipeline.cli.main import cli
    ws, catalog = decided_workspace
    listed = "--rejected" if rerun(catalog).findings[0]["verdict"] == "rejected" else None
    run = CliRunner().invoke
    r = run(cli, ["-w", str(ws.root), "dups", *([listed] if listed else [])])
    assert r.exit_code == 0 and "ramp_dark.png" in r.output, r.output
    report = tmp_path / "decisions.csv"
    lines = r.output.strip().splitlines()
    report.write_text("\n".join([lines[0] + ",decision", lines[1] + ",distinct"]) + "\n")
    r = run(cli, ["-w", str(ws.root), "dedup", "decide", "--csv", str(report)])
    assert r.exit_code == 0 and "1 decision" in r.output, r.output
    assert rerun(catalog).findings[0]["verdict"] == "rejected"
    r = run(cli, ["-w", str(ws.root), "dedup", "decide", "cand/ramp_dark.png", "ref/ramp.png",
                  "duplicate"])
    assert r.exit_code == 0, r.output
    assert rerun(catalog).findings[0]["verdict"] == "duplicate"
    r = run(cli, ["-w", str(ws.root), "dups", "--uncertain"])
    assert r.exit_code == 0 and "ramp_dark.png" not in r.output
    r = run(cli, ["-w", str(ws.root), "dedup", "decide", "cand/nope.jpg", "ref/ramp.png",
                  "distinct"])
    assert r.exit_code == 1 and "no image 'cand/nope.jpg'" in r.output
    r = run(cli, ["-w", str(ws.root), "dedup"])
    assert r.exit_code == 2 and "--reference" in r.output

"""Near-duplicate quality: ``blurset.pipeline.stages.dedup.search.find_duplicates`` against
imagededup's PHash at its default threshold (10), on the same files.

    python benchmarks/dedup_quality.py [--set sample|real] [--sample DIR] [--photos DIR]
                                       [--seed S] [--threshold T] [--show-misses]

``--set sample`` (the default) is ``blurset.pipeline.demo.sample.write_sample(size="bench")``:
CUHK-style references, every transform of ``blurset.pipeline.demo.transforms.TRANSFORMS`` applied
to every reference and saved as a candidate, copies of candidates among the candidates, distinct
photos, two disjoint crops of one photo and flat images as distractors, plus odd-but-valid files
(CMYK, 16-bit, palette, alpha, EXIF-rotated). ``--set real`` is ``benchmarks/realphotos.py``:
tiles of real photographs (textured, smooth, regionally blurred) through every edit, look-alike
tiles of the same photos and distinct smooth images; it needs ``scripts/fetch_photos.sh`` run
once. Either set is written to a temporary folder unless ``--sample`` names one already written.

Both methods see one record per distinct file content (byte-identical files are the sha256
stage's business, as in ``blurset.pipeline.stages.dedup.run``) and the same pairs: candidate-reference and
candidate-candidate (reference-reference pairs are not asked for and are dropped from
imagededup's answer). Scoring follows ``truth.json``:

- recall: the share of ``planted_pairs`` (candidate → reference) and ``candidate_pairs``
  (candidate → candidate) reported as duplicates, overall and by transformation;
- precision: the share of reported pairs whose two files show the same ``photo`` (two copies of
  one reference are a correct pair too). False positives are listed by kind;
- uncertain: pairs the verifier leaves to a person (neither reported nor rejected), how many
  of them are true copies, and how many are open (the candidate is not excluded by a verified
  duplicate anyway, so a person's word changes what is kept).

The last line is ``RESULT set=… recall=… precision=… uncertain=… uncertain_open=… false_pairs=…
smooth_false_pairs=… imagededup_recall=… imagededup_precision=… pairs=…`` (``pairs`` = planted
+ candidate pairs scored; ``smooth_false_pairs`` = reported pairs with a distinct smooth image).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

Pair = frozenset  # of two content ids


@dataclass
class Sample:
    """What the scorer needs from a written sample."""

    root: Path
    refs: list[str]  # paths (relative to root) of the reference images
    cands: list[str]  # paths of candidate images (valid ones)
    photo: dict[str, str]  # path -> photo name
    role: dict[str, str]  # path -> role
    expected: list[tuple[str, str, str]]  # (candidate, reference, transform)
    kind: dict[tuple[str, str], str]  # (candidate, reference) -> the reference's kind (real set)


def load_sample(root: Path) -> Sample:
    truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    refs = [r["path"] for r in truth["references"]]
    photo = {r["path"]: r["photo"] for r in truth["references"]}
    role = {r["path"]: "reference" for r in truth["references"]}
    cands = []
    for im in truth["images"]:
        if im["photo"] is None:  # a bad file: quarantined by ingest, never hashed
            continue
        cands.append(im["path"])
        photo[im["path"]] = im["photo"]
        role[im["path"]] = im["role"]
    pairs = truth["planted_pairs"] + truth["candidate_pairs"]
    expected = [(p["candidate"], p["reference"], p["transform"]) for p in pairs]
    kind = {(p["candidate"], p["reference"]): p["kind"] for p in pairs if "kind" in p}
    return Sample(root, refs, cands, photo, role, expected, kind)


def content_ids(sample: Sample) -> dict[str, str]:
    """path -> sha256 of the file (the catalog's image id)."""
    return {p: hashlib.sha256((sample.root / p).read_bytes()).hexdigest()
            for p in [*sample.refs, *sample.cands]}


def unique_in_order(paths: Iterable[str], ids: dict[str, str], taken: set[str]) -> list[str]:
    """The first path of every content id not yet taken, in order."""
    out = []
    for p in paths:
        if ids[p] not in taken:
            taken.add(ids[p])
            out.append(p)
    return out


def run_ours(sample: Sample, refs: list[str], cands: list[str],
             threshold: int | None, index: str = "auto") -> tuple[list, float, float]:
    """Our matches (both verdicts), hashing and dedup seconds."""
    from PIL import Image

    from blurset.pipeline.stages.dedup import HashRecord, find_duplicates
    from blurset.pipeline.stages.hashing import hash_opened

    start = time.perf_counter()
    records = {}
    for p in [*refs, *cands]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(sample.root / p) as im:
                records[p] = HashRecord(p, hash_opened(im))
    hashed = time.perf_counter()
    matches = find_duplicates([records[p] for p in refs], [records[p] for p in cands],
                              threshold=threshold, index=index)
    return matches, hashed - start, time.perf_counter() - hashed


def run_imagededup(sample: Sample, refs: list[str], cands: list[str]) -> tuple[set[Pair], float]:
    """imagededup PHash, default threshold 10, over the same files; pairs not ref-ref."""
    import logging

    from imagededup.methods import PHash

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("imagededup"):
            logging.getLogger(name).setLevel(logging.ERROR)
    start = time.perf_counter()
    phasher = PHash(verbose=False)
    encodings = {}
    for p in [*refs, *cands]:
        code = phasher.encode_image(image_file=sample.root / p)
        if code:
            encodings[p] = code
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "num_enc_workers has no effect"
        found = phasher.find_duplicates(encoding_map=encodings, max_distance_threshold=10)
    ref_set = set(refs)
    pairs = {Pair((a, b)) for a, dups in found.items() for b in dups
             if a != b and not (a in ref_set and b in ref_set)}
    return pairs, time.perf_counter() - start


@dataclass(frozen=True)
class Score:
    recall: float
    precision: float
    by_transform: dict[str, tuple[int, int]]  # found, total
    by_kind: dict[str, tuple[int, int]]  # found, total by reference kind (real set)
    false_positives: Counter
    missed: list[tuple[str, str, str]]
    reported: int


def score(sample: Sample, ids: dict[str, str], pairs: set[Pair]) -> Score:
    """Recall over the expected pairs (by content), precision over the reported ones."""
    found_ids = {Pair((ids[a], ids[b])) for a, b in (tuple(p) for p in pairs)}
    by_t: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_k: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    missed = []
    for cand, ref, transform in sample.expected:
        hit = ids[cand] == ids[ref] or Pair((ids[cand], ids[ref])) in found_ids
        by_t[transform][0] += int(hit)
        by_t[transform][1] += 1
        if (cand, ref) in sample.kind:
            by_k[sample.kind[(cand, ref)]][0] += int(hit)
            by_k[sample.kind[(cand, ref)]][1] += 1
        if not hit:
            missed.append((cand, ref, transform))
    total = len(sample.expected)
    recall = sum(f for f, _ in by_t.values()) / total if total else 1.0
    fps: Counter = Counter()
    correct = 0
    for p in pairs:
        a, b = sorted(p)
        if sample.photo[a] == sample.photo[b]:
            correct += 1
        else:
            fps[fp_kind(sample, a, b)] += 1
    precision = correct / len(pairs) if pairs else 1.0
    return Score(recall, precision, {t: (f, n) for t, (f, n) in sorted(by_t.items())},
                 {k: (f, n) for k, (f, n) in sorted(by_k.items())}, fps, missed, len(pairs))


def fp_kind(sample: Sample, a: str, b: str) -> str:
    roles = {sample.role[a], sample.role[b]}
    if roles == {"smooth"}:
        return "smooth vs smooth"
    if "smooth" in roles:
        return "smooth vs photo"
    if roles == {"flat"}:
        return "flat vs flat"
    if "flat" in roles:
        return "flat vs photo"
    if roles == {"crop_pair"}:
        return "two crops of one photo"
    pa, pb = sample.photo[a].split("@")[0], sample.photo[b].split("@")[0]
    return "crops of one photo" if pa == pb else "different photos"


def print_report(ours: Score, theirs: Score, verdicts: dict[str, int], uncertain_true: int,
                 uncertain_open: int, n_refs: int, n_cands: int, times: dict[str, float], show_misses: bool) -> None:
    print(f"{n_refs} references, {n_cands} candidates (distinct contents), "
          f"{len(ours.missed) + sum(f for f, _ in ours.by_transform.values())} expected pairs")
    print(f"ours: {ours.reported} duplicate pairs reported, {verdicts.get('uncertain', 0)} "
          f"uncertain ({uncertain_true} of them true copies; {uncertain_open} open: the rest have "
          f"a candidate excluded by a verified duplicate anyway), {verdicts.get('rejected', 0)} "
          f"look-alikes rejected by verification; hashing {times['hash']:.1f} s, "
          f"dedup {times['dedup']:.1f} s; imagededup {times['imagededup']:.1f} s in all")
    print(f"{'':16}{'ours':>14}{'imagededup@10':>16}")
    print(f"{'recall':16}{ours.recall:>14.3f}{theirs.recall:>16.3f}")
    print(f"{'precision':16}{ours.precision:>14.3f}{theirs.precision:>16.3f}")
    for title, mine, other in (("transformation", ours.by_transform, theirs.by_transform),
                               ("reference kind", ours.by_kind, theirs.by_kind)):
        if not mine:
            continue
        print(f"recall by {title}:")
        for t, (f, n) in mine.items():
            tf, tn = other.get(t, (0, n))
            print(f"  {t:14}{f:>5}/{n:<4}{f / n:>6.2f}{tf:>9}/{tn:<4}{tf / tn:>6.2f}")
    kinds = sorted(set(ours.false_positives) | set(theirs.false_positives))
    print("false positives by kind:" + ("" if kinds else " none"))
    for k in kinds:
        print(f"  {k:28}{ours.false_positives.get(k, 0):>6}{theirs.false_positives.get(k, 0):>10}")
    if show_misses:
        for cand, ref, t in ours.missed:
            print(f"  missed: {t:14} {cand} -> {ref}")


def build_set(which: str, dest: Path, seed: int, photos: Path | None) -> None:
    if which == "sample":
        from blurset.pipeline.demo.sample import write_sample

        write_sample(dest, size="bench", seed=seed)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from realphotos import build

    build(dest, photos, seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="which", choices=("sample", "real"), default="sample",
                        help="the generated bench sample, or real photographs")
    parser.add_argument("--sample", type=Path, help="a set already written (either kind)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="--set real: the folder scripts/fetch_photos.sh wrote")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated set")
    parser.add_argument("--threshold", type=int, default=None, help="our search radius")
    parser.add_argument("--index", choices=("auto", "flat", "blocks"), default="auto",
                        help="our search's index (blocks: exact within 5 bits only)")
    parser.add_argument("--show-misses", action="store_true", help="list the pairs we missed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="blurset-dedupbench-") as tmp:
        root = args.sample
        if root is None:
            root = Path(tmp) / "set"
            build_set(args.which, root, args.seed, args.photos)
        sample = load_sample(root)
        ids = content_ids(sample)
        taken: set[str] = set()
        refs = unique_in_order(sample.refs, ids, taken)
        cands = unique_in_order(sample.cands, ids, taken)
        matches, t_hash, t_dedup = run_ours(sample, refs, cands, args.threshold, args.index)
        their_pairs, t_theirs = run_imagededup(sample, refs, cands)
    ours_pairs = {Pair((m.candidate, m.reference)) for m in matches if m.verdict == "duplicate"}
    ours = score(sample, ids, ours_pairs)
    theirs = score(sample, ids, their_pairs)
    uncertain = [m for m in matches if m.verdict == "uncertain"]
    uncertain_true = sum(sample.photo[m.candidate] == sample.photo[m.reference] for m in uncertain)
    # Open: the candidate is not excluded by a verified duplicate anyway, so a person's word
    # on the pair changes what is kept.
    excluded = {m.candidate for m in matches if m.verdict == "duplicate"}
    uncertain_open = sum(m.candidate not in excluded for m in uncertain)
    print_report(ours, theirs, dict(Counter(m.verdict for m in matches)), uncertain_true,
                 uncertain_open, len(refs), len(cands),
                 {"hash": t_hash, "dedup": t_dedup, "imagededup": t_theirs}, args.show_misses)
    smooth_false = sum(n for k, n in ours.false_positives.items() if k.startswith("smooth"))
    print(f"RESULT set={args.which} recall={ours.recall:.3f} precision={ours.precision:.3f} "
          f"uncertain={len(uncertain)} uncertain_open={uncertain_open} "
          f"false_pairs={sum(ours.false_positives.values())} "
          f"smooth_false_pairs={smooth_false} "
          f"imagededup_recall={theirs.recall:.3f} imagededup_precision={theirs.precision:.3f} "
          f"pairs={len(sample.expected)} dedup_s={t_dedup:.1f} index={args.index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

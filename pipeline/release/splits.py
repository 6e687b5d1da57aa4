"""Which split each image of a release goes to: a published split file first, then the parent
version's split, then the ratios, dealt out per blur type in a stable hash order."""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from blurset.model.release_format import SPLIT_NAME
from blurset.pipeline.release.errors import ReleaseError

DEFAULT_SPLIT = "train=0.8,test=0.2"

SplitFile = str | os.PathLike | Mapping[str, str | os.PathLike]


def parse_split(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"train=0.8,test=0.2"`` (or a mapping) → {split: fraction}; the fractions must sum to 1."""
    if isinstance(spec, str):
        out: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            try:
                if not sep:
                    raise ValueError
                out[name.strip()] = float(value)
            except ValueError:
                raise ReleaseError(f"split {spec!r}: {part!r} is not NAME=FRACTION; write e.g. "
                                   f"{DEFAULT_SPLIT!r}") from None
    else:
        out = {str(k): float(v) for k, v in spec.items()}
    if not out:
        raise ReleaseError(f"split {spec!r} names no split; write e.g. {DEFAULT_SPLIT!r}")
    for name, frac in out.items():
        if not SPLIT_NAME.match(name):
            raise ReleaseError(f"split name {name!r} must be letters, digits and '_' starting "
                               "with a letter (it becomes a file name and a Hugging Face split)")
        if not 0 <= frac <= 1:
            raise ReleaseError(f"split {name}={frac} is not a fraction between 0 and 1")
    if abs(sum(out.values()) - 1) > 1e-6:
        raise ReleaseError(f"split fractions {spec!r} sum to {sum(out.values()):g}, not 1")
    return out


def _entry_name(line: str) -> str | None:
    """A split-file entry → the file name it names, case-folded: ``'motion0001.jpg'`` and
    ``1.bmp--out_of_focus0037.jpg`` (BTBNet's index--name lines) both work."""
    s = line.strip().strip("'\"").strip()
    if not s or s.startswith("#"):
        return None
    s = s.rsplit("--", 1)[-1]
    return s.replace("\\", "/").rsplit("/", 1)[-1].casefold() or None


def read_split_file(split_file: SplitFile, splits: Iterable[str]) -> tuple[dict[str, str], dict]:
    """A published split → ({file name (case-folded): split}, provenance of the files read).

    ``split_file`` is a mapping {split: list file}, a path holding ``{split}`` (one list per
    split of the ratios, e.g. ``kim_pg2018_{split}_list.txt``), or one file of ``name split``
    lines. List files hold one file name a line, quoted or not.
    """
    lists: dict[str, Path] = {}
    if isinstance(split_file, Mapping):
        lists = {str(k): Path(v) for k, v in split_file.items()}
    elif "{split}" in str(split_file):
        lists = {s: Path(str(split_file).replace("{split}", s)) for s in splits}
    names: dict[str, str] = {}
    files: dict[str, dict] = {}

    def add(name: str, split: str, where: str) -> None:
        if not SPLIT_NAME.match(split):
            raise ReleaseError(f"{where}: split {split!r} must be letters, digits and '_'")
        if names.get(name, split) != split:
            raise ReleaseError(f"{where}: {name} is listed in both {names[name]} and {split}")
        names[name] = split

    def text(path: Path) -> str:
        if not path.is_file():
            raise ReleaseError(f"split file {path} does not exist")
        data = path.read_bytes()
        files[str(path)] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        return data.decode("utf-8-sig")

    if lists:
        for split, path in lists.items():
            for line in text(path).splitlines():
                if (name := _entry_name(line)) is not None:
                    add(name, split, str(path))
    else:
        path = Path(split_file)
        for i, line in enumerate(text(path).splitlines(), 1):
            parts = line.replace(",", " ").replace("\t", " ").split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2:
                raise ReleaseError(f"{path}:{i}: expected 'NAME SPLIT', got {line!r}; or pass "
                                   "{split: list file} / a path with '{split}' for name lists")
            if (name := _entry_name(parts[0])) is not None:
                add(name, parts[1], f"{path}:{i}")
    return names, files


def _largest_remainder(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` into integers proportional to ``weights`` (ties go to the earlier key)."""
    wsum = sum(weights.values())
    if total <= 0 or wsum <= 0:
        return dict.fromkeys(weights, 0)
    exact = {k: total * w / wsum for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    order = sorted(weights, key=lambda k: (-(exact[k] - out[k]), list(weights).index(k)))
    for k in order[:total - sum(out.values())]:
        out[k] += 1
    return out


def split_order(image_id: str) -> str:
    """The order images are dealt out to splits: a hash of the id alone, so it is the same in
    every release and on every run."""
    return hashlib.sha256(f"blurset-split\0{image_id}".encode()).hexdigest()


def assign_splits(rows: Sequence[tuple[str, str]], ratios: Mapping[str, float],
                  fixed: Mapping[str, str] | None = None,
                  inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """(image id, blur type) → {image id: split}.

    ``fixed`` splits (from a split file) are kept and left out of the ratios. ``inherited``
    splits (from the parent version) are kept and count towards the ratios. The rest are dealt
    out per blur type so that every blur type's counts come as close to the ratios as the kept
    ones allow, in ``split_order``.
    """
    fixed, inherited = fixed or {}, inherited or {}
    out = {i: fixed[i] for i, _ in rows if i in fixed}
    strata: dict[str, list[str]] = defaultdict(list)
    for image_id, blur_type in rows:
        if image_id not in out:
            strata[blur_type].append(image_id)
    for ids in strata.values():
        kept = Counter(inherited[i] for i in ids if inherited.get(i) in ratios)
        new = sorted((i for i in ids if inherited.get(i) not in ratios), key=split_order)
        target = _largest_remainder(len(ids), ratios)
        need = {s: max(0, target[s] - kept[s]) for s in ratios}
        counts = need if sum(need.values()) == len(new) else _largest_remainder(len(new), need)
        for i in ids:
            if inherited.get(i) in ratios:
                out[i] = inherited[i]
        start = 0
        for s in ratios:
            for i in new[start:start + counts[s]]:
                out[i] = s
            start += counts[s]
    return out


@dataclass(frozen=True)
class SplitPlan:
    """Every image's split and where it came from (for the manifest and the card)."""

    ratios: dict[str, float]
    names: list[str]  # the ratios' splits, then any other split a file or the parent named
    assigned: dict[str, str]  # image id → split
    fixed: dict[str, str]  # image id → split, from the split file
    inherited: dict[str, str]  # image id → split in the parent version (if inherited)
    listed: dict[str, str]  # file name (case-folded) → split, every entry of the split file
    matched: set[str]  # the listed names that name an image of the release
    files: dict[str, dict]  # the split files read: {path: {sha256, bytes}}

    def counts(self) -> dict[str, int]:
        """{split: images}, every split named (0 for an empty one)."""
        return {s: sum(1 for v in self.assigned.values() if v == s) for s in self.names}

    def assigned_by(self) -> dict[str, int]:
        """How many images took their split from the split file, the parent, the ratios."""
        ids = self.assigned.keys()
        return {"split_file": len(self.fixed),
                "parent": sum(1 for i in ids if i not in self.fixed and i in self.inherited),
                "ratios": sum(1 for i in ids if i not in self.fixed and i not in self.inherited)}


def plan_splits(rows: Sequence[tuple[str, str, str]], ratios: dict[str, float],
                split_file: SplitFile | None, inherited: Mapping[str, str]) -> SplitPlan:
    """(image id, blur type, source path) of every image → its :class:`SplitPlan`."""
    listed: dict[str, str] = {}
    files: dict[str, dict] = {}
    if split_file is not None:
        listed, files = read_split_file(split_file, ratios)
    names_of = {image_id: Path(path).name.casefold() for image_id, _, path in rows}
    fixed = {i: listed[n] for i, n in names_of.items() if n in listed}
    matched = set(names_of.values()) & listed.keys()
    assigned = assign_splits([(i, b) for i, b, _ in rows], ratios, fixed, inherited)
    names = list(ratios) + sorted(set(assigned.values()) - ratios.keys())
    return SplitPlan(ratios, names, assigned, fixed, dict(inherited), listed, matched, files)

"""The dataset card: a Jinja template (``blurset.dataset_cards/template.md`` by default) filled
from a :class:`CardFacts`, Hugging Face YAML front matter included, and its blur degree
histogram."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
import pyarrow as pa
import yaml
from PIL import Image

from blurset.annotation.export import mask_iou
from blurset.model.release_format import BLUR_TYPES, HF_FEATURES, HISTOGRAM, IMAGE, SCHEMA
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.release.errors import ReleaseError
from blurset.pipeline.release.select import Candidate, Dropped, Selection
from blurset.pipeline.release.shards import WrittenShards
from blurset.pipeline.release.splits import SplitPlan
from blurset.pipeline.workspace import Workspace


@dataclass(frozen=True)
class CardFacts:
    """What the card tells about a release."""

    name: str
    version: str
    license: str
    parent: str | None
    selection: Selection
    splits: SplitPlan
    written: WrittenShards
    changelog: dict | None


def counts_table(rows: Sequence[Candidate], assigned: Mapping[str, str]) -> list[dict]:
    """Images per (split, blur type, source), sorted."""
    counts = Counter((assigned[c.image_id], c.blur_type, c.source) for c in rows)
    return [{"split": s, "blur_type": b, "source": src, "rows": n}
            for (s, b, src), n in sorted(counts.items())]


def card_context(catalog: Catalog, ws: Workspace, facts: CardFacts) -> dict:
    """The template's variables."""
    rows, shards, degrees = facts.selection.rows, facts.written.shards, facts.written.degrees
    sel, plan = facts.selection, facts.splits
    present = [s for s in plan.names if any(sh.split == s for sh in shards)]
    split_info = [{"name": s, "rows": sum(sh.rows for sh in shards if sh.split == s),
                   "bytes": sum(sh.bytes for sh in shards if sh.split == s),
                   "shards": sum(1 for sh in shards if sh.split == s)} for s in present]
    total_bytes = sum(sh.bytes for sh in shards)
    front = {
        "license": facts.license,
        "pretty_name": f"{facts.name} {facts.version}",
        "task_categories": ["image-segmentation"],
        "size_categories": [_size_category(len(rows))],
        "tags": ["blur-detection", "defocus-blur", "motion-blur"],
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in present]}],
        "dataset_info": {
            "features": [_yaml_feature(f.name, f.type) for f in SCHEMA],
            "splits": [{"name": s["name"], "num_bytes": s["bytes"], "num_examples": s["rows"]}
                       for s in split_info],
            "download_size": total_bytes,
            "dataset_size": total_bytes,
        },
    }
    sizes = Counter(f"{c.width}×{c.height}" for c in rows)
    by_type = {b: _stats([degrees[c.image_id] for c in rows if c.blur_type == b])
               for b in BLUR_TYPES}
    return {
        "front_matter": yaml.safe_dump(front, sort_keys=False, allow_unicode=True),
        "name": facts.name, "version": facts.version, "parent": facts.parent,
        "license": facts.license,
        "rows": len(rows), "splits": split_info, "ratios": plan.ratios,
        "counts": counts_table(rows, plan.assigned),
        "totals_by_split": {s["name"]: s["rows"] for s in split_info},
        "columns": [(f.name, str(f.type)) for f in SCHEMA],
        "width": _stats([c.width for c in rows], 0), "height": _stats([c.height for c in rows], 0),
        "common_sizes": sizes.most_common(5),
        "blur_degree": _stats([degrees[c.image_id] for c in rows]),
        "blur_degree_by_type": {b: s for b, s in by_type.items() if s},
        "histogram": HISTOGRAM,
        "provenance": _provenance(catalog, rows, sel.dropped),
        "dropped": dict(Counter(d.why for d in sel.dropped)),
        "candidates": sel.candidates,
        "annotation": _annotation_stats(catalog, ws, rows),
        "changelog": facts.changelog,
        "selection": {"sources": sel.sources, "projects": sel.projects,
                      "split_files": plan.files, "fixed": len(plan.fixed),
                      "inherited": plan.assigned_by()["parent"]},
        "shards": shards,
    }


def default_template() -> Path:
    """The dataset card template shipped with blurset (package data)."""
    return Path(str(resources.files("blurset.dataset_cards").joinpath("template.md")))


def render_card(template: Path, context: dict) -> str:
    if not template.is_file():
        raise ReleaseError(f"dataset card template {template} not found; pass template=PATH")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template.parent),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    return env.get_template(template.name).render(**context)


def histogram_png(rows: Sequence[Candidate], degrees: Mapping[str, float]) -> bytes:
    """Blur degree histogram, one colour per blur type (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    data = [[degrees[c.image_id] for c in rows if c.blur_type == b] for b in BLUR_TYPES]
    ax.hist(data, bins=np.linspace(0, 1, 21), stacked=True, label=list(BLUR_TYPES))
    ax.set_xlabel("blur degree (share of blurred pixels)")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    return next((label for bound, label in bounds if n < bound), "n>100M")


def _yaml_feature(name: str, t: pa.DataType) -> dict:
    if t == IMAGE:
        return {"name": name, "dtype": "image"}
    if pa.types.is_list(t):
        return {"name": name, "sequence": HF_FEATURES[name]["feature"]["dtype"]}
    return {"name": name, "dtype": HF_FEATURES[name]["dtype"]}


def _stats(values: Sequence[float], digits: int = 3) -> dict | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    q = np.quantile(arr, [0, 0.25, 0.5, 0.75, 1])

    def fmt(v: float) -> float | int:
        return round(float(v), digits) if digits else round(float(v))
    return {"n": len(arr), "mean": round(float(arr.mean()), max(digits, 1)),
            **{k: fmt(v) for k, v in zip(("min", "p25", "median", "p75", "max"), q, strict=True)}}


def _png_iou(a: bytes, b: bytes) -> float | None:
    """IoU of two mask PNGs, None when their sizes differ."""
    with Image.open(io.BytesIO(a)) as ia, Image.open(io.BytesIO(b)) as ib:
        x, y = np.asarray(ia.convert("L")), np.asarray(ib.convert("L"))
    return mask_iou(x, y) if x.shape == y.shape else None


def _annotation_stats(catalog: Catalog, ws: Workspace, rows: Sequence[Candidate]) -> dict:
    ann = [c for c in rows if c.mask_origin.startswith("annotation:")]
    per_annotator = Counter(a for c in ann for a in c.annotators)
    agreements = [c.agreement_iou for c in ann if c.agreement_iou is not None]
    prelabelled = [c for c in ann if c.prelabel]
    gt_pre = [c for c in prelabelled if c.prelabel and c.prelabel.startswith("ground-truth:")]
    accepted = 0
    for c in gt_pre:
        gt = [m for m in catalog.blur_masks(c.image_id) if m["origin"] == "ground-truth"]
        if gt:
            iou = _png_iou(ws.objects.read(c.mask_object), ws.objects.read(gt[-1]["object_path"]))
            accepted += iou is not None and iou >= 0.99
    by_model = Counter(c.prelabel for c in prelabelled)
    # model pre-labels: the IoU and acceptance that `annotate pull` measured for each task
    measured: dict[str, tuple[float, bool]] = {}
    other_ids = [c.image_id for c in prelabelled
                 if c.prelabel and not c.prelabel.startswith("ground-truth:")]
    if other_ids:
        for m in catalog.prelabel_measurements(other_ids):
            measured.setdefault(m.image_id, (m.iou, m.accepted))
    # the blur type in a release is what people chose; the model's guess was only shown to them
    hint_compared, hint_agreed = catalog.hint_agreement([c.image_id for c in ann]) if ann \
        else (0, 0)
    return {
        "annotated": len(ann),
        "ground_truth": len(rows) - len(ann),
        "hint_compared": hint_compared,
        "hint_agreed": hint_agreed,
        "annotators": sorted(per_annotator.items(), key=lambda kv: (-kv[1], kv[0])),
        "multi_annotated": len(agreements),
        "mean_agreement_iou": round(float(np.mean(agreements)), 4) if agreements else None,
        "prelabelled": len(prelabelled),
        "prelabel_models": sorted(by_model.items()),
        "gt_prelabelled": len(gt_pre),
        "gt_prelabel_accepted": accepted,
        "other_prelabelled": len(prelabelled) - len(gt_pre),
        "model_prelabel_measured": len(measured),
        "model_prelabel_accepted": sum(ok for _, ok in measured.values()),
        "model_prelabel_mean_iou": (round(float(np.mean([i for i, _ in measured.values()])), 4)
                                    if measured else None),
    }


def _provenance(catalog: Catalog, rows: Sequence[Candidate], dropped: Sequence[Dropped]) -> dict:
    in_release = Counter(c.source for c in rows)
    sources = []
    for s in catalog.list_sources():
        if s["name"] not in in_release and not any(d.source == s["name"] for d in dropped):
            continue
        paths = catalog.paths_of(s["name"])
        h = hashlib.sha256()
        for p in sorted(paths, key=lambda p: p["rel_path"]):
            h.update(f"{p['rel_path']}\t{p['image_id']}\n".encode())
        sources.append({"name": s["name"], "kind": s["kind"], "root": s["root"],
                        "paths": len(paths), "rows": in_release.get(s["name"], 0),
                        "fingerprint": h.hexdigest()})
    run = catalog.last_dedup_run()
    findings: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for f in catalog.findings("duplicate"):
        findings[(f["candidate_source"], f["candidate_path"])].append(f)
    by_ref: Counter = Counter()
    for d in dropped:
        if d.why != "duplicate":
            continue
        fs = findings.get((d.source, d.path), []) if d.path else []
        f = next((f for f in fs if run and f["reference_source"] == run["reference"]),
                 fs[0] if fs else None)
        key = (f["reference_source"], f["method"]) if f else ("(unknown)", d.reason)
        by_ref[key] += 1
    dedup = None
    if run is not None:
        dedup = {"run": run["id"], "reference": run["reference"], "created_at": run["created_at"],
                 "threshold": run["threshold"], "params": run["params"],
                 "dropped": [{"reference": r, "method": m, "count": n}
                             for (r, m), n in sorted(by_ref.items())],
                 "total": sum(by_ref.values())}
        # People's decisions on pairs the verifier found uncertain (or overruled): counted.
        summary = json.loads(run["summary"] or "{}")
        dedup["uncertain"] = summary.get("uncertain", 0)
        dedup["decisions"] = dict(Counter(d["decision"] for d in catalog.decisions().values()))
    return {"sources": sources, "dedup": dedup}

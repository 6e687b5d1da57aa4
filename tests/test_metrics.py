"""Blur-map metrics and evaluation: numbers against independent computations (numpy loops,
scikit-learn, PySODMetrics), perfect / inverted maps, edge cases, folder matching, reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import py_sod_metrics as sod
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from blurset.model import baselines
from blurset.model.evaluate import (
    EvalResult,
    baseline_map,
    evaluate_arrays,
    evaluate_dirs,
    format_table,
    resize_map,
    write_report,
)
from blurset.model.metrics import METRIC_KEYS, BlurMetrics, paired_bootstrap

# --------------------------------------------------------------------------------------------
# Fixtures: masks with blurred blobs, noisy maps that partly follow them


def _mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """uint8 0/255 mask with one or two blurred rectangles (255 = blurred)."""
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        mask[
            y0 : y0 + int(rng.integers(3, h // 2 + 2)), x0 : x0 + int(rng.integers(3, w // 2 + 2))
        ] = 255
    return mask


def _noisy_map(rng: np.random.Generator, mask: np.ndarray, signal: float, as_uint8: bool):
    values = signal * (mask > 128) + rng.random(mask.shape) * (1.2 - signal)
    if as_uint8:
        return np.clip(values / values.max() * 255, 0, 255).astype(np.uint8)
    return (values * 3.0 - 0.7).astype(np.float32)  # a float map off [0, 1], as logits are


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for i, shape in enumerate([(24, 32), (30, 20), (17, 41), (40, 40), (25, 25)]):
        mask = _mask(rng, shape)
        out.append((_noisy_map(rng, mask, signal=0.3 + 0.1 * i, as_uint8=i % 2 == 0), mask))
    return out


def _unit(pred: np.ndarray) -> np.ndarray:
    """Reference normalisation: [0, 1] scale, then per-image min-max unless constant."""
    x = pred.astype(np.float64) / (255.0 if pred.dtype == np.uint8 else 1.0)
    if x.max() > x.min():
        x = (x - x.min()) / (x.max() - x.min())
    return np.clip(x, 0, 1)


def _reference_classic(pairs) -> dict[str, np.ndarray]:
    """The classic toolbox protocol, written as the plain loop it describes."""
    precision, recall, fpr = np.zeros(256), np.zeros(256), np.zeros(256)
    for pred, gt in pairs:
        levels = np.floor(_unit(pred) * 255 + 0.5)
        blurred = gt > 128
        for t in range(256):
            positive = levels >= t
            tp = np.sum(positive & blurred)
            fp = np.sum(positive & ~blurred)
            precision[t] += tp / positive.sum() if positive.sum() else 0.0
            recall[t] += tp / blurred.sum() if blurred.sum() else 0.0
            fpr[t] += fp / (~blurred).sum() if (~blurred).sum() else 0.0
    n = len(pairs)
    precision, recall, fpr = precision / n, recall / n, fpr / n
    f = np.array(
        [1.3 * p * r / (0.3 * p + r) if p + r > 0 else 0.0 for p, r in zip(precision, recall)]
    )
    return {"precision": precision, "recall": recall, "fpr": fpr, "f": f}


def _run(pairs) -> dict:
    metrics = BlurMetrics()
    for pred, gt in pairs:
        metrics.step(pred, gt)
    return metrics.results()


def _rows(pairs) -> np.ndarray:
    """Each pair's classic sums, as ``paired_bootstrap`` takes them."""
    metrics = BlurMetrics()
    for pred, gt in pairs:
        metrics.step(pred, gt)
    return metrics.image_rows()


# --------------------------------------------------------------------------------------------
# Numbers against independent computations


def test_mae_is_the_mean_absolute_error_of_normalised_maps(pairs):
    expected = np.mean([np.mean(np.abs(_unit(p) - (g > 128))) for p, g in pairs])
    assert _run(pairs)["mae"] == pytest.approx(expected, abs=1e-12)


def test_classic_f_curves_match_a_plain_loop(pairs):
    result = _run(pairs)
    ref = _reference_classic(pairs)
    for key in ("precision", "recall", "fpr", "f"):
        np.testing.assert_allclose(result["curves"][key], ref[key], atol=1e-12, err_msg=key)
    assert result["max_f"] == pytest.approx(ref["f"].max(), abs=1e-12)
    assert result["mean_f"] == pytest.approx(ref["f"].mean(), abs=1e-12)
    assert result["best_threshold"] == int(np.argmax(ref["f"]))
    # AP as the documented step sum over the averaged curve, with R(256) = 0
    recall_next = np.append(ref["recall"][1:], 0.0)
    assert result["ap"] == pytest.approx(np.sum((ref["recall"] - recall_next) * ref["precision"]))


@pytest.mark.parametrize("index", [0, 1, 3])
def test_ap_and_auc_of_one_image_match_scikit_learn(pairs, index):
    pred, gt = pairs[index]
    result = _run([(pred, gt)])
    labels = (gt > 128).ravel()
    levels = np.floor(_unit(pred) * 255 + 0.5).ravel()
    # exact on the 256 levels the protocol thresholds ...
    assert result["auc"] == pytest.approx(roc_auc_score(labels, levels), abs=1e-12)
    assert result["ap"] == pytest.approx(average_precision_score(labels, levels), abs=1e-12)
    # ... and within the quantisation tolerance on the raw continuous map
    raw = pred.astype(np.float64).ravel()
    assert result["auc"] == pytest.approx(roc_auc_score(labels, raw), abs=5e-3)
    assert result["ap"] == pytest.approx(average_precision_score(labels, raw), abs=1e-2)


def test_s_measure_weighted_f_and_pysod_f_match_pysodmetrics(pairs):
    uint8_pairs = [
        (p if p.dtype == np.uint8 else (_unit(p) * 255).astype(np.uint8), g) for p, g in pairs
    ]
    sm, wfm, mae = sod.Smeasure(), sod.WeightedFmeasure(), sod.MAE()
    fm = sod.FmeasureV2(
        {"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3)}
    )
    for pred, gt in uint8_pairs:
        for metric in (sm, wfm, mae, fm):
            metric.step(pred, gt)  # PySODMetrics' own normalisation of uint8 inputs
    result = _run(uint8_pairs)
    assert result["s_measure"] == pytest.approx(sm.get_results()["sm"], abs=1e-12)
    assert result["weighted_f"] == pytest.approx(wfm.get_results()["wfm"], abs=1e-12)
    assert result["mae"] == pytest.approx(mae.get_results()["mae"], abs=1e-12)
    curve = fm.get_results()["fm"]["dynamic"]  # thresholds 255 .. 0
    assert result["max_f_pysod"] == pytest.approx(curve.max(), abs=1e-12)
    assert result["mean_f_pysod"] == pytest.approx(curve.mean(), abs=1e-12)
    np.testing.assert_allclose(result["curves"]["f_pysod"], curve[::-1], atol=1e-12)
    # the two conventions differ, but not by much on maps like these
    assert abs(result["max_f"] - result["max_f_pysod"]) < 0.1


# --------------------------------------------------------------------------------------------
# Perfect, inverted, polarity flags


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    out = np.zeros((30, 40), np.uint8)
    out[5:20, 8:30] = 255
    return out


def test_perfect_map_scores_perfectly(mask):
    for pred in (mask, mask > 128, mask.astype(np.float32) / 255):
        result = _run([(pred, mask)])
        assert result["mae"] == 0
        assert result["max_f"] == pytest.approx(1.0)
        assert result["ap"] == pytest.approx(1.0)
        assert result["auc"] == pytest.approx(1.0)
        assert result["s_measure"] == pytest.approx(1.0, abs=1e-9)
        assert result["weighted_f"] == pytest.approx(1.0)


def test_inverted_map_scores_poorly_and_the_flags_flip_it_back(mask):
    inverted = 255 - mask
    bad = evaluate_arrays([(inverted, mask)]).metrics
    assert bad["mae"] == 1 and bad["auc"] == 0 and bad["s_measure"] == 0
    assert bad["max_f"] < 0.4 and bad["weighted_f"] == 0
    for result in (
        evaluate_arrays([(inverted, mask)], invert_pred=True),
        evaluate_arrays([(mask, 255 - mask)], invert_gt=True),
        evaluate_arrays([(mask.astype(np.float32) / 255, ~(mask > 128))], invert_gt=True),
    ):
        assert result.metrics["mae"] == 0
        assert result.metrics["max_f"] == pytest.approx(1.0)
        assert result.metrics["auc"] == pytest.approx(1.0)


def test_paired_bootstrap_scores_each_draw_as_a_plain_report(pairs):
    rng = np.random.default_rng(3)
    other = [(_noisy_map(rng, gt, signal=0.35, as_uint8=False), gt) for _, gt in pairs]
    rows = {"ref": _rows(pairs), "other": _rows(other)}
    whole = {name: _run(p) for name, p in (("ref", pairs), ("other", other))}
    for seed in (0, 1, 2):
        boot = paired_bootstrap(rows, "ref", rounds=1, seed=seed)["other"]
        draw = np.random.default_rng(seed).integers(0, len(pairs), size=(1, len(pairs)))[0]
        ref, oth = _run([pairs[i] for i in draw]), _run([other[i] for i in draw])
        # one round: the interval is that draw's difference, scored the plain way
        assert boot["max_f_diff_lo"] == pytest.approx(ref["max_f"] - oth["max_f"])
        assert boot["max_f_diff_hi"] == pytest.approx(ref["max_f"] - oth["max_f"])
        assert boot["mae_diff_lo"] == pytest.approx(ref["mae"] - oth["mae"])
        assert boot["max_f_diff"] == pytest.approx(whole["ref"]["max_f"] - whole["other"]["max_f"])
        assert boot["mae_diff"] == pytest.approx(whole["ref"]["mae"] - whole["other"]["mae"])
        assert boot["wins"] == float(ref["max_f"] > oth["max_f"] and ref["mae"] < oth["mae"])


def test_paired_bootstrap_separates_a_clear_lead_from_none(pairs):
    perfect = [(gt, gt) for _, gt in pairs]
    rows = {"perfect": _rows(perfect), "noisy": _rows(pairs),
            "same": _rows(perfect)}
    boot = paired_bootstrap(rows, "perfect", rounds=500)
    assert boot["noisy"]["max_f_diff_lo"] > 0 and boot["noisy"]["mae_diff_hi"] < 0
    assert boot["noisy"]["wins"] == 1.0
    # an identical method: every difference is 0, and a tie is not a win
    assert boot["same"]["max_f_diff_lo"] == boot["same"]["max_f_diff_hi"] == 0
    assert boot["same"]["wins"] == 0 and boot["all"]["wins"] == 0
    del rows["same"]
    assert paired_bootstrap(rows, "perfect", rounds=500)["all"]["wins"] == 1.0


def test_paired_bootstrap_refuses_unpaired_rows(pairs):
    rows = _rows(pairs)
    with pytest.raises(ValueError, match="same images for all"):
        paired_bootstrap({"a": rows, "b": rows[:-1]}, "a")
    with pytest.raises(ValueError, match="reference 'c' is not among"):
        paired_bootstrap({"a": rows, "b": rows}, "c")
    with pytest.raises(ValueError, match="rounds must be"):
        paired_bootstrap({"a": rows, "b": rows}, "a", rounds=0)


def test_edge_cases_give_finite_documented_numbers():
    empty, full = np.zeros((12, 16), np.uint8), np.full((12, 16), 255, np.uint8)
    edge = np.zeros((12, 16), np.uint8)
    edge[:, -1] = 255  # centroid on the last column: an empty S-measure quadrant
    rng = np.random.default_rng(3)
    result = _run(
        [
            (np.zeros((12, 16), np.uint8), empty),  # perfect on an all-sharp mask
            (full, full),  # perfect constant map on an all-blurred mask: kept, not zeroed
            (np.full((12, 16), 0.3, np.float32), edge),
            (rng.random((12, 16)), edge),
        ]
    )
    assert result["n_images"] == 4 and result["n_empty_gt"] == 1 and result["n_full_gt"] == 1
    for key in (*METRIC_KEYS, "max_f_pysod", "mean_f_pysod"):
        assert np.isfinite(result[key]), key
        assert 0 <= result[key] <= 1, key
    alone = _run([(np.zeros((12, 16), np.uint8), empty)])
    assert alone["mae"] == 0 and alone["s_measure"] == 1
    assert alone["max_f"] == 0  # R = 0 on a mask with no blurred pixel, as the toolboxes
    assert _run([(full, full)])["mae"] == 0


def test_step_refuses_bad_input(mask):
    metrics = BlurMetrics()
    with pytest.raises(ValueError, match=r"\(15, 20\).*\(30, 40\)"):
        metrics.step(np.zeros((15, 20), np.uint8), mask)
    with pytest.raises(TypeError, match="int64"):
        metrics.step(mask, mask.astype(np.int64))
    with pytest.raises(ValueError, match="NaN"):
        metrics.step(np.full(mask.shape, np.nan), mask)
    with pytest.raises(ValueError, match="2-D"):
        metrics.step(np.zeros((30, 40, 3), np.uint8), np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="no image"):
        metrics.results()


def test_resize_map_is_bilinear_on_the_unit_scale():
    small = np.full((10, 12), 200, np.uint8)
    big = resize_map(small, (30, 36))
    assert big.shape == (30, 36) and big.dtype == np.float32
    np.testing.assert_allclose(big, 200 / 255, atol=1e-6)
    assert resize_map(small, (10, 12)) is small


# --------------------------------------------------------------------------------------------
# Folders


def _write_pair_dirs(root: Path, pairs) -> tuple[Path, Path]:
    pred_dir, gt_dir = root / "pred", root / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for i, (pred, gt) in enumerate(pairs):
        Image.fromarray(gt).save(gt_dir / f"img{i}.png")
        if i == 1:
            np.save(pred_dir / f"img{i}.npy", pred.astype(np.float32))  # full size, float
        else:  # a half-size 8-bit map: resized back on load
            unit = (_unit(pred) * 255).astype(np.uint8)
            h, w = gt.shape
            Image.fromarray(unit).resize((w // 2, h // 2), Image.Resampling.BILINEAR).save(
                pred_dir / f"img{i}.png"
            )
    (pred_dir / "notes.txt").write_text("not a map")
    return pred_dir, gt_dir


def test_evaluate_dirs_matches_by_stem_and_resizes(tmp_path, pairs):
    pred_dir, gt_dir = _write_pair_dirs(tmp_path, pairs[:3])
    result = evaluate_dirs(pred_dir, gt_dir, name="noisy")
    assert isinstance(result, EvalResult) and result.name == "noisy"
    assert result.stems == ("img0", "img1", "img2")
    assert [p.name for p in result.ignored] == ["notes.txt"]
    # the same numbers as the arrays the files hold, each resized to its mask
    expected = evaluate_arrays(
        (
            np.load(pred_dir / "img1.npy")
            if i == 1
            else np.asarray(Image.open(pred_dir / f"img{i}.png")),
            g,
        )
        for i, (_, g) in enumerate(pairs[:3])
    )
    for key in METRIC_KEYS:
        assert result.metrics[key] == pytest.approx(expected.metrics[key], abs=1e-12), key
    assert result.metrics["max_f"] > 0.6  # the maps do follow the masks


def test_evaluate_dirs_names_unmatched_stems(tmp_path, pairs):
    pred_dir, gt_dir = _write_pair_dirs(tmp_path, pairs[:3])
    (pred_dir / "img2.png").unlink()
    with pytest.raises(ValueError, match=r"2 of 3 masks matched.*1 mask\(s\) have no map.*'img2'"):
        evaluate_dirs(pred_dir, gt_dir)
    Image.fromarray(pairs[2][1]).save(pred_dir / "img2.png")
    Image.fromarray(pairs[2][1]).save(pred_dir / "extra.png")
    with pytest.raises(ValueError, match=r"1 map\(s\) have no mask.*'extra'.*allow_extra_preds"):
        evaluate_dirs(pred_dir, gt_dir)
    result = evaluate_dirs(pred_dir, gt_dir, allow_extra_preds=True)
    assert result.extra_preds == ("extra",) and len(result.stems) == 3


def test_evaluate_dirs_refuses_ambiguous_stems_and_names_unreadable_files(tmp_path, pairs):
    pred_dir, gt_dir = _write_pair_dirs(tmp_path, pairs[:3])
    (pred_dir / "img2.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"img2\.png vs .*img2\.png: cannot read"):
        evaluate_dirs(pred_dir, gt_dir)
    np.save(pred_dir / "img1.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"img1\.npy.*2-D"):
        evaluate_dirs(pred_dir, gt_dir)
    Image.fromarray(pairs[0][1]).save(pred_dir / "img0.bmp")
    with pytest.raises(ValueError, match="two files with the stem 'img0'"):
        evaluate_dirs(pred_dir, gt_dir)


# --------------------------------------------------------------------------------------------
# Reports


def test_write_report_writes_json_csv_and_figures(tmp_path, pairs, mask):
    pred_dir, gt_dir = _write_pair_dirs(tmp_path, pairs[:3])
    out = tmp_path / "report"
    noisy = evaluate_dirs(pred_dir, gt_dir, name="noisy", out_dir=out)
    assert noisy.report_dir == out
    results = {"noisy": noisy, "perfect": _run([(mask, mask)])}
    with pytest.raises(FileExistsError, match="force=True"):
        write_report(results, out)
    paths = write_report(results, out, force=True)

    document = json.loads(paths["metrics.json"].read_text())
    assert set(document["methods"]) == {"noisy", "perfect"}
    for entry in document["methods"].values():
        assert set(METRIC_KEYS) <= set(entry)
        for csv_name in entry["curves"].values():
            assert (out / csv_name).is_file()
    assert document["methods"]["noisy"]["sources"]["gt_dir"] == str(gt_dir)
    assert document["methods"]["perfect"]["max_f"] == pytest.approx(1.0)

    for name, columns in [
        ("pr_curve.csv", {"precision", "recall", "f"}),
        ("f_curve.csv", {"f", "f_pysod"}),
        ("roc_curve.csv", {"fpr", "tpr"}),
    ]:
        with paths[name].open() as handle:
            rows = list(csv.DictReader(handle))
        assert columns <= set(rows[0]), name
        for method in ("noisy", "perfect"):
            thresholds = [int(r["threshold"]) for r in rows if r["method"] == method]
            assert thresholds == list(range(256)), (name, method)
    for name in ("pr_curve.png", "f_curve.png", "roc_curve.png"):
        with Image.open(paths[name]) as im:
            assert im.format == "PNG" and im.width > 100


def test_format_table_has_a_row_per_method(pairs, mask):
    table = format_table({"noisy": _run(pairs), "perfect": evaluate_arrays([(mask, mask)])})
    lines = table.splitlines()
    assert len(lines) == 4
    assert "maxF" in lines[0] and "MAE" in lines[0] and "AUC" in lines[0]
    assert lines[3].startswith("perfect") and " 1.000 " in lines[3] and lines[3].endswith("1")


# --------------------------------------------------------------------------------------------
# Baseline maps


def test_baseline_map_dispatches_to_the_baselines():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        baseline_map("laplacian", image), baselines.laplacian_blur_map(image)
    )
    np.testing.assert_array_equal(
        baseline_map("lbp", image, window=11), baselines.lbp_blur_map(image, window=11)
    )
    with pytest.raises(ValueError, match="laplacian, lbp"):
        baseline_map("sobel", image)

"""Verification of a pair the hash search found: align the two thumbs, then judge the pair on the
evidence it still carries. Pure functions over thumbs and affine warps; no catalog, no search.

A pair is ``duplicate`` on one of two kinds of evidence, ``uncertain`` when its pixels agree but
carry too little to decide (a person then does), ``rejected`` otherwise:

- **fine**: the band-passed thumbs agree cell by cell (median correlation ≥ ``min_score``) and
  the agreement is significant for the number of independent samples the band holds (Fisher z
  × √samples ≥ ``min_z``): a smooth field holds few, so one score means less there;
- **coarse**: one affine intensity map explains the smoothed query from the template (median
  cell residual small in grey levels, R² high), and what is left of the image once its plane is
  removed (its structure) is there and correlates; a hash distance of 0 lowers that bar.

Both need a warp that a copy edit makes; coarse evidence also needs the 8×8 colour grids, when
both images have colour, to agree up to one saturation gain (a grey thumb cannot tell two
gradients of different hue apart), and without colour it needs a stricter grey bar. The design and what still cannot be told apart: ``docs/dedup.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from blurset.pipeline.stages.hashing import THUMB_SIDE

_S = THUMB_SIDE
_CELLS = 4  # the cell grid is _CELLS × _CELLS
_C = 16  # side of the grid colours are compared on (the stored chroma is 8×8: 16 is plenty)
_CS = _S // _C
_ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 15, 1e-2)
_ECC_GAUSS = 5
_BAND = (1.0, 4.0)  # DoG sigmas of the fine band, thumb pixels; the smooth thumb is the first
_FLAGS = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP

DUPLICATE, UNCERTAIN, REJECTED = "duplicate", "uncertain", "rejected"


@dataclass(frozen=True)
class Bars:
    """What a pair must show. The defaults are the ones ``find_duplicates`` uses."""

    min_score: float = 0.7  # fine: median cell correlation of the band-passed thumbs
    min_z: float = 7.0  # fine: atanh(score) · √(independent samples - 3)
    min_r2: float = 0.98  # coarse: share of the smoothed query an intensity map explains
    max_residual: float = 1.5  # coarse: median cell RMS residual, template grey levels
    min_structure: float = 1.5  # coarse: std of the smoothed thumb less its plane, grey levels
    min_rho: float = 0.9  # coarse: correlation of the two thumbs less their planes
    min_rho_at_zero: float = 0.8  # coarse, hash distance 0
    min_rho_grey: float = 0.97  # coarse without colour to compare
    max_residual_grey: float = 1.0  # coarse without colour to compare
    max_colour_error_flat: float = 0.08  # flat: colour and intensity map agree to the noise...
    max_residual_flat: float = 0.6  # ... floor: a duplicate after all
    max_colour_error_coarse: float = 0.15  # coarse: colour residual of one gain, share of it
    min_colour: float = 3.0  # colour grids weaker than this (RMS, Cb/Cr levels) are grey
    max_colour_error_fine: float = 0.9  # fine: colours this far apart veto the band...
    max_colour_error_fine_contradicted: float = 0.5  # ... and so do these, when the coarse
    min_r2_fine: float = 0.5  # ... structure fits one map (R² at least this) yet
    min_rho_fine: float = 0.7  # ... disagrees (rho below this)
    max_z_weak_fine: float = 9.0  # grey fine band this weak (few samples: smooth)...
    max_mismatch_weak_fine: float = 4.0  # ... is denied by coarse structures this far apart
    max_residual_weak_fine: float = 3.0  # ... that one intensity map does not bring together
    max_mismatch: float = 1.2  # coarse: RMS difference of the two structures, grey levels
    max_mismatch_grey: float = 0.8  # coarse without colour to compare
    min_score_with_coarse: float = 0.3  # fine band agreeing below its own bars, yet...
    min_z_with_coarse: float = 4.0  # ... significantly, makes a coarse fit a duplicate
    min_score_for_ecc: float = 0.1  # fine band a pair needs to be refined by ECC (or a fit)
    max_colour_error_for_ecc: float = 0.9  # colours farther apart are not refined by ECC...
    min_score_for_ecc_far_colour: float = 0.3  # ... unless the fine band is at least this
    scale_range: tuple[float, float] = (0.7, 1.4)  # per-axis scale of the warp
    max_shear: float = 0.15  # off-diagonal terms of the warp's linear part
    min_coverage: float = 0.8  # one image must cover this share of the other


BARS = Bars()


@dataclass(frozen=True)
class Prepared:
    """One thumb ready to be compared: grey, its fine band, its smooth version, its colour."""

    grey: np.ndarray  # (S, S) float32
    band: np.ndarray  # (S, S) DoG σ 1/4
    smooth: np.ndarray  # (S, S) Gaussian σ 1
    chroma: np.ndarray | None  # (C, C, 2) float32 Cb/Cr - 128 on the colour grid, or None
    samples: float  # independent samples the fine band holds over the whole thumb
    structure: float  # std of the smooth thumb less its best plane
    colour: float  # RMS of the chroma (0 for grey)


@dataclass(frozen=True)
class Evidence:
    """What one alignment of a pair shows (NaN where not measured)."""

    plausible: bool
    fine: float = float("nan")
    z: float = float("nan")
    r2: float = float("nan")
    residual: float = float("nan")
    structure: float = float("nan")
    rho: float = float("nan")
    colour_error: float | None = None  # None: no colour to compare


@dataclass(frozen=True)
class Verdict:
    """``verdict`` with the ``evidence`` kind that decided it (fine, coarse, flat, colour, warp,
    none) and its ``score`` (-1…1: fine-band or structure correlation)."""

    verdict: str
    evidence: str
    score: float

    @property
    def duplicate(self) -> bool:
        return self.verdict == DUPLICATE


_RANK = {DUPLICATE: 2, UNCERTAIN: 1, REJECTED: 0}


# --------------------------------------------------------------------------------------------
# Preparation


def prepare(thumb: np.ndarray, chroma: np.ndarray | None = None, *,
            mirrored: bool = False) -> Prepared:
    """A (S, S) uint8 thumb and its optional (8, 8, 2) uint8 chroma grid, ready to compare."""
    grey = thumb.astype(np.float32)
    if mirrored:
        grey = np.ascontiguousarray(grey[:, ::-1])
    smooth, band = _smooth_and_band(grey)
    colour_grid = None
    colour = 0.0
    if chroma is not None:
        c = chroma.astype(np.float32) - 128.0
        if mirrored:
            c = c[:, ::-1]
        colour_grid = cv2.resize(np.ascontiguousarray(c), (_C, _C), interpolation=cv2.INTER_LINEAR)
        colour = float(np.sqrt(np.mean(c * c)))
    whole = _WHOLE
    deplaned = _deplane(smooth, whole)
    return Prepared(grey=grey, band=band, smooth=smooth, chroma=colour_grid,
                    samples=_samples(band, whole.bool),
                    structure=float(np.sqrt((deplaned * deplaned).sum() / whole.n)),
                    colour=colour)


_PAD = 12  # > 3 × the widest band sigma


def _smooth_and_band(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The thumb smoothed at σ 1 and its DoG σ 1/4 band. The thumb is padded by odd reflection
    (2·edge − mirror), which continues a ramp straight: a gradient sky has no band at its
    border (a mirror pad bends every ramp there, and two skies then correlate)."""
    mirror = cv2.copyMakeBorder(grey, _PAD, _PAD, _PAD, _PAD, cv2.BORDER_REFLECT_101)
    edge = cv2.copyMakeBorder(grey, _PAD, _PAD, _PAD, _PAD, cv2.BORDER_REPLICATE)
    padded = 2.0 * edge - mirror
    inner = (slice(_PAD, -_PAD), slice(_PAD, -_PAD))
    smooth = cv2.GaussianBlur(padded, (0, 0), _BAND[0])[inner]
    return smooth, smooth - cv2.GaussianBlur(padded, (0, 0), _BAND[1])[inner]


def _samples(band: np.ndarray, mask: np.ndarray) -> float:
    """Independent samples in a band-passed field: area / correlation area (1/ℓ² from the
    ratio of gradient to signal variance, as for a Gaussian random field)."""
    values = band[mask]
    var = float(values.var())
    if var < 1e-9:
        return 0.0
    gy, gx = np.gradient(band)
    density = float((gx[mask] ** 2 + gy[mask] ** 2).mean()) / (2.0 * var)
    return float(mask.sum()) * density / (2.0 * np.pi)


_PLANE = np.stack([np.ones((_S, _S), np.float32),
                   *np.meshgrid(np.linspace(-1, 1, _S, dtype=np.float32),
                                np.linspace(-1, 1, _S, dtype=np.float32), indexing="xy")])


@dataclass(frozen=True)
class _Mask:
    """Where the warped query covers the template, in the forms the measures need: ``bool``,
    ``weight`` (float32 0/1), pixel count ``n``, the inverse normal matrix of the plane fit
    over it (``plane``), and the colour grid's share (``colour``, bool (C, C))."""

    bool: np.ndarray
    weight: np.ndarray
    n: float
    plane: np.ndarray | None
    colour: np.ndarray


def _mask(inside: np.ndarray) -> _Mask:
    weight = inside.astype(np.float32)
    gram = np.einsum("ihw,jhw->ij", _PLANE * weight, _PLANE).astype(np.float64)
    try:
        plane = np.linalg.inv(gram)
    except np.linalg.LinAlgError:  # a degenerate mask (one row or column): no plane to fit
        plane = None
    colour = inside.reshape(_C, _CS, _C, _CS).all(axis=(1, 3))
    for a in (inside, weight, colour):
        a.flags.writeable = False
    return _Mask(inside, weight, float(weight.sum()), plane, colour)


def _deplane(values: np.ndarray, mask: _Mask) -> np.ndarray:
    """``values`` less their least-squares plane over ``mask``, zero outside it ((S, S)).
    Sums over the whole thumb with 0/1 weights: no boolean indexing, one 3×3 product."""
    wv = values * mask.weight
    if mask.plane is None:
        return (values - float(wv.sum()) / max(mask.n, 1.0)) * mask.weight
    coef = mask.plane @ np.einsum("ihw,hw->i", _PLANE, wv).astype(np.float64)
    return (values - np.einsum("i,ihw->hw", coef.astype(np.float32), _PLANE)) * mask.weight


_WHOLE = _mask(np.ones((_S, _S), bool))


# --------------------------------------------------------------------------------------------
# One alignment


def _warp_ok(warp: np.ndarray, inside: np.ndarray, bars: Bars) -> bool:
    linear = warp[:, :2]
    covered = float(inside.mean())  # of the template, by the query
    coverage = max(covered, min(1.0, covered * abs(float(np.linalg.det(linear)))))
    return bool(bars.scale_range[0] <= min(linear[0, 0], linear[1, 1])
                and max(linear[0, 0], linear[1, 1]) <= bars.scale_range[1]
                and max(abs(linear[0, 1]), abs(linear[1, 0])) <= bars.max_shear
                and coverage >= bars.min_coverage)


def _cells(x: np.ndarray) -> np.ndarray:
    c = _S // _CELLS
    return x.reshape(_CELLS, c, _CELLS, c)


def _cell_median_correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Median over the grid cells (at least half valid) of the correlation of a and b there
    (``valid``: float32 0/1 weights)."""
    u, w = a * valid, b * valid
    c = _S // _CELLS
    sums = np.stack([valid, u, w, u * w, u * u, w * w]).reshape(
        6, _CELLS, c, _CELLS, c).sum(axis=(2, 4))  # one pass over the six fields
    count, su, sw = sums[0], sums[1], sums[2]
    safe = np.maximum(count, 1.0)
    cov = sums[3] - su * sw / safe
    var_u = sums[4] - su * su / safe
    var_w = sums[5] - sw * sw / safe
    norm = np.sqrt(np.maximum(var_u, 0.0) * np.maximum(var_w, 0.0))
    corr = np.where(norm > 1e-9, cov / np.maximum(norm, 1e-9), 0.0)
    used = count >= 0.5 * c * c
    return float(np.median(corr[used])) if used.any() else 0.0


def _align(query: np.ndarray, warp: np.ndarray) -> np.ndarray:
    return cv2.warpAffine(query, warp, (_S, _S), flags=_FLAGS, borderMode=cv2.BORDER_REPLICATE)


_INSIDE_CACHE: dict[bytes, _Mask] = {}  # the search's 81 initial warps, and a few more


def _inside(warp: np.ndarray) -> _Mask:
    """Where the warped query covers the template (read-only; cached per initial warp)."""
    key = warp.astype(np.float32).tobytes()
    found = _INSIDE_CACHE.get(key)
    if found is not None:
        return found
    inside = _mask(cv2.warpAffine(np.ones((_S, _S), np.float32), warp, (_S, _S), flags=_FLAGS,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.99)
    if len(_INSIDE_CACHE) < 512:  # the initial warps come first; ECC's are one-offs
        _INSIDE_CACHE[key] = inside
    return inside


def measure(template: Prepared, query: Prepared, warp: np.ndarray, bars: Bars = BARS, *,
            full: bool = True) -> Evidence:
    """The evidence of ``query`` warped onto ``template`` by ``warp`` ((2, 3), inverse map).

    With ``full=False`` the coarse measures are skipped where :func:`decide` would not look at
    them: when the fine band already makes a duplicate (and the colours do not call for a look
    at the coarse structure), and when the colours reject the pair whatever the structure
    (beyond ``max_colour_error_fine`` with a passing band, beyond ``max_colour_error_coarse``
    without one).
    """
    mask = _inside(warp)
    inside = mask.bool
    if mask.n < _S * _S // 4 or not _warp_ok(warp, inside, bars):
        return Evidence(plausible=False)
    aligned = _align(query.grey, warp)
    smooth, band = _smooth_and_band(aligned)
    fine = _cell_median_correlation(template.band, band, mask.weight)
    samples = min(template.samples, query.samples) * mask.n / (_S * _S)
    z = float(np.arctanh(min(max(fine, -0.9999), 0.9999)) * np.sqrt(max(samples - 3.0, 1.0)))
    colour_error = _colour_error(template, query, warp, mask, bars)
    if not full:
        fine_passes = fine >= bars.min_score and z >= bars.min_z
        if colour_error is None:
            decided = fine_passes and z >= bars.max_z_weak_fine
        elif fine_passes:
            decided = (colour_error <= bars.max_colour_error_fine_contradicted
                       or colour_error > bars.max_colour_error_fine)
        else:
            decided = colour_error > bars.max_colour_error_coarse
        if decided:
            return Evidence(True, fine, z, colour_error=colour_error)
    return _coarse(template, smooth, mask, fine, z, colour_error)


def _coarse(template: Prepared, smooth: np.ndarray, mask: _Mask, fine: float, z: float,
            colour_error: float | None) -> Evidence:
    """The coarse measures of the aligned query's ``smooth`` thumb against the template's.
    Full (S, S) arrays with 0/1 weights throughout (boolean indexing costs more than the
    arithmetic at this size)."""
    w, n = mask.weight, mask.n
    t = template.smooth
    t_mean = float((t * w).sum()) / n
    scale = float(np.sqrt(max(float((((t - t_mean) * w) ** 2).sum()) / n, 0.0)))
    if scale < 1e-6:
        return Evidence(True, fine, z, r2=0.0, residual=float("inf"), structure=0.0, rho=0.0,
                        colour_error=colour_error)
    # Photometric relation: one smooth monotone intensity map (quadratic: gamma bends it),
    # judged by its median cell residual.
    u = (t - t_mean) / scale
    uw = u * w
    u2w = uw * u
    moments = [n, float(uw.sum()), float(u2w.sum()), float((u2w * u).sum()),
               float((u2w * u2w).sum())]
    gram = np.array([[moments[i + j] for j in range(3)] for i in range(3)])
    aw = smooth * w
    rhs = np.array([float(aw.sum()), float((aw * u).sum()), float((aw * u * u).sum())])
    try:
        coef = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:  # u takes at most two values over the mask: no curve
        coef = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    u_in = u[mask.bool]
    ends = coef[1] + 2.0 * coef[2] * np.array([float(u_in.min()), float(u_in.max())])
    gain = float(coef[1] + 2.0 * coef[2] * moments[1] / n) / scale  # mean slope per grey level
    if gain <= 1e-3 or float(ends.min()) <= 0.0:  # not a monotone brightening/darkening
        return Evidence(True, fine, z, r2=0.0, residual=float("inf"), structure=0.0, rho=0.0,
                        colour_error=colour_error)
    mapped = (coef[0] + coef[1] * u + coef[2] * u * u).astype(np.float32)
    residual_map = (smooth - mapped) * w
    per_cell = _cells(residual_map * residual_map).sum(axis=(1, 3))
    counts = _cells(w).sum(axis=(1, 3))
    used = counts >= 0.5 * (_S // _CELLS) ** 2
    cell_ms = per_cell[used] / counts[used] if used.any() else np.array([np.inf])
    residual_a = float(np.sqrt(np.median(cell_ms)))
    a_mean = float(aw.sum()) / n
    var_a = float((((smooth - a_mean) * w) ** 2).sum()) / n
    r2 = 1.0 - residual_a ** 2 / var_a if var_a > 1e-9 else 0.0
    # Structure: what is left of each (the template through the map) once its plane is removed,
    # and how the two correlate.
    d_t, d_a = _deplane(mapped, mask), _deplane(smooth, mask)
    ss_t, ss_a = float((d_t * d_t).sum()), float((d_a * d_a).sum())
    structure = float(np.sqrt(min(ss_t, ss_a) / n)) / gain
    norm = float(np.sqrt(ss_t * ss_a))
    rho = float((d_t * d_a).sum() / norm) if norm > 1e-9 else 0.0
    return Evidence(True, fine, z, r2=r2, residual=residual_a / gain, structure=structure,
                    rho=rho, colour_error=colour_error)


def _colour_error(template: Prepared, query: Prepared, warp: np.ndarray, mask: _Mask,
                  bars: Bars) -> float | None:
    """RMS of the query's colour less one gain × the template's, as a share of the query's
    colour, on the colour grid; None when either image is (nearly) grey."""
    if (template.chroma is None or query.chroma is None
            or min(template.colour, query.colour) < bars.min_colour):
        return None
    # The warp in colour-grid coordinates: a thumb pixel x is grid pixel (x - c) / _CS.
    c = 0.5 * (_CS - 1)
    linear = warp[:, :2]
    warp_c = np.concatenate([linear, ((linear.sum(axis=1) * c + warp[:, 2] - c) / _CS)[:, None]],
                            axis=1).astype(np.float32)
    inside = mask.colour
    c_a = cv2.warpAffine(query.chroma, warp_c, (_C, _C), flags=_FLAGS,
                         borderMode=cv2.BORDER_REPLICATE)[inside].ravel()
    c_t = template.chroma[inside].ravel()
    aa, ta, tt = float(c_a @ c_a), float(c_t @ c_a), float(c_t @ c_t)
    gain = min(max(ta / max(tt, 1e-9), 0.3), 3.0)  # saturation: contrast, brightness, gamma
    rest = aa - 2.0 * gain * ta + gain * gain * tt  # |c_a - gain · c_t|²
    return float(np.sqrt(max(rest, 0.0) / max(aa, 1e-9)))


def decide(ev: Evidence, distance: int, bars: Bars = BARS) -> Verdict:
    """The verdict of one alignment's evidence (see module doc)."""
    if not ev.plausible:
        return Verdict(REJECTED, "warp", 0.0)
    colour = ev.colour_error
    if ev.fine >= bars.min_score and ev.z >= bars.min_z and not _fine_contradicted(ev, bars):
        return Verdict(DUPLICATE, "fine", float(ev.fine))
    if colour is not None and colour > bars.max_colour_error_coarse:
        return Verdict(REJECTED, "colour", float(ev.fine))
    if ev.r2 >= bars.min_r2 and ev.residual <= bars.max_residual:
        grey = colour is None  # no colour to tell smooth look-alikes apart: stricter bars
        # Structure on both sides that one map does not bring together: a look-alike.
        mismatch = ev.structure * float(np.sqrt(2.0 * max(0.0, 1.0 - ev.rho)))
        if mismatch > (bars.max_mismatch_grey if grey else bars.max_mismatch):
            verdict = REJECTED if ev.structure >= bars.min_structure else UNCERTAIN
            return Verdict(verdict, "structure" if verdict == REJECTED else "flat", float(ev.rho))
        if ev.fine >= bars.min_score_with_coarse and ev.z >= bars.min_z_with_coarse:
            return Verdict(DUPLICATE, "coarse", float(ev.rho))  # two weaker kinds agree
        min_rho = bars.min_rho_grey if grey else bars.min_rho
        if (ev.structure >= bars.min_structure and ev.rho >= min_rho
                and (not grey or ev.residual <= bars.max_residual_grey)):
            return Verdict(DUPLICATE, "coarse", float(ev.rho))
        if distance == 0 and ev.rho >= max(min_rho, bars.min_rho_at_zero) and not grey:
            return Verdict(DUPLICATE, "coarse", float(ev.rho))
        if (not grey and colour <= bars.max_colour_error_flat
                and ev.residual <= bars.max_residual_flat):
            return Verdict(DUPLICATE, "colour", float(ev.rho))
        return Verdict(UNCERTAIN, "flat", float(ev.rho))
    score = ev.fine if np.isfinite(ev.fine) else 0.0
    return Verdict(REJECTED, "none", float(score))


def _fine_contradicted(ev: Evidence, bars: Bars) -> bool:
    """Fine agreement that colour and coarse structure both deny: features of two smooth fields
    that sit on the same lattice (the interpolation knots of upscaled fields, the bumps of a
    horizon drawn through them) line up in the band whatever the fields hold. Clipping edits
    spoil the colour and the intensity map of true copies, hence the high bars; a grey pair has
    no colour, so there a weak band (few samples) is denied by the coarse structure alone."""
    colour = ev.colour_error
    if colour is None:
        if not (ev.z < bars.max_z_weak_fine and np.isfinite(ev.residual)):
            return False
        mismatch = ev.structure * float(np.sqrt(2.0 * max(0.0, 1.0 - ev.rho)))
        return bool(mismatch > bars.max_mismatch_weak_fine
                    and ev.residual > bars.max_residual_weak_fine)
    return bool(colour > bars.max_colour_error_fine
                or (colour > bars.max_colour_error_fine_contradicted and ev.r2 >= bars.min_r2_fine
                    and ev.rho < bars.min_rho_fine))


# --------------------------------------------------------------------------------------------
# One pair


@dataclass(frozen=True)
class Start:
    """An initial alignment of a pair: ``warp`` from ``template`` to ``query`` (mirrored or not,
    as the hash that proposed it), and that hash's ``distance``."""

    template: Prepared
    query: Prepared
    warp: np.ndarray
    distance: int


def refine(template: Prepared, query: Prepared, warp: np.ndarray) -> np.ndarray | None:
    """The warp refined by ``cv2.findTransformECC`` (affine), or None if it does not converge."""
    try:
        _, refined = cv2.findTransformECC(template.grey, query.grey, warp.copy(),
                                          cv2.MOTION_AFFINE, _ECC_CRITERIA, None, _ECC_GAUSS)
    except cv2.error:  # no convergence: the images do not correlate
        return None
    return refined


def verify_pair(starts: list[Start], bars: Bars = BARS, *,
                full: bool = False) -> tuple[int, Verdict]:
    """Judge the pair at each start; if none makes it a duplicate, refine the most promising
    one with ECC and judge again. Returns the index of the deciding start (0 when rejected) and
    the verdict; uncertain outranks rejected. ``full`` computes every measure (:func:`measure`),
    the same verdicts more slowly (a baseline for benchmarks)."""
    tried: list[tuple[Verdict, Evidence, int]] = []
    for i, start in enumerate(starts):
        ev = measure(start.template, start.query, start.warp, bars, full=full)
        verdict = decide(ev, start.distance, bars)
        if verdict.duplicate:
            return i, verdict
        tried.append((verdict, ev, i))
    verdict, ev, i = max(tried, key=lambda t: (_RANK[t[0].verdict], t[0].score))
    # ECC only where it can change the verdict: a fine band already half there, or an intensity
    # map that fits (not for colours that differ: alignment does not change an 8×8 grid much,
    # and colours farther apart than even a passing fine band may be, with a weak band, stay
    # apart: ECC lowered the colour error of the overlapping crops it turned into duplicates by
    # 0.51 at most, from at most 0.81; docs/dedup.md).
    far_colour = (verdict.evidence == "colour" and ev.colour_error is not None
                  and ev.colour_error > bars.max_colour_error_for_ecc)
    min_fine = bars.min_score_for_ecc_far_colour if far_colour else bars.min_score_for_ecc
    if ev.plausible and (ev.fine >= min_fine
                         or (verdict.evidence != "colour" and ev.r2 >= bars.min_r2)):
        start = starts[i]
        warp = refine(start.template, start.query, start.warp)
        if warp is not None:
            second = decide(measure(start.template, start.query, warp, bars, full=full),
                            start.distance, bars)
            if (_RANK[second.verdict], second.score) > (_RANK[verdict.verdict], verdict.score):
                verdict = second
    return (i, verdict) if verdict.verdict != REJECTED else (0, verdict)

"""Properties of the package-shipped photo pool, the distinct crops and the copy transformations."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from blurset.pipeline.demo import transforms as T


@pytest.fixture(scope="module")
def pool() -> list[tuple[str, Image.Image]]:
    return T.photo_pool()


@pytest.fixture(scope="module")
def crops(pool: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
    return T.distinct_crops(pool, np.random.default_rng(0))


@pytest.fixture(scope="module")
def photo(pool: list[tuple[str, Image.Image]]) -> Image.Image:
    """A colour photo of the usual size."""
    chelsea = dict(pool)["chelsea"]
    return chelsea.crop((20, 0, 420, 300))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _phash(image: Image.Image) -> np.ndarray:
    """64-bit DCT perceptual hash (32×32 grey, top-left 8×8, above the median)."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float32)
    low = cv2.dct(grey)[:8, :8].flatten()
    return low > np.median(low)


# ---------------------------------------------------------------------------------------- pool


def test_pool_is_rgb_photos_in_fixed_order(pool: list[tuple[str, Image.Image]]) -> None:
    names = [name for name, _ in pool]
    assert len(names) == len(set(names)) >= 15
    assert {"astronaut", "retina", "china", "flower", "camera"} <= set(names)
    assert all(image.mode == "RGB" and min(image.size) >= 256 for _, image in pool)
    assert names == [name for name, _ in T.photo_pool()]


# --------------------------------------------------------------------------------------- crops


def test_distinct_crops_overlap_less_than_a_quarter(
    crops: list[tuple[str, Image.Image]],
) -> None:
    assert len(crops) >= 50
    parsed = [T.parse_crop_name(name) for name, _ in crops]
    for (photo_a, box_a), (photo_b, box_b) in itertools.combinations(parsed, 2):
        if photo_a == photo_b:
            assert box_a.overlap(box_b) < 0.25, (box_a, box_b)
    assert "motorcycle_right" not in {photo for photo, _ in parsed}  # stereo twin of _left


def test_distinct_crops_are_the_named_boxes(
    pool: list[tuple[str, Image.Image]], crops: list[tuple[str, Image.Image]]
) -> None:
    photos = dict(pool)
    for name, image in crops:
        photo, box = T.parse_crop_name(name)
        assert T.crop_name(photo, box) == name
        assert image.size == (box.w, box.h)
        assert 256 <= max(box.w, box.h) and max(box.w, box.h) <= 480
        np.testing.assert_array_equal(_pixels(image), _pixels(photos[photo].crop(box.pil())))


def test_distinct_crops_look_different(crops: list[tuple[str, Image.Image]]) -> None:
    hashes = [_phash(image) for _, image in crops]
    distances = [int((a != b).sum()) for a, b in itertools.combinations(hashes, 2)]
    assert min(distances) >= 8


def test_distinct_crops_deterministic(pool: list[tuple[str, Image.Image]]) -> None:
    first = [name for name, _ in T.distinct_crops(pool, np.random.default_rng(5))]
    second = [name for name, _ in T.distinct_crops(pool, np.random.default_rng(5))]
    assert first == second


@given(
    st.tuples(*[st.integers(0, 50)] * 2, *[st.integers(1, 50)] * 2),
    st.tuples(*[st.integers(0, 50)] * 2, *[st.integers(1, 50)] * 2),
)
def test_box_overlap_is_symmetric_and_bounded(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int]
) -> None:
    box_a, box_b = T.Box(*a), T.Box(*b)
    assert box_a.overlap(box_b) == pytest.approx(box_b.overlap(box_a))
    assert 0.0 <= box_a.overlap(box_b) <= 1.0
    assert box_a.overlap(box_a) == 1.0


# --------------------------------------------------------------------------------------- flats


def test_flat_images_are_low_texture_and_mutually_different() -> None:
    flats = T.flat_images(10, np.random.default_rng(0))
    assert len({name for name, _ in flats}) == 10
    for _, image in flats:
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        assert cv2.Laplacian(grey, cv2.CV_32F).var() < 60  # photos are in the hundreds+
    hashes = [_phash(image) for _, image in flats]
    assert min(int((a != b).sum()) for a, b in itertools.combinations(hashes, 2)) >= 8


# ---------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", sorted(T.TRANSFORMS))
def test_transform_is_deterministic_and_changes_the_image(name: str, photo: Image.Image) -> None:
    first = T.TRANSFORMS[name](photo, np.random.default_rng(7))
    second = T.TRANSFORMS[name](photo, np.random.default_rng(7))
    assert isinstance(first, Image.Image)
    assert first.mode == second.mode and first.size == second.size
    np.testing.assert_array_equal(_pixels(first), _pixels(second))
    assert (
        first.size != photo.size
        or first.mode != photo.mode
        or (np.abs(_pixels(first) - _pixels(photo)).max() > 0)
    )
    assert photo.size == (400, 300) and photo.mode == "RGB"  # input untouched


GEOMETRY_KEEPING = sorted(
    set(T.TRANSFORMS) - {"crop", "rotate", "resize_aspect", "mirror", "combo"}
)


@pytest.mark.parametrize("name", GEOMETRY_KEEPING)
def test_geometry_keeping_transform_stays_a_near_duplicate(name: str, photo: Image.Image) -> None:
    """Copies that keep the framing keep most of a plain perceptual hash (crops need more)."""
    for seed in range(5):
        copy = T.TRANSFORMS[name](photo, np.random.default_rng(seed))
        assert int((_phash(copy) != _phash(photo)).sum()) <= 12, (name, seed)


@pytest.mark.parametrize("seed", range(10))
def test_resize_keeps_aspect_within_range(seed: int, photo: Image.Image) -> None:
    out = T.resize(photo, np.random.default_rng(seed))
    sx, sy = out.width / photo.width, out.height / photo.height
    assert 0.40 - 0.01 <= sx <= 0.90 + 0.01
    assert sx == pytest.approx(sy, abs=2 / out.height)


@pytest.mark.parametrize("seed", range(10))
def test_resize_aspect_changes_aspect(seed: int, photo: Image.Image) -> None:
    out = T.resize_aspect(photo, np.random.default_rng(seed))
    sx, sy = out.width / photo.width, out.height / photo.height
    assert 0.59 <= sx <= 1.0 and 0.59 <= sy <= 1.0
    assert abs(sx - sy) / max(sx, sy) >= 0.15 - 0.01


@pytest.mark.parametrize("seed", range(10))
def test_crop_cuts_at_most_ten_percent_per_side(seed: int, photo: Image.Image) -> None:
    out = T.crop(photo, np.random.default_rng(seed))
    src, dst = _pixels(photo), _pixels(out)
    max_x, max_y = math.floor(photo.width * 0.10), math.floor(photo.height * 0.10)
    found = [
        (left, top)
        for left in range(max_x + 1)
        for top in range(max_y + 1)
        if np.array_equal(src[top : top + out.height, left : left + out.width], dst)
    ]
    assert found, "the crop is not a sub-rectangle within 10 % of the left/top edges"
    left, top = found[0]
    assert photo.width - left - out.width <= max_x
    assert photo.height - top - out.height <= max_y
    assert out.size != photo.size


@pytest.mark.parametrize("seed", range(10))
def test_rotate_has_no_black_corners(seed: int, photo: Image.Image) -> None:
    bright = photo.point(lambda v: 100 + v * 155 // 255)  # no pixel below 100
    out = T.rotate(bright, np.random.default_rng(seed))
    assert 0.85 * photo.width <= out.width < photo.width
    assert out.width / out.height == pytest.approx(photo.width / photo.height, rel=0.02)
    grey = np.asarray(out.convert("L"))
    assert grey.min() >= 90  # a black (filled) corner would show here


def test_mirror_is_an_exact_flip(photo: Image.Image) -> None:
    out = T.mirror(photo, np.random.default_rng(0))
    np.testing.assert_array_equal(_pixels(out), _pixels(photo)[:, ::-1])


@pytest.mark.parametrize(
    ("name", "statistic", "direction"),
    [
        ("brighter", np.mean, 1),
        ("darker", np.mean, -1),
        ("contrast_low", np.std, -1),
        ("contrast_high", np.std, 1),
    ],
)
def test_tone_transforms_move_the_statistic(
    name: str, statistic: object, direction: int, photo: Image.Image
) -> None:
    for seed in range(5):
        out = T.TRANSFORMS[name](photo, np.random.default_rng(seed))
        before = float(statistic(_pixels(photo.convert("L"))))  # type: ignore[operator]
        after = float(statistic(_pixels(out.convert("L"))))  # type: ignore[operator]
        assert direction * (after - before) > 0.1 * before


@pytest.mark.parametrize("seed", range(10))
def test_gamma_is_monotone_and_not_identity(seed: int) -> None:
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1)), "L").convert("RGB")
    out = _pixels(T.gamma(ramp, np.random.default_rng(seed)))[0, :, 0]
    assert np.all(np.diff(out) >= 0)
    assert out[0] == 0 and out[-1] == 255
    assert abs(int(out[128]) - 128) >= 8  # γ at least 0.15 away from 1


def test_grayscale_is_luminance(photo: Image.Image) -> None:
    out = T.grayscale(photo, np.random.default_rng(0))
    assert out.mode == "L"
    np.testing.assert_array_equal(_pixels(out), _pixels(photo.convert("L")))


@pytest.mark.parametrize("seed", range(5))
def test_blur_is_slight(seed: int, photo: Image.Image) -> None:
    out = T.blur(photo, np.random.default_rng(seed))
    sharp = cv2.Laplacian(np.asarray(photo.convert("L"), np.float32), cv2.CV_32F).var()
    soft = cv2.Laplacian(np.asarray(out.convert("L"), np.float32), cv2.CV_32F).var()
    assert out.size == photo.size
    assert 0.005 * sharp < soft < 0.6 * sharp


@pytest.mark.parametrize("seed", range(10))
def test_watermark_covers_a_corner_of_three_to_six_percent(seed: int, photo: Image.Image) -> None:
    out = T.watermark(photo, np.random.default_rng(seed))
    changed = np.abs(_pixels(out) - _pixels(photo)).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    assert 0.025 <= box_area / changed.size <= 0.065
    touches_x = xs.min() == 0 or xs.max() == photo.width - 1
    touches_y = ys.min() == 0 or ys.max() == photo.height - 1
    assert touches_x and touches_y  # in a corner


@pytest.mark.parametrize("seed", range(10))
def test_combo_chains_two_or_three_other_transforms(seed: int, photo: Image.Image) -> None:
    steps = T.combo_steps(np.random.default_rng(seed))
    assert 2 <= len(steps) <= 3 and len(set(steps)) == len(steps)
    assert "combo" not in steps and set(steps) <= set(T.TRANSFORMS)
    via_combo = T.combo(photo, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    via_chain = T.chain(photo, T.combo_steps(rng), rng)
    np.testing.assert_array_equal(_pixels(via_combo), _pixels(via_chain))


def test_jpeg_quality_and_encoding(photo: Image.Image) -> None:
    assert T.jpeg_quality("jpeg35") == 35
    assert T.jpeg_quality("mirror") == 90
    with pytest.raises(KeyError, match="unknown transform 'sepia'"):
        T.jpeg_quality("sepia")
    assert T.encode_jpeg(photo) == T.encode_jpeg(photo)
    assert T.encode_jpeg(photo.convert("L"))[:2] == b"\xff\xd8"

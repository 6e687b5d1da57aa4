"""blurset.annotation.rle against Label Studio's two encoders: the SDK's (``converter.brush``) and the
editor's (@thi.ng/rle-pack, transliterated below word for word), on masks built here."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter import brush
from PIL import Image

from blurset.annotation import rle
from blurset.annotation.export import mask_iou

PROPERTY = settings(max_examples=60, deadline=None)


# --- data ---------------------------------------------------------------------------------


@st.composite
def masks(draw) -> np.ndarray:
    """(1..64, 1..64) uint8 0/255 masks: empty, full, noise of any density, or elliptic blobs."""
    h, w = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    kind = draw(st.sampled_from(["empty", "full", "noise", "blobs"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "empty":
        return np.zeros((h, w), dtype=np.uint8)
    if kind == "full":
        return np.full((h, w), 255, dtype=np.uint8)
    if kind == "noise":
        painted = rng.random((h, w)) < draw(st.floats(0, 1))
    else:
        yy, xx = np.mgrid[:h, :w]
        painted = np.zeros((h, w), dtype=bool)
        for _ in range(draw(st.integers(1, 4))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.5, h / 2 + 1), rng.uniform(0.5, w / 2 + 1)
            painted |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return painted.astype(np.uint8) * 255


def byte_streams() -> st.SearchStrategy[np.ndarray]:
    """Arbitrary uint8 streams as runs of 1..40 (so singletons, literal chunks and repeats)."""
    runs = st.lists(st.tuples(st.integers(0, 255), st.integers(1, 40)), min_size=1, max_size=80)
    return runs.map(lambda rs: np.repeat(
        np.array([v for v, _ in rs], dtype=np.uint8), [n for _, n in rs]))


def rgba(mask: np.ndarray) -> np.ndarray:
    """The flat RGBA bytes both Label Studio encoders see for a 0/255 mask."""
    return np.repeat(mask.ravel(), 4)


def editor_encode(src: np.ndarray) -> list[int]:
    """@thi.ng/rle-pack 3.2 ``encode(src, src.length)``, what Label Studio's editor stores.

    A transliteration of ``encodeBinary`` (packages/rle-pack/src/binary.ts): 8-bit words, field
    widths 3, 4, 8, 16, padding to the byte boundary only (``BitOutputStream.bytes()``).
    """
    sizes = (3, 4, 8, 16)
    rle0, rle1, rle2, rle3 = (1 << s for s in sizes)
    bits = [f"{src.size:032b}", f"{7:05b}", *(f"{s - 1:04b}" for s in sizes)]

    def cls(n: int) -> int:
        return 0 if n < rle0 else 1 if n < rle1 else 2 if n < rle2 else 3

    def write_rle(n: int, val: int) -> None:
        t = cls(n)
        bits.append(f"1{t:02b}{n:0{sizes[t]}b}{val:08b}")

    def write_chunk(chunk: list[int]) -> None:
        t = cls(len(chunk) - 1)
        bits.append(f"0{t:02b}{len(chunk) - 1:0{sizes[t]}b}" + "".join(f"{v:08b}" for v in chunk))

    chunk: list[int] = []
    val, n, tail, last = None, 0, True, src.size - 1
    for i, x in enumerate(src.tolist()):
        if val is None:
            val = x
        elif x != val:
            if n > 0:
                write_rle(n, val)
                n = 0
            else:
                chunk.append(val)
                if len(chunk) == rle3:
                    write_chunk(chunk)
                    chunk = []
            val = x
        else:
            if chunk:
                write_chunk(chunk)
                chunk = []
            n += 1
            if n == rle3:
                write_rle(n - 1, val)
                n = 0
                tail = i < last
    if chunk:
        write_chunk([*chunk, val])
    elif tail:
        write_rle(n, val)
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]


def long_run_mask(painted: int, at_end: bool) -> np.ndarray:
    """A 400×128 mask with one run of ``painted`` pixels (4 × painted RGBA bytes)."""
    flat = np.zeros(400 * 128, dtype=np.uint8)
    if at_end:
        flat[-painted:] = 255
        flat[:3] = 255
    else:
        flat[:painted] = 255
    return flat.reshape(400, 128)


# --- round trip and the SDK ---------------------------------------------------------------


@PROPERTY
@given(masks())
def test_round_trip_is_exact(mask):
    for flavor in ("sdk", "frontend"):
        out = rle.decode(rle.encode(mask, flavor=flavor), *mask.shape)
        assert out.dtype == np.uint8 and out.shape == mask.shape
        np.testing.assert_array_equal(out, mask)


@PROPERTY
@given(masks())
def test_encode_equals_sdk_mask2rle_byte_for_byte(mask):
    assert rle.encode(mask) == brush.mask2rle(mask)


@PROPERTY
@given(masks())
def test_sdk_decodes_our_rle_as_its_own(mask):
    h, w = mask.shape
    sdk_alpha = brush.decode_rle(brush.mask2rle(mask)).reshape(h, w, 4)[:, :, 3]
    for flavor in ("sdk", "frontend"):
        decoded = brush.decode_rle(rle.encode(mask, flavor=flavor))
        np.testing.assert_array_equal(decoded, rgba(mask))
        np.testing.assert_array_equal(decoded.reshape(h, w, 4)[:, :, 3], sdk_alpha)


@PROPERTY
@given(masks())
def test_we_decode_sdk_rle(mask):
    sdk = brush.mask2rle(mask)
    np.testing.assert_array_equal(rle.decode(sdk, *mask.shape), mask)
    np.testing.assert_array_equal(rle.decode_rgba(sdk), brush.decode_rle(sdk))


@PROPERTY
@given(byte_streams())
def test_decode_rgba_reads_any_stream_either_encoder_writes(stream):
    for code in (brush.encode_rle(stream), editor_encode(stream)):
        np.testing.assert_array_equal(rle.decode_rgba(code), stream)
        np.testing.assert_array_equal(rle.decode_rgba(code), brush.decode_rle(code))


@st.composite
def packed_streams(draw) -> tuple[list[int], np.ndarray]:
    """Well-formed RLE of any header (word size 1-8 bits, count-field widths 1-16 bits) with
    repeat and literal chunks of every class, and the words it holds: ``(code, words)``."""
    word_bits = draw(st.integers(1, 8))
    widths = draw(st.lists(st.integers(1, 16), min_size=4, max_size=4))
    word = st.integers(0, (1 << word_bits) - 1)
    bits, words = [], []
    for _ in range(draw(st.integers(0, 12))):
        t = draw(st.integers(0, 3))
        n = draw(st.integers(1, min(1 << widths[t], 40)))
        repeat = draw(st.booleans())
        values = [draw(word)] * n if repeat else draw(st.lists(word, min_size=n, max_size=n))
        chunk = values[:1] if repeat else values
        bits.append(f"{int(repeat)}{t:02b}{n - 1:0{widths[t]}b}"
                    + "".join(f"{v:0{word_bits}b}" for v in chunk))
        words += values
    header = f"{len(words):032b}{word_bits - 1:05b}" + "".join(f"{w - 1:04b}" for w in widths)
    stream = header + "".join(bits)
    stream += "".join(draw(st.sampled_from("01")) for _ in range(-len(stream) % 8))  # padding
    code = [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]
    return code, np.array(words, dtype=np.uint8)


COMPARED: list[int] = []  # sizes of the streams test_decode_rgba_agrees_with_sdk compared


@PROPERTY
@given(packed_streams())
def test_decode_rgba_agrees_with_sdk_on_any_well_formed_stream(case):
    code, words = case
    ours = rle.decode_rgba(code)  # every generated stream is valid: no way out before comparing
    np.testing.assert_array_equal(ours, words)
    np.testing.assert_array_equal(ours, brush.decode_rle(code))
    COMPARED.append(words.size)


def test_the_stream_property_compares_every_example():
    COMPARED.clear()
    test_decode_rgba_agrees_with_sdk_on_any_well_formed_stream()
    assert len(COMPARED) >= PROPERTY.max_examples // 2  # hypothesis ran it, and nothing skipped
    assert sum(n > 0 for n in COMPARED) >= len(COMPARED) // 2  # mostly non-empty streams


def test_big_literal_chunk():
    stream = np.random.default_rng(0).integers(0, 256, 70_000).astype(np.uint8)
    np.testing.assert_array_equal(rle.decode_rgba(editor_encode(stream)), stream)


def test_real_blur_mask_and_sdk_image2annotation(tmp_path):
    yy, xx = np.mgrid[:480, :640]
    sharp = ((yy - 260) / 150) ** 2 + ((xx - 300) / 110) ** 2 <= 1  # a sharp subject
    grey = np.where(sharp, 30, 220).astype(np.uint8)  # the SDK thresholds at > 128
    path = tmp_path / "mask.png"
    Image.fromarray(grey).save(path)
    result = brush.image2annotation(str(path), "blur", "tag", "image")["result"][0]
    mask = np.where(grey > 128, 255, 0).astype(np.uint8)
    assert rle.encode(mask) == result["value"]["rle"]
    h, w = result["original_height"], result["original_width"]
    np.testing.assert_array_equal(rle.decode(result["value"]["rle"], h, w), mask)


# --- the editor's encoder -----------------------------------------------------------------


@PROPERTY
@given(masks())
def test_frontend_flavor_equals_editor_encoder(mask):
    assert rle.encode(mask, flavor="frontend") == editor_encode(rgba(mask))


@PROPERTY
@given(masks())
def test_sdk_and_editor_differ_only_by_a_padding_byte_on_short_runs(mask):
    sdk, editor = rle.encode(mask), rle.encode(mask, flavor="frontend")
    assert sdk[: len(editor)] == editor
    assert sdk[len(editor) :] in ([], [0])


@pytest.mark.parametrize("painted", [16384, 16385, 16448, 16449, 16450, 32769, 49153])
@pytest.mark.parametrize("at_end", [False, True])
def test_runs_longer_than_65536_bytes(painted, at_end):
    mask = long_run_mask(painted, at_end)
    sdk, editor = rle.encode(mask), rle.encode(mask, flavor="frontend")
    assert sdk == brush.mask2rle(mask)
    assert editor == editor_encode(rgba(mask))
    for code in (sdk, editor):
        np.testing.assert_array_equal(rle.decode(code, *mask.shape), mask)
        np.testing.assert_array_equal(brush.decode_rle(code), rgba(mask))
    # 4 × 16385 = 65536 + 4 bytes: the SDK keeps the 16-bit class for the 4, the editor does not
    if painted == 16385:
        assert len(sdk) > len(editor)


# --- mask semantics -----------------------------------------------------------------------


def test_any_nonzero_value_is_painted():
    values = np.array([[0, 1, 7], [128, 255, 0]], dtype=np.uint8)
    binary = np.where(values > 0, 255, 0).astype(np.uint8)
    assert rle.encode(values) == rle.encode(binary) == rle.encode(values > 0)
    assert rle.encode(values.astype(np.int64)) == brush.mask2rle(binary)


def test_decode_reads_alpha_like_the_sdk_export_with_threshold():
    # The editor writes R = G = B = A = alpha, with anti-aliased stroke edges (1..254).
    alpha = np.random.default_rng(1).integers(0, 256, (20, 30)).astype(np.uint8)
    alpha[::3] = 0
    alpha[1::3] = 255
    code = brush.encode_rle(rgba(alpha))
    result = {"type": "brushlabels", "rle": code, "original_width": 30, "original_height": 20,
              "brushlabels": ["blur"]}
    (exported,) = brush.decode_from_annotation("tag", [result]).values()
    np.testing.assert_array_equal(exported, alpha)
    np.testing.assert_array_equal(rle.decode_rgba(code).reshape(20, 30, 4)[:, :, 3], alpha)
    for threshold in (0, 1, 127, 254):
        expected = np.where(alpha > threshold, 255, 0)
        np.testing.assert_array_equal(rle.decode(code, 20, 30, threshold=threshold), expected)


def test_mask_iou_is_one_rule_for_decoded_masks_pngs_and_bools():
    a = np.zeros((4, 5), np.uint8)
    a[:2] = 255  # 10 pixels
    b = np.zeros((4, 5), np.uint8)
    b[1:3] = 255  # 10 pixels, 5 shared
    assert mask_iou(a, b) == pytest.approx(5 / 15)
    assert mask_iou(a, a > 0) == 1.0 and mask_iou(a > 0, b > 0) == pytest.approx(5 / 15)
    grey = np.where(a > 0, 200, 100).astype(np.uint8)  # a PNG from another tool: > 127 is blurred
    assert mask_iou(grey, a) == 1.0
    assert mask_iou(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8)) == 1.0
    with pytest.raises(ValueError, match=r"different shapes \(4, 5\) and \(5, 4\)"):
        mask_iou(a, a.T)
    decoded = rle.decode(rle.encode(a), 4, 5)
    assert mask_iou(decoded, a) == 1.0


# --- errors -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob() -> np.ndarray:
    yy, xx = np.mgrid[:40, :50]
    return np.where((yy - 20) ** 2 + (xx - 22) ** 2 <= 150, 255, 0).astype(np.uint8)


@pytest.mark.parametrize(
    ("code", "match"),
    [
        ([], "empty"),
        ([0, 0, 0, 4, 7, 35], "header"),
        ([[0, 1]] * 8, "1-D"),
        ([0.5] * 10, "ints"),
        (["a"] * 10, "ints"),
        ([0, 0, 0, 4, 256, 0, 0, 0], "item 4 is 256"),
        ([-1, 0, 0, 4, 7, 0, 0, 0], "item 0 is -1"),
        ([0, 0, 0, 4, 0x79, 0x1B, 0xF8, 0xFF], "word size is 16 bits"),
    ],
)
def test_malformed_rle(code, match):
    with pytest.raises(rle.RleError, match=match):
        rle.decode_rgba(code)


def test_truncated_rle(blob):
    for flavor, keep_padding in (("sdk", 1), ("frontend", 0)):
        code = rle.encode(blob, flavor=flavor)
        for cut in range(1 + keep_padding, len(code) - 6):
            with pytest.raises(rle.RleError, match="truncated"):
                rle.decode(code[:-cut], *blob.shape)


def test_chunks_overrunning_the_header_count(blob):
    code = rle.encode(blob)
    with pytest.raises(rle.RleError, match=r"hold \d+ words but its header says 3"):
        rle.decode_rgba([0, 0, 0, 3, *code[4:]])


def test_size_mismatch_names_both_sizes(blob):
    code = rle.encode(blob)
    with pytest.raises(rle.RleError, match=r"8000 bytes but a 40×51 RGBA image needs 8160"):
        rle.decode(code, 40, 51)
    assert issubclass(rle.RleError, ValueError)


def test_empty_stream_decodes_to_nothing():
    empty = [0, 0, 0, 0, 0x39, 0x1B, 0xF8]  # num = 0, 8-bit words, widths 3, 4, 8, 16
    assert rle.decode_rgba(empty).size == 0
    with pytest.raises(rle.RleError, match="holds 0 bytes but a 1×1 RGBA image needs 4"):
        rle.decode(empty, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"height": 0}, "height"), ({"width": 2.5}, "width"), ({"threshold": 255}, "threshold")],
)
def test_decode_arguments(blob, kwargs, match):
    args = {"height": 40, "width": 50} | kwargs
    with pytest.raises(ValueError, match=match):
        rle.decode(rle.encode(blob), **args)


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (np.zeros((2, 3, 4), dtype=np.uint8), ValueError, "2-D"),
        (np.zeros((0, 3), dtype=np.uint8), ValueError, "empty"),
        (np.zeros((2, 3), dtype=np.float32), TypeError, "bool or integer"),
    ],
)
def test_encode_rejects(mask, error, match):
    with pytest.raises(error, match=match):
        rle.encode(mask)
    with pytest.raises(ValueError, match="flavor"):
        rle.encode(np.zeros((1, 1), dtype=np.uint8), flavor="js")

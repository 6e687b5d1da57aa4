"""Label Studio's brush RLE (``value.rle`` of a ``brushlabels`` result), vectorised with numpy.

:func:`encode` writes a 2-D mask byte for byte as the SDK's ``mask2rle`` (or the editor) does;
:func:`decode` / :func:`decode_rgba` read any well-formed stream and refuse the rest with
:class:`RleError`. The stream format and the two encoders' differences: ``docs/annotation.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from blurset.errors import InputError

__all__ = ["RleError", "decode", "decode_rgba", "encode"]

WORD_BITS = 8  # Label Studio's brush words are the RGBA bytes
RUN_FIELD_BITS = (3, 4, 8, 16)  # count-field widths of classes 0-3, as both encoders write them
HEADER_BITS = 32 + 5 + 4 * 4  # num, word size - 1, four field widths - 1
MAX_CHUNK = 1 << RUN_FIELD_BITS[-1]  # the longest count a chunk can hold (65536)
CHANNELS = 4  # RGBA

Flavor = Literal["sdk", "frontend"]


class RleError(InputError):
    """The RLE is malformed, or does not describe an image of the expected size."""


# --- encoding ---------------------------------------------------------------------------------


def encode(mask: np.ndarray, *, flavor: Flavor = "sdk") -> list[int]:
    """Brush RLE of a 2-D mask: 0 = not painted, any non-zero value = painted (255).

    ``mask`` is ``(H, W)`` bool or integer (ours are uint8 0/255, 255 = blurred). Painted pixels
    become RGBA (255, 255, 255, 255), the others (0, 0, 0, 0), as ``mask2rle`` writes a 0/255
    mask and as the editor writes a fully opaque stroke. Returns the ``value.rle`` list of bytes.
    """
    if flavor not in ("sdk", "frontend"):
        raise ValueError(f"flavor must be 'sdk' or 'frontend', got {flavor!r}")
    painted = _mask_pixels(mask)  # (H*W,) bool
    n = painted.size
    ends = np.append(np.flatnonzero(painted[1:] != painted[:-1]) + 1, n)  # (R,) run ends
    pixels = np.diff(ends, prepend=0)  # (R,) run lengths in pixels
    values = np.where(painted[ends - 1], 255, 0)
    # Pixels are 4 equal bytes, so byte runs are the pixel runs × 4 (never a literal chunk).
    return _pack_runs(n * CHANNELS, pixels * CHANNELS, values, flavor=flavor).tolist()


def _mask_pixels(mask: np.ndarray) -> np.ndarray:
    """``mask`` checked and flattened to ``(H*W,)`` bool (True = painted)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(
            f"mask must be 2-D (height, width), got shape {m.shape}; pass one channel, "
            "e.g. mask[..., 0]"
        )
    if m.dtype != np.bool_ and m.dtype.kind not in "iu":
        raise TypeError(
            f"mask must be bool or integer (0 = not painted, non-zero = painted), got {m.dtype}; "
            "threshold it first, e.g. (prob > 0.5)"
        )
    if m.size == 0:
        raise ValueError(f"mask is empty (shape {m.shape}); Label Studio needs at least 1×1")
    if m.size * CHANNELS >= 1 << 32:
        raise ValueError(
            f"mask {m.shape} is too large: the RLE header holds at most 2**32 - 1 bytes "
            f"({m.size * CHANNELS} needed)"
        )
    return m.ravel() != 0


# Chunk kinds: 0-3 = a repeat chunk of class 0-3, 4 = a one-word literal chunk (class 0).
# Per kind: the leading bits (flag, class) above the count field, and the code length in bits.
_KIND_PREFIX = np.array([0b100, 0b101, 0b110, 0b111, 0b000], dtype=np.uint32)
_KIND_FIELD = np.array([*RUN_FIELD_BITS, RUN_FIELD_BITS[0]], dtype=np.uint32)
_KIND_LEAD = _KIND_PREFIX << (_KIND_FIELD + WORD_BITS)  # prefix shifted above field and word
_KIND_BITS = 3 + _KIND_FIELD + WORD_BITS
_KIND_KEEP = np.arange(32) >= 32 - _KIND_BITS[:, None]  # (5, 32) a code's bits in a uint32
_CLASS_LIMITS = np.array([1 << w for w in RUN_FIELD_BITS[:3]])  # 8, 16, 256 words


def _header_bits(num: int) -> np.ndarray:
    """(53,) bits of the header: ``num``, word size - 1, field widths - 1."""
    header = (num << 21) | ((WORD_BITS - 1) << 16)
    for t, w in enumerate(RUN_FIELD_BITS):
        header |= (w - 1) << (12 - 4 * t)
    return np.unpackbits(np.frombuffer(header.to_bytes(7, "big"), dtype=np.uint8))[3:]


def _pack_runs(num: int, lengths: np.ndarray, values: np.ndarray, *, flavor: Flavor) -> np.ndarray:
    """The packed bytes of ``num`` words given as runs (``lengths`` ≥ 1, ``values`` < 256).

    With ``flavor="sdk"`` this is ``encode_rle`` for any byte stream (a run of 1 is a 1-word
    literal chunk, as the SDK writes it). ``"frontend"`` writes every run as a repeat chunk, which
    matches the editor only when no run is 1 word long: true of every mask (runs of 4k bytes).
    """
    lengths = lengths.astype(np.int64)
    full = (lengths - 1) // MAX_CHUNK  # (R,) chunks of MAX_CHUNK words before the last one
    if full.any():  # runs longer than MAX_CHUNK: one chunk per MAX_CHUNK words, then the rest
        per_run = full + 1
        run = np.repeat(np.arange(lengths.size), per_run)  # (C,) the run of each chunk
        last = np.zeros(run.size, dtype=bool)
        last[np.cumsum(per_run) - 1] = True
        count = np.where(last, (lengths - full * MAX_CHUNK)[run], MAX_CHUNK)  # (C,) words
        long, values = lengths[run] > _CLASS_LIMITS[-1], values[run]
    else:
        count, long = lengths, None
    kind = np.searchsorted(_CLASS_LIMITS, count)  # (C,) the smallest class that holds count
    if flavor == "sdk":
        kind[count == 1] = 4  # the SDK writes a lone word as a literal chunk
        if long is not None:
            kind[long] = 3  # and every piece of a run > 256 words with class 3
    code = _KIND_LEAD[kind] | ((count - 1).astype(np.uint32) << WORD_BITS) | values  # (C,)

    # Right-aligned codes (≤ 27 bits) → bits: unpack each as 32 bits, keep its low bits.
    bits = np.unpackbits(code.astype(">u4").view(np.uint8))  # (C*32,)
    body = bits[_KIND_KEEP[kind].ravel()]
    total = HEADER_BITS + body.size
    pad = 8 - total % 8 if flavor == "sdk" else -total % 8
    return np.packbits(np.concatenate((_header_bits(num), body, np.zeros(pad, dtype=np.uint8))))


# --- decoding ---------------------------------------------------------------------------------


def decode(rle: Sequence[int], height: int, width: int, *, threshold: int = 0) -> np.ndarray:
    """``(height, width)`` uint8 mask of a brush RLE: 255 where alpha > ``threshold``, else 0.

    The alpha channel is what the SDK's export converter keeps (``decode_from_annotation``
    reshapes to ``(H, W, 4)`` and takes channel 3, raw) and what the editor draws (any alpha > 0
    is shown). Strokes drawn in the editor have anti-aliased edges (alpha 1…254): the default
    counts them as painted, as the editor shows them; ``threshold=127`` keeps the opaque half.
    ``height``/``width`` are the result's ``original_height``/``original_width``.
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0 <= threshold <= 254:
        raise ValueError(f"threshold must be in 0..254 (painted: alpha > threshold), got {threshold}")
    words, ends = _parse(rle)
    expected = int(height) * int(width) * CHANNELS
    held = int(ends[-1]) if ends.size else 0
    if held != expected:
        raise RleError(
            f"RLE holds {held} bytes but a {height}×{width} RGBA image needs {expected} "
            f"(height × width × 4); check original_height/original_width of the result"
        )
    # Alpha is byte 4k + 3, so bytes [0, end) hold end // 4 alpha values: expand those only.
    alphas = np.diff(ends // CHANNELS, prepend=0)
    painted = np.multiply(words > threshold, 255, dtype=np.uint8)
    return np.repeat(painted, alphas).reshape(height, width)


def decode_rgba(rle: Sequence[int]) -> np.ndarray:
    """The flat uint8 words of a brush RLE (for a brush mask: ``H × W × 4`` RGBA bytes).

    Equals the SDK's ``decode_rle`` on every stream it accepts; raises :class:`RleError` where the
    SDK would fail or silently clip: a stream shorter than its header or its chunks, chunks whose
    counts overrun ``num``, words wider than 8 bits, items outside 0..255. Bits after the chunk
    that completes ``num`` words are padding and ignored.
    """
    words, ends = _parse(rle)
    return np.repeat(words, np.diff(ends, prepend=0))


def _parse(rle: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(words, ends)``: the stream is ``words[k]`` repeated up to word index ``ends[k]``.

    Chunks are variable-length, so the parse is sequential, but only by chunk: every bit position
    is first decoded as if a chunk started there (vectorised), then the chain of real chunk starts
    is followed from the header: one Python step per chunk, none per word.
    """
    data = _as_bytes(rle)
    nbytes = data.size
    nbits = nbytes * 8
    if nbits < HEADER_BITS:
        raise RleError(f"RLE is {nbytes} bytes, shorter than its 7-byte header; is it complete?")
    num = int.from_bytes(data[:4].tobytes(), "big")
    word_bits = (int(data[4]) >> 3) + 1
    fields = (int(data[4]) << 16 | int(data[5]) << 8 | int(data[6])) >> 3  # bits 37..52
    widths = np.array([((fields >> (12 - 4 * t)) & 15) + 1 for t in range(4)], dtype=np.uint32)
    if word_bits > 8:
        raise RleError(
            f"RLE word size is {word_bits} bits; brush masks use {WORD_BITS}-bit words (bytes)"
        )
    if num == 0:
        return np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64)

    # (nbits,) the 32 bits starting at every bit position, MSB first: each byte's big-endian
    # 64-bit window (an overlapping, 1-byte-strided view) shifted by 0..7.
    padded = np.zeros(nbytes + 8, dtype=np.uint8)
    padded[:nbytes] = data
    by_byte = np.ndarray((nbytes,), dtype=">u8", buffer=padded, strides=(1,)).astype(np.uint64)
    window = ((by_byte[:, None] << np.arange(8, dtype=np.uint64)) >> np.uint64(32)).ravel()

    # (N,) every position after the header decoded as a chunk start (flag, class, count).
    head = window[HEADER_BITS:].astype(np.uint32)
    repeat = (head >> 31).astype(bool)
    field_bits = widths[(head >> 29) & 3]
    count = ((head >> (29 - field_bits)) & ((1 << field_bits) - 1)) + 1
    head_bits = 3 + field_bits
    step = head_bits + np.where(repeat, word_bits, count * word_bits)  # chunk length, bits
    nxt = step + np.arange(step.size, dtype=np.int64)  # where the next chunk would start

    next_of, count_of = memoryview(nxt), memoryview(count)
    starts: list[int] = []
    add = starts.append
    p, covered, end = 0, 0, step.size
    while covered < num:
        if p >= end:
            raise RleError(
                f"RLE stops after {covered} of its {num} words: the stream is truncated "
                f"({nbytes} bytes)"
            )
        add(p)
        covered += count_of[p]
        p = next_of[p]
    if covered != num:
        raise RleError(f"RLE chunks hold {covered} words but its header says {num}")
    if p > end:
        raise RleError(
            f"RLE's last chunk ends {p - end} bits past its {nbytes} bytes: the stream is truncated"
        )

    at = np.asarray(starts, dtype=np.int64)  # (C,) chunk starts, as indices into head
    c_repeat, c_count = repeat[at], count[at].astype(np.int64)
    first = HEADER_BITS + at + head_bits[at]  # (C,) bit position of each chunk's first word
    if c_repeat.all():  # masks: one word per chunk
        word_pos, ends = first, np.cumsum(c_count)
    else:  # a literal chunk holds c_count words, each once
        per_chunk = np.where(c_repeat, 1, c_count)
        chunk = np.repeat(np.arange(at.size), per_chunk)
        rank = np.arange(chunk.size) - np.repeat(np.cumsum(per_chunk) - per_chunk, per_chunk)
        word_pos = first[chunk] + rank * word_bits
        ends = np.cumsum(np.where(c_repeat, c_count, 1)[chunk])
    words = (window[word_pos] >> np.uint64(32 - word_bits)).astype(np.uint8)
    return words, ends


def _as_bytes(rle: Sequence[int]) -> np.ndarray:
    """``rle`` as a 1-D uint8 array, each element checked to be an int in 0..255."""
    if isinstance(rle, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(rle, dtype=np.uint8)
    elif isinstance(rle, (list, tuple)):
        try:  # bytes() checks a list of ints 0..255 many times faster than numpy converts it
            arr = np.frombuffer(bytes(rle), dtype=np.uint8)
        except (TypeError, ValueError):
            arr = _checked_array(rle)  # to name the bad item
    else:
        arr = _checked_array(rle)
    if arr.size == 0:
        raise RleError("RLE is empty: value.rle must be a non-empty list of ints 0..255")
    return arr


def _checked_array(rle: Sequence[int]) -> np.ndarray:
    try:
        arr = np.asarray(rle)
    except (TypeError, ValueError, OverflowError) as err:
        raise RleError(f"RLE must be a list of ints 0..255: {err}") from err
    if arr.ndim != 1:
        raise RleError(f"RLE must be a 1-D list of ints 0..255, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise RleError(f"RLE must hold ints 0..255, got {arr.dtype} (first item {arr[0]!r})")
    bad = np.flatnonzero((arr < 0) | (arr > 255))
    if bad.size:
        i = int(bad[0])
        raise RleError(f"RLE item {i} is {int(arr[i])}; every item must be a byte, 0..255")
    return arr.astype(np.uint8)

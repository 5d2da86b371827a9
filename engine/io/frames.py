"""Frame geometry: fit camera/file frames to the model resolution and place styled frames back.

Frames are ``HxWx3`` uint8 RGB numpy arrays; sizes are ``(height, width)`` tuples throughout.

``fit_frame`` is the one framing rule for every source (files, cameras, OBS capture), the user's choice
``fit``: ``"crop"`` (default) scales the frame so it *covers* the model size and crops the centre; ``"bars"``
scales it to fit *inside* and fills the rest with black bars (nothing is cut off). Either way the aspect ratio is
preserved, nothing is stretched. ``restore_frame`` is its geometric inverse: the styled frame is
scaled back up to exactly the region that was cropped and put where it came from, so the styled
content lines up pixel-for-pixel with the source (useful when compositing over the original in OBS).
The parts of the source that were cropped away have no styled content; by default they are filled
with a blurred, dimmed, stretched copy of the styled frame (the familiar "blur fill"), so the output
is the source's size and never has black bars. ``border="black"`` gives plain bars instead. After ``"bars"`` the
picture's region of the styled frame is scaled back to the whole source (the bars are dropped).

Resizing: downscaling uses ``torch.nn.functional.interpolate`` (bilinear, antialias=True) on uint8,
upscaling uses PyAV's swscale reformatter (bilinear). Both were measured on CPU (one thread,
best of 3x40): 1280x720 -> 512x512 centre crop: torch uint8 2.2 ms vs PyAV 3.0 ms (torch float32
6.7 ms); 512x512 -> 1080x1080: PyAV 4.7 ms vs torch uint8 7.1 ms. A full ``restore_frame`` with blur
fill took ~7 ms to 1280x720 and ~13 ms to 1920x1080 (3.6 ms with black borders at 720p).
"""

from __future__ import annotations

from typing import Literal

import av
import numpy as np
import torch
import torch.nn.functional as F
from sdv2_studio.engine.config import FIT_MODES
from sdv2_studio.engine.errors import EngineError

#: Frame sides must be multiples of this: the VAE downsamples 8x and the DiT patchifies latents 2x2.
SIZE_MULTIPLE = 16
#: Smallest side the model is run at.
MIN_SIDE = 64
#: Largest side the model is run at: beyond it one chunk's activations outgrow any machine (8192x8192 asked 960 GB).
MAX_SIDE = 2048
def even_size(h: int, w: int) -> tuple[int, int]:
    """The size a yuv420p encoder takes for an ``h x w`` picture: even sides (an odd last row/column dropped), at
    least 2x2."""
    return max(2, h - h % 2), max(2, w - w % 2)


def check_fit(fit: str) -> str:
    """A framing choice from outside (flag, settings): returned if known, else one EngineError line."""
    if fit not in FIT_MODES:
        raise EngineError(f"unknown framing {fit!r}: use crop (fill the frame, cut the edges) or bars (show it "
                          "all, black bars)")
    return fit


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Return ``frame`` if it is an ``HxWx3`` uint8 array of at least 1x1, else raise ``ValueError`` (a caller bug)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 \
            or frame.size == 0:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an HxWx3 uint8 RGB frame of at least 1x1 pixels, got {desc}")
    return frame


def round_size(h: int, w: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Round ``(h, w)`` to the nearest multiples of ``multiple``; EngineError if a side ends up below 64."""
    rh, rw = (max(multiple, int(round(s / multiple)) * multiple) for s in (h, w))
    if rh < MIN_SIDE or rw < MIN_SIDE:
        raise EngineError(f"size {w}x{h} is too small: the model needs at least {MIN_SIDE}x{MIN_SIDE}")
    return rh, rw


def check_size(h: int, w: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Validate a model resolution and return it; EngineError naming the nearest valid size otherwise."""
    if h < MIN_SIDE or w < MIN_SIDE:
        raise EngineError(f"size {w}x{h} is too small: the model needs at least {MIN_SIDE}x{MIN_SIDE}")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise EngineError(f"size {w}x{h} is too large: the model runs at most {MAX_SIDE}x{MAX_SIDE} (its memory "
                          "grows with the pixels); use e.g. 832x480")
    if h % multiple or w % multiple:
        rh, rw = round_size(h, w, multiple)
        raise EngineError(
            f"size {w}x{h} is not a multiple of {multiple} (the VAE downsamples 8x and the model patchifies "
            f"2x2); use {rw}x{rh}"
        )
    return h, w


def crop_box(src_h: int, src_w: int, h: int, w: int) -> tuple[int, int, int, int]:
    """The centred ``(top, left, height, width)`` region of a ``src_h x src_w`` frame with aspect ``w/h``."""
    if src_w * h > w * src_h:  # source is wider than the target: crop the sides
        ch, cw = src_h, max(1, min(src_w, round(src_h * w / h)))
    else:  # source is taller (or equal): crop top and bottom
        ch, cw = max(1, min(src_h, round(src_w * h / w))), src_w
    return (src_h - ch) // 2, (src_w - cw) // 2, ch, cw


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an ``HxWx3`` uint8 image to ``h x w`` (antialiased when shrinking)."""
    if img.shape[:2] == (h, w):
        return img
    if h * w < img.shape[0] * img.shape[1]:
        if not img.flags.writeable or min(img.strides) < 0:  # torch.from_numpy cannot take these views
            img = img.copy()
        x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
        y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return y[0].permute(1, 2, 0).contiguous().numpy()
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    return frame.reformat(width=w, height=h, interpolation="BILINEAR").to_ndarray()


def fit_frame(frame: np.ndarray, size: tuple[int, int], fit: str = "crop") -> np.ndarray:
    """Frame ``frame`` to ``size=(h, w)`` keeping its aspect ratio: ``fit="crop"`` scales it to cover the size
    and crops the centre, ``"bars"`` scales it to fit inside, centred on black.

    Returns an ``h x w x 3`` uint8 array (``frame`` itself when it already has that size).
    """
    check_frame(frame)
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    if check_fit(fit) == "bars":
        top, left, ch, cw = crop_box(h, w, frame.shape[0], frame.shape[1])  # the picture's region of the output
        out = np.zeros((h, w, 3), np.uint8)
        out[top : top + ch, left : left + cw] = resize(frame, ch, cw)
        return out
    top, left, ch, cw = crop_box(frame.shape[0], frame.shape[1], h, w)
    return resize(frame[top : top + ch, left : left + cw], h, w)


def restore_frame(
    styled: np.ndarray,
    original_shape: tuple[int, ...],
    *,
    border: Literal["blur", "black"] = "blur",
    fit: str = "crop",
) -> np.ndarray:
    """Place a model-resolution frame back at the source size: the inverse of :func:`fit_frame`.

    ``original_shape`` is the source frame's ``(H, W)`` or ``(H, W, 3)``. The styled frame is scaled to
    the region ``fit_frame`` cropped and placed there; the cropped-away borders (if any) are filled per
    ``border``: ``"blur"`` (a blurred, dimmed, stretched copy of the styled frame) or ``"black"``. With
    ``fit="bars"`` (the frame was fitted with bars) the picture's region is scaled back to the whole source.
    Returns an ``H x W x 3`` uint8 array (``styled`` itself when nothing needs to change).
    """
    check_frame(styled)
    H, W = int(original_shape[0]), int(original_shape[1])
    if check_fit(fit) == "bars":
        top, left, ch, cw = crop_box(styled.shape[0], styled.shape[1], H, W)
        return resize(styled[top : top + ch, left : left + cw], H, W)
    top, left, ch, cw = crop_box(H, W, styled.shape[0], styled.shape[1])
    centre = resize(styled, ch, cw)
    if (ch, cw) == (H, W):
        return centre
    if border == "black":
        out = np.zeros((H, W, 3), np.uint8)
    elif border == "blur":
        out = np.empty((H, W, 3), np.uint8)
        _blur_fill(out, styled, (top, left, ch, cw))
    else:
        raise ValueError(f"border must be 'blur' or 'black', not {border!r}")
    out[top : top + ch, left : left + cw] = centre
    return out


def _blur_fill(out: np.ndarray, styled: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Fill ``out`` outside ``box`` with ``styled`` stretched to ``out``'s size, blurred and dimmed.

    The blur is a 32x shrink followed by a bilinear enlarge; only the border strips are enlarged.
    """
    H, W = out.shape[:2]
    top, left, ch, cw = box
    th, tw = max(2, H // 32), max(2, W // 32)
    tiny = resize(styled, th, tw)
    tiny = (tiny.astype(np.uint16) * 3 // 4).astype(np.uint8)  # dimmed, so the real picture stands out
    if cw < W:
        strips = [(0, H, 0, left), (0, H, left + cw, W)]
    else:
        strips = [(0, top, 0, W), (top + ch, H, 0, W)]
    for y0, y1, x0, x1 in strips:
        if y1 <= y0 or x1 <= x0:
            continue
        ty0, tx0 = min(th - 2, y0 * th // H), min(tw - 2, x0 * tw // W)
        ty1, tx1 = max(ty0 + 2, -(-y1 * th // H)), max(tx0 + 2, -(-x1 * tw // W))
        out[y0:y1, x0:x1] = resize(tiny[ty0:ty1, tx0:tx1], y1 - y0, x1 - x0)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """A user's "WIDTHxHEIGHT" (e.g. "832x480") -> (h, w); None or "" -> None."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EngineError(f"bad size {text!r}: use WIDTHxHEIGHT, e.g. 512x512") from None
    return h, w

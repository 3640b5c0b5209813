"""Image files as the three image projects read them: one decoder to 8-bit RGB (or L), frame files in
frame order. What `open_image(path)` makes of each kind of file:
- 8-bit RGB, L, 1-bit, P (palette), CMYK, YCbCr: Pillow's `convert("RGB")` (grey and 1-bit replicated to
  three channels, 1-bit as 0 / 255; palette looked up; CMYK profile-free, (255 - C) * (255 - K) / 255).
- 16-bit grey ("I;16*", and "I" holding 16-bit values, as 16-bit TIFFs and older Pillows' PNGs open):
  the high byte (value >> 8), the rule Pillow itself applies to 16-bit RGB(A). Pillow's own grey
  conversion clips at 255 instead, so a 16-bit photo came out all white.
- Alpha (RGBA, LA, PA, P with a transparent index): dropped, not composited, as `convert("RGB")` did in
  all three projects before, so the pixels a model was trained on do not change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from common.runtime import DataError

SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# What Pillow raises on a file it cannot decode: UnidentifiedImageError and "image file is truncated"
# are OSErrors, some plugins raise SyntaxError on broken chunks, bad headers give ValueError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError)


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey image as 8-bit "L"; any other mode is returned unchanged."""
    if image.mode not in SIXTEEN_BIT_GREY:
        return image
    values = np.asarray(image)  # (H, W) uint16 in the file's byte order, or int32 for mode "I"
    if values.size and (values.min() < 0 or values.max() > 65535):
        # Mode "I" is also Pillow's mode for 32-bit integer TIFFs: no fixed white point to scale by.
        raise ValueError(f"mode {image.mode} image with values in [{values.min()}, {values.max()}], "
                         f"outside the 16-bit range this reader scales")
    # >> 8 (not / 257), as Pillow does for 16-bit RGB files, so grey and colour map alike: 65535 -> 255, 255 -> 0.
    return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8))


def open_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """The decoded image at `path` in 8-bit `mode` ("RGB", or "L" for masks). Raises DECODE_ERRORS on an
    unreadable or truncated file; the caller turns them into its DataError naming the file."""
    with Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here and not later in a transform
        return to_8bit(image).convert(mode)


def natural_key(name: str) -> list:
    """'10.jpg' after '9.jpg': runs of digits compare as numbers, the rest case-insensitively."""
    # re.split with a group alternates text (even positions) and digit runs (odd positions).
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


def check_one_file_per_frame(names: Iterable[str], folder: Path, where: str) -> None:
    """Refuse two files of one frame ('12.jpg' and '12.png', or 'frame_2.png' and 'frame_02.png',
    which the natural order reads as the same number): they would count as two frames and the
    sequence would show that frame twice."""
    seen = {}
    for name in sorted(names, key=natural_key):
        frame = tuple(natural_key(Path(name).stem))
        if frame in seen:
            stem = Path(seen[frame]).stem
            raise DataError(f"{where}: {folder} holds frame {int(stem) if stem.isdecimal() else stem} twice "
                            f"({seen[frame]} and {name}); keep one file per frame")
        seen[frame] = name

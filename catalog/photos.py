"""Product photos with bounded cost: the pixel count is read from the header and checked before any
decoding, and a decoded photo is reduced at once to the size the image tower needs (JPEG decodes at
reduced scale directly, through Pillow's draft mode)."""
from __future__ import annotations

import warnings

import numpy as np
from django.conf import settings
from PIL import Image


class PhotoError(ValueError):
    """The photo cannot be used; the message says why (fit for an API response or a failed item)."""


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} Mpx" if pixels >= 1e6 else f"{pixels / 1e6:.2f} Mpx"


def open_checked(fileobj, name: str = "photo") -> Image.Image:
    """The opened (not yet decoded) image, if its pixel count is within MVMATCH_MAX_PHOTO_PIXELS.

    Not closed here: Pillow's close() would close the caller's file too."""
    limit = settings.MVMATCH_MAX_PHOTO_PIXELS
    try:
        with warnings.catch_warnings():  # our own limit applies below; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fileobj)
    except Image.DecompressionBombError:
        raise PhotoError(f"{name} has more than {_mpx(2 * Image.MAX_IMAGE_PIXELS)}; the limit is {_mpx(limit)}")
    width, height = img.size
    if width * height > limit:
        raise PhotoError(f"{name} is {width}×{height} = {_mpx(width * height)}; the limit is {_mpx(limit)}")
    return img


def check_photo(fileobj, name: str = "photo") -> None:
    """Raise PhotoError if the photo's header declares more pixels than allowed; leaves the file at its start."""
    open_checked(fileobj, name)
    fileobj.seek(0)


def decode_photo(fileobj, name: str = "photo", max_side: int | None = None) -> np.ndarray:
    """uint8 RGB [H, W, 3] with the longest side at most ``max_side`` (MVMATCH_PHOTO_DECODE_SIDE)."""
    max_side = max_side or settings.MVMATCH_PHOTO_DECODE_SIDE
    img = open_checked(fileobj, name)
    img.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale; others: no effect
    if img.mode not in ("RGB", "RGBA", "L"):
        img = img.convert("RGB")
    img.thumbnail((max_side, max_side))  # in place: Image.reduce where it can, then resampling
    return np.asarray(img.convert("RGB"))

"""Input images as they travel in requests: base64 strings, checked before they are trusted.

Pure PIL, no torch: the server validates requests with it before anything is queued.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

_ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")


class ImageInputError(ValueError):
    """An input image cannot be used; the message says why (a pydantic validator turns it
    into a per-field error)."""


def encode_image_b64(image: Image.Image, format: str = "PNG") -> str:
    """An image as the base64 string a request carries."""
    buf = io.BytesIO()
    image.save(buf, format=format)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# Characters of base64 decoded per call (a multiple of 4): see b64decode_strict.
_B64_CHUNK = 1024 * 1024


def b64decode_strict(text: str | bytes) -> bytes:
    """`base64.b64decode(text, validate=True)`, which checks the alphabet with a regular
    expression over the whole text, holding the GIL a second per image on a loaded machine
    (and so stalling the event loop): binascii's strict mode checks it while decoding, in
    pieces, so that other threads run between them. Raises binascii.Error as b64decode does."""
    if len(text) <= _B64_CHUNK:
        return binascii.a2b_base64(text, strict_mode=True)
    return b"".join(binascii.a2b_base64(text[i : i + _B64_CHUNK], strict_mode=True) for i in range(0, len(text), _B64_CHUNK))


def is_standard_b64(raw: bytes, text: str) -> bool:
    """Whether `text` is exactly `base64.b64encode(raw)`, compared piece by piece (as
    b64decode_strict decodes) rather than by encoding a whole image in one call."""
    if len(text) != 4 * ((len(raw) + 2) // 3):
        return False
    step = _B64_CHUNK // 4 * 3  # bytes that encode to one piece of characters
    return all(
        binascii.b2a_base64(raw[i : i + step], newline=False).decode("ascii") == text[i // 3 * 4 : (i + step) // 3 * 4]
        for i in range(0, len(raw), step)
    )


def _payload(data: str) -> str:
    text = data.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    return text


# Enough base64 for the header of any PNG or WebP, and of most JPEGs (their size follows the
# EXIF and colour profile blocks; a JPEG whose header lies further in is read whole).
_HEADER_CHARS = 256 * 1024


def declared_size_b64(data: str) -> tuple[int, int] | None:
    """The width and height an image's header declares, decoding no pixel; None when the
    data is not an image that can be read (decode_image_b64 then says why)."""
    text = _payload(data)
    for part in (text[:_HEADER_CHARS], text) if len(text) > _HEADER_CHARS else (text,):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(b64decode_strict(part))) as img:
                    return img.size
        except Exception:  # noqa: BLE001 - any unreadable header means "not known"
            continue
    return None


def decode_image_b64(data: str, field: str, max_pixels: int, max_bytes: int) -> Image.Image:
    """Decode and fully check one base64 image; return it.

    The declared size is checked before any pixel is decoded, so a decompression bomb costs
    nothing; then the whole image is decoded, so a truncated file is refused here and not
    halfway through a generation. Nothing is cached: a decoded input may be hundreds of
    megabytes, and the caller lets it go as soon as it has what it needs.
    """
    text = _payload(data)
    if len(text) > max_bytes * 4 // 3 + 4:
        raise ImageInputError(f"{field} is larger than {max_bytes // (1024 * 1024)} MB")
    try:
        raw = b64decode_strict(text)
    except (binascii.Error, ValueError):
        raise ImageInputError(f"{field} is not base64 data; send the image file's bytes base64-encoded") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            fmt = img.format
            width, height = img.size
            if fmt not in _ALLOWED_FORMATS:
                raise ImageInputError(f"{field} is a {fmt} image; send PNG, JPEG or WebP")
            if width * height > max_pixels:
                raise ImageInputError(
                    f"{field} is {width}x{height} pixels; at most {max_pixels:,} pixels are accepted "
                    "(scale it down first)"
                )
            img.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"{field} declares an enormous canvas (a decompression bomb); refused") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageInputError(f"{field} is not an image kakumei can read (PNG, JPEG or WebP), or it is truncated") from None
    return img

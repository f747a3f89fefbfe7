"""Deterministic synthetic OCR data: rendered text-line crops (rec) and pages with boxes (det).

Text mixes common Chinese characters (GB2312 level 1 that are also in the recogniser's
dictionary and in the font) with Latin words, digits and punctuation. Rendering uses
Pillow's basic layout engine so the same seed gives the same pixels on every machine
that has the same fonts. Images are RGB uint8 arrays (H, W, 3).

Fonts are looked up in ``$SLIMQ_CJK_FONT`` (a font file), then at the usual Debian paths
of fonts-noto-cjk and fonts-wqy-microhei, then through ``fc-list :lang=zh``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from slimq.core.errors import ConfigError

FONT_ENV = "SLIMQ_CJK_FONT"
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)
ASCII_PUNCT = ".,:;-/()%#+"
CJK_PUNCT = "，。、：；"
_REF_CHAR = "国"  # a full-height glyph that sets the vertical extent of a line crop
_MISSING = "\U0010fffd"  # private-use code point no font covers: renders as .notdef
Array = np.ndarray


@dataclass(frozen=True)
class FontFace:
    """One face of a font file (``index`` selects the face inside a .ttc collection)."""

    path: str
    index: int = 0

    def load(self, size: int) -> ImageFont.FreeTypeFont:
        """Open the face at ``size`` pixels with the basic (machine-independent) layout."""
        return _load_font(self.path, self.index, size)


@dataclass(frozen=True)
class Charset:
    """Characters the text generator draws from, split by kind."""

    han: str
    latin: str
    digits: str
    punct: str


@functools.lru_cache(maxsize=256)
def _load_font(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, index=index, layout_engine=ImageFont.Layout.BASIC)


def _pick_face(path: str) -> FontFace | None:
    """Return the Simplified-Chinese, non-mono face of a font file, or None if unreadable."""
    faces = []
    for index in range(16):
        try:
            family = ImageFont.truetype(path, 12, index=index).getname()[0] or ""
        except OSError:
            break
        faces.append((index, family))
    if not faces:
        return None
    for index, family in faces:
        if "Mono" not in family and (family.endswith(" SC") or "WenQuanYi" in family):
            return FontFace(path, index)
    return FontFace(path, faces[0][0])


def _fc_list_paths() -> list[str]:
    if shutil.which("fc-list") is None:
        return []
    try:
        out = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})


@functools.lru_cache(maxsize=1)
def find_cjk_fonts() -> tuple[FontFace, ...]:
    """Return the CJK font faces used for rendering (at most 4), most preferred first."""
    env = os.environ.get(FONT_ENV)
    if env:
        face = _pick_face(env) if Path(env).is_file() else None
        if face is None:
            raise ConfigError(
                f"{FONT_ENV}={env!r} is not a readable font file. Point it at a "
                "CJK .ttf/.ttc/.otf file or unset it."
            )
        return (face,)
    paths = [p for p in FONT_CANDIDATES if Path(p).is_file()] or _fc_list_paths()
    faces = [f for f in (_pick_face(p) for p in paths) if f is not None]
    if not faces:
        raise ConfigError(
            "No CJK font found for rendering OCR text. Install one with "
            "`apt-get install fonts-noto-cjk` or `apt-get install fonts-wqy-microhei`, "
            f"or set {FONT_ENV} to a CJK font file."
        )
    return tuple(faces[:4])


def _glyph_covered(font: ImageFont.FreeTypeFont, ch: str, missing: bytes) -> bool:
    mask = font.getmask(ch)
    return mask.size[0] > 0 and bytes(mask) != missing


@functools.lru_cache(maxsize=8)
def _covered(face: FontFace, chars: str) -> frozenset[str]:
    font = face.load(16)
    missing = bytes(font.getmask(_MISSING))
    return frozenset(c for c in chars if _glyph_covered(font, c, missing))


def gb2312_level1() -> str:
    """The 3755 most common Chinese characters (GB2312 level 1, rows 16-55)."""
    chars = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes((hi, lo)).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return "".join(chars)


def build_charset(dictionary: Sequence[str] | None, faces: Sequence[FontFace]) -> Charset:
    """Characters in the recogniser ``dictionary`` (all if None) that every face can draw."""
    allowed = None if dictionary is None else set(dictionary)

    def keep(chars: str) -> str:
        chars = "".join(c for c in chars if allowed is None or c in allowed)
        for face in faces:
            covered = _covered(face, chars)
            chars = "".join(c for c in chars if c in covered)
        return chars

    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    charset = Charset(
        keep(gb2312_level1()), keep(letters), keep("0123456789"), keep(ASCII_PUNCT + CJK_PUNCT)
    )
    if len(charset.han) < 100 or len(charset.digits) < 10:
        raise ConfigError(
            f"Only {len(charset.han)} Chinese characters are both in the dictionary and in "
            f"the fonts {[f.path for f in faces]}; install fonts-noto-cjk or fonts-wqy-microhei."
        )
    return charset


def _segment(rng: np.random.Generator, cs: Charset) -> str:
    kind = rng.choice(4, p=[0.55, 0.2, 0.15, 0.1])
    if kind == 0:
        return "".join(rng.choice(list(cs.han), size=int(rng.integers(2, 7))))
    if kind == 1:
        n = int(rng.integers(1, 6))
        num = "".join(rng.choice(list(cs.digits), size=n))
        if n > 2 and rng.random() < 0.3:
            cut = int(rng.integers(1, n))
            num = num[:cut] + str(rng.choice(list(".:-/"))) + num[cut:]
        return num
    if kind == 2:
        word = "".join(rng.choice(list(cs.latin), size=int(rng.integers(2, 7))))
        style = rng.integers(3)
        return word.lower() if style == 0 else word.upper() if style == 1 else word.capitalize()
    return str(rng.choice(list(cs.punct))) if cs.punct else ""


def random_text(rng: np.random.Generator, charset: Charset, max_em: float) -> str:
    """A random mixed-script string about ``max_em`` font-size units wide (at least 2 chars)."""
    text = ""
    while _em_width(text) < max_em * 0.7:
        seg = _segment(rng, charset)
        if not text and seg in charset.punct:
            continue
        text += seg
    text = text.rstrip(ASCII_PUNCT + CJK_PUNCT.replace("。", "")) or text
    while _em_width(text) > max_em and len(text) > 2:
        text = text[:-1]
    return text


def _em_width(text: str) -> float:
    return sum(1.0 if ord(c) > 0x2E80 else 0.6 for c in text)


def _jitter_colour(rng: np.random.Generator, base: float, spread: float) -> tuple[int, int, int]:
    r, g, b = np.clip(base + rng.uniform(-spread, spread, size=3), 0, 255)
    return int(r), int(g), int(b)


def _bbox(font: ImageFont.FreeTypeFont, text: str) -> tuple[int, int, int, int]:
    """The text's box in whole pixels (Pillow types it as float for fractional stroke widths; we draw none)."""
    x0, y0, x1, y1 = font.getbbox(text)
    return int(x0), int(y0), int(x1), int(y1)


def render_line(
    text: str, face: FontFace, size: int, rng: np.random.Generator, *, rotate: bool = True
) -> Array:
    """Render ``text`` as a tight line crop like a detector would cut it (RGB uint8)."""
    font = face.load(size)
    x0, y0, x1, y1 = _bbox(font, text)
    _, ry0, _, ry1 = _bbox(font, _REF_CHAR)
    top, bottom = min(y0, ry0), max(y1, ry1)
    mx = int(size * rng.uniform(0.1, 0.35))
    my = int(size * rng.uniform(0.08, 0.22))
    bg = _jitter_colour(rng, rng.uniform(200, 250), 12)
    fg = _jitter_colour(rng, rng.uniform(0, 80), 20)
    img = Image.new("RGB", (x1 - x0 + 2 * mx, bottom - top + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - x0, my - top), text, font=font, fill=fg)
    if rotate and rng.random() < 0.5:
        img = img.rotate(
            float(rng.uniform(-1.5, 1.5)),
            resample=Image.Resampling.BICUBIC,
            expand=True,
            fillcolor=bg,
        )
    arr = np.asarray(img, dtype=np.float32)
    sigma = rng.uniform(0.0, 6.0)
    arr = arr + rng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def render_lines(
    n: int,
    seed: int,
    charset: Charset,
    faces: Sequence[FontFace] | None = None,
    max_aspect: float = 320 / 48,
) -> list[tuple[Array, str]]:
    """Render ``n`` (image, text) line crops; the same seed always gives the same lines.

    Each crop's width/height stays at or under ``max_aspect`` so it fits the 48 x 320
    recogniser input without horizontal squeezing.
    """
    faces = tuple(faces) if faces is not None else find_cjk_fonts()
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        face = faces[int(rng.integers(len(faces)))]
        size = int(rng.integers(22, 44))
        text = random_text(rng, charset, max_em=float(rng.uniform(2.5, 8.5)))
        img = render_line(text, face, size, rng)
        while img.shape[1] > max_aspect * img.shape[0] and len(text) > 2:
            text = text[:-1]
            img = render_line(text, face, size, rng)
        lines.append((img, text))
    return lines


def _ink_mask(
    text: str, font: ImageFont.FreeTypeFont
) -> tuple[Image.Image, tuple[int, int], tuple[int, int, int, int]]:
    """Coverage mask of ``text``, the mask's offset from the text origin, and its ink box."""
    x0, y0, x1, y1 = _bbox(font, text)
    mask = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(mask).text((2 - x0, 2 - y0), text, font=font, fill=255)
    ys, xs = np.nonzero(np.asarray(mask))
    return (
        mask,
        (x0 - 2, y0 - 2),
        (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
    )


def _draw_text(
    page: Image.Image,
    rng: np.random.Generator,
    text: str,
    font: ImageFont.FreeTypeFont,
    xy: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Draw ``text`` with its origin (left, ascender) at ``xy``; return its ink box on the page."""
    mask, (ox, oy), (ix0, iy0, ix1, iy1) = _ink_mask(text, font)
    px, py = xy[0] + ox, xy[1] + oy
    fg = _jitter_colour(rng, rng.uniform(0, 110), 20)
    page.paste(Image.new("RGB", mask.size, fg), (px, py), mask)
    return px + ix0, py + iy0, px + ix1, py + iy1


def _page_row(
    page: Image.Image,
    rng: np.random.Generator,
    charset: Charset,
    font: ImageFont.FreeTypeFont,
    y: int,
) -> list[tuple[int, int, int, int]]:
    """Draw one row of one or two text segments at height ``y``; return their ink boxes."""
    width, size = page.size[0], int(font.size)
    x = int(rng.integers(16, width // 4))
    n_seg = 2 if rng.random() < 0.35 else 1
    boxes = []
    for k in range(n_seg):
        room = (width - 16 - x) / size
        if n_seg == 2 and k == 0:
            room = room * rng.uniform(0.3, 0.6)
        if room < 3:
            break
        text = random_text(rng, charset, max_em=room * float(rng.uniform(0.4, 1.0)))
        box = _draw_text(page, rng, text, font, (x, y))
        if box[2] > width - 4:  # the width estimate was too low: drop the overflow
            break
        boxes.append(box)
        x = box[2] + int(size * rng.uniform(2.5, 5.0))
    return boxes


def render_page(
    rng: np.random.Generator,
    charset: Charset,
    faces: Sequence[FontFace],
    width: int = 960,
    height: int = 736,
) -> tuple[Array, Array]:
    """Render a page of horizontal text lines; return (RGB image, int boxes N x 4 x0,y0,x1,y1).

    Boxes are the ink extents of each text segment (x1, y1 exclusive).
    """
    page = Image.new("RGB", (width, height), _jitter_colour(rng, rng.uniform(200, 252), 10))
    boxes: list[tuple[int, int, int, int]] = []
    y = int(rng.integers(16, 48))
    while True:
        size = int(rng.integers(14, 42))
        if y + 2 * size > height - 16:
            break
        font = faces[int(rng.integers(len(faces)))].load(size)
        row = _page_row(page, rng, charset, font, y)
        boxes += row
        bottom = max((b[3] for b in row), default=y + size)
        y = bottom + int(size * rng.uniform(0.6, 1.8))
    arr = np.asarray(page, dtype=np.float32)
    arr = arr + rng.normal(0.0, rng.uniform(0.0, 5.0), size=arr.shape).astype(np.float32)
    pixels = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return pixels, np.array(boxes, dtype=np.int64).reshape(-1, 4)


def render_pages(
    n: int,
    seed: int,
    charset: Charset,
    faces: Sequence[FontFace] | None = None,
    width: int = 960,
    height: int = 736,
) -> list[tuple[Array, Array]]:
    """Render ``n`` pages with their ground-truth line boxes; deterministic in ``seed``."""
    faces = tuple(faces) if faces is not None else find_cjk_fonts()
    rng = np.random.default_rng(seed)
    return [render_page(rng, charset, faces, width, height) for _ in range(n)]

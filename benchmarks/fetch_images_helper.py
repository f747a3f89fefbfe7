"""Helpers of ``fetch_images.sh`` (standard library + Pillow only).

    python fetch_images_helper.py rcc OUT FILE.rcc...      unpack Qt resource files (GCompris ships its data so)
    python fetch_images_helper.py collect DEST PREFIX FILE...  add photos to DEST as RGB JPEGs

``collect`` flattens transparency onto white, scales the short side down to at most 512 pixels, skips images
whose short side is under 150 pixels and near-duplicates (16x16 difference hash within 12 bits) of photos
already in DEST, and names each ``PREFIX_<stem>.jpg``.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

MAX_SHORT, MIN_SHORT, NEAR = 512, 150, 12


def rcc_files(path: Path) -> list[tuple[str, bytes]]:
    """(name, data) of every file in a Qt ``.rcc`` resource file (format versions 1-3, zlib or zstd)."""
    b = path.read_bytes()
    if b[:4] != b"qres":
        raise SystemExit(f"{path}: not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", b[4:20])
    entry = 14 if version == 1 else 22

    def name(off: int) -> str:
        n = struct.unpack(">H", b[names + off:names + off + 2])[0]
        return b[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: list[tuple[str, bytes]] = []
    stack = [(0, "")]
    while stack:
        i, prefix = stack.pop()
        e = tree + i * entry
        name_off, flags = struct.unpack(">IH", b[e:e + 6])
        nm = name(name_off) if i else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", b[e + 6:e + 14])
            stack += [(c, f"{prefix}{nm}/" if nm else prefix) for c in range(first, first + count)]
            continue
        off = data + struct.unpack(">I", b[e + 10:e + 14])[0]
        size = struct.unpack(">I", b[off:off + 4])[0]
        blob = b[off + 4:off + 4 + size]
        if flags & 1:
            blob = zlib.decompress(blob[4:])
        elif flags & 4:
            import zstandard

            blob = zstandard.ZstdDecompressor().decompress(blob, max_output_size=1 << 28)
        out.append((prefix + nm, blob))
    return out


def dhash(img) -> int:
    from PIL import Image

    g = img.convert("L").resize((17, 16), Image.Resampling.BILINEAR)
    px = g.tobytes()
    bits = 0
    for r in range(16):
        for c in range(16):
            bits = (bits << 1) | (px[r * 17 + c] > px[r * 17 + c + 1])
    return bits


def collect(dest: Path, prefix: str, files: list[Path]) -> None:
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    seen = []
    for p in sorted(dest.glob("*.jpg")):
        with Image.open(p) as im:
            seen.append(dhash(im))
    added = skipped_small = skipped_dup = 0
    for f in files:
        with Image.open(f) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, (255, 255, 255))
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            im = im.convert("RGB")
        if min(im.size) < MIN_SHORT:
            skipped_small += 1
            continue
        h = dhash(im)
        if any(bin(h ^ s).count("1") <= NEAR for s in seen):
            skipped_dup += 1
            continue
        seen.append(h)
        r = MAX_SHORT / min(im.size)
        if r < 1:
            im = im.resize((round(im.width * r), round(im.height * r)), Image.Resampling.LANCZOS)
        im.save(dest / f"{prefix}_{f.stem}.jpg", quality=92)
        added += 1
    print(f"{prefix}: {added} photos added, {skipped_small} too small, {skipped_dup} near-duplicates", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[0] == "rcc":
        out = Path(argv[1])
        for rcc in map(Path, argv[2:]):
            for name, blob in rcc_files(rcc):
                target = out / rcc.stem / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
    elif len(argv) >= 3 and argv[0] == "collect":
        collect(Path(argv[1]), argv[2], [Path(a) for a in argv[3:]])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Contact sheets of samples/photos translated by every shipped translation model (samples/translate/).

One sheet per name prefix pair (e.g. horse2zebra + zebra2horse): a row per photo with the photo,
then each model's output, all scaled to a common height. Run from the repository root:

    .venv/bin/python samples/translation_sheets.py [--size train] [--height 192]

Each model runs with its recorded settings (as `imgtrans translate -m NAME` does) unless --size is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from imgtrans.io import read_rgb  # noqa: E402
from imgtrans.pipelines.translate import TranslateConfig, Translator  # noqa: E402
from imgtrans.weights import list_models, load_generator, recorded_settings, run_size  # noqa: E402

HERE = Path(__file__).resolve().parent
PAIRS = (("horse2zebra", "zebra2horse"), ("summer2winter", "winter2summer"), ("monet2photo", "photo2monet"))
LABEL = 18  # px of caption strip above each column


def translate_all(name: str, photos: list[np.ndarray], size: str | None) -> list[np.ndarray]:
    g = load_generator(name)
    size, keep_detail, _ = recorded_settings(g.meta, size, None)
    config = TranslateConfig(size=run_size(size, g.meta), precision="fp32", keep_detail=keep_detail)
    translator = Translator(g.net, g.meta, device="cpu", config=config)
    return [translator.translate_rgb([p])[0] for p in photos]


def fit(rgb: np.ndarray, height: int) -> Image.Image:
    img = Image.fromarray(rgb)
    return img.resize((max(1, round(img.width * height / img.height)), height), Image.Resampling.LANCZOS)


def sheet(columns: dict[str, list[np.ndarray]], height: int) -> Image.Image:
    """Columns of images (same count each), captioned, rows aligned."""
    names = list(columns)
    rows = len(columns[names[0]])
    cells = [[fit(columns[n][r], height) for n in names] for r in range(rows)]
    widths = [max(cells[r][c].width for r in range(rows)) for c in range(len(names))]
    out = Image.new("RGB", (sum(widths) + 4 * (len(names) + 1), LABEL + rows * (height + 4) + 4), "white")
    draw = ImageDraw.Draw(out)
    x = 4
    for c, name in enumerate(names):
        draw.text((x, 3), name, fill="black")
        for r in range(rows):
            out.paste(cells[r][c], (x, LABEL + 4 + r * (height + 4)))
        x += widths[c] + 4
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", help="run size: 'train', a short side in px, or 0 (native); default: recorded")
    ap.add_argument("--height", type=int, default=192, help="row height of the sheet in px")
    args = ap.parse_args()
    shipped = {m["name"] for m in list_models() if m.get("task") == "translate"}
    files = sorted((HERE / "photos").iterdir())
    photos = [np.asarray(read_rgb(f)) for f in files]
    (HERE / "translate").mkdir(exist_ok=True)
    for pair in PAIRS:
        names = [n for n in pair if n in shipped]
        if not names:
            continue
        columns = {"photo": photos, **{n: translate_all(n, photos, args.size) for n in names}}
        path = HERE / "translate" / f"{pair[0]}.jpg"
        sheet(columns, args.height).save(path, quality=88, optimize=True)
        print(f"wrote {path.relative_to(HERE.parent)} ({', '.join(names)}, {len(files)} photos, size {args.size or 'recorded'})")


if __name__ == "__main__":
    main()

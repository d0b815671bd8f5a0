"""Images that are not breast ultrasound, as users would send them: what the input check
(issue 21) is measured on.

``ood_sets`` builds named sets of PNG/JPEG bytes, nothing downloaded: the dataset's own
masks, Pillow-rendered text screenshots, matplotlib charts, noise, gradients, photographs
and other medical images shipped inside installed packages (matplotlib's sample data,
scikit-image's bundled ``skimage/data`` files, pydicom's bundled test files), the
project's synthetic ultrasound set, and near-misses made from BUSI test images (inverted,
heavily cropped, rotated 90 degrees, a colour-Doppler-like overlay with calipers and
text). A set whose source is missing is absent; ``available_sources`` says why.

Bundled files are found by their presence in the installed package (never through a
fetcher that could download: ``skimage.data.*()`` and ``pydicom.data.get_testdata_file``
both may); DICOM pixel data is read only from uncompressed transfer syntaxes, so no
codec plugin is needed.

Every image depends only on (seed, set name, index): the same seed gives the same bytes,
and ``n_per_set=10`` gives the first 10 images of ``n_per_set=40``.

``ood_report`` gives the AUROC (out of distribution = positive, ties count one half) and
the flag rate (score > threshold, the InputCheck rule) per set; ``ood_figure`` draws the
score distributions.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import zlib
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# the one AUROC of the input check (out of distribution = positive, ties count one half)
from busi_classifier.evaluation.input_check_fit import auroc

# The sets, in report order. Masks, synthetic ultrasound and the four near-misses need
# inputs from the caller (BUSI masks, a synthetic folder, BUSI test images); the others are
# drawn here or made from files that installed packages ship.
MASKS = "masks"
TEXT = "text screenshots"
CHARTS = "charts"
NOISE = "noise"
GRADIENTS = "gradients"
PHOTOGRAPHS = "photographs"
MEDICAL = "medical, not ultrasound"
OTHER_ULTRASOUND = "ultrasound, not breast"
SYNTHETIC = "synthetic ultrasound"
INVERTED = "inverted"
CROPPED = "cropped"
ROTATED = "rotated 90"
OVERLAY = "colour overlay"
SET_NAMES: tuple[str, ...] = (MASKS, TEXT, CHARTS, NOISE, GRADIENTS, PHOTOGRAPHS, MEDICAL, OTHER_ULTRASOUND,
                              SYNTHETIC, INVERTED, CROPPED, ROTATED, OVERLAY)
NEAR_MISSES: tuple[str, ...] = (INVERTED, CROPPED, ROTATED, OVERLAY)
# The sets that are plainly not breast ultrasound (what the check must flag; the default
# method is chosen on their mean AUROC): the other sets are ultrasound (of another organ,
# simulated) or breast ultrasound altered (the near-misses), harder and arguable cases.
CLEARLY_NOT: tuple[str, ...] = (MASKS, TEXT, CHARTS, NOISE, GRADIENTS, PHOTOGRAPHS, MEDICAL)

# The heavy crop: the central CROP_FRACTION of each side (1/16 of the area), kept at its
# own resolution, as a crop tool writes it (decode_image upscales it to the model input).
CROP_FRACTION = 0.25

# Sides of the images made here: what people send (screenshots, photos, exports).
MIN_SIDE, MAX_SIDE = 200, 1000

# Bundled files (relative to the package directory). Photographs: matplotlib's
# grace_hopper.jpg and scikit-image's natural images (textures and text photos too).
MPL_PHOTOS = ("mpl-data/sample_data/grace_hopper.jpg",)
SKIMAGE_PHOTOS = ("data/astronaut.png", "data/camera.png", "data/chelsea.png", "data/coffee.png",
                  "data/coins.png", "data/moon.png", "data/rocket.jpg", "data/hubble_deep_field.jpg",
                  "data/motorcycle_left.png", "data/brick.png", "data/grass.png", "data/gravel.png",
                  "data/clock_motion.png", "data/page.png", "data/text.png")
# Medical, not ultrasound: pydicom's CT and MR slices (uncompressed), matplotlib's head
# MRI (raw 256 x 256 16-bit), scikit-image's fundus photograph, histology and microscopy.
PYDICOM_MEDICAL = ("data/test_files/CT_small.dcm", "data/test_files/MR_small.dcm",
                   "data/test_files/examples_overlay.dcm")
MPL_MEDICAL = ("mpl-data/sample_data/s1045.ima.gz",)
SKIMAGE_MEDICAL = ("data/retina.jpg", "data/ihc.png", "data/cell.png")
# Ultrasound of other organs in pydicom's test files: a lymph node with power Doppler,
# an obstetric sector scan (palette colour).
PYDICOM_ULTRASOUND = ("data/test_files/examples_rgb_color.dcm", "data/test_files/examples_palette.dcm")
# CT windows (centre, width) in Hounsfield units: soft tissue, bone, lung, mediastinum, brain.
CT_WINDOWS = ((40, 400), (400, 1800), (-600, 1500), (50, 350), (40, 80))

# matplotlib's TrueType fonts used for the screenshots (plus Pillow's default font).
MPL_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
             "DejaVuSansMono.ttf", "STIXGeneral.ttf")
MONO_FONT = "DejaVuSansMono.ttf"


# --------------------------------------------------------------------------- sources


def _package_dir(name: str) -> Path | None:
    """The installed package's directory, found without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _present(package: str, files: Sequence[str]) -> list[Path]:
    """The ``files`` (relative to ``package``'s directory) that are in the installed package."""
    root = _package_dir(package)
    return [] if root is None else [root / f for f in files if (root / f).is_file()]


def _photo_files() -> list[Path]:
    return _present("matplotlib", MPL_PHOTOS) + _present("skimage", SKIMAGE_PHOTOS)


def _medical_files() -> list[Path]:
    return _present("pydicom", PYDICOM_MEDICAL) + _present("matplotlib", MPL_MEDICAL) + _present("skimage", SKIMAGE_MEDICAL)


def _ultrasound_files() -> list[Path]:
    return _present("pydicom", PYDICOM_ULTRASOUND)


def _missing(package: str, files: Sequence[str], what: str) -> str:
    if _package_dir(package) is None:
        return f"{package} is not installed ({what})"
    return f"{package} is installed but ships none of {', '.join(Path(f).name for f in files)} ({what})"


def _synthetic_files(synthetic_dir: Path | None) -> list[Path]:
    if synthetic_dir is None or not Path(synthetic_dir).is_dir():
        return []
    root = Path(synthetic_dir)
    return sorted((p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                   and "_mask" not in p.stem and p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def available_sources(busi_test_images: Sequence[bytes] | None = None, mask_images: Sequence[bytes] | None = None,
                      synthetic_dir: Path | None = None) -> dict[str, str | None]:
    """Set name -> None when ``ood_sets`` with these arguments builds it, else the reason
    it is absent (a package not installed, an input not given). Cheap: nothing is built.
    Without arguments it tells which package-made sets this installation can build."""
    reasons: dict[str, str | None] = {}
    reasons[MASKS] = None if _nonempty_masks(mask_images or []) else (
        "no mask images given" if not mask_images else "every mask given is empty (all black)")
    reasons[TEXT] = None
    reasons[CHARTS] = None if _package_dir("matplotlib") else "matplotlib is not installed (charts)"
    reasons[NOISE] = None
    reasons[GRADIENTS] = None
    reasons[PHOTOGRAPHS] = None if _photo_files() else (
        f"{_missing('matplotlib', MPL_PHOTOS, 'sample data')}; {_missing('skimage', SKIMAGE_PHOTOS, 'scikit-image')}")
    reasons[MEDICAL] = None if _medical_files() else (
        f"{_missing('pydicom', PYDICOM_MEDICAL, 'CT/MR test files')}; "
        f"{_missing('matplotlib', MPL_MEDICAL, 'sample MRI')}; {_missing('skimage', SKIMAGE_MEDICAL, 'scikit-image')}")
    reasons[OTHER_ULTRASOUND] = None if _ultrasound_files() else _missing(
        "pydicom", PYDICOM_ULTRASOUND, "ultrasound test files")
    if synthetic_dir is None:
        reasons[SYNTHETIC] = "no synthetic dataset folder given"
    elif not _synthetic_files(synthetic_dir):
        reasons[SYNTHETIC] = f"no images in {synthetic_dir}"
    else:
        reasons[SYNTHETIC] = None
    for name in NEAR_MISSES:
        reasons[name] = None if busi_test_images else "no BUSI test images given"
    return {name: reasons[name] for name in SET_NAMES}


def source_files() -> dict[str, list[str]]:
    """The bundled files each package-made set is made of, as ``package/relative path``
    (for the evaluation note: what exactly was measured on this installation)."""
    def named(package: str, files: Sequence[str]) -> list[str]:
        root = _package_dir(package)
        return [] if root is None else [f"{package}/{f}" for f in files if (root / f).is_file()]

    fonts = [f"matplotlib/mpl-data/fonts/ttf/{p.name}" for p in _font_files()]
    return {TEXT: ["PIL default font", *fonts],
            PHOTOGRAPHS: named("matplotlib", MPL_PHOTOS) + named("skimage", SKIMAGE_PHOTOS),
            MEDICAL: named("pydicom", PYDICOM_MEDICAL) + named("matplotlib", MPL_MEDICAL)
            + named("skimage", SKIMAGE_MEDICAL),
            OTHER_ULTRASOUND: named("pydicom", PYDICOM_ULTRASOUND)}


# --------------------------------------------------------------------------- helpers


def _rng(seed: int, name: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of set ``name``: depends on nothing else."""
    return np.random.default_rng(np.random.SeedSequence((seed, zlib.crc32(name.encode())), spawn_key=(index,)))


def _order(seed: int, name: str, n_items: int) -> list[int]:
    """A seeded permutation of range(n_items): which given images a set uses, in order."""
    return [int(i) for i in _rng(seed, f"{name} order", 0).permutation(n_items)]


def _encode(image: Image.Image, rng: np.random.Generator, jpeg_probability: float) -> bytes:
    """PNG, or with ``jpeg_probability`` a JPEG of quality 75-95 (RGB or L only)."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if rng.random() < jpeg_probability:
        image.save(buffer, format="JPEG", quality=int(rng.integers(75, 96)))
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _size(rng: np.random.Generator, low: int = 240, high: int = 900, max_aspect: float = 2.0) -> tuple[int, int]:
    """(width, height) with sides in [low, high] and aspect ratio at most ``max_aspect``."""
    width = int(rng.integers(low, high + 1))
    height = int(rng.integers(max(low, int(width / max_aspect)), min(high, int(width * max_aspect)) + 1))
    return width, height


def _fit(image: Image.Image, longer: int) -> Image.Image:
    """``image`` resized (Lanczos) so that its longer side is ``longer``, or more where the
    shorter side would be under MIN_SIDE (at most MAX_SIDE)."""
    longer = min(MAX_SIDE, max(longer, -(-MIN_SIDE * max(image.size) // min(image.size))))
    scale = longer / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def _random_crop(image: Image.Image, rng: np.random.Generator, low: float, high: float = 1.0) -> Image.Image:
    """A crop of ``low``-``high`` of the width (the height within 15 % of that fraction, so
    the aspect ratio stays near the original's) at a random place."""
    fw = rng.uniform(low, high)
    fh = float(np.clip(fw * rng.uniform(0.85, 1.15), low, high))
    w, h = max(16, round(image.width * fw)), max(16, round(image.height * fh))
    x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    return image.crop((x, y, x + w, y + h))


def _smooth_field(rng: np.random.Generator, width: int, height: int, cell: float) -> np.ndarray:
    """Smooth noise in [-1, 1]: random values on a grid of ``cell`` px, bicubic upsampled."""
    gw, gh = max(2, round(width / cell)), max(2, round(height / cell))
    coarse = rng.uniform(0, 255, size=(gh, gw)).astype(np.uint8)
    fine = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return fine / 127.5 - 1.0


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@cache
def _font_files() -> tuple[Path, ...]:
    root = _package_dir("matplotlib")
    if root is None:
        return ()
    return tuple(root / "mpl-data/fonts/ttf" / f for f in MPL_FONTS if (root / "mpl-data/fonts/ttf" / f).is_file())


@lru_cache(maxsize=256)
def _font(path: Path | None, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if path is None:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: the bitmap font, one size
            return ImageFont.load_default()
    return ImageFont.truetype(str(path), size)


def _pick_font(rng: np.random.Generator, mono: bool = False) -> Path | None:
    files = _font_files()
    if mono:
        return next((p for p in files if p.name == MONO_FONT), None)
    choices = [None, *files]
    return choices[int(rng.integers(len(choices)))]


# --------------------------------------------------------------------------- text screenshots

_WORDS = ("the", "and", "of", "to", "in", "for", "with", "on", "is", "are", "report", "meeting", "project",
          "update", "please", "review", "attached", "results", "patient", "appointment", "schedule", "follow",
          "data", "figure", "table", "summary", "method", "analysis", "server", "request", "response", "error",
          "value", "settings", "account", "password", "email", "message", "today", "tomorrow", "week", "team",
          "budget", "invoice", "order", "delivery", "address", "phone", "number", "total", "price", "item",
          "click", "open", "save", "cancel", "download", "upload", "file", "folder", "image", "document",
          "clinical", "history", "findings", "impression", "normal", "study", "left", "right", "breast",
          "recommendation", "no", "evidence", "significant", "change", "compared", "prior", "exam")
_CODE_WORDS = ("def", "return", "import", "class", "for", "in", "if", "else", "self", "np", "array", "model",
               "image", "predict", "score", "len", "range", "print", "None", "True", "path", "config", "=", "+",
               "(", ")", ":", "[", "]", "0", "1", "224", "'png'")


def _sentence(rng: np.random.Generator, words: int) -> str:
    text = " ".join(_WORDS[int(i)] for i in rng.integers(len(_WORDS), size=words))
    return text[:1].upper() + text[1:] + "."


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def _theme(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """(background, text, accent): light, dark or tinted."""
    kind = int(rng.integers(3))
    accent = tuple(int(v) for v in rng.integers(30, 220, size=3))
    if kind == 0:
        return (int(rng.integers(240, 256)),) * 3, (int(rng.integers(0, 60)),) * 3, accent
    if kind == 1:
        return (int(rng.integers(18, 48)),) * 3, (int(rng.integers(200, 240)),) * 3, accent
    tint = tuple(int(v) for v in rng.integers(220, 256, size=3))
    return tint, (int(rng.integers(20, 80)),) * 3, accent


def _document(draw, rng, w, h, fg, accent):
    size = int(rng.integers(12, 26))
    font, bold = _font(_pick_font(rng), size), _font(_pick_font(rng), int(size * 1.6))
    margin = int(w * rng.uniform(0.04, 0.1))
    y = margin
    draw.text((margin, y), _sentence(rng, int(rng.integers(2, 6)))[:-1], fill=accent, font=bold)
    y += int(size * 2.6)
    while y < h - margin - size:
        for line in _wrap(draw, " ".join(_sentence(rng, int(rng.integers(6, 16))) for _ in range(3)), font,
                          w - 2 * margin):
            if y > h - margin - size:
                break
            draw.text((margin, y), line, fill=fg, font=font)
            y += int(size * 1.35)
        y += size


def _form(draw, rng, w, h, fg, accent):
    size = int(rng.integers(12, 22))
    font = _font(_pick_font(rng), size)
    bar = int(size * 2.2)
    draw.rectangle([0, 0, w, bar], fill=accent)
    draw.text((size, bar // 4), _sentence(rng, 3)[:-1], fill=(255, 255, 255), font=font)
    for k, x in enumerate((w - bar * 3, w - bar * 2, w - bar)):
        draw.ellipse([x + bar // 4, bar // 4, x + 3 * bar // 4, 3 * bar // 4], fill=((240, 90, 80), (240, 190, 60),
                                                                                    (90, 200, 90))[k])
    y, label_w = bar + size * 2, int(w * 0.3)
    while y < h - size * 6:
        draw.text((size * 2, y + size // 3), _sentence(rng, 2)[:-1] + ":", fill=fg, font=font)
        if rng.random() < 0.25:
            box = size
            draw.rectangle([label_w, y + size // 4, label_w + box, y + size // 4 + box], outline=fg, width=2)
            if rng.random() < 0.5:
                draw.line([label_w + 3, y + size // 4 + box // 2, label_w + box // 2, y + size // 4 + box - 3,
                           label_w + box - 2, y + size // 4 + 2], fill=accent, width=3)
        else:
            draw.rectangle([label_w, y, w - size * 2, y + int(size * 1.8)], outline=(150, 150, 150), width=1)
            draw.text((label_w + size // 2, y + size // 3), " ".join(_WORDS[int(i)] for i in rng.integers(
                len(_WORDS), size=int(rng.integers(1, 4)))), fill=(120, 120, 120), font=font)
        y += int(size * 2.8)
    bw = int(size * 7)
    for k, label in enumerate(("OK", "Cancel")):
        x0 = w - (k + 1) * (bw + size) - size
        draw.rounded_rectangle([x0, h - size * 4, x0 + bw, h - size * 2], radius=size // 2,
                               fill=accent if k == 0 else None, outline=accent, width=2)
        draw.text((x0 + bw // 2, h - size * 3), label, fill=(255, 255, 255) if k == 0 else fg, font=font, anchor="mm")


def _code(draw, rng, w, h, fg, accent):
    size = int(rng.integers(11, 20))
    font = _font(_pick_font(rng, mono=True), size)
    gutter = size * 3
    palette = [fg, accent, (86, 156, 214), (206, 145, 120), (106, 153, 85), (197, 134, 192)]
    y, indent, number = size, 0, 1
    while y < h - size:
        draw.text((size // 2, y), f"{number:>3}", fill=(128, 128, 128), font=font)
        x = gutter + indent * size * 2
        for _ in range(int(rng.integers(2, 9))):
            token = _CODE_WORDS[int(rng.integers(len(_CODE_WORDS)))]
            if x + draw.textlength(token, font=font) > w - size:
                break
            draw.text((x, y), token, fill=palette[int(rng.integers(len(palette)))], font=font)
            x += draw.textlength(token + " ", font=font)
        indent = int(np.clip(indent + rng.integers(-1, 2), 0, 4))
        y += int(size * 1.4)
        number += 1


def _table(draw, rng, w, h, fg, accent):
    size = int(rng.integers(11, 20))
    font = _font(_pick_font(rng), size)
    cols, row_h = int(rng.integers(3, 7)), int(size * 2)
    col_w = (w - 2 * size) / cols
    draw.rectangle([size, size, w - size, size + row_h], fill=accent)
    y, row = size, 0
    while y + row_h < h - size:
        for c in range(cols):
            x = size + c * col_w
            text = (_WORDS[int(rng.integers(len(_WORDS)))].title() if row == 0 or c == 0
                    else f"{rng.uniform(0, 10 ** int(rng.integers(1, 5))):.{int(rng.integers(0, 3))}f}")
            draw.text((x + size // 2, y + size // 2), text, fill=(255, 255, 255) if row == 0 else fg, font=font)
        draw.line([size, y + row_h, w - size, y + row_h], fill=(170, 170, 170), width=1)
        y += row_h
        row += 1
    for c in range(cols + 1):
        x = size + c * col_w
        draw.line([x, size, x, y], fill=(170, 170, 170), width=1)


def _chat(draw, rng, w, h, fg, accent):
    size = int(rng.integers(12, 22))
    font = _font(_pick_font(rng), size)
    y = size
    while y < h - size * 4:
        mine = bool(rng.random() < 0.5)
        lines = _wrap(draw, _sentence(rng, int(rng.integers(3, 18))), font, int(w * 0.55))
        bw = int(max(draw.textlength(line, font=font) for line in lines)) + size * 2
        bh = len(lines) * int(size * 1.3) + size
        x0 = w - bw - size if mine else size
        draw.rounded_rectangle([x0, y, x0 + bw, y + bh], radius=size, fill=accent if mine else (225, 225, 230))
        for k, line in enumerate(lines):
            draw.text((x0 + size, y + size // 2 + k * int(size * 1.3)), line,
                      fill=(255, 255, 255) if mine else (20, 20, 20), font=font)
        y += bh + size


def _terminal(draw, rng, w, h, fg, accent):
    size = int(rng.integers(11, 18))
    font = _font(_pick_font(rng, mono=True), size)
    draw.rectangle([0, 0, w, h], fill=(12, 12, 12))
    colour = ((0, 220, 0), (230, 230, 230), (255, 176, 0))[int(rng.integers(3))]
    y = size // 2
    while y < h - size:
        if rng.random() < 0.3:
            line = "$ " + " ".join(_CODE_WORDS[int(i)] for i in rng.integers(len(_CODE_WORDS), size=3))
        else:
            line = " ".join(_WORDS[int(i)] for i in rng.integers(len(_WORDS), size=int(rng.integers(2, 12))))
        draw.text((size // 2, y), line, fill=colour, font=font)
        y += int(size * 1.3)


_LAYOUTS: tuple[Callable, ...] = (_document, _form, _code, _table, _chat, _terminal)


def text_screenshot(rng: np.random.Generator, index: int) -> Image.Image:
    """A screenshot-like image of text: layout ``index`` mod 6 (document, form with
    boxes and buttons, code editor, table, chat, terminal), font, size and theme from rng."""
    w, h = _size(rng, 360, 1000)
    background, fg, accent = _theme(rng)
    image = Image.new("RGB", (w, h), background)
    _LAYOUTS[index % len(_LAYOUTS)](ImageDraw.Draw(image), rng, w, h, fg, accent)
    return image


# --------------------------------------------------------------------------- charts

CHART_KINDS = ("line", "bar", "scatter", "pie", "histogram", "heatmap")


def chart(rng: np.random.Generator, index: int) -> Image.Image:
    """A matplotlib chart (kind ``index`` mod 6 of CHART_KINDS) rendered with Agg, as RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kind = CHART_KINDS[index % len(CHART_KINDS)]
    w, h = _size(rng, 400, 1000, max_aspect=1.8)
    dark = bool(rng.random() < 0.25)
    bg, fg = ("#1e1e1e", "#dddddd") if dark else ("white", "black")
    fig = Figure(figsize=(w / 100, h / 100), dpi=100, facecolor=bg)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(facecolor=bg)
    n = int(rng.integers(5, 12))
    colours = [f"C{int(c)}" for c in rng.permutation(10)]
    if kind == "line":
        x = np.arange(int(rng.integers(10, 60)))
        for k in range(int(rng.integers(1, 4))):
            ax.plot(x, np.cumsum(rng.normal(0, 1, len(x))), color=colours[k], label=_WORDS[k * 7 % len(_WORDS)],
                    marker="o" if rng.random() < 0.3 else None)
        ax.legend(fontsize=8)
    elif kind == "bar":
        labels = [_WORDS[int(i)] for i in rng.choice(len(_WORDS), n, replace=False)]
        values = rng.uniform(1, 100, n)
        (ax.barh if rng.random() < 0.3 else ax.bar)(labels, values, color=colours[0])
        ax.tick_params(axis="x", labelrotation=45 if n > 7 else 0)
    elif kind == "scatter":
        for k in range(int(rng.integers(1, 4))):
            m = int(rng.integers(20, 300))
            ax.scatter(rng.normal(k, 1, m), rng.normal(0, 1 + k, m), s=float(rng.uniform(5, 40)), alpha=0.7,
                       color=colours[k])
    elif kind == "pie":
        labels = [_WORDS[int(i)] for i in rng.choice(len(_WORDS), n // 2 + 2, replace=False)]
        ax.pie(rng.uniform(1, 10, len(labels)), labels=labels, autopct="%1.0f%%",
               textprops={"color": fg, "fontsize": 8})
        ax.set_aspect("equal")
    elif kind == "histogram":
        ax.hist(rng.normal(0, 1, 1000) * rng.uniform(0.5, 3), bins=int(rng.integers(10, 50)), color=colours[0],
                edgecolor=bg)
    else:
        grid = rng.normal(0, 1, (n, n)).cumsum(axis=1)
        image = ax.imshow(grid, cmap=("viridis", "magma", "coolwarm", "Blues")[int(rng.integers(4))])
        fig.colorbar(image, ax=ax)
    if kind != "pie":
        if rng.random() < 0.5:
            ax.grid(True, alpha=0.3)
        ax.set_xlabel(_WORDS[int(rng.integers(len(_WORDS)))], color=fg)
        ax.set_ylabel(_WORDS[int(rng.integers(len(_WORDS)))], color=fg)
        ax.tick_params(colors=fg)
        for spine in ax.spines.values():
            spine.set_color(fg)
    ax.set_title(_sentence(rng, int(rng.integers(2, 5)))[:-1], color=fg)
    fig.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


# --------------------------------------------------------------------------- noise and gradients

NOISE_KINDS = ("uniform", "gaussian", "salt and pepper")


def noise(rng: np.random.Generator, index: int) -> Image.Image:
    """Noise: kind ``index`` mod 3 (uniform, gaussian, salt and pepper), gray or colour
    by (index // 3) mod 2, and every other group of six blurred (sigma 1-8 px) and
    stretched back to half to all of its contrast."""
    kind = NOISE_KINDS[index % 3]
    colour = (index // 3) % 2 == 1
    smooth = (index // 6) % 2 == 1
    w, h = _size(rng, 224, 800)
    shape = (h, w, 3) if colour else (h, w)
    if kind == "uniform":
        low = rng.uniform(0, 128)
        a = rng.uniform(low, rng.uniform(low + 64, 255), size=shape)
    elif kind == "gaussian":
        a = rng.normal(rng.uniform(60, 200), rng.uniform(15, 70), size=shape)
    else:
        density = rng.uniform(0.02, 0.3)
        a = np.full(shape, rng.uniform(40, 215))
        draw = rng.random(size=(h, w))
        a[draw < density / 2] = 0
        a[draw > 1 - density / 2] = 255
    image = Image.fromarray(_to_uint8(a))
    if smooth:  # blurred, then stretched back to the contrast it had: blobs, not a flat field
        before = np.asarray(image, dtype=np.float64)
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 8)))), dtype=np.float64)
        contrast = before.std() * rng.uniform(0.5, 1.0) / max(1e-6, blurred.std())
        image = Image.fromarray(_to_uint8((blurred - blurred.mean()) * contrast + before.mean()))
    return image


def gradient(rng: np.random.Generator, index: int) -> Image.Image:
    """A linear (even ``index``) or radial (odd) gradient, gray or colour by (index // 2)
    mod 2, with two to four colour stops."""
    radial = index % 2 == 1
    colour = (index // 2) % 2 == 1
    w, h = _size(rng, 224, 1000)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if radial:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(xx - cx, yy - cy) / (rng.uniform(0.3, 1.2) * max(w, h))
    else:
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    t = np.clip(t, 0, 1)
    stops = int(rng.integers(2, 5))
    positions = np.linspace(0, 1, stops)
    levels = rng.uniform(0, 255, size=(stops, 3 if colour else 1))
    low = rng.uniform(0, 110)  # the two ends at least 100 gray levels apart: never a flat field
    ends = np.array([low, rng.uniform(low + 100, 255)])[rng.permutation(2)]
    levels[[0, -1]] = np.clip(ends[:, None] + (rng.uniform(-50, 50, size=(2, 3)) if colour else 0), 0, 255)
    channels = [np.interp(t, positions, levels[:, c]) for c in range(levels.shape[1])]
    a = np.stack(channels, axis=-1) if colour else channels[0]
    return Image.fromarray(_to_uint8(a))


# --------------------------------------------------------------------------- bundled images


def _open_bundled(path: Path) -> Image.Image:
    """A bundled photograph as L or RGB (alpha composited on white)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return image.convert("L") if image.mode in ("L", "1") else image.convert("RGB")


def _window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM-style linear window to 0..255."""
    low = centre - width / 2
    return _to_uint8((values.astype(np.float64) - low) / max(1e-6, width) * 255)


def _dicom_pixels(path: Path) -> tuple[np.ndarray, list[tuple[float, float]], bool]:
    """(pixels in modality units, the file's own windows, is CT) of an uncompressed DICOM
    file; RGB and palette images as RGB uint8."""
    import pydicom
    from pydicom.multival import MultiValue

    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        raise ValueError(f"{path.name}: compressed pixel data needs a codec plugin")
    a = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        lut = apply_color_lut(a, ds)
        return _to_uint8(lut / max(1.0, float(lut.max())) * 255), [], False
    if a.ndim == 3:
        return a.astype(np.uint8), [], False
    values = a * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    centres, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    windows: list[tuple[float, float]] = []
    if centres is not None and widths is not None:
        centres = list(centres) if isinstance(centres, MultiValue) else [centres]
        widths = list(widths) if isinstance(widths, MultiValue) else [widths]
        windows = [(float(c), float(w)) for c, w in zip(centres, widths, strict=False)]
    return values, windows, ds.get("Modality") == "CT"


def _slice_view(values: np.ndarray, windows: list[tuple[float, float]], is_ct: bool, rng: np.random.Generator,
                view: int) -> Image.Image:
    """One 8-bit view of a CT/MR slice: window number ``view`` of (the file's windows, the
    standard CT windows for CT, percentile windows), as a viewer would export it."""
    low, high = (float(v) for v in np.percentile(values, (1, 99)))
    p5, p95 = (float(v) for v in np.percentile(values, (5, 95)))
    choices = [*windows, *(CT_WINDOWS if is_ct else ()), ((low + high) / 2, high - low), ((p5 + p95) / 2, p95 - p5)]
    centre, width = choices[view % len(choices)]
    return Image.fromarray(_window(values, centre, width))


class _Sources:
    """Loaded bundled images, once per ``ood_sets`` call."""

    def __init__(self):
        self.cache: dict[Path, object] = {}

    def get(self, path: Path):
        if path not in self.cache:
            if path.suffix == ".dcm":
                self.cache[path] = _dicom_pixels(path)
            elif path.name.endswith(".ima.gz"):  # matplotlib's raw 256 x 256 16-bit head MRI
                a = np.frombuffer(gzip.decompress(path.read_bytes()), dtype="<u2").reshape(256, 256)
                self.cache[path] = (a.astype(np.float64), [], False)
            else:
                self.cache[path] = _open_bundled(path)
        return self.cache[path]


def _photo_view(image: Image.Image, rng: np.random.Generator, first: bool, jpeg_probability: float) -> bytes:
    """The whole image (first view of a source) or a crop of 55-100 % of each side, maybe
    mirrored or gray, resized to a longer side of 256-1000 px."""
    if not first:
        image = _random_crop(image, rng, 0.55)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if image.mode == "RGB" and rng.random() < 0.2:
            image = image.convert("L")
    image = _fit(image, int(rng.integers(256, MAX_SIDE + 1)))
    return _encode(image, rng, jpeg_probability)


def _medical_view(source, rng: np.random.Generator, view: int) -> bytes:
    """View number ``view`` of a medical source: a photograph (whole, then crops), a colour
    frame, or a slice under the next window (cropped from the third view on), 256-768 px."""
    if isinstance(source, Image.Image):  # fundus photograph, histology, microscopy
        return _photo_view(source, rng, view == 0, 0.5)
    values, windows, is_ct = source
    if values.ndim == 3:
        image = Image.fromarray(values)
    else:
        image = _slice_view(values, windows, is_ct, rng, view)
    if view >= 2:
        image = _random_crop(image, rng, 0.7)
    image = _fit(image, int(rng.integers(256, 769)))
    if image.mode == "L" and rng.random() < 0.3:  # a viewer's screenshot is RGB
        image = image.convert("RGB")
    return _encode(image, rng, 0.25)


# --------------------------------------------------------------------------- near-misses


def central_crop_box(width: int, height: int, fraction: float = CROP_FRACTION) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central ``fraction`` of each side (at least 1 px)."""
    w, h = max(1, round(width * fraction)), max(1, round(height * fraction))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _open_given(data: bytes) -> Image.Image:
    """A given (trusted, dataset) image as L or RGB."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy() if image.mode in ("L", "RGB") else image.convert("RGB")


def inverted(image: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(image))


def cropped(image: Image.Image) -> Image.Image:
    return image.crop(central_crop_box(*image.size))


def rotated(image: Image.Image, index: int) -> Image.Image:
    """Turned 90 degrees counter-clockwise (even ``index``) or clockwise (odd)."""
    return image.transpose(Image.Transpose.ROTATE_90 if index % 2 == 0 else Image.Transpose.ROTATE_270)


def colour_overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A colour-Doppler-like overlay as scanners burn it in: a region-of-interest box with
    translucent red/blue (colour flow) or orange/yellow (power Doppler) blobs, a colour
    bar, yellow calipers with a dotted line, and white annotation text."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    h, w = rgb.shape[:2]
    bw, bh = max(8, int(w * rng.uniform(0.3, 0.55))), max(8, int(h * rng.uniform(0.25, 0.45)))
    x0 = int(np.clip(rng.uniform(0.3, 0.7) * w - bw / 2, 0, w - bw))
    y0 = int(np.clip(rng.uniform(0.3, 0.6) * h - bh / 2, 0, h - bh))
    field = _smooth_field(rng, bw, bh, cell=float(rng.uniform(16, 36)))
    blob = np.abs(field) > np.quantile(np.abs(field), rng.uniform(0.7, 0.85))
    power = bool(rng.random() < 0.5)
    strength = np.clip(np.abs(field), 0, 1)[..., None]
    if power:  # orange -> yellow with strength
        colour = np.concatenate([np.full_like(strength, 255), 120 + 135 * strength, 20 * strength], axis=-1)
    else:  # towards the probe red, away blue
        colour = np.where(field[..., None] > 0, [230, 40, 20], [30, 90, 240]).astype(np.float32)
        colour = colour * (0.6 + 0.4 * strength)
    alpha = rng.uniform(0.65, 0.9)
    region = rgb[y0:y0 + bh, x0:x0 + bw]
    region[blob] = (1 - alpha) * region[blob] + alpha * colour[blob]
    out = Image.fromarray(_to_uint8(rgb))
    draw = ImageDraw.Draw(out)
    draw.rectangle([x0, y0, x0 + bw - 1, y0 + bh - 1], outline=(200, 200, 60), width=1)
    bar_x, bar_h = w - max(10, w // 40) - 4, max(20, h // 3)
    for k in range(bar_h):
        t = k / max(1, bar_h - 1)
        c = ((255, int(255 - 135 * t), int(20 * (1 - t))) if power
             else (int(230 * max(0.0, 1 - 2 * t)), int(60 * (1 - abs(2 * t - 1))), int(240 * max(0.0, 2 * t - 1))))
        draw.line([bar_x, 8 + k, w - 4, 8 + k], fill=c)
    caliper = (255, 230, 0)
    a = (x0 + int(bw * rng.uniform(0.1, 0.4)), y0 + int(bh * rng.uniform(0.2, 0.8)))
    b = (x0 + int(bw * rng.uniform(0.6, 0.9)), y0 + int(bh * rng.uniform(0.2, 0.8)))
    arm = max(4, w // 60)
    for x, y in (a, b):
        draw.line([(x - arm, y), (x + arm, y)], fill=caliper, width=2)
        draw.line([(x, y - arm), (x, y + arm)], fill=caliper, width=2)
    for t in np.linspace(0, 1, 14):
        x, y = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        draw.ellipse([(x - 1, y - 1), (x + 1, y + 1)], fill=caliper)
    font = _font(None, max(10, h // 28))
    side = ("RT", "LT")[int(rng.integers(2))]
    draw.text((int(w * 0.04), int(h * 0.04)), f"{side} BREAST {int(rng.integers(1, 13))}:00 "
              f"{int(rng.integers(1, 8))}CM FN", fill=(235, 235, 235), font=font)
    draw.text((int(w * 0.04), int(h * 0.86)), f"{'PWR' if power else 'CF'} {int(rng.integers(50, 90))}%  "
              f"D {rng.uniform(0.3, 2.5):.2f} cm", fill=caliper, font=font)
    return out


# --------------------------------------------------------------------------- the sets


def _nonempty_masks(mask_images: Sequence[bytes]) -> list[bytes]:
    """The masks with some foreground: an all-black mask is one degenerate image (BUSI's
    normal class has hundreds), which would weigh that one case many times over."""
    kept = []
    for data in mask_images:
        with Image.open(io.BytesIO(data)) as mask:
            if np.asarray(mask.convert("L")).any():
                kept.append(data)
    return kept


def ood_sets(busi_test_images: Sequence[bytes] | None = None, mask_images: Sequence[bytes] | None = None,
             synthetic_dir: Path | None = None, n_per_set: int = 40, seed: int = 0) -> dict[str, list[bytes]]:
    """The out-of-distribution sets (SET_NAMES order, absent where ``available_sources``
    gives a reason), each a list of PNG or JPEG bytes as a user would send them.

    Args:
        busi_test_images: BUSI test-split images (bytes as on disk): the near-misses
            (inverted, cropped, rotated 90, colour overlay) are made from up to
            ``n_per_set`` of them, the same images for each transform.
        mask_images: BUSI mask PNGs: up to ``n_per_set`` of those with a lesion, as they are.
        synthetic_dir: a dataset folder written by ``busi_classifier.data.synthetic``:
            up to ``n_per_set`` of its images, as they are.
        n_per_set: images per made set (sets of given images have at most that many).
        seed: every choice and every drawn image depends on (seed, set, index) only.
    Returns:
        {set name: [image bytes]}.
    """
    if isinstance(n_per_set, bool) or not isinstance(n_per_set, int | np.integer) or n_per_set < 1:
        raise ValueError(f"n_per_set must be a whole number >= 1, got {n_per_set!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    n, seed = int(n_per_set), int(seed)
    reasons = available_sources(busi_test_images, mask_images, synthetic_dir)
    sets: dict[str, list[bytes]] = {}
    sources = _Sources()

    def made(name: str, build: Callable[[np.random.Generator, int], bytes]) -> None:
        if reasons[name] is None:
            sets[name] = [build(_rng(seed, name, i), i) for i in range(n)]

    if reasons[MASKS] is None:
        masks = _nonempty_masks(mask_images)
        sets[MASKS] = [masks[i] for i in _order(seed, MASKS, len(masks))[:n]]
    made(TEXT, lambda rng, i: _encode(text_screenshot(rng, i), rng, 0.25))
    made(CHARTS, lambda rng, i: _encode(chart(rng, i), rng, 0.25))
    made(NOISE, lambda rng, i: _encode(noise(rng, i), rng, 0.5))
    made(GRADIENTS, lambda rng, i: _encode(gradient(rng, i), rng, 0.5))
    photos, medical, ultrasound = _photo_files(), _medical_files(), _ultrasound_files()
    made(PHOTOGRAPHS, lambda rng, i: _photo_view(sources.get(photos[i % len(photos)]), rng, i < len(photos), 0.75))
    made(MEDICAL, lambda rng, i: _medical_view(sources.get(medical[i % len(medical)]), rng, i // len(medical)))
    made(OTHER_ULTRASOUND, lambda rng, i: _medical_view(sources.get(ultrasound[i % len(ultrasound)]), rng,
                                                        i // len(ultrasound)))
    if reasons[SYNTHETIC] is None:
        files = _synthetic_files(synthetic_dir)
        sets[SYNTHETIC] = [files[i].read_bytes() for i in _order(seed, SYNTHETIC, len(files))[:n]]
    if busi_test_images:
        picked = [busi_test_images[i] for i in _order(seed, "near-miss", len(busi_test_images))[:n]]
        originals = [_open_given(data) for data in picked]
        sets[INVERTED] = [_png(inverted(im)) for im in originals]
        sets[CROPPED] = [_png(cropped(im)) for im in originals]
        sets[ROTATED] = [_png(rotated(im, i)) for i, im in enumerate(originals)]
        sets[OVERLAY] = [_png(colour_overlay(im, _rng(seed, OVERLAY, i))) for i, im in enumerate(originals)]
    return {name: sets[name] for name in SET_NAMES if name in sets}


def near_miss_originals(busi_test_images: Sequence[bytes], n_per_set: int = 40, seed: int = 0) -> list[bytes]:
    """The given images the near-miss sets are made from, in their order (image k of
    each near-miss set is a transform of item k)."""
    return [busi_test_images[i] for i in _order(int(seed), "near-miss", len(busi_test_images))[:int(n_per_set)]]


# --------------------------------------------------------------------------- report and figure


def _scores(values, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(a).any():
        raise ValueError(f"{what}: {int(np.isnan(a).sum())} score(s) are NaN")
    return a


def _flag_rate(scores: np.ndarray, threshold: float) -> float | None:
    return float(np.mean(scores > threshold)) if scores.size else None


def ood_report(in_test_scores, set_scores: dict[str, np.ndarray], threshold: float,
               in_val_scores=None) -> dict:
    """AUROC against the in-distribution test scores and the flag rate (score >
    ``threshold``) per set, and the in-distribution flag rates.

    Returns:
        {"threshold", "in_distribution": {"n", "flag_rate"}, ["validation": {"n", "flag_rate"}],
         "sets": {name: {"n", "auroc", "flag_rate"}}, "mean_auroc"} (a set with no
        scores has n 0 and None for the rest; mean_auroc is over the sets that have scores).
    """
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    test = _scores(in_test_scores, "in-distribution test scores")
    if test.size == 0:
        raise ValueError("no in-distribution test scores")
    report: dict = {"threshold": threshold,
                    "in_distribution": {"n": int(test.size), "flag_rate": _flag_rate(test, threshold)}}
    if in_val_scores is not None:
        val = _scores(in_val_scores, "in-distribution validation scores")
        report["validation"] = {"n": int(val.size), "flag_rate": _flag_rate(val, threshold)}
    sets = {}
    for name, values in set_scores.items():
        scores = _scores(values, f"set {name!r}")
        sets[name] = {"n": int(scores.size), "auroc": auroc(test, scores) if scores.size else None,
                      "flag_rate": _flag_rate(scores, threshold)}
    report["sets"] = sets
    aurocs = [s["auroc"] for s in sets.values() if s["auroc"] is not None]
    report["mean_auroc"] = float(np.mean(aurocs)) if aurocs else None
    return report


IN_DISTRIBUTION_LABEL = "BUSI test (in distribution)"


def ood_figure(in_scores, set_scores: dict[str, np.ndarray], threshold: float, path,
               title: str = "Input check: score distributions", in_label: str = IN_DISTRIBUTION_LABEL) -> Path:
    """One row per set (the in-distribution test images first, named ``in_label``): a box
    of the quartiles and every score as a dot, the threshold as a vertical line, AUROC and
    flag rate at the right. Log x when every score is positive and they span more than 50x.
    Writes a PNG (its ``Title`` metadata is ``title``) and returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    report = ood_report(in_scores, set_scores, threshold)
    rows = [(in_label, _scores(in_scores, "in-distribution scores"))]
    rows += [(name, _scores(values, name)) for name, values in set_scores.items()]
    everything = np.concatenate([r[1] for r in rows] + [np.array([threshold])])
    finite = everything[np.isfinite(everything)]
    log_x = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 50)

    fig = Figure(figsize=(9.5, 1.2 + 0.42 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0)
    for k, (name, scores) in enumerate(rows):
        y = len(rows) - 1 - k
        colour = "#2ca02c" if k == 0 else "#1f77b4"
        shown = scores[np.isfinite(scores)]
        if shown.size:
            style = {"positions": [y], "widths": 0.55, "showfliers": False, "patch_artist": True,
                     "boxprops": {"facecolor": colour, "alpha": 0.25, "edgecolor": colour},
                     "medianprops": {"color": colour}, "whiskerprops": {"color": colour}, "capprops": {"color": colour}}
            try:
                ax.boxplot(shown, orientation="horizontal", **style)
            except TypeError:  # matplotlib < 3.10
                ax.boxplot(shown, vert=False, **style)
            ax.scatter(shown, y + jitter.uniform(-0.18, 0.18, shown.size), s=7, color=colour, alpha=0.6,
                       linewidths=0, zorder=3)
        if k == 0:
            note = f"n={scores.size}  flagged {100 * report['in_distribution']['flag_rate']:.0f} %"
        else:
            entry = report["sets"][name]
            note = (f"n={entry['n']}  AUROC {entry['auroc']:.3f}  flagged {100 * entry['flag_rate']:.0f} %"
                    if entry["n"] else "n=0")
        ax.annotate(note, xy=(1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.axvline(threshold, color="#d62728", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4g}")
    if log_x:
        ax.set_xscale("log")
    else:  # each tick its own number (no "1e8" offset under the axis, over the label)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.set_yticks(range(len(rows)), [name for name, _ in rows][::-1], fontsize=9)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("input-check score (higher = farther from the training images)" + (" (log)" if log_x else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Title": title})
    return path

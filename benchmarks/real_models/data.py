"""Calibration and held-out inputs: real photographs and real sentences from packages.

Photographs (27 source photos, all installed by ``setup.sh``):

- Debian ``mate-backgrounds``: the 12 photos of ``/usr/share/backgrounds/mate/nature/``;
- Debian ``plasma-workspace-wallpapers``: the 12 wallpapers that are photographs (the others
  are drawings), largest file of each;
- scikit-learn's bundled ``china.jpg`` and ``flower.jpg``; matplotlib's ``grace_hopper.jpg``.

The photos are split by source with a fixed seed: calibration crops come from
``CALIB_PHOTOS`` photos, held-out crops from the others, so no held-out crop shares a photo
with a calibration crop. Each crop is a random square (side 35-100% of the shorter side, random
position; seeded by photo and crop number), resized to the model's input size.

Sentences: Debian ``fortunes`` (``/usr/share/games/fortunes``), one fortune = one text
(whitespace collapsed, 5-60 words, no tables); calibration from the files ``CALIB_FORTUNES``,
held-out from ``HELDOUT_FORTUNES``: disjoint sources again.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SETUP = "bash benchmarks/real_models/setup.sh"

MATE_DIR = Path("/usr/share/backgrounds/mate/nature")
PLASMA_DIR = Path("/usr/share/wallpapers")
# plasma-workspace-wallpapers 5.27: the wallpapers that are photographs.
PLASMA_PHOTOS = (
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "Volna",
    "summer_1am",
)
CALIB_PHOTOS = 8  # source photos reserved for calibration crops
FORTUNES_DIR = Path("/usr/share/games/fortunes")
CALIB_FORTUNES = ("wisdom", "work")
HELDOUT_FORTUNES = ("science", "literature", "computers", "art")
SEED = 0


class MissingInputError(RuntimeError):
    """A package providing inputs or models is not installed."""


@dataclass(frozen=True)
class Photo:
    """One source photograph."""

    name: str  # package:file
    path: Path


def _module_file(module: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.joinpath(*parts)


def photos() -> list[Photo]:
    """Every source photograph, sorted by name; raises MissingInputError naming the package."""
    out: list[Photo] = []
    if not MATE_DIR.is_dir():
        raise MissingInputError(f"Debian package mate-backgrounds is not installed: run {SETUP}")
    out += [Photo(f"mate-backgrounds:{p.name}", p) for p in sorted(MATE_DIR.glob("*.jpg"))]
    if not PLASMA_DIR.is_dir():
        raise MissingInputError(
            f"Debian package plasma-workspace-wallpapers is not installed: run {SETUP}"
        )
    for name in PLASMA_PHOTOS:
        files = [
            p
            for p in (PLASMA_DIR / name / "contents" / "images").glob("*.jpg")
            if p.is_file() and not p.is_symlink() and p.stat().st_size > 0
        ]
        if not files:
            raise MissingInputError(f"plasma-workspace-wallpapers lacks {name}: run {SETUP}")
        biggest = max(files, key=lambda p: p.stat().st_size)
        out.append(Photo(f"plasma-workspace-wallpapers:{name}/{biggest.name}", biggest))
    for module, parts in (
        ("sklearn", ("datasets", "images", "china.jpg")),
        ("sklearn", ("datasets", "images", "flower.jpg")),
        ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg")),
    ):
        p = _module_file(module, *parts)
        if p is None or not p.is_file():
            raise MissingInputError(f"{module} (for {parts[-1]}) is not installed: run {SETUP}")
        out.append(Photo(f"{module}:{parts[-1]}", p))
    return sorted(out, key=lambda p: p.name)


def split_photos() -> tuple[list[Photo], list[Photo]]:
    """(calibration photos, held-out photos): a seeded split of the sources."""
    all_photos = photos()
    order = np.random.default_rng(SEED).permutation(len(all_photos))
    calib = [all_photos[i] for i in sorted(order[:CALIB_PHOTOS])]
    held = [all_photos[i] for i in sorted(order[CALIB_PHOTOS:])]
    return calib, held


def _load(photo: Photo, max_side: int = 800) -> np.ndarray:
    from PIL import Image

    with Image.open(photo.path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return np.asarray(im)


def crops(sources: list[Photo], n: int, size: int, salt: int) -> list[np.ndarray]:
    """`n` uint8 HxWx3 crops of side `size`, dealt round-robin over `sources` (deterministic)."""
    from PIL import Image

    images = [_load(p) for p in sources]
    out: list[np.ndarray] = []
    for k in range(n):
        i = k % len(sources)
        img = images[i]
        rng = np.random.default_rng([SEED, salt, i, k // len(sources)])
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[y : y + side, x : x + side])
        out.append(np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR)))
    return out


def image_sets(size: int, n_calib: int, n_held: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration crops, held-out crops) at `size` x `size`, from disjoint photos."""
    calib, held = split_photos()
    return crops(calib, n_calib, size, salt=1), crops(held, n_held, size, salt=2)


def _fortunes(name: str) -> list[str]:
    path = FORTUNES_DIR / name
    if not path.is_file():
        raise MissingInputError(f"Debian package fortunes is not installed ({path}): run {SETUP}")
    text = path.read_text(encoding="latin-1")
    out = []
    for chunk in text.split("\n%\n"):
        if "\t" in chunk or "  " in chunk.strip():  # tables, aligned verse, ASCII art
            continue
        s = re.sub(r"\s+", " ", chunk).strip()
        if 5 <= len(s.split()) <= 60:
            out.append(s)
    return out


def sentence_sets(n_calib: int, n_held: int) -> tuple[list[str], list[str]]:
    """(calibration texts, held-out texts) from disjoint fortune files, seeded."""
    pools = []
    for files in (CALIB_FORTUNES, HELDOUT_FORTUNES):
        pool = sorted({s for f in files for s in _fortunes(f)})
        pools.append(pool)
    rng = np.random.default_rng(SEED)
    calib = [pools[0][i] for i in rng.choice(len(pools[0]), n_calib, replace=False)]
    held = [pools[1][i] for i in rng.choice(len(pools[1]), n_held, replace=False)]
    return calib, held


def describe() -> dict[str, object]:
    """Where the inputs come from (for the JSON output)."""
    try:
        calib, held = split_photos()
        photo_info: dict[str, object] = {
            "calibration_photos": [p.name for p in calib],
            "heldout_photos": [p.name for p in held],
        }
    except MissingInputError as e:
        photo_info = {"error": str(e)}
    return {
        **photo_info,
        "calibration_fortune_files": list(CALIB_FORTUNES),
        "heldout_fortune_files": list(HELDOUT_FORTUNES),
        "seed": SEED,
    }


def fmnist_sets(n_calib: int, n_held: int) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Debian ``dataset-fashion-mnist``) as the pipeline's models take it
    (float32 in [0, 1], 28x28x1): calibration images from the training split, the same number
    of each class (the seed's recipe at ``n_calib=10``), and held-out images from the test
    split (never trained or calibrated on), both drawn with a fixed seed."""
    from qfcal.pipeline import data as qdata
    from qfcal.pipeline.train import to_float

    try:
        ds = qdata.load("fashion_mnist")
    except qdata.DatasetNotFoundError as e:
        raise MissingInputError(f"{e} (apt-get install dataset-fashion-mnist)") from e
    labels = ds.labels("train")
    per_class = -(-n_calib // ds.num_classes)
    idx = qdata.calibration_indices(labels, per_class, seed=SEED)
    # class order -> round-robin over classes, so that the first n_calib hold every class
    idx = idx.reshape(ds.num_classes, per_class).T.reshape(-1)[:n_calib]
    test = np.random.default_rng(SEED).permutation(len(ds.labels("test")))[:n_held]
    return to_float(ds.images("train", idx)), to_float(ds.images("test", np.sort(test)))

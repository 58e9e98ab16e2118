"""Real trained models for tests and benchmarks, fetched with pip from a package that ships them.

The rapidocr_onnxruntime 1.4.4 wheel holds three PP-OCR models.  The wheel is downloaded once with
``pip download`` into a cache folder (``$OPENDLC_TEST_CACHE``, default ``~/.cache/opendlc-tests``) and
the models are extracted beside it.  Calibration and held-out inputs are deterministic crops of
scikit-image's bundled pictures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "rapidocr_onnxruntime==1.4.4"
MODELS = {
    "det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 480, 480)),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
}


def cache_dir() -> Path:
    d = Path(os.environ.get("OPENDLC_TEST_CACHE", Path.home() / ".cache" / "opendlc-tests"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def ppocr_model(name: str) -> Path:
    """Path of the PP-OCR model ``det``, ``rec`` or ``cls`` (downloaded on first use)."""
    filename, _ = MODELS[name]
    target = cache_dir() / "ppocr" / filename
    if target.exists():
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(exist_ok=True)
    if not list(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), WHEEL], check=True
        )
    wheel = next(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    target.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.endswith(".onnx"):
                tmp = target.parent / (Path(member).name + ".part")
                tmp.write_bytes(z.read(member))
                tmp.replace(target.parent / Path(member).name)
    return target


def input_shape(name: str) -> tuple[int, ...]:
    return MODELS[name][1]


def image_crops(shape: tuple[int, ...], count: int, *, seed: int, normalize: bool = True) -> list[np.ndarray]:
    """``count`` deterministic NCHW float32 crops of scikit-image's pictures, PP-OCR normalised.

    Different seeds give disjoint-ish crops: use one seed for calibration, another for held-out data.
    """
    from skimage import data as skdata
    from skimage.transform import resize

    names = [
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "page",
        "text",
        "camera",
        "coins",
        "hubble_deep_field",
        "immunohistochemistry",
        "motorcycle_left",
        "retina",
    ]
    pictures = []
    for n in names:
        try:
            img = getattr(skdata, n)()
        except Exception:  # some pictures need optional downloads; skip those
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        pictures.append(img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0))
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    out = []
    for _ in range(count):
        pic = pictures[int(rng.integers(len(pictures)))]
        ph, pw = pic.shape[:2]
        scale = rng.uniform(0.3, 1.0)
        ch, cw = max(8, int(ph * scale)), max(8, int(pw * scale * w / h * ph / pw))
        ch, cw = min(ch, ph), min(cw, pw)
        y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        crop = resize(pic[y : y + ch, x : x + cw], (h, w), anti_aliasing=True).astype(np.float32)
        if normalize:
            crop = (crop - 0.5) / 0.5
        out.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None, :c]))
    return out


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``reference``, in dB."""
    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(test, dtype=np.float64)
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref * ref))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")

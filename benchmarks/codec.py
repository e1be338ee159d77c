"""Rate-distortion of the SMoE codec against JPEG, JPEG 2000, WebP and AVIF on Kodak.

For every image and rate R (bits per pixel), each codec gets the largest
quality setting whose file fits ``R * H * W / 8`` bytes (real files, headers
included):

* ``smoe``: ``smoe.codec.compress(image, bpp=R, seconds=S)``, S per rate from
  ``--seconds`` (the time budget of fit plus fine-tuning);
* ``jpeg``: Pillow (libjpeg-turbo), ``quality`` 1-100, ``optimize=True``, 4:2:0;
* ``jpeg2000``: Pillow (OpenJPEG), ``irreversible=True``, ``mct=1`` (the colour
  transform), ``quality_mode="rates"`` with the smallest compression ratio that fits;
* ``webp``: Pillow (libwebp), ``quality`` 0-100, ``method=6``;
* ``avif``: Pillow (libavif), ``quality`` 0-100, default speed.

A codec that cannot make a file that small for an image gets no point there
(JPEG at 0.1 bpp); means over images say how many they cover.  Decoded
images are rounded to 8 bits, as a saved file would be, then measured:
PSNR (dB, all channels), MS-SSIM and LPIPS (AlexNet) from :mod:`smoe.metrics`.
Encode seconds are one encode at the chosen setting (the search is not
counted); decode seconds the median of three decodes after a warm-up, for
smoe the bitstream's entropy decoding and the render.  BD-rate
(Bjontegaard, cubic fit of log rate against quality, over the overlap of the
two curves) of smoe against each codec, on the mean curves of the images
every codec covers, over 0.15-0.6 bpp and over all rates.

    python benchmarks/codec.py                                   # all 24 images, six rates (about 70 min)
    python benchmarks/codec.py --images 23 --rates 0.15 0.25 --seconds 10 10 --out benchmarks/results/codec_smoke

Writes OUT.md, OUT.csv, OUT_rd.png (rate-distortion curves) and OUT_crops.png
(crops at 0.15 bpp: original, JPEG, JPEG 2000, AVIF, smoe).
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time

import numpy as np
from PIL import Image

from _common import RESULTS, header, kodak_images, markdown_table, timed, write_results

import smoe
from smoe.codec import compress, decode
from smoe.imageio import read_image
from smoe.metrics import lpips, ms_ssim, psnr

RATES = (0.1, 0.15, 0.25, 0.4, 0.6, 1.0)
#: Fit-plus-fine-tune seconds per rate: more kernels need longer.
SECONDS = (12, 15, 25, 30, 35, 40)
CODECS = ("smoe", "jpeg", "jpeg2000", "webp", "avif")
BD_RANGE = (0.15, 0.6)


# ================================================================ standard codecs
def _save(pil: Image.Image, codec: str, setting) -> bytes:
    buffer = io.BytesIO()
    if codec == "jpeg":
        pil.save(buffer, "JPEG", quality=int(setting), optimize=True, subsampling="4:2:0")
    elif codec == "webp":
        pil.save(buffer, "WEBP", quality=int(setting), method=6)
    elif codec == "avif":
        pil.save(buffer, "AVIF", quality=int(setting))
    else:
        pil.save(buffer, "JPEG2000", irreversible=True, mct=1, quality_mode="rates", quality_layers=[float(setting)])
    return buffer.getvalue()


def fit_standard(pil: Image.Image, codec: str, budget: int):
    """(file bytes, setting) at the best quality that fits ``budget`` bytes, or None."""
    if codec == "jpeg2000":  # compression ratio: smaller is better, searched in log space
        lo, hi = 1.0, 5000.0
        if len(_save(pil, codec, hi)) > budget:
            return None
        for _ in range(24):
            mid = math.sqrt(lo * hi)
            if len(_save(pil, codec, mid)) <= budget:
                hi = mid
            else:
                lo = mid
        return _save(pil, codec, hi), round(hi, 3)
    lo, hi = (1, 100) if codec == "jpeg" else (0, 100)
    if len(_save(pil, codec, lo)) > budget:
        return None
    while hi - lo > 1:  # largest quality that fits; size grows with quality
        mid = (lo + hi) // 2
        if len(_save(pil, codec, mid)) <= budget:
            lo = mid
        else:
            hi = mid
    top = hi if len(_save(pil, codec, hi)) <= budget else lo
    return _save(pil, codec, top), top


def _decode_standard(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


# ==================================================================== measuring
def _quality(image: np.ndarray, decoded8: np.ndarray) -> dict:
    out = decoded8.astype(np.float32) / 255
    return {"psnr": psnr(image, out), "ms_ssim": ms_ssim(image, out), "lpips": lpips(image, out)}


def _to8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def run_image(path, rates, seconds, codecs, seed, keep):
    image = read_image(path, mode="rgb")
    h, w, _ = image.shape
    pil = Image.fromarray(_to8(image))
    rows, kept = [], {}
    for rate, secs in zip(rates, seconds):
        budget = int(rate * h * w / 8)
        for codec in codecs:
            row = {"image": path.stem, "codec": codec, "target_bpp": rate, "budget_bytes": budget}
            if codec == "smoe":
                c = compress(image, bpp=rate, seconds=secs, seed=seed)
                data, setting, enc_s = c.data, f"{len(c.fitted.model)} kernels", c.seconds
                fitted = decode(data)
                dec_s = timed(lambda: decode(data).render(), repeat=3)
                decoded = _to8(fitted.render())
                n = len(c.fitted.model)
                row.update(kernels=n, bits_per_kernel=round(8 * len(data) / n, 2), float_psnr=round(c.float_psnr, 3),
                           quantized_psnr=round(c.psnr, 3),
                           **{f"bits_{k}": round(8 * v / n, 2) for k, v in c.sizes.items()})
            else:
                found = fit_standard(pil, codec, budget)
                if found is None:
                    row.update(bytes=None, note="cannot reach the rate")
                    rows.append(row)
                    print(f"{path.stem} {rate} {codec}: cannot reach", flush=True)
                    continue
                data, setting = found
                t = time.perf_counter()
                _save(pil, codec, setting)
                enc_s = time.perf_counter() - t
                dec_s = timed(lambda: _decode_standard(data), repeat=3)
                decoded = _decode_standard(data)
            q = _quality(image, decoded)
            row.update(bytes=len(data), bpp=round(8 * len(data) / (h * w), 5), setting=setting,
                       psnr=round(q["psnr"], 3), ms_ssim=round(q["ms_ssim"], 5), lpips=round(q["lpips"], 5),
                       encode_s=round(enc_s, 4), decode_ms=round(1000 * dec_s, 2))
            rows.append(row)
            if keep == (path.stem, rate):
                kept[codec] = decoded
            print(f"{path.stem} {rate} {codec}: {row['bpp']:.4f} bpp, {row['psnr']:.2f} dB, LPIPS {row['lpips']:.4f}, "
                  f"enc {row['encode_s']:.1f} s, dec {row['decode_ms']:.1f} ms", flush=True)
    return rows, kept, image


# ===================================================================== BD-rate
def bd_rate(rate_a, q_a, rate_b, q_b) -> float | None:
    """Bjontegaard delta rate of curve a against b, in per cent (negative: a needs fewer bits)."""
    if min(len(rate_a), len(rate_b)) < 4:
        return None
    pa = np.polyfit(q_a, np.log(rate_a), 3)
    pb = np.polyfit(q_b, np.log(rate_b), 3)
    lo, hi = max(min(q_a), min(q_b)), min(max(q_a), max(q_b))
    if hi <= lo:
        return None
    ia, ib = np.polyint(pa), np.polyint(pb)
    diff = (np.polyval(ia, hi) - np.polyval(ia, lo) - np.polyval(ib, hi) + np.polyval(ib, lo)) / (hi - lo)
    return 100 * (math.exp(diff) - 1)


def _valid(rows):
    return [r for r in rows if r.get("bytes")]


def mean_curves(rows, codecs, rates, images):
    """{codec: {rate: means over ``images``}} for the rates where the codec covers every one of them."""
    out = {}
    for codec in codecs:
        out[codec] = {}
        for rate in rates:
            sel = [r for r in _valid(rows) if r["codec"] == codec and r["target_bpp"] == rate and r["image"] in images]
            if len(sel) == len(images):
                out[codec][rate] = {k: statistics.mean(r[k] for r in sel) for k in ("bpp", "psnr", "ms_ssim", "lpips")}
    return out


def bd_table(rows, codecs, rates):
    images = sorted({r["image"] for r in rows})
    table = []
    for lo_hi, label in ((BD_RANGE, f"{BD_RANGE[0]}-{BD_RANGE[1]} bpp"), ((min(rates), max(rates)), "all rates")):
        chosen = [r for r in rates if lo_hi[0] <= r <= lo_hi[1]]
        # images every codec covers at these rates
        covered = [im for im in images if all(any(x["image"] == im and x["codec"] == c and x["target_bpp"] == r
                                                   for x in _valid(rows)) for c in codecs for r in chosen)]
        curves = mean_curves(rows, codecs, chosen, covered)
        s = curves.get("smoe", {})
        for codec in codecs:
            if codec == "smoe":
                continue
            o = curves[codec]
            common = [r for r in chosen if r in s and r in o]
            row = {"range": label, "against": codec, "images": len(covered)}
            for metric in ("psnr", "ms_ssim"):
                value = bd_rate([s[r]["bpp"] for r in common], [s[r][metric] for r in common],
                                [o[r]["bpp"] for r in common], [o[r][metric] for r in common])
                row[f"bd_rate_{metric}_%"] = "n/a" if value is None else round(value, 1)
            table.append(row)
    return table


# ====================================================================== figures
def plot_rd(rows, codecs, rates, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = sorted({r["image"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for codec in codecs:
        pts = []
        for rate in rates:
            sel = [r for r in _valid(rows) if r["codec"] == codec and r["target_bpp"] == rate]
            if sel:
                pts.append((rate, len(sel), *(statistics.mean(r[k] for r in sel) for k in ("bpp", "psnr", "ms_ssim",
                                                                                           "lpips"))))
        if not pts:
            continue
        for ax, k in zip(axes, (3, 4, 5)):
            ax.plot([p[2] for p in pts], [p[k] for p in pts], "o-", label=codec, lw=2.5 if codec == "smoe" else 1.5)
            for p in pts:
                if p[1] < len(images):
                    ax.annotate(f"{p[1]}/{len(images)}", (p[2], p[k]), fontsize=7)
    for ax, label in zip(axes, ("PSNR (dB)", "MS-SSIM", "LPIPS (lower is better)")):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Kodak, mean over {len(images)} images (n/N: a codec reached the rate on n images only)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_crops(image, kept, name, rate, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w, _ = image.shape
    y0, x0, side = h // 2 - 128, w // 2 - 128, 256
    panels = [("original", _to8(image))] + [(c, kept.get(c)) for c in ("jpeg", "jpeg2000", "avif", "smoe")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (label, img) in zip(axes, panels):
        ax.axis("off")
        if img is None:
            ax.set_title(f"{label}: cannot reach {rate} bpp", fontsize=9)
            continue
        ax.imshow(img[y0:y0 + side, x0:x0 + side])
        title = label if label == "original" else f"{label} {psnr(image, img.astype(np.float32) / 255):.2f} dB"
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{name} at {rate} bpp, centre 256x256 crop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ======================================================================== report
def summary(rows, codecs, rates):
    out = []
    for rate in rates:
        for codec in codecs:
            sel = [r for r in rows if r["codec"] == codec and r["target_bpp"] == rate]
            ok = _valid(sel)
            if not sel:
                continue
            row = {"bpp target": rate, "codec": codec, "images": f"{len(ok)}/{len(sel)}"}
            for k, digits in (("bpp", 4), ("psnr", 2), ("ms_ssim", 4), ("lpips", 4), ("encode_s", 3),
                              ("decode_ms", 1)):
                row[k] = round(statistics.mean(r[k] for r in ok), digits) if ok else "n/a"
            out.append(row)
    return out


def versus(rows, rates, other):
    """smoe against ``other`` per rate on the images ``other`` reaches: mean PSNR and LPIPS of both, wins."""
    out = []
    for rate in rates:
        theirs = {r["image"]: r for r in _valid(rows) if r["codec"] == other and r["target_bpp"] == rate}
        ours = {r["image"]: r for r in _valid(rows) if r["codec"] == "smoe" and r["target_bpp"] == rate}
        both = sorted(set(theirs) & set(ours))
        if not both:
            continue
        out.append({"bpp": rate, "images": len(both),
                    "smoe psnr": round(statistics.mean(ours[i]["psnr"] for i in both), 2),
                    f"{other} psnr": round(statistics.mean(theirs[i]["psnr"] for i in both), 2),
                    "smoe lpips": round(statistics.mean(ours[i]["lpips"] for i in both), 4),
                    f"{other} lpips": round(statistics.mean(theirs[i]["lpips"] for i in both), 4),
                    "psnr wins": sum(ours[i]["psnr"] > theirs[i]["psnr"] for i in both),
                    "lpips wins": sum(ours[i]["lpips"] < theirs[i]["lpips"] for i in both)})
    return out


def kernel_table(rows, rate):
    sel = [r for r in _valid(rows) if r["codec"] == "smoe" and r["target_bpp"] == rate]
    cols = ["kernels", "bits_per_kernel", "bits_centres", "bits_shape", "bits_gates", "bits_colour", "bits_header",
            "float_psnr", "quantized_psnr"]
    table = [{"image": r["image"], **{c: r.get(c) for c in cols},
              "loss_db": round(r["float_psnr"] - r["quantized_psnr"], 3)} for r in sel]
    if table:
        table.append({"image": "mean", **{c: round(statistics.mean(r[c] for r in sel), 2) for c in cols},
                      "loss_db": round(statistics.mean(r["float_psnr"] - r["quantized_psnr"] for r in sel), 3)})
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", nargs="*", default=["all"], help="Kodak numbers or 'all' (default)")
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    p.add_argument("--seconds", nargs="+", type=float, default=None,
                   help=f"smoe time budget per rate (default {SECONDS} for the default rates, else 25 each)")
    p.add_argument("--codecs", nargs="+", choices=CODECS, default=list(CODECS))
    p.add_argument("--crop-image", default="23", help="Kodak number of the crops figure (default 23)")
    p.add_argument("--crop-rate", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "codec"))
    args = p.parse_args(argv)
    seconds = args.seconds or (list(SECONDS) if args.rates == list(RATES) else [25.0] * len(args.rates))
    if len(seconds) != len(args.rates):
        p.error("give one --seconds value per rate")
    paths = kodak_images(None if args.images == ["all"] else args.images)
    crop = f"kodim{int(args.crop_image):02d}"
    settings = {"images": len(paths), "rates": args.rates, "smoe_seconds": seconds, "codecs": args.codecs,
                "seed": args.seed, "pillow": Image.__version__, "smoe": smoe.__version__}
    rows, kept, crop_image = [], {}, None
    began = time.perf_counter()
    for path in paths:
        r, k, image = run_image(path, args.rates, seconds, args.codecs, args.seed, (crop, args.crop_rate))
        rows += r
        if k:
            kept, crop_image = k, image
    total = time.perf_counter() - began
    text = [header("SMoE codec against JPEG, JPEG 2000, WebP and AVIF (Kodak)", settings), "",
            f"Wall time of the run: {total / 60:.1f} min.", "", "### Means per codec and rate", "",
            markdown_table(summary(rows, args.codecs, args.rates)), ""]
    for other in [c for c in args.codecs if c != "smoe"]:
        v = versus(rows, args.rates, other)
        if v and "smoe" in args.codecs:
            text += [f"### smoe against {other} on the images {other} reaches", "", markdown_table(v), ""]
    if "smoe" in args.codecs and len(args.codecs) > 1:
        bd = bd_table(rows, args.codecs, args.rates)
        if bd:
            text += ["### BD-rate of smoe (negative: smoe needs fewer bits for the same quality)", "",
                     markdown_table(bd), ""]
        for rate in args.rates:
            kt = kernel_table(rows, rate)
            if kt:
                text += [f"### smoe at {rate} bpp: bits per kernel, share of each section, quantization loss", "",
                         "loss_db: PSNR of the float model fine-tuning started from minus that of the decoded one "
                         "(both before 8-bit rounding).", "", markdown_table(kt), ""]
    write_results(args.out, "\n".join(text), rows)
    plot_rd(rows, args.codecs, args.rates, args.out + "_rd.png")
    if kept:
        plot_crops(crop_image, kept, crop, args.crop_rate, args.out + "_crops.png")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``smoe encode`` and ``smoe decode``: the SMoE image codec (docs/bitstream.md)."""

from __future__ import annotations

from pathlib import Path

from .guards import _prepare_outdir, _prepare_output_file, _removed_on_failure
from .options import EXIT_OK, CliError, _checked, _float, _positive_float, _positive_int, _size, _target_psnr

#: Rates a user may ask for: above 24 bpp an uncompressed 8-bit RGB image is smaller.
_bpp = _checked(_float, lambda v: 0 < v <= 24, "must be a rate above 0 and at most 24 bits per pixel, got {text}")


# =============================================================== encode
def _add_encode(p) -> None:
    p.description = ("Compress an image into an SMoE bitstream: fit steered kernels, fine-tune them under "
                     "quantization and entropy code them. Give the rate (--bpp), the kernel count (--kernels) "
                     "or the quality (--target-psnr).")
    p.add_argument("image", metavar="IMAGE", help="image file to compress (PNG, JPEG, TIFF, BMP; grey or RGB)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="bitstream file to write (.smoe)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--bpp", type=_bpp, metavar="R",
                      help="bits per pixel the file may take, above 0 and at most 24; it lands within a few "
                           "per cent below R, never above")
    what.add_argument("--kernels", type=_positive_int, metavar="N", help="fit N kernels; the rate follows")
    what.add_argument("--target-psnr", type=_target_psnr, metavar="DB",
                      help="grow the model until the decoded image reaches about DB decibels (10 to 60)")
    p.add_argument("--seconds", type=_positive_float, default=45.0, metavar="S",
                   help="time for the fit and its fine-tuning under quantization (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the fit (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_run_encode)


def _run_encode(args) -> int:
    from ..imageio import read_image

    image = read_image(args.image)
    out = Path(args.output)
    if out.is_dir():
        raise CliError(f"output {out} is a directory; give a file name such as {out / 'image.smoe'}")
    from ..atomic import atomic_write_bytes
    from ..codec import compress

    with _removed_on_failure(_prepare_outdir(out.parent)):
        c = compress(image, bpp=args.bpp, kernels=args.kernels, target_psnr=args.target_psnr, seconds=args.seconds,
                     seed=args.seed, quiet=args.quiet)
        atomic_write_bytes(out, c.data)
    if not args.quiet:
        print(f"wrote {out}: {len(c.data)} bytes, {c.bpp():.4f} bpp, {len(c.fitted.model)} kernels, "
              f"{c.bits_per_kernel:.1f} bits/kernel, PSNR {c.psnr:.2f} dB (float model {c.float_psnr:.2f}), "
              f"{c.seconds:.1f} s")
    return EXIT_OK


# =============================================================== decode
def _add_decode(p) -> None:
    p.description = ("Decode an SMoE bitstream to an image, at the size it was encoded at or any other "
                     "(the model is continuous).")
    p.add_argument("bitstream", metavar="IN", help="bitstream file written by 'smoe encode'")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="image file to write; the suffix picks the format (.png, .tif, .bmp, .jpg)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=_positive_float, default=None, metavar="F",
                      help="output size = encoded size x F (default: 1)")
    size.add_argument("--size", type=_size, default=None, metavar="WxH", help="exact output size, width x height")
    p.add_argument("--sharpen", type=_positive_float, default=None, metavar="F",
                   help="multiply every kernel's bandwidth by F (< 1 sharpens; default: off)")
    p.set_defaults(run=_run_decode)


def _run_decode(args) -> int:
    from ..codec import decode, read_file
    from ..sizes import output_size

    fitted = decode(read_file(args.bitstream), args.bitstream)
    h, w = output_size(fitted.frame, scale=args.scale, size=args.size)  # refused before any output exists
    out = Path(args.output)
    with _removed_on_failure(_prepare_output_file(out)):
        from ..imageio import write_image

        write_image(out, fitted.render(size=(h, w), sharpen=args.sharpen or 1.0))
    print(f"wrote {out} ({w}x{h}, {len(fitted.model)} kernels)")
    return EXIT_OK


def _print_bitstream_info(path, as_json: bool) -> int:
    """``smoe info`` of a bitstream file."""
    import json

    from ..codec import read_file, read_info

    info = read_info(read_file(path), str(path))
    if as_json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    rows = [("file", path), ("format", f"{info['format']}, {info['bytes']} bytes, {info['bpp']:.4f} bpp"),
            ("kernels", info["kernels"]),
            ("bits/kernel", "n/a" if info["bits_per_kernel"] is None else f"{info['bits_per_kernel']:.1f}"),
            ("channels", f"{info['channels']} ({'RGB' if info['channels'] == 3 else 'grey'})"),
            ("mode / scope", f"{info['mode']} / {info['scope']}, tile {info['tile']}, offset {tuple(info['tile_offset'])}"),
            ("frame", f"{info['width']}x{info['height']} pixels"),
            ("steps", ", ".join(f"{k} {v:.4g}" for k, v in info["steps"].items()))]
    for name, value in rows:
        print(f"{name:<13} {value}")
    print("sections")
    for name, size in info["sections"].items():
        share = 8 * size / info["kernels"] if info["kernels"] else 0
        print(f"  {name:<11} {size:>8} bytes  {share:6.2f} bits/kernel")
    return EXIT_OK

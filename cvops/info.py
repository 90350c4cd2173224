"""``python -m cvops.info``: versions, build flags and the kernels this install provides.
``python -m cvops.info --depthwise N,C,H,W,k,s,p``: which depthwise CPU kernel runs each
direction of that call (float32; ``--channels-last``, ``--dtype``, ``--dilation`` too)."""

import argparse
import platform

import torch

from . import __version__, extension


def report():
    lines = [
        "cvops %s" % __version__,
        "python %s, torch %s (CUDA %s), %d CPU threads"
        % (
            platform.python_version(),
            torch.__version__,
            torch.version.cuda,
            torch.get_num_threads(),
        ),
        "GPU: %s"
        % (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"),
    ]
    if not extension.has_ops():
        lines.append("extension: NOT LOADED: %s" % extension.load_error())
        return "\n".join(lines)
    info = extension.build_info()
    cfg = extension._build_config()
    lines.append(
        "extension: loaded; built for torch %s, CUDA kernels %s%s"
        % (
            info["torch_version"],
            "yes" if extension.has_cuda() else "no",
            " (archs %s)" % cfg.CUDA_ARCH_LIST if cfg is not None and cfg.WITH_CUDA else "",
        )
    )
    lines.append("ops and their kernels:")
    for name, keys in extension.registered_kernels().items():
        lines.append("  %-28s %s" % (name, ", ".join(keys)))
    return "\n".join(lines)


def depthwise_report(spec: str, dtype: str = "float32", channels_last: bool = False, dilation=1):
    from .ops.depthwise_cpu_plan import cpu_has_avx512, cpu_plan

    try:
        n, c, h, w, k, s, p = (int(v) for v in spec.split(","))
    except ValueError:
        raise SystemExit(
            "--depthwise: expected N,C,H,W,k,s,p (seven integers), got %r" % spec
        ) from None
    plan = cpu_plan(
        (n, c, h, w), (c, 1, k, k), s, p, dilation, getattr(torch, dtype), channels_last
    )
    lines = [
        "depthwise conv2d [%d, %d, %d, %d], %dx%d kernel, stride %d, padding %d, dilation %d, "
        "%s%s; AVX-512 kernels %s"
        % (
            n,
            c,
            h,
            w,
            k,
            k,
            s,
            p,
            dilation,
            dtype,
            ", channels-last" if channels_last else "",
            "available" if cpu_has_avx512() else "not available",
        )
    ]
    lines += ["  %-12s %s" % (direction, kernel) for direction, kernel in plan.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cvops.info", description=__doc__)
    parser.add_argument("--depthwise", metavar="N,C,H,W,k,s,p")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"]
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--dilation", type=int, default=1)
    args = parser.parse_args(argv)
    if args.depthwise:
        print(depthwise_report(args.depthwise, args.dtype, args.channels_last, args.dilation))
    else:
        print(report())


if __name__ == "__main__":
    main()

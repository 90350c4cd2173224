"""``python -m cvops.info``: versions, build flags and the kernels this install provides."""

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


if __name__ == "__main__":
    print(report())

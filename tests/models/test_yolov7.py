"""YOLOv7 and YOLOv7-tiny: structure against the reference configurations, RepConv and IDetect
fusion, options and errors, and a training step.

There is no installable reference package (WongKinYiu/yolov7 is a repository, not on PyPI), so
the structure is proven against its training YAMLs, transcribed below line by line
(``from module args``): every state_dict key and shape, and every layer's output shape at
320x320 and 640x640, are derived from them by a small interpreter independent of the model
code, plus the exact parameter counts of MODELS.md.
"""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cvops.models as cm
from cvops.models.yolo.yolov7 import YOLOv7, yolov7, yolov7_tiny
from cvops.models.yolo.yolov7_blocks import IDetect, RepConv

from ._equiv import build_on_meta, num_params, randomize_constants_

# cfg/training/yolov7.yaml (nc 80): backbone then head, one line per layer
YOLOV7_YAML = """
-1 Conv 32 3 1
-1 Conv 64 3 2
-1 Conv 64 3 1
-1 Conv 128 3 2
-1 Conv 64 1 1
-2 Conv 64 1 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1,-3,-5,-6 Concat
-1 Conv 256 1 1
-1 MP
-1 Conv 128 1 1
-3 Conv 128 1 1
-1 Conv 128 3 2
-1,-3 Concat
-1 Conv 128 1 1
-2 Conv 128 1 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1,-3,-5,-6 Concat
-1 Conv 512 1 1
-1 MP
-1 Conv 256 1 1
-3 Conv 256 1 1
-1 Conv 256 3 2
-1,-3 Concat
-1 Conv 256 1 1
-2 Conv 256 1 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1,-3,-5,-6 Concat
-1 Conv 1024 1 1
-1 MP
-1 Conv 512 1 1
-3 Conv 512 1 1
-1 Conv 512 3 2
-1,-3 Concat
-1 Conv 256 1 1
-2 Conv 256 1 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1,-3,-5,-6 Concat
-1 Conv 1024 1 1
-1 SPPCSPC 512
-1 Conv 256 1 1
-1 Upsample
37 Conv 256 1 1
-1,-2 Concat
-1 Conv 256 1 1
-2 Conv 256 1 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1,-2,-3,-4,-5,-6 Concat
-1 Conv 256 1 1
-1 Conv 128 1 1
-1 Upsample
24 Conv 128 1 1
-1,-2 Concat
-1 Conv 128 1 1
-2 Conv 128 1 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1,-2,-3,-4,-5,-6 Concat
-1 Conv 128 1 1
-1 MP
-1 Conv 128 1 1
-3 Conv 128 1 1
-1 Conv 128 3 2
-1,-3,63 Concat
-1 Conv 256 1 1
-2 Conv 256 1 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1,-2,-3,-4,-5,-6 Concat
-1 Conv 256 1 1
-1 MP
-1 Conv 256 1 1
-3 Conv 256 1 1
-1 Conv 256 3 2
-1,-3,51 Concat
-1 Conv 512 1 1
-2 Conv 512 1 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1,-2,-3,-4,-5,-6 Concat
-1 Conv 512 1 1
75 RepConv 256
88 RepConv 512
101 RepConv 1024
102,103,104 IDetect
"""

# cfg/training/yolov7-tiny.yaml (nc 80; every Conv has LeakyReLU(0.1))
YOLOV7_TINY_YAML = """
-1 Conv 32 3 2
-1 Conv 64 3 2
-1 Conv 32 1 1
-2 Conv 32 1 1
-1 Conv 32 3 1
-1 Conv 32 3 1
-1,-2,-3,-4 Concat
-1 Conv 64 1 1
-1 MP
-1 Conv 64 1 1
-2 Conv 64 1 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1,-2,-3,-4 Concat
-1 Conv 128 1 1
-1 MP
-1 Conv 128 1 1
-2 Conv 128 1 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1,-2,-3,-4 Concat
-1 Conv 256 1 1
-1 MP
-1 Conv 256 1 1
-2 Conv 256 1 1
-1 Conv 256 3 1
-1 Conv 256 3 1
-1,-2,-3,-4 Concat
-1 Conv 512 1 1
-1 Conv 256 1 1
-2 Conv 256 1 1
-1 SP 5
-2 SP 9
-3 SP 13
-1,-2,-3,-4 Concat
-1 Conv 256 1 1
-1,-7 Concat
-1 Conv 256 1 1
-1 Conv 128 1 1
-1 Upsample
21 Conv 128 1 1
-1,-2 Concat
-1 Conv 64 1 1
-2 Conv 64 1 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1,-2,-3,-4 Concat
-1 Conv 128 1 1
-1 Conv 64 1 1
-1 Upsample
14 Conv 64 1 1
-1,-2 Concat
-1 Conv 32 1 1
-2 Conv 32 1 1
-1 Conv 32 3 1
-1 Conv 32 3 1
-1,-2,-3,-4 Concat
-1 Conv 64 1 1
-1 Conv 128 3 2
-1,47 Concat
-1 Conv 64 1 1
-2 Conv 64 1 1
-1 Conv 64 3 1
-1 Conv 64 3 1
-1,-2,-3,-4 Concat
-1 Conv 128 1 1
-1 Conv 256 3 2
-1,37 Concat
-1 Conv 128 1 1
-2 Conv 128 1 1
-1 Conv 128 3 1
-1 Conv 128 3 1
-1,-2,-3,-4 Concat
-1 Conv 256 1 1
57 Conv 128 3 1
65 Conv 256 3 1
73 Conv 512 3 1
74,75,76 IDetect
"""

CONFIGS = {"yolov7": (yolov7, YOLOV7_YAML), "yolov7_tiny": (yolov7_tiny, YOLOV7_TINY_YAML)}
NA = 3  # anchors per level in both configurations
_PARAM_LEAVES = {"weight", "bias", "implicit"}  # the rest of a state_dict is buffers


def _conv_keys(prefix, c1, c2, k):
    return {
        prefix + "conv.weight": (c2, c1, k, k),
        **{prefix + "bn." + n: (c2,) for n in ("weight", "bias", "running_mean", "running_var")},
        prefix + "bn.num_batches_tracked": (),
    }


def _bn_keys(prefix, c):
    keys = {prefix + n: (c,) for n in ("weight", "bias", "running_mean", "running_var")}
    keys[prefix + "num_batches_tracked"] = ()
    return keys


def interpret(yaml_text, nc=80, width=1.0):
    """What the reference's parse_model makes of the YAML: the state_dict ``{key: shape}`` and
    each layer's ``(channels, stride)``. Widths: ``ceil(c * width / 8) * 8``."""
    keys, layers = {}, []  # layers[i] = (channels, stride)
    for i, line in enumerate(yaml_text.strip().splitlines()):
        src, module, *args = line.split()
        srcs = [int(s) for s in src.split(",")]
        ins = [(3, 1) if i + j < 0 and j < 0 else layers[j if j >= 0 else i + j] for j in srcs]
        c1, s1 = ins[0]
        p = "model.%d." % i
        if module in ("Conv", "SPPCSPC", "RepConv"):
            c2 = math.ceil(int(args[0]) * width / 8) * 8
        if module == "Conv":
            k, s = int(args[1]), int(args[2])
            keys.update(_conv_keys(p, c1, c2, k))
            layers.append((c2, s1 * s))
        elif module == "SPPCSPC":  # hidden width c_ = c2 at its default e = 0.5
            for name, a, b, k in [
                ("cv1", c1, c2, 1),
                ("cv2", c1, c2, 1),
                ("cv3", c2, c2, 3),
                ("cv4", c2, c2, 1),
                ("cv5", 4 * c2, c2, 1),
                ("cv6", c2, c2, 3),
                ("cv7", 2 * c2, c2, 1),
            ]:
                keys.update(_conv_keys(p + name + ".", a, b, k))
            layers.append((c2, s1))
        elif module == "RepConv":
            assert c1 != c2  # no identity branch in these configurations
            keys[p + "rbr_dense.0.weight"] = (c2, c1, 3, 3)
            keys.update(_bn_keys(p + "rbr_dense.1.", c2))
            keys[p + "rbr_1x1.0.weight"] = (c2, c1, 1, 1)
            keys.update(_bn_keys(p + "rbr_1x1.1.", c2))
            layers.append((c2, s1))
        elif module == "Concat":
            assert len({s for _, s in ins}) == 1, "concatenated maps of different strides"
            layers.append((sum(c for c, _ in ins), s1))
        elif module == "MP":
            layers.append((c1, s1 * 2))
        elif module == "SP":
            layers.append((c1, s1))
        elif module == "Upsample":
            layers.append((c1, s1 // 2))
        elif module == "IDetect":
            no = NA * (nc + 5)
            for level, (c, _) in enumerate(ins):
                keys[p + "m.%d.weight" % level] = (no, c, 1, 1)
                keys[p + "m.%d.bias" % level] = (no,)
                keys[p + "ia.%d.implicit" % level] = (1, c, 1, 1)
                keys[p + "im.%d.implicit" % level] = (1, no, 1, 1)
            keys[p + "anchors"] = (len(ins), NA, 2)
            keys[p + "anchor_grid"] = (len(ins), 1, NA, 1, 1, 2)
            layers.append((no, None))
        else:
            raise AssertionError("unknown module %s" % module)
    return keys, layers


@functools.cache
def _default_on_meta(name):
    """The 80-class training configuration, built once on the meta device (no memory, no
    init time); tests only read it."""
    return build_on_meta(CONFIGS[name][0])


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


# ---------------------------------------------------------------------------- structure


def test_parameter_counts_equal_the_references():
    # MODELS.md: the training configurations at 80 classes
    assert num_params(_default_on_meta("yolov7")) == 37_622_682
    assert num_params(_default_on_meta("yolov7_tiny")) == 6_228_762


@pytest.mark.parametrize(
    "name, nc, width", [("yolov7", 80, 1.0), ("yolov7_tiny", 80, 1.0), ("yolov7_tiny", 3, 0.3)]
)
def test_state_dict_keys_and_shapes_follow_the_reference_yaml(name, nc, width):
    builder, yaml_text = CONFIGS[name]
    expected, _ = interpret(yaml_text, nc, width)
    if (nc, width) == (80, 1.0):
        model = _default_on_meta(name)
    else:
        model = build_on_meta(builder, num_classes=nc, width=width)
    assert _shapes(model.state_dict()) == expected
    # the YAML's own parameters add up to the published count at the training configuration
    if width == 1.0:
        total = sum(math.prod(s) for k, s in expected.items() if k.split(".")[-1] in _PARAM_LEAVES)
        assert total == num_params(model)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("size", [320, 640])
def test_every_layer_output_shape_follows_the_yaml(name, size):
    _, layers = interpret(CONFIGS[name][1])
    model = _default_on_meta(name)
    seen = {}
    hooks = [
        layer.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o))
        for k, layer in enumerate(model.model)
    ]
    with torch.no_grad():
        raw = model(torch.empty(2, 3, size, size, device="meta"))
    for h in hooks:
        h.remove()
    assert len(seen) == len(layers) == len(model.model)
    for k, (c, s) in enumerate(layers[:-1]):
        assert tuple(seen[k].shape) == (2, c, size // s, size // s), "layer %d" % k
    assert [tuple(r.shape) for r in raw] == [(2, NA, size // s, size // s, 85) for s in (8, 16, 32)]


def test_tiny_forward_on_real_numbers():
    torch.manual_seed(0)
    model = yolov7_tiny(num_classes=4, width=0.5).eval()
    with torch.no_grad():
        decoded, raw = model(torch.rand(1, 3, 96, 64))
    assert decoded.shape == (1, NA * (12 * 8 + 6 * 4 + 3 * 2), 9)
    assert [tuple(r.shape) for r in raw] == [(1, 3, 12, 8, 9), (1, 3, 6, 4, 9), (1, 3, 3, 2, 9)]
    assert torch.isfinite(decoded).all()
    # tiny uses LeakyReLU(0.1) everywhere, yolov7 SiLU
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.SiLU, nn.LeakyReLU))}
    assert acts == {nn.LeakyReLU}
    assert {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)} == {0.1}
    big = _default_on_meta("yolov7")
    assert {type(m) for m in big.modules() if isinstance(m, (nn.SiLU, nn.LeakyReLU))} == {nn.SiLU}


# ---------------------------------------------------------------------------- registry, errors


def test_registered_with_options():
    assert {"yolov7", "yolov7_tiny"} <= set(cm.list_models("yolov7*"))
    model = build_on_meta(cm.get_model_builder("yolov7_tiny"), num_classes=3, width=0.5)
    assert isinstance(model, YOLOv7)
    assert model.head.nc == 3 and model.model[0].conv.out_channels == 16
    assert model.model[-1].m[0].out_channels == NA * 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width"),
        ({"width": -1.0}, "width"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        yolov7_tiny(**kwargs)
    with pytest.raises(ValueError, match="variant"):
        YOLOv7(variant="e6e")


def test_input_size_must_divide_by_32():
    model = yolov7_tiny(num_classes=2, width=0.25)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(3, 64, 64))


# ---------------------------------------------------------------------------- fusion


@pytest.mark.parametrize(
    "c1, c2, s, g", [(8, 8, 1, 1), (8, 16, 1, 1), (8, 8, 2, 1), (8, 8, 1, 2), (6, 12, 2, 3)]
)
def test_repconv_fusion_equals_the_branches(c1, c2, s, g):
    torch.manual_seed(0)
    block = randomize_constants_(RepConv(c1, c2, 3, s, g), seed=1).eval()
    assert (block.rbr_identity is not None) == (c1 == c2 and s == 1)
    x = torch.randn(2, c1, 9, 10)
    with torch.no_grad():
        expected = block(x)
        fused = block.fuse()
        actual = fused(x)
    assert fused.fused and not hasattr(fused, "rbr_dense") and not hasattr(fused, "rbr_1x1")
    # the reference's deploy form (RepConv(deploy=True)): one biased 3x3 conv, rbr_reparam
    assert _shapes(fused.state_dict()) == {
        "rbr_reparam.weight": (c2, c1 // g, 3, 3),
        "rbr_reparam.bias": (c2,),
    }
    assert expected.std() > 1e-2
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_idetect_fusion_folds_the_implicit_layers():
    torch.manual_seed(0)
    head = IDetect(3, ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119)), (8, 16), (8, 16))
    with torch.no_grad():  # implicit layers well away from their init (0 and 1)
        for ia, im in zip(head.ia, head.im):
            ia.implicit.normal_(0, 0.5)
            im.implicit.uniform_(0.5, 1.5)
    head.eval()
    xs = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    with torch.no_grad():
        dec, raw = head(list(xs))
        # by hand: im * conv(x + ia), as (bs, na, ny, nx, no)
        for level, x in enumerate(xs):
            conv, ia, im = head.m[level], head.ia[level].implicit, head.im[level].implicit
            by_hand = F.conv2d(x + ia, conv.weight, conv.bias) * im
            by_hand = by_hand.view(2, NA, 8, *x.shape[2:]).permute(0, 1, 3, 4, 2)
            torch.testing.assert_close(raw[level], by_hand, atol=1e-5, rtol=0)
        head.fuse()
        dec_f, raw_f = head(list(xs))
    assert head.fused and not hasattr(head, "ia") and not hasattr(head, "im")
    for a, b in zip(raw_f, raw):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(dec_f, dec, atol=1e-4, rtol=1e-5)


def test_whole_model_fusion_keeps_the_outputs():
    torch.manual_seed(0)
    model = randomize_constants_(yolov7(num_classes=3, width=0.25), seed=2).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        dec, raw = model(x)
        model.fuse()
        dec_f, raw_f = model(x)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "BatchNorm2d" not in kinds  # every BN folded, RepConv identity branches included
    assert all(m.fused for m in model.modules() if isinstance(m, (RepConv, IDetect)))
    for a, b in zip(raw_f, raw):
        assert b.std() > 1e-2
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dec_f, dec, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- training


def test_loss_gains_are_the_reference_hyperparameters():
    # data/hyp.scratch.p5.yaml (yolov7) and hyp.scratch.tiny.yaml; the caller's options win
    fixed = {"scale_gains": False}
    big = build_on_meta(yolov7, num_classes=3, loss_options=fixed)
    tiny = build_on_meta(yolov7_tiny, num_classes=3, loss_options={**fixed, "cls": 0.25})
    assert big.criterion.gains == {"box": 0.05, "obj": 0.7, "cls": 0.3}
    assert tiny.criterion.gains == {"box": 0.05, "obj": 1.0, "cls": 0.25}


def test_train_steps_reduce_the_loss_and_eval_detects():
    torch.manual_seed(0)
    model = yolov7_tiny(num_classes=2, width=0.25, image_size=64).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 5.0, 30.0, 45.0], [32.0, 10.0, 60.0, 40.0]]),
            "labels": torch.tensor([2, 1]),
        },
    ]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss_dict = model(images, targets)
        assert set(loss_dict) == {"loss_box", "loss_obj", "loss_cls"}
        loss = sum(loss_dict.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses
    # the implicit layers learn too
    assert model.head.ia[0].implicit.grad is not None
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}
    assert detections[1]["boxes"].shape[1] == 4

"""The classifiers and the segmentation models on them script with torch.jit.script and
trace with torch.fx, as torchvision's do: every classifier family (AlexNet, VGG, ResNet basic
and bottleneck, MobileNet v1/v2, GoogLeNet, ViT, DeiT plain and distilled), FCN / DeepLabV3
(ResNet-50, MobileNetV2) and DeepLab v1 (VGG) / v2 (ResNet-101), scripted, saved and loaded
again, or symbolically traced, gives the eager model's outputs. The scripted models run the
reference ops (no BN folding, no oneDNN path), so eval outputs agree within float32 rounding
of the folding; training outputs (dropout off) agree to the same bound."""

import io
import warnings

import pytest
import torch
import torch.fx
import torch.nn as nn

from cvops.models import VGG, DeiT, VisionTransformer, get_model
from cvops.models.classification.googlenet import GoogLeNetOutputs


def _vgg_small():
    # one conv in front of VGG's own head (512 * 7 * 7 -> 4096 -> 4096 -> classes)
    features = nn.Sequential(
        nn.Conv2d(3, 512, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)
    )
    return VGG(features, num_classes=10)


def _tiny_deit(distilled=False):
    return DeiT(
        embed_dim=32,
        depth=2,
        num_heads=2,
        patch_size=8,
        image_size=32,
        num_classes=10,
        distilled=distilled,
    )


MODELS = {
    "alexnet": (lambda: get_model("alexnet", num_classes=10), 64),
    "vgg": (_vgg_small, 32),
    "resnet18": (lambda: get_model("resnet18", num_classes=10), 64),
    "resnet50": (lambda: get_model("resnet50", num_classes=10), 64),
    "mobilenet_v1": (lambda: get_model("mobilenet_v1", num_classes=10), 64),
    "mobilenet_v2": (lambda: get_model("mobilenet_v2", num_classes=10), 64),
    "googlenet": (lambda: get_model("googlenet", num_classes=10), 64),
    "vit": (
        lambda: VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=10,
        ),
        32,
    ),
    "deit": (_tiny_deit, 32),
    "fcn_resnet50": (lambda: get_model("fcn_resnet50", num_classes=5, aux_loss=True), 64),
    "deeplabv3_resnet50": (lambda: get_model("deeplabv3_resnet50", num_classes=5), 64),
    "deeplabv3_mobilenet_v2": (lambda: get_model("deeplabv3_mobilenet_v2", num_classes=5), 64),
    "deeplabv1_largefov": (lambda: get_model("deeplabv1_largefov", num_classes=5), 64),
    "deeplabv2": (lambda: get_model("deeplabv2", num_classes=5), 64),
    "deit_distilled": (lambda: _tiny_deit(distilled=True), 32),
}


def _script_roundtrip(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)


def _eval_model(name):
    """MODELS[name] in eval mode, its BatchNorm statistics away from (0, 1) so that folding
    them is not the identity; and its input size."""
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = build()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval(), size


def _assert_close(got, want):
    """Within float32 rounding of a different op order (BN folded or not, oneDNN, Winograd):
    1e-4 relative, plus 1e-5 of the output's largest magnitude (random deep nets, such as
    DeepLab v2's ResNet-101, reach 1e4 with outputs near zero beside them)."""
    if isinstance(want, dict):
        assert set(got) == set(want)
        for key in want:
            _assert_close(got[key], want[key])
        return
    atol = 1e-5 * max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("name", list(MODELS))
def test_scripted_model_matches_eager(name):
    model, size = _eval_model(name)
    x = torch.randn(2, 3, size, size)
    loaded = _script_roundtrip(model)
    with torch.no_grad():
        want = model(x)
        got = loaded(x)
    _assert_close(got, want)


def test_scripted_googlenet_training_outputs():
    torch.manual_seed(0)
    model = get_model("googlenet", num_classes=10, dropout=0.0, dropout_aux=0.0)
    model.train()
    loaded = _script_roundtrip(model)
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    want = model(x)
    torch.manual_seed(1)
    got = loaded(x)
    assert isinstance(want, GoogLeNetOutputs) and len(got) == 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_scripted_distilled_deit_training_pair():
    torch.manual_seed(0)
    model = _tiny_deit(distilled=True)
    model.train()
    loaded = _script_roundtrip(model)
    x = torch.randn(2, 3, 32, 32)
    want, got = model(x), loaded(x)
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_scripted_vit_rejects_bad_input_shape():
    build, _ = MODELS["vit"]
    loaded = _script_roundtrip(build().eval())
    with pytest.raises(torch.jit.Error, match=r"input must be \[N, C, H, W\]"):
        loaded(torch.randn(3, 32, 32))


@pytest.mark.parametrize("name", list(MODELS))
def test_fx_traced_model_matches_eager(name):
    model, size = _eval_model(name)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        _assert_close(traced(x), model(x))
    if name.startswith(("vit", "deit")):  # the grid check and resampling run at call time
        with torch.no_grad():
            y = torch.randn(1, 3, 2 * size, size)
            _assert_close(traced(y), model(y))
        with pytest.raises(ValueError, match="multiples of the patch size"):
            traced(torch.randn(1, 3, size + 1, size))


def test_fx_graph_keeps_the_depthwise_op_as_one_node():
    model = get_model("mobilenet_v2", num_classes=10).eval()
    graph = torch.fx.symbolic_trace(model).graph
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert sum(getattr(t, "__name__", "") == "depthwise_conv2d" for t in targets) == 17

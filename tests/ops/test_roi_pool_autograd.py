"""RoI Pool gradients (gradcheck), dispatcher registration (opcheck), torch.compile,
deterministic backward and hypothesis property tests against the pure-PyTorch reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cvops
from cvops.ops._reference import roi_pool_reference
from tests.conftest import devices, requires_ops
from tests.ops.roi_cases import random_boxes

pytestmark = requires_ops


def _distinct(shape, dtype=torch.float64, device="cpu"):
    """Values at least 1/numel apart: no ties, so finite differences see one argmax."""
    n = torch.Size(shape).numel()
    return (torch.randperm(n, dtype=dtype) / n).view(shape).to(device)


def _small(dtype=torch.float64, device="cpu", num_rois=6):
    x = _distinct((2, 3, 7, 9), dtype, device)
    rois = random_boxes(num_rois, 14, 18, 2, dtype, device)
    return x, rois


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("output_size", [(3, 2), 4])
def test_gradcheck_float64(device, output_size):
    x, rois = _small(device=device)
    x.requires_grad_()
    fn = lambda t: cvops.roi_pool(t, rois, output_size, 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    x, rois = _small(torch.float32, device)
    x.requires_grad_()
    torch.library.opcheck(torch.ops.cvops.roi_pool.default, (x, rois, 0.5, 3, 3))
    torch.library.opcheck(torch.ops.cvops.roi_pool.default, (x, rois, 1.0, 2, 4))
    _, argmax = torch.ops.cvops.roi_pool(x.detach(), rois, 0.5, 3, 3)
    grad = torch.randn(rois.shape[0], 3, 3, 3, device=device)
    torch.library.opcheck(
        torch.ops.cvops._roi_pool_backward.default, (grad, rois, argmax, 0.5, 3, 3, 2, 3, 7, 9)
    )


@pytest.mark.slow
@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    x, rois = _small(torch.float32, device)

    def head(feat, boxes):
        return cvops.roi_pool(feat * 2, boxes, 3, 0.5).mean(dim=(2, 3))

    compiled = torch.compile(head, fullgraph=True, backend="inductor")
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    out = compiled(xa, rois)
    ref = head(xb, rois)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)


@pytest.mark.parametrize("device", devices())
def test_deterministic_backward_is_bitwise_repeatable(device):
    x = torch.randint(0, 4, (2, 16, 30, 30), device=device).float()  # ties: shared argmaxes
    rois = random_boxes(500, 60, 60, 2, torch.float32, device)  # heavy overlap
    grad = torch.randn(500, 16, 7, 7, device=device)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(3):
            xg = x.clone().requires_grad_()
            cvops.roi_pool(xg, rois, 7, 0.5).backward(grad)
            grads.append(xg.grad)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    xg = x.clone().requires_grad_()
    cvops.roi_pool(xg, rois, 7, 0.5).backward(grad)
    torch.testing.assert_close(grads[0], xg.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    ph=st.integers(1, 4),
    pw=st.integers(1, 4),
    scale=st.sampled_from([1.0, 0.5, 0.25, 2.0, 1 / 3]),
    ties=st.booleans(),
    coords=st.lists(
        st.tuples(
            st.floats(-6, 20, width=32),
            st.floats(-6, 20, width=32),
            st.floats(-6, 20, width=32),
            st.floats(-6, 20, width=32),
        ),
        min_size=0,
        max_size=5,
    ),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_property(n, c, h, w, ph, pw, scale, ties, coords, seed):
    g = torch.Generator().manual_seed(seed)
    if ties:
        x = torch.randint(0, 2, (n, c, h, w), generator=g).double()
    else:
        x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    b = torch.randint(0, n, (len(coords), 1), generator=g).double()
    rois = torch.cat([b, torch.tensor(coords, dtype=torch.float64).reshape(-1, 4)], 1)
    xa = x.clone().requires_grad_()
    out = cvops.roi_pool(xa, rois, (ph, pw), scale)
    ref_in = x.clone().requires_grad_()
    ref = roi_pool_reference(ref_in, rois, (ph, pw), scale)
    assert torch.equal(out, ref)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=g)
    out.backward(grad)
    if not ref.requires_grad:  # no RoI covered the map: the gradient is zero
        assert torch.equal(xa.grad, torch.zeros_like(x))
        return
    ref.backward(grad)
    torch.testing.assert_close(xa.grad, ref_in.grad, atol=1e-12, rtol=1e-12)

"""CUDA NMS kernels against the CPU kernels (which match torchvision), sync-free nms_fixed.

Skipped without a GPU."""

import pytest
import torch

import cvops
from tests.conftest import requires_cuda, requires_ops
from tests.ops.test_nms import adversarial_sets, random_boxes

pytestmark = [requires_ops, requires_cuda, pytest.mark.cuda]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 20000])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7, 1.0])
def test_nms_cuda_matches_cpu(dtype, n, threshold):
    boxes, scores = random_boxes(n, seed=n, dtype=dtype)
    cpu = cvops.nms(boxes, scores, threshold)
    torch.testing.assert_close(cvops.nms(boxes.cuda(), scores.cuda(), threshold).cpu(), cpu)


@pytest.mark.parametrize("case", adversarial_sets(), ids=lambda c: c[0])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_nms_cuda_adversarial(case, threshold):
    _, boxes, scores = case
    cpu = cvops.nms(boxes, scores, threshold)
    torch.testing.assert_close(cvops.nms(boxes.cuda(), scores.cuda(), threshold).cpu(), cpu)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,classes", [(100, 3), (5000, 80)])
def test_batched_nms_cuda_matches_cpu(dtype, n, classes):
    boxes, scores = random_boxes(n, offset=-400.0, seed=n, dtype=dtype)
    idxs = torch.randint(-5, classes - 5, (n,))
    cpu = cvops.batched_nms(boxes, scores, idxs, 0.5)
    got = cvops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    torch.testing.assert_close(got.cpu(), cpu)


def test_nan_and_bad_boxes_cuda():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], device="cuda")
    scores = torch.tensor([float("nan"), 0.5, 0.7], device="cuda")
    assert cvops.nms(boxes, scores, 0.5).tolist() == [2, 1]
    bad = boxes.clone()
    bad[1, 0] = 20
    with pytest.raises(ValueError, match=r"boxes\[1\] = .* is not a valid box"):
        cvops.nms(bad, scores, 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_cuda_matches_cpu(dtype, method):
    boxes, scores = random_boxes(1500, size=300, seed=9, dtype=dtype)
    keep, s = cvops.soft_nms(boxes, scores, method=method)
    keep_c, s_c = cvops.soft_nms(boxes.cuda(), scores.cuda(), method=method)
    torch.testing.assert_close(keep_c.cpu(), keep)
    torch.testing.assert_close(s_c.cpu(), s, rtol=1e-5, atol=1e-6)


def test_nms_fixed_has_no_host_sync():
    boxes, scores = random_boxes(5000, seed=3)
    boxes, scores = boxes.cuda(), scores.cuda()
    cvops.nms_fixed(boxes, scores, 0.5, 100)  # warm up allocator and kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        idx, count = cvops.nms_fixed(boxes, scores, 0.5, 100)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    keep = cvops.nms(boxes, scores, 0.5)
    torch.testing.assert_close(idx, keep[:100])
    assert int(count) == min(100, keep.numel())


def test_nms_fixed_cuda_graph_capture_and_replay():
    n, max_output = 3000, 500
    boxes, scores = random_boxes(n, seed=4)
    static_boxes, static_scores = boxes.cuda(), scores.cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            cvops.nms_fixed(static_boxes, static_scores, 0.5, max_output)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        idx, count = cvops.nms_fixed(static_boxes, static_scores, 0.5, max_output)
    for seed in (5, 6):
        b, s = random_boxes(n, seed=seed)
        static_boxes.copy_(b)
        static_scores.copy_(s)
        graph.replay()
        keep = cvops.nms(b, s, 0.5)
        k = min(max_output, keep.numel())
        assert int(count) == k
        torch.testing.assert_close(idx[:k].cpu(), keep[:k])
        assert bool((idx[k:] == -1).all())


def test_torch_compile_cuda():
    boxes, scores = random_boxes(2000, seed=7)
    boxes, scores = boxes.cuda(), scores.cuda()

    def f(b, s):
        return cvops.nms(b, s, 0.5), cvops.nms_fixed(b, s, 0.5, 64)[0]

    got = torch.compile(f, fullgraph=True)(boxes, scores)
    want = f(boxes, scores)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_device_mismatch_is_a_value_error():
    boxes, scores = random_boxes(10, seed=8)
    with pytest.raises(ValueError, match="same device"):
        cvops.nms(boxes.cuda(), scores, 0.5)
    with pytest.raises(ValueError, match="same device"):
        cvops.batched_nms(boxes.cuda(), scores.cuda(), torch.zeros(10, dtype=torch.int64), 0.5)

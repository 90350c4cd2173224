import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cvops.data.coco import CocoDetection, make_synthetic_coco
from cvops.metrics.coco import COCO_STAT_NAMES, CocoEvaluator, targets_as_outputs

pytestmark = pytest.mark.filterwarnings(
    # pycocotools' Cython decode under numpy 2 (not ours)
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SIZE = (64, 80)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_eval")
    images, ann_file = make_synthetic_coco(str(root), 8, image_size=SIZE, num_classes=3, seed=5)
    ds = CocoDetection(images, ann_file)
    targets = [ds[i][1] for i in range(len(ds))]
    return ds, targets


def _evaluate(ds, targets, outputs, **kwargs):
    ev = CocoEvaluator(ds, **kwargs)
    ev.update(outputs, targets)
    return ev.evaluate()


def test_ground_truth_scores_one(data):
    ds, targets = data
    stats = _evaluate(ds, targets, targets_as_outputs(targets))
    assert set(stats) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        s = stats[iou_type]
        assert tuple(s) == COCO_STAT_NAMES
        for name in ("AP", "AP50", "AP75", "AR10", "AR100"):
            assert s[name] == pytest.approx(1.0), (iou_type, name)


def test_mask_forms_agree(data):
    ds, targets = data
    outputs = targets_as_outputs(targets)
    probs = []
    for o in outputs:  # [N, 1, H, W] probabilities, as Mask R-CNN returns them
        p = dict(o, masks=o["masks"][:, None].float() * 0.8 + 0.1)
        probs.append(p)
    assert _evaluate(ds, targets, probs) == _evaluate(ds, targets, outputs)
    boxes_only = [{k: v for k, v in o.items() if k != "masks"} for o in outputs]
    stats = _evaluate(ds, targets, boxes_only)
    assert set(stats) == {"bbox"} and stats["bbox"]["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="segm"):
        _evaluate(ds, targets, boxes_only, iou_types=("bbox", "segm"))


def test_worse_detections_score_lower(data):
    ds, targets = data
    perfect = _evaluate(ds, targets, targets_as_outputs(targets))
    shifted = []
    for o in targets_as_outputs(targets):  # boxes off by 4 px, masks moved 4 px
        shifted.append(dict(o, boxes=o["boxes"] + 4, masks=o["masks"].roll(4, dims=-1)))
    s = _evaluate(ds, targets, shifted)
    for iou_type in ("bbox", "segm"):
        assert s[iou_type]["AP"] < perfect[iou_type]["AP"] - 0.2
        assert s[iou_type]["AP75"] < 1.0
    missing = []
    for o in targets_as_outputs(targets):  # every other detection missing
        missing.append({k: v[::2] for k, v in o.items()})
    m = _evaluate(ds, targets, missing)
    assert m["bbox"]["AR100"] < 0.8 and m["bbox"]["AP"] < 0.8
    wrong = []
    for o in targets_as_outputs(targets):  # the right places, the wrong classes
        wrong.append(dict(o, labels=o["labels"] % 3 + 1))
    assert _evaluate(ds, targets, wrong)["bbox"]["AP"] < 0.1
    empty = [
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}
        for _ in targets
    ]
    assert _evaluate(ds, targets, empty)["bbox"]["AP"] == 0.0


def test_results_conversion_and_ids(data):
    ds, targets = data
    ev = CocoEvaluator(ds.coco)  # a bare COCO: the same sorted-id convention as the dataset
    out = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 25.0]]),
        "scores": torch.tensor([0.7]),
        "labels": torch.tensor([2]),
        "masks": torch.zeros(1, 1, *SIZE),
    }
    ev.update({torch.tensor(3): out})  # a dict keyed by (tensor) image id
    (det,) = ev.results[3]["bbox"]
    assert det["bbox"] == [10.0, 20.0, 20.0, 5.0] and det["category_id"] == ds.coco_id[2] == 3
    assert det["score"] == pytest.approx(0.7)
    (seg,) = ev.results[3]["segm"]
    assert seg["segmentation"]["size"] == list(SIZE) and isinstance(
        seg["segmentation"]["counts"], str
    )
    ev.update([out], [3])  # the same image again (a padded sampler) replaces it
    assert len(ev.results) == 1
    ev.reset()
    assert ev.results == {}
    with pytest.raises(ValueError, match="not in the ground truth"):
        ev.update([out], [999])
    with pytest.raises(ValueError, match="original size"):
        ev.update([dict(out, masks=torch.zeros(1, 1, 32, 40))], [3])
    custom = CocoEvaluator(ds, coco_id=lambda label: 100 + label)
    custom.update([out], [{"image_id": 3}])
    assert custom.results[3]["bbox"][0]["category_id"] == 102


def test_only_fed_images_count_and_quiet(data, capsys):
    ds, targets = data
    outputs = targets_as_outputs(targets)
    ev = CocoEvaluator(ds)
    ev.update(outputs[:3], targets[:3])  # the images not fed are not scored
    assert ev.evaluate()["bbox"]["AP"] == pytest.approx(1.0)
    assert capsys.readouterr().out == ""
    CocoEvaluator(ds, verbose=True).evaluate()
    assert "Average Precision" in capsys.readouterr().out


def _ddp_worker(rank, world, init_file, ds, targets, outputs, queue):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    try:
        ev = CocoEvaluator(ds)
        # rank r holds images r, r + world, ...; the padded last batch repeats image 0
        mine = list(range(rank, len(targets), world)) + [0]
        ev.update([outputs[i] for i in mine], [targets[i] for i in mine])
        queue.put((rank, ev.evaluate()))
    finally:
        dist.destroy_process_group()


def test_ddp_gather_equals_single_process(data, tmp_path):
    ds, targets = data
    outputs = []
    for i, o in enumerate(targets_as_outputs(targets)):  # imperfect, so that AP is informative
        shift = float(i % 3)
        outputs.append(dict(o, boxes=o["boxes"] + shift, masks=o["masks"].roll(i % 3, -1)))
    expected = _evaluate(ds, targets, outputs)
    assert 0.1 < expected["bbox"]["AP"] < 1.0
    half = list(range(0, len(targets), 2))  # what rank 0 alone would score
    alone = _evaluate(ds, [targets[i] for i in half], [outputs[i] for i in half])
    assert alone != expected
    # fork starts the two ranks in well under a second (spawn re-imports torch: ~10 s here);
    # the ranks do no threaded tensor work, so forking a process that used torch is safe
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    queue = mp.get_context(method).SimpleQueue()
    mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), ds, targets, outputs, queue),
        nprocs=2,
        join=True,
        start_method=method,
    )
    got = dict(queue.get() for _ in range(2))
    assert got[0] == expected and got[1] == expected

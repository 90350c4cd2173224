"""One small training engine shared by the task commands (``python -m cvops.train.<task>``).

A task supplies its model, datasets, loss, evaluator and predictions picture (:class:`Task`);
the engine owns the rest:

* ``torch.distributed`` from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``):
  gloo on CPU, nccl on CUDA, the model in ``DistributedDataParallel``;
* ``--batch-size`` is the *global* batch, split evenly over the processes. Training batches come
  from a ``DistributedSampler`` (also with one process), whose permutation depends only on
  ``(seed, epoch)``: step ``s`` of an N-process run sees the same samples as step ``s`` of a
  1-process run. Evaluation shards the set without padding (each sample once) and the
  evaluator reduces over processes;
* AMP (``--amp``): bfloat16 autocast on CPU, float16 autocast + ``GradScaler`` on CUDA;
* SGD or AdamW, gradient clipping, the poly schedule
  ``PolynomialLR(total_iters, power)`` stepped every iteration, after an optional linear warmup
  (``LinearLR`` + ``SequentialLR``);
* ``--ema DECAY``: an exponential moving average of the weights (and float buffers), with
  the decay ramped up as ``DECAY * (1 - exp(-updates / 2000))`` so early, fast-changing weights
  are not averaged in for long; evaluation, the predictions picture and the checkpoints'
  ``model`` use the average (the trained weights are kept under ``train_model`` to resume);
* checkpoints (``checkpoint_last.pt``, and ``checkpoint_epochNNN.pt`` every ``--save-every``
  epochs) holding model, optimizer, scheduler, scaler, step and history, and ``--resume``;
* ``metrics.json`` (one record per epoch), ``curves.png`` (loss and metric curves) and the
  task's predictions picture, written by rank 0; tqdm progress bars on rank 0 only.
"""

import argparse
import ast
import dataclasses
import importlib
import json
import math
import os
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler


@dataclasses.dataclass
class EngineConfig:
    out: str = "runs/train"
    epochs: int = 10
    batch_size: int = 8
    eval_batch_size: Optional[int] = None
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    poly_power: float = 0.9
    amp: bool = False
    clip_grad: float = 0.0
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    resume: Optional[str] = None
    save_every: int = 0
    progress: bool = True
    ema: float = 0.0


# (EngineConfig field, type, help) of the engine's typed flags, in --help order.
_FLAGS = (
    ("out", str, "output folder (default: %(default)s)"),
    ("epochs", int, None),
    ("batch_size", int, "global batch size, split over the processes (default: %(default)s)"),
    ("eval_batch_size", int, "global evaluation batch size (default: the batch size)"),
    ("lr", float, "peak learning rate (default: %(default)s)"),
    ("momentum", float, None),
    ("weight_decay", float, None),
    ("warmup_iters", int, "linear warmup iterations before the poly schedule"),
    ("warmup_factor", float, "warmup starts at this fraction of --lr"),
    ("poly_power", float, None),
    ("clip_grad", float, "max gradient norm (0: no clipping)"),
    ("device", str, "auto, cpu, cuda or cuda:N"),
    ("seed", int, None),
    ("workers", int, "DataLoader workers"),
    ("resume", str, "checkpoint to resume from ('last': OUT/checkpoint_last.pt)"),
    ("save_every", int, "also keep checkpoint_epochNNN.pt every N epochs (0: only the last)"),
    ("ema", float, "decay of an EMA of the weights used for evaluation and saving (0: off)"),
)


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of a registered model (``cvops.models``), or for ``"module:function"`` the
    function of an importable module (a user's own model, built with the same keywords)."""
    if ":" in name:
        module, fn = name.split(":", 1)
        return getattr(importlib.import_module(module), fn)
    from .. import models

    return models.get_model_builder(name)


def parse_key_values(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``--model-arg KEY=VALUE`` items as keywords: VALUE a Python literal, else the string."""
    kwargs: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError("--model-arg expects KEY=VALUE, got %r" % item)
        try:
            kwargs[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value
    return kwargs


def add_engine_args(parser: argparse.ArgumentParser, **defaults) -> argparse.ArgumentParser:
    """Add the engine's flags to ``parser`` (``defaults`` override :class:`EngineConfig`'s)."""
    d = dataclasses.asdict(EngineConfig())
    d.update(defaults)
    g = parser.add_argument_group("training")
    for name, kind, help in _FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=d[name], help=help)
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default=d["optimizer"])
    g.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: bfloat16 autocast on CPU, float16 + GradScaler on CUDA",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    return parser


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    return EngineConfig(**{k: v for k, v in vars(args).items() if k in names})


class Task:
    """What a task gives the engine. ``outputs`` is whatever the model returns."""

    primary_metric = "loss"  # key of the evaluator's results plotted next to the loss

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def datasets(self) -> Tuple[Any, Any]:
        """``(train, val)`` datasets; samples ``(inputs, targets)``."""
        raise NotImplementedError

    def loss(self, outputs, targets) -> Optional[Tensor]:
        """The training loss; in evaluation, None where the outputs carry none (detectors
        return detections in eval mode): the epoch then records no ``val_loss``."""
        raise NotImplementedError

    def evaluator(self):
        """An object with ``update(outputs, targets)`` and ``compute(device) -> dict`` (the
        latter reduces over processes)."""
        raise NotImplementedError

    def save_predictions(self, model: nn.Module, dataset, path: str, device) -> None:
        """Write a picture of predictions on a few samples of ``dataset`` (rank 0)."""

    def meta(self) -> Dict[str, Any]:
        """Saved in checkpoints (what ``cvops.predict`` needs to rebuild the model)."""
        return {}

    collate_fn = None


# ---------------------------------------------------------------------------------------------
# distributed


@dataclasses.dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``cuda``:
    ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device %s: CUDA is not available" % name)
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment and initialise the process group when ``WORLD_SIZE > 1``
    (nccl for CUDA devices, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(rank, world, local, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(model: nn.Module) -> None:
    """Every process takes rank 0's buffers (BatchNorm running statistics). DDP syncs them
    only at the start of a training forward, so after the last step each process holds the
    statistics of its own batches; evaluation must see the model that is saved."""
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def all_reduce_sum(values: List[float], device) -> List[float]:
    """Sum of ``values`` over the processes (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...``: every sample exactly once over the processes (no
    padding, unlike ``DistributedSampler``), for evaluation."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------------------------------------
# pieces


def build_optimizer(model: nn.Module, cfg: EngineConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; no weight decay on biases and normalisation weights (1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError("unknown optimizer %r" % cfg.optimizer)


def build_scheduler(
    optimizer,
    total_iters: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
):
    """Poly decay ``lr * (1 - it / total)^power`` per iteration (``PolynomialLR``), after
    ``warmup_iters`` iterations of linear warmup from ``warmup_factor * lr`` (``LinearLR``,
    chained with ``SequentialLR``)."""
    warmup_iters = max(0, min(int(warmup_iters), total_iters))
    poly = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=max(1, total_iters - warmup_iters), power=power
    )
    if warmup_iters == 0:
        return poly
    warm = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=warmup_factor, end_factor=1.0, total_iters=warmup_iters
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, poly], [warmup_iters])


class ModelEMA:
    """Exponential moving average of a model's floating-point state (weights and float
    buffers such as BatchNorm statistics). The effective decay ramps up with the number of
    updates, ``decay * (1 - exp(-updates / tau))``, so the average follows the fast early
    training and smooths the later, noisy steps."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0):
        import copy

        if not 0.0 < decay < 1.0:
            raise ValueError("ema decay must be in (0, 1), got %r" % decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                avg.copy_(current[name])


def autocast_context(device: torch.device, enabled: bool):
    """bfloat16 autocast on CPU, float16 on CUDA; a no-op when disabled."""
    if not enabled:
        return nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(obj, device):
    """Move tensors in (nested) lists, tuples and dicts to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """``torch.save`` through a temporary file, so an interrupted save never leaves a truncated
    checkpoint under ``path``."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    # Our checkpoints hold only tensors and plain Python values (weights_only loads them).
    return torch.load(path, map_location=map_location, weights_only=True)


def plot_curves(history: List[Dict[str, Any]], metric: str, path: str) -> None:
    """Loss curves (train, val) and the metric per epoch, as a PNG (matplotlib, no pyplot)."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    pts = [(e, h["val"][metric]) for e, h in zip(epochs, history) if metric in h.get("val", {})]
    if pts:
        ax2.plot(*zip(*pts), marker="o", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(metric)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# the engine


class Engine:
    """Train and evaluate ``task`` with ``cfg``. :meth:`run` returns the per-epoch history."""

    def __init__(self, task: Task, cfg: EngineConfig):
        self.task, self.cfg = task, cfg

    # -- setup
    def _loaders(self, train_ds, val_ds):
        cfg, d = self.cfg, self.dist
        if cfg.batch_size % d.world_size:
            raise ValueError(
                "--batch-size %d is not divisible by the %d processes"
                % (cfg.batch_size, d.world_size)
            )
        per_proc = cfg.batch_size // d.world_size
        if len(train_ds) < cfg.batch_size:
            raise ValueError(
                "%d training samples, fewer than one batch of %d" % (len(train_ds), cfg.batch_size)
            )
        common = dict(
            num_workers=cfg.workers,
            collate_fn=self.task.collate_fn,
            pin_memory=d.device.type == "cuda",
        )
        self.train_sampler = DistributedSampler(
            train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed
        )
        train = DataLoader(
            train_ds, batch_size=per_proc, sampler=self.train_sampler, drop_last=True, **common
        )
        eval_bs = max(1, (cfg.eval_batch_size or cfg.batch_size) // d.world_size)
        val = DataLoader(
            val_ds,
            batch_size=eval_bs,
            sampler=ShardSampler(len(val_ds), d.rank, d.world_size),
            **common,
        )
        return train, val

    def _log(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, flush=True)

    def eval_model(self) -> nn.Module:
        """The model evaluated and saved: the EMA of the weights under ``--ema``."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def state_dict(self) -> Dict[str, Any]:
        extra = {}
        if self.ema is not None:
            extra = {
                "train_model": unwrap(self.model).state_dict(),
                "ema_updates": self.ema.updates,
            }
        return {
            **extra,
            "model": self.eval_model().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "total_iters": self.cfg.epochs * self.iters_per_epoch,
            "history": self.history,
            "rng": torch.get_rng_state(),
            "config": dataclasses.asdict(self.cfg),
            "meta": self.task.meta(),
        }

    def _resume(self, path: str) -> None:
        if path == "last":
            path = os.path.join(self.cfg.out, "checkpoint_last.pt")
        ck = load_checkpoint(path, map_location=self.dist.device)
        unwrap(self.model).load_state_dict(ck.get("train_model", ck["model"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(ck["model"])
            self.ema.updates = int(ck.get("ema_updates", 0))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step, self.history = ck["epoch"], ck["step"], list(ck["history"])
        total = self.cfg.epochs * self.iters_per_epoch
        if self.epoch < self.cfg.epochs and ck.get("total_iters", total) != total:
            # The poly schedule is chainable: it cannot be stretched once it has started.
            raise ValueError(
                "%s was saved by a run of %d iterations in all; resume it with the same "
                "--epochs and --batch-size (this run would have %d)"
                % (path, ck["total_iters"], total)
            )
        if "rng" in ck:
            torch.set_rng_state(ck["rng"].cpu())
        self._log("resumed from %s: epoch %d, step %d" % (path, self.epoch, self.step))

    def setup(self) -> None:
        cfg = self.cfg
        self.dist = setup_distributed(cfg.device)
        device = self.dist.device
        torch.manual_seed(cfg.seed)  # same initial weights in every process
        model = self.task.build_model().to(device)
        train_ds, self.val_dataset = self.task.datasets()
        self.train_dataset = train_ds
        self.train_loader, self.val_loader = self._loaders(train_ds, self.val_dataset)
        self.iters_per_epoch = len(self.train_loader)
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(
            self.optimizer,
            cfg.epochs * self.iters_per_epoch,
            cfg.poly_power,
            cfg.warmup_iters,
            cfg.warmup_factor,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
        if self.dist.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.model = model
        self.ema = ModelEMA(unwrap(model), cfg.ema) if cfg.ema > 0 else None
        self.epoch, self.step, self.history = 0, 0, []
        if cfg.resume:
            self._resume(cfg.resume)
        if self.dist.is_main:
            os.makedirs(cfg.out, exist_ok=True)

    # -- loops
    def _progress(self, iterable, desc: str):
        from tqdm import tqdm

        return tqdm(
            iterable,
            desc=desc,
            disable=not (self.cfg.progress and self.dist.is_main),
            dynamic_ncols=True,
            leave=False,
        )

    def train_one_epoch(self) -> Dict[str, float]:
        cfg, device, model = self.cfg, self.dist.device, self.model
        model.train()
        self.train_sampler.set_epoch(self.epoch)
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(self.epoch)
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        bar = self._progress(self.train_loader, "epoch %d/%d" % (self.epoch + 1, cfg.epochs))
        for i, (inputs, targets) in enumerate(bar):
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            with autocast_context(device, cfg.amp):
                outputs = model(inputs)
            loss = self.task.loss(outputs, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(unwrap(model))
            self.scheduler.step()
            self.step += 1
            total += loss.detach().double()
            count += 1
            if i % 10 == 0 or i + 1 == len(self.train_loader):
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError("loss is %s at step %d" % (value, self.step))
                bar.set_postfix(loss="%.4f" % value, lr="%.2e" % self._lr())
        s, n = all_reduce_sum([float(total), float(count)], device)
        return {"train_loss": s / max(n, 1)}

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """Loss and the task's metrics on the whole validation set (all processes)."""
        device, model = self.dist.device, self.eval_model()
        broadcast_buffers(model)
        model.eval()
        evaluator = self.task.evaluator()
        total, count = 0.0, 0
        for inputs, targets in self._progress(self.val_loader, "eval"):
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            with autocast_context(device, self.cfg.amp):
                outputs = model(inputs)
            loss = self.task.loss(outputs, targets)
            if loss is not None:
                n = len(targets)
                total += float(loss) * n
                count += n
            evaluator.update(outputs, targets)
        s, n = all_reduce_sum([total, count], device)
        metrics = evaluator.compute(device)
        return {"val_loss": s / n if n else None, "val": metrics}

    def _write_outputs(self) -> None:
        cfg = self.cfg
        with open(os.path.join(cfg.out, "metrics.json"), "w") as f:
            json.dump(_json_safe(self.history), f, indent=1)
        plot_curves(self.history, self.task.primary_metric, os.path.join(cfg.out, "curves.png"))
        self.task.save_predictions(
            self.eval_model(),
            self.val_dataset,
            os.path.join(cfg.out, "predictions.png"),
            self.dist.device,
        )

    def _save(self) -> None:
        cfg, state = self.cfg, self.state_dict()
        save_checkpoint(os.path.join(cfg.out, "checkpoint_last.pt"), state)
        if cfg.save_every and self.epoch % cfg.save_every == 0:
            save_checkpoint(os.path.join(cfg.out, "checkpoint_epoch%03d.pt" % self.epoch), state)

    def _summary(self, record: Dict[str, Any]) -> str:
        metric = self.task.primary_metric
        parts = ["epoch %d/%d" % (record["epoch"], self.cfg.epochs), "step %d" % record["step"]]
        if record.get("train_loss") is not None:
            parts.append("train_loss %.4f" % record["train_loss"])
        if record.get("val_loss") is not None:
            parts.append("val_loss %.4f" % record["val_loss"])
        if metric in record.get("val", {}):
            parts.append("%s %.4f" % (metric, record["val"][metric]))
        parts.append("%.1fs" % record["time_s"])
        return "  ".join(parts)

    def _epoch_end(self, record: Dict[str, Any], start: float, save: bool) -> None:
        """Evaluate, append the epoch's record to the history, log it; rank 0 writes the
        checkpoints (when ``save``), metrics.json, the curves and the predictions picture."""
        record = {"epoch": self.epoch, "step": self.step, **record, **self.evaluate()}
        record["time_s"] = time.time() - start
        self.history.append(record)
        self._log(self._summary(record))
        if self.dist.is_main:
            if save:
                self._save()
            self._write_outputs()

    def run(self) -> List[Dict[str, Any]]:
        """Train the remaining epochs (evaluating after each), or only evaluate when no epoch
        remains (``--epochs 0``, or a resumed run that is complete). Returns the history."""
        self.setup()
        try:
            if self.epoch >= self.cfg.epochs:
                self._epoch_end({"eval_only": True}, time.time(), save=False)
            while self.epoch < self.cfg.epochs:
                start = time.time()
                record = self.train_one_epoch()
                self.epoch += 1
                self._epoch_end({"lr": self._lr(), **record}, start, save=True)
            if self.dist.distributed:
                dist.barrier()  # rank 0's files are written when any process returns
        finally:
            cleanup_distributed()
        return self.history

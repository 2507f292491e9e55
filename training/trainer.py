"""The trainer: one config in, checkpoints and a best model by validation AP out.

One loop for every paradigm of the zoo, picked from the model's spec: top-down models
(HRNet, DE-HRNet, SimpleBaseline, the regression baseline) train on person crops with
JointsMSE or coordinate MSE; bottom-up HPRNet and one-stage ER-Pose train on whole images
(:mod:`training.datasets.bottomup`) with ``HPRNetLoss`` and ``ERPoseLoss``.

The loop of the official HRNet ``lib/core/function.py`` ``train`` with what a run on shared
machines needs: mixed precision on CUDA, gradient clipping, an EMA of the weights, a
checkpoint after every epoch that ``--resume`` continues from the same step, torchrun DDP
(``WORLD_SIZE`` > 1: a DistributedSampler, only rank 0 writes), and repeatable runs: the
weights, the data order and every crop's augmentation follow from the seed and the epoch.

Files in the output folder:

- ``last.safetensors`` (weights), ``last_ema.safetensors`` (EMA weights, if enabled),
  ``optimizer.safetensors`` (optimizer tensors) and ``state.json`` (epoch, step, best AP,
  optimizer hyper-parameters, the config): everything ``--resume`` needs, no pickle;
- ``best.safetensors``: the weights (EMA if enabled) of the best validation epoch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from posegraph import codecs, skeletons
from posegraph.models import (
    ModelSpec,
    build,
    checkpoint_metadata,
    cpu_has_bfloat16,
    load_checkpoint,
    save_checkpoint,
    spec_of,
)
from training.config import DataSource, TrainConfig
from training.datasets.bottomup import (
    BottomUpDataset,
    CocoImages,
    SyntheticImages,
    collate_erpose,
    collate_hprnet,
)
from training.datasets.coco import CocoPersons, TopDownDataset
from training.datasets.draws import Draw
from training.datasets.mpii import load_mpii
from training.datasets.synthetic import SyntheticTopDown
from training.evaluate import (
    VALIDATION_CODEC_KWARGS,
    WHOLE_IMAGE_PARADIGMS,
    evaluate_coco,
    evaluate_mpii,
    evaluate_whole_images,
    to_tensor,
)
from training.losses.erpose import ERPoseLoss
from training.losses.hprnet import HPRNetLoss
from training.losses.topdown import CoordinateMSELoss, JointsMSELoss
from training.synth import SceneConfig
from training.transforms.bottomup import RandomAffine
from training.transforms.topdown import TopDownAffine, upper_body_mask

logger = logging.getLogger(__name__)

#: Top-down codecs whose targets are heatmaps (JointsMSE) or coordinates (MSE).
HEATMAP_CODECS = ("msra_heatmap", "udp_heatmap")
COORDINATE_CODECS = ("regression_label",)


def as_float32(outputs: Any) -> Any:
    """A model's outputs (a tensor, or lists, tuples and dicts of them) in float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: as_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(as_float32(v) for v in outputs)
    return outputs


class ModelEMA:
    """Exponential moving average of a model's weights and buffers (the YOLO ``ModelEMA``).

    The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so that early averages are not
    dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, tau: float, updates: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates
        self._own = _split_state(self.module)
        self._source: tuple[nn.Module, tuple[list, list]] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average, in one fused call over the floating-point tensors.

        The model's tensors are listed once and then read in place (training updates them in
        place). Per tensor, HRNet-W16's 1754 took ~3000 kernel launches and two state-dict
        walks a step (72 ms on one core of the 2-core CPU here, against 10 ms now).
        """
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        if self._source is None or self._source[0] is not model:
            self._source = (model, _split_state(model))
        floats, others = self._source[1]
        torch._foreach_lerp_(self._own[0], floats, 1 - d)  # d * own + (1 - d) * model
        for own, value in zip(self._own[1], others, strict=True):
            own.copy_(value)


def _split_state(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The state dict's tensors (views of the model's), floating-point ones first."""
    values = list(model.state_dict().values())
    return (
        [v for v in values if v.dtype.is_floating_point],
        [v for v in values if not v.dtype.is_floating_point],
    )


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, backend: str) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        dist.init_process_group(backend=backend)
        return cls(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch; with ``deterministic``, ask cuDNN for its deterministic
    kernels, else let it benchmark for the fastest."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def init_weights(model: nn.Module) -> None:
    """The official HRNet ``init_weights`` for training from scratch.

    Convolutions drawn from N(0, 0.001) with zero bias, batch norms at 1 and 0: the heatmaps
    start near 0, as the targets mostly are, instead of at PyTorch's default scale, whose first
    losses are thousands of times larger. HRNet's context head stays at zero, where it starts
    (the heatmaps are the plain head's until it learns).
    """
    zero = {id(conv) for conv in getattr(model, "final_context", ())}
    for module in model.modules():
        if id(module) in zero:
            continue
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(module.weight, std=0.001)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state as (tensors for safetensors, the rest as JSON-able data)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, rest: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *rest["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def _one_cv2_thread(worker: int) -> None:
    """Loader workers are the parallelism: OpenCV's own threads in each would oversubscribe
    the cores."""
    cv2.setNumThreads(1)


def _write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary file so that a crash never leaves half a checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


#: Steps between reads of the losses from the device (see :meth:`Trainer.train_epoch`).
LOSS_READ_EVERY = 10


class EpochBatches:
    """The batch sampler of the trainer's loader: an epoch's ``steps`` batches, as lists of
    :class:`~training.datasets.draws.Draw`.

    An epoch with more steps than one pass over the data holds makes further passes, each in
    its own order (a permutation seeded by the seed, the epoch and the pass; on several
    processes, a DistributedSampler's share of it) and drawn afresh (the pass is part of each
    item's draw); each pass drops its last partial batch. Set ``epoch`` before iterating.
    """

    def __init__(
        self, length: int, batch_size: int, steps: int, seed: int, world_size: int, rank: int
    ) -> None:
        self.length, self.batch_size, self.steps = length, batch_size, steps
        self.seed, self.world_size, self.rank = seed, world_size, rank
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def _order(self, repeat: int) -> Iterator[int]:
        order_seed = self.seed + self.epoch + 1_000_003 * repeat
        if self.world_size > 1:
            sampler: Any = DistributedSampler(
                range(self.length), self.world_size, self.rank, seed=order_seed
            )
            sampler.set_epoch(self.epoch)
            return iter(sampler)
        generator = torch.Generator().manual_seed(order_seed)
        return iter(RandomSampler(range(self.length), generator=generator))

    def __iter__(self) -> Iterator[list[Draw]]:
        done, repeat = 0, 0
        while True:
            batch: list[Draw] = []
            for index in self._order(repeat):
                batch.append(Draw(index, self.epoch, repeat))
                if len(batch) == self.batch_size:
                    yield batch
                    done += 1
                    if done == self.steps:
                        return
                    batch = []
            repeat += 1


class Trainer:
    """Trains the zoo model a :class:`TrainConfig` names (top-down, bottom-up or one-stage).

    Args:
        config: the run.
        out: output folder for checkpoints and logs.
        resume: continue from ``out``'s last checkpoint (the same step, the same data).
    """

    def __init__(self, config: TrainConfig, out: Path, resume: bool = False) -> None:
        self.config = config
        self.out = Path(out)
        cuda = torch.cuda.is_available() and config.device != "cpu"
        if config.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("config asks for device cuda, but torch sees no CUDA device")
        self.dist = Distributed.from_environment("nccl" if cuda else "gloo")
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        seed_everything(config.seed, config.deterministic)

        self.skeleton = skeletons.get(config.skeleton)
        self.model, self.spec = self._build_model()
        self.paradigm = self.spec.paradigm
        self.codec = codecs.build(self.spec.codec, **self._codec_kwargs())
        self.collate: Any = None
        if self.paradigm == "topdown" and self.spec.codec in HEATMAP_CODECS:
            init_weights(self.model)
            self.loss: nn.Module = JointsMSELoss()
            self.target_key = "heatmaps"
        elif self.paradigm == "topdown" and self.spec.codec in COORDINATE_CODECS:
            self.loss = CoordinateMSELoss()
            self.target_key = "keypoint_labels"
        elif self.paradigm == "bottomup" and self.spec.codec == "hprnet":
            self.loss, self.collate = HPRNetLoss(), collate_hprnet
        elif self.paradigm == "onestage" and self.spec.codec == "erpose":
            strides = self.spec.codec_kwargs["strides"]
            self.loss = ERPoseLoss(self.skeleton.sigmas, strides=strides)
            self.collate = collate_erpose
        else:
            raise ValueError(f"no {self.paradigm} loss for codec {self.spec.codec!r}")
        if config.load_from is not None and not resume:
            try:
                load_checkpoint(self.model, Path(config.load_from), strict=config.load_strict)
            except (OSError, ValueError) as error:
                raise ValueError(f"load_from {config.load_from}: {error}") from error
            logger.info("starting from the weights of %s", config.load_from)
            if checkpoint_metadata(config.load_from).get("seed") == str(config.seed):
                logger.warning(
                    "load_from %s was trained with seed %d too: item i of epoch e is drawn "
                    "from the seed, e and i, so on the same data this run replays that run's "
                    "crops epoch for epoch; give it its own seed (--set seed=N)",
                    config.load_from,
                    config.seed,
                )
        self.model.to(self.device)
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.model.to(memory_format=self.memory_format)
        self.ema = (
            ModelEMA(self.model, config.ema.decay, config.ema.tau) if config.ema.enabled else None
        )
        self.optimizer = self._make_optimizer()
        self.amp = config.amp and self.device.type == "cuda"
        self.cpu_amp = config.cpu_amp and self.device.type == "cpu"
        if self.cpu_amp and not cpu_has_bfloat16():
            raise ValueError(
                "cpu_amp: this CPU has no bfloat16 in hardware (AMX or AVX512-BF16), and "
                "emulated it is slower than float32; set cpu_amp: false"
            )
        self.amp_dtype = getattr(torch, config.amp_dtype)
        # bfloat16 keeps float32's exponent range: gradients need no scaling
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and self.amp_dtype == torch.float16
        )
        self.train_set = self._dataset(config.data.train, train=True)
        self.epoch, self.step, self.best = 0, 0, -1.0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._resume()
        self.batches = EpochBatches(
            len(self.train_set),
            config.batch_size,
            self.steps_per_epoch(),
            config.seed,
            self.dist.world_size,
            self.dist.rank,
        )
        self.loader: DataLoader | None = None
        self.net: nn.Module = self.model
        if self.dist.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if cuda else None
            )

    def _build_model(self) -> tuple[nn.Module, ModelSpec]:
        """The zoo model with the config's overrides, its K set to the skeleton's.

        ``num_keypoints`` is overridden only where the model's own K differs; HPRNet's
        keypoint set is fixed (its heads are wholebody133's), so its config must name it.
        """
        config = self.config
        overrides = dict(config.model_overrides)
        spec = spec_of(config.model, **overrides)
        if spec.num_keypoints != self.skeleton.num_keypoints:
            if spec.paradigm == "bottomup":
                raise ValueError(
                    f"{config.model} predicts the {spec.num_keypoints} {spec.skeleton} "
                    f"keypoints, not {config.skeleton}'s; set skeleton: {spec.skeleton}"
                )
            overrides["num_keypoints"] = self.skeleton.num_keypoints
        return build(config.model, **overrides)

    def _codec_kwargs(self, validation: bool = False) -> dict[str, Any]:
        """The spec's codec arguments; ER-Pose's codec also takes the skeleton (its K)."""
        kwargs = dict(self.spec.codec_kwargs)
        if self.spec.codec == "erpose":
            kwargs["skeleton"] = self.config.skeleton
        if validation:
            kwargs.update(VALIDATION_CODEC_KWARGS.get(self.spec.codec, {}))
        return kwargs

    def _make_optimizer(self) -> torch.optim.Optimizer:
        opt = self.config.optimizer
        params = self.model.parameters()
        betas = (opt.momentum, 0.999)
        # one kernel for all the weights on CUDA, instead of several per tensor list
        fused = self.device.type == "cuda" or None
        if opt.name in ("adam", "adamw"):
            kind = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
            return kind(params, lr=opt.lr, betas=betas, weight_decay=opt.weight_decay, fused=fused)
        return torch.optim.SGD(
            params,
            lr=opt.lr,
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
        )

    def _transform(self, train: bool) -> TopDownAffine:
        aug = self.config.augmentation
        augmentation = None
        if train and aug.enabled:
            augmentation = aug.topdown()
        k = self.skeleton.num_keypoints
        return TopDownAffine(
            self.spec.input_size,
            self.skeleton.flip_indices,
            upper_body_mask(self.skeleton.name, k),
            augmentation=augmentation,
        )

    def _dataset(
        self, source: DataSource, train: bool
    ) -> TopDownDataset | SyntheticTopDown | BottomUpDataset:
        if self.paradigm in WHOLE_IMAGE_PARADIGMS:
            return self._whole_images(source, train)
        transform = self._transform(train)
        if source.kind == "synthetic":
            scene = SceneConfig(*source.image_size, people=source.people, crowd_p=0.0)
            return SyntheticTopDown(
                source.length,
                transform,
                self.codec.encode,
                self.skeleton.name,
                source.seed,
                scene,
            )
        if source.annotations is None:
            raise ValueError(f"data source of kind {source.kind!r} needs `annotations`")
        if source.kind == "mpii":
            instances = load_mpii(Path(source.annotations), source.images)
        else:
            instances = self._coco(source).instances
        return TopDownDataset(instances, transform, self.codec.encode, seed=self.config.seed)

    def _square_input(self) -> int:
        """The side of a whole-image model's square training input."""
        width, height = self.spec.input_size
        if width != height:
            raise ValueError(
                f"{self.config.model}: input_size {self.spec.input_size}; whole-image models "
                "train on a square input (model_overrides.input_size: [S, S])"
            )
        return width

    def _whole_images(self, source: DataSource, train: bool) -> BottomUpDataset:
        """Whole images with the paper's augmentation (train) or letterboxed, and targets."""
        if source.kind == "synthetic":
            scene = SceneConfig(*source.image_size, people=source.people, crowd_p=0.0)
            images: Any = SyntheticImages(source.length, source.seed, scene)
        elif source.kind == "coco" and source.annotations is not None:
            images = CocoImages(Path(source.annotations), source.images, with_people_only=train)
        else:
            raise ValueError(
                f"whole-image models read data of kind coco (with `annotations`) or synthetic, "
                f"not {source.kind!r}"
            )
        size = self._square_input()
        aug = self.config.augmentation
        affine, mosaic_p = None, 0.0
        if train and aug.enabled:
            preset = RandomAffine.hprnet if self.paradigm == "bottomup" else RandomAffine.erpose
            affine, mosaic_p = preset(self.skeleton.flip_indices, size), aug.mosaic_p
        return BottomUpDataset(
            images,
            self.codec,
            self.config.skeleton,
            size,
            affine,
            mosaic_p=mosaic_p,
            mosaic_epochs=self.config.schedule.epochs - aug.close_mosaic,
            seed=self.config.seed,
        )

    def _coco(self, source: DataSource) -> CocoPersons:
        return CocoPersons(
            Path(source.annotations),
            Path(source.images) if source.images else None,
            self.skeleton.name,
            self.spec.input_size,
            Path(source.detections) if source.detections else None,
            source.score_threshold,
        )

    def epoch_data(self, epoch: int) -> DataLoader:
        """The loader, set to give ``epoch``'s batches (made on first use)."""
        self.batches.epoch = epoch
        if self.loader is None:
            self.loader = self._make_loader()
        return self.loader

    def _make_loader(self) -> DataLoader:
        """The run's one loader: its workers live until :meth:`close` (``persistent_workers``)
        and ``self.batches`` says which draws each epoch's batches hold."""
        workers = self.config.workers
        return DataLoader(
            self.train_set,
            batch_sampler=self.batches,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_one_cv2_thread,
            persistent_workers=workers > 0,
            # fresh interpreters: a forked child inherits OpenCV's and OpenMP's thread pools
            # without their threads, and hangs on its first parallel call
            multiprocessing_context="spawn" if workers > 0 else None,
        )

    def steps_per_epoch(self) -> int:
        """``schedule.steps_per_epoch``, or one pass over the data when that is None."""
        full = len(self.train_set) // (self.config.batch_size * self.dist.world_size)
        if full < 1:
            raise ValueError(
                f"{len(self.train_set)} training items make no full batch of "
                f"{self.config.batch_size} per process; lower batch_size or add data"
            )
        return self.config.schedule.steps_per_epoch or full

    def learning_rate(self, epoch: int, step: int) -> float:
        """The schedule's rate at ``epoch`` (step, linear or cosine; see
        :class:`training.config.ScheduleConfig`), with a linear warm-up over the first steps."""
        schedule = self.config.schedule
        lr = self.config.optimizer.lr
        done = self.schedule_progress(epoch)
        if schedule.kind == "step":
            lr *= schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
        elif schedule.kind == "linear":
            lr *= 1 - (1 - schedule.final_lr) * done
        else:
            lr *= schedule.final_lr + (1 - schedule.final_lr) * (1 + math.cos(math.pi * done)) / 2
        if schedule.warmup_steps and step < schedule.warmup_steps:
            lr *= (step + 1) / schedule.warmup_steps
        return lr

    def schedule_progress(self, epoch: int) -> float:
        """How far the decay has run at the start of ``epoch``, 0 to 1: ``epoch / epochs``,
        or with ``schedule.minutes`` the share of the time spent by the epochs before it.

        Time, not epochs, under a deadline: a re-plan that finds room for more epochs (a
        slow first epoch, a machine that frees up) would otherwise move the decay back and
        raise the rate again mid-run.
        """
        schedule = self.config.schedule
        if schedule.minutes is None:
            return epoch / schedule.epochs
        spent = sum(record["seconds"] for record in self.history if record["epoch"] < epoch)
        return min(1.0, spent / (schedule.minutes * 60))

    def train_epoch(self, progress: Any = None, task: Any = None) -> float:
        """One epoch; returns the mean loss over it.

        The losses are read back every :data:`LOSS_READ_EVERY` steps, not each step: a read
        makes the host wait for the GPU, which then idles while the next step is launched. A
        non-finite loss still stops the run with the step it came at, before a checkpoint.
        """
        epoch = self.epoch
        # Per-epoch seeding makes dropout and any other torch randomness resume exactly.
        torch.manual_seed(self.config.seed + epoch)
        self.net.train()
        total, count, started = 0.0, 0, time.perf_counter()
        pending: list[torch.Tensor] = []
        if self.amp:
            autocast: Any = torch.autocast("cuda", dtype=self.amp_dtype)
        elif self.cpu_amp:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        else:
            autocast = contextlib.nullcontext()
        for batch in self.epoch_data(epoch):
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(epoch, self.step)
            with autocast:
                loss = self.batch_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.config.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            count += 1
            pending.append(loss.detach())
            shown: dict[str, float] = {}
            if len(pending) == LOSS_READ_EVERY or count == len(self.batches):
                total += self._read_losses(pending, epoch)
                pending = []
                shown["loss"] = total / count
            if progress is not None:
                images = count * len(batch["image"]) * self.dist.world_size
                rate = images / (time.perf_counter() - started)
                progress.update(task, advance=1, rate=rate, **shown)
        return total / max(count, 1)

    def _read_losses(self, losses: list[torch.Tensor], epoch: int) -> float:
        """The sum of the last ``len(losses)`` steps' losses (one wait for the device); a
        non-finite one raises with its step."""
        values = torch.stack(losses).float().tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                step = self.step - len(values) + offset
                raise FloatingPointError(
                    f"loss is {value} at epoch {epoch}, step {step}; lower the learning rate "
                    "or turn on clip_grad_norm"
                )
        return math.fsum(values)

    def batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The scalar loss of one collated batch, by paradigm.

        Top-down batches carry targets and ``keypoint_weights`` tensors; HPRNet's a dict of
        stacked target tensors; ER-Pose's a list of per-image target dicts (numpy), which the
        loss's assignment reads on the CPU.
        """
        x = to_tensor(batch["image"].to(self.device, non_blocking=True), self.spec)
        outputs = self.net(x.contiguous(memory_format=self.memory_format))
        if self.cpu_amp:
            # the loss in float32: squared errors of heatmap values near 0 and the sums over
            # a batch lose too much in bfloat16's 8 bits
            with torch.autocast("cpu", enabled=False):
                return self._loss_of(as_float32(outputs), batch)
        return self._loss_of(outputs, batch)

    def _loss_of(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        if self.paradigm == "topdown":
            targets = batch[self.target_key].to(self.device, non_blocking=True)
            weights = batch["keypoint_weights"].to(self.device, non_blocking=True)
            return self.loss(outputs, targets, weights)
        targets = batch["targets"]
        if self.paradigm == "bottomup":
            targets = {name: t.to(self.device, non_blocking=True) for name, t in targets.items()}
        total, _ = self.loss(outputs, targets)
        return total

    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept as best: the EMA if there is one."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, float]:
        """The headline metric (``AP``, or ``PCKh`` for MPII) and the rest, on ``data.val``."""
        source = self.config.data.val
        if source is None:
            return {}
        if self.paradigm in WHOLE_IMAGE_PARADIGMS:
            return self.validate_whole_images(source)
        model, flip = self.eval_model(), self.config.flip_test
        batch = self.config.batch_size
        if source.kind == "mpii":
            instances = load_mpii(Path(source.annotations), source.images)
            metrics = evaluate_mpii(model, self.spec, instances, flip, batch, self.device)
            metrics["AP"] = metrics["PCKh"]
            return metrics
        if source.kind != "coco":
            raise ValueError(
                "validation needs a fixed set: write synthetic people to disk "
                "(training.datasets.synthetic.write_synthetic_coco) and use kind: coco"
            )
        return evaluate_coco(model, self.spec, self._coco(source), flip, batch, self.device)

    def validate_whole_images(self, source: DataSource) -> dict[str, float]:
        """COCO OKS AP of a whole-image model on a COCO-format file (see
        :func:`training.evaluate.evaluate_whole_images`)."""
        if source.kind != "coco" or source.annotations is None:
            raise ValueError(
                "validation needs a fixed set: write synthetic people to disk "
                "(training.datasets.synthetic.write_synthetic_coco) and use kind: coco"
            )
        images = CocoImages(Path(source.annotations), source.images, with_people_only=False)
        model = self.eval_model()
        was_training = model.training
        try:
            return evaluate_whole_images(
                model,
                self.spec,
                images,
                self.config.skeleton,
                self._square_input(),
                self.config.batch_size,
                self.device,
            )
        finally:
            model.train(was_training)

    def save(self, metrics: dict[str, float]) -> None:
        """Write the epoch's checkpoint (rank 0 only) and the best one if AP improved (body
        AP for whole-body models)."""
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        # the seed goes with the weights, so that a run started from them can tell whether
        # it would draw the same crops
        run = {"seed": str(self.config.seed)}
        _write_atomically(
            self.out / "last.safetensors", lambda p: save_checkpoint(self.model, p, run)
        )
        if self.ema is not None:
            _write_atomically(
                self.out / "last_ema.safetensors",
                lambda p: save_checkpoint(self.ema.module, p, run),
            )
        tensors, rest = _optimizer_tensors(self.optimizer)
        _write_atomically(self.out / "optimizer.safetensors", lambda p: save_file(tensors, str(p)))
        # the whole-body models' target is their body AP (their "AP" is the whole body's)
        ap = metrics.get("AP_body", metrics.get("AP"))
        if ap is not None and ap > self.best:
            self.best = ap
            _write_atomically(
                self.out / "best.safetensors",
                lambda p: save_checkpoint(self.eval_model(), p, run),
            )
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "best_ap": self.best,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "scaler": self.scaler.state_dict(),
            "optimizer": rest,
            "history": self.history,
            "config": self.config.to_dict(),
        }
        _write_atomically(
            self.out / "state.json", lambda p: p.write_text(json.dumps(state, indent=1))
        )

    def _resume(self) -> None:
        state_path = self.out / "state.json"
        if not state_path.is_file():
            raise FileNotFoundError(
                f"--resume: {state_path} does not exist; start without --resume, or point "
                "--out at the folder of an earlier run"
            )
        state = json.loads(state_path.read_text())
        load_checkpoint(self.model, self.out / "last.safetensors")
        if self.ema is not None:
            load_checkpoint(self.ema.module, self.out / "last_ema.safetensors")
            self.ema.updates = state["ema_updates"]
        tensors = load_file(str(self.out / "optimizer.safetensors"))
        _load_optimizer(self.optimizer, tensors, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"] + 1, state["step"]
        self.best, self.history = state["best_ap"], state["history"]
        logger.info("resumed from %s: epoch %d, step %d", self.out, self.epoch, self.step)

    def _fit_epochs_to_time(self, seconds: float) -> None:
        """Re-set ``schedule.epochs`` to what ``schedule.minutes`` holds at the mean epoch
        time so far (earlier epochs as recorded, the one just trained took ``seconds``)."""
        schedule = self.config.schedule
        done = self.epoch + 1
        elapsed = sum(record["seconds"] for record in self.history) + seconds
        fits = int(schedule.minutes * 60 / (elapsed / (len(self.history) + 1)))
        epochs = max(done, fits)
        if epochs != schedule.epochs:
            logger.info(
                "%.1f minutes at %.1f s an epoch: %d epochs (were %d)",
                schedule.minutes,
                elapsed / (len(self.history) + 1),
                epochs,
                schedule.epochs,
            )
        schedule.epochs = epochs
        data = self.train_set
        mosaic_epochs = epochs - self.config.augmentation.close_mosaic
        if isinstance(data, BottomUpDataset) and data.mosaic_epochs != mosaic_epochs:
            data.mosaic_epochs = mosaic_epochs  # mosaic closes before the new end
            if data.mosaic_p > 0:
                self.close()  # the workers hold copies of the dataset: start them anew

    def close(self) -> None:
        """Stop the loader's worker processes (:meth:`fit` does at its end; a later epoch
        starts new ones)."""
        self.loader = None  # its iterator shuts the workers down when dropped

    def fit(self, console: Any = None) -> list[dict[str, Any]]:
        """Train to the last epoch; returns one record per epoch (loss, metrics, time)."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.6f}"),
            TextColumn("{task.fields[rate]:.1f} img/s"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.dist.main,
        )
        with progress, contextlib.closing(self):
            while self.epoch < self.config.schedule.epochs:
                task = progress.add_task(
                    f"epoch {self.epoch + 1}/{self.config.schedule.epochs}",
                    total=self.steps_per_epoch(),
                    loss=0.0,
                    rate=0.0,
                )
                started = time.perf_counter()
                loss = self.train_epoch(progress, task)
                if self.config.schedule.minutes is not None:
                    self._fit_epochs_to_time(time.perf_counter() - started)
                last = self.epoch + 1 == self.config.schedule.epochs
                due = (self.epoch + 1) % self.config.schedule.val_every == 0 or last
                metrics = self.validate() if self.dist.main and due else {}
                record = {
                    "epoch": self.epoch,
                    "step": self.step,
                    "loss": loss,
                    "seconds": time.perf_counter() - started,
                    **metrics,
                }
                self.history.append(record)
                logger.info("epoch %d: %s", self.epoch, record)
                self.save(metrics)
                self.epoch += 1
        if self.dist.world_size > 1:
            dist.destroy_process_group()
        return self.history

"""Training configs: YAML files in ``training/configs/`` read into dataclasses.

A config names a zoo model, its data and its schedule; ``--set key=value`` changes any field
by its dotted path (``--set schedule.epochs=3 --set data.train.length=64``), the value read as
YAML. Unknown keys are errors that name the file and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from training.transforms.topdown import Augmentation


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and why."""


@dataclass
class DataSource:
    """Where people come from.

    Attributes:
        kind: ``coco`` (COCO keypoints, COCO-WholeBody, CrowdPose: any COCO-format file),
            ``mpii`` (MMPose's json list) or ``synthetic`` (rendered on the fly; for a fixed
            synthetic set on disk use ``coco`` with the written json).
        annotations: the annotation file (coco, mpii).
        images: folder of the images; default: the annotation file's folder.
        detections: a COCO results file of person boxes (evaluation); None: ground truth.
        score_threshold: detection boxes below this score are dropped.
        length: images per epoch (synthetic).
        seed: which images (synthetic).
        image_size: (w, h) of rendered images (synthetic).
        people: (min, max) people per rendered image (synthetic).
    """

    kind: Literal["coco", "mpii", "synthetic"] = "coco"
    annotations: str | None = None
    images: str | None = None
    detections: str | None = None
    score_threshold: float = 0.0
    length: int = 1000
    seed: int = 0
    image_size: tuple[int, int] = (640, 480)
    people: tuple[int, int] = (1, 8)


@dataclass
class DataConfig:
    """Training and validation data; ``val`` may be None (no best checkpoint by AP)."""

    train: DataSource = field(default_factory=DataSource)
    val: DataSource | None = None


@dataclass
class AugmentationConfig(Augmentation):
    """Training augmentation; ``enabled: false`` turns all off.

    Top-down models take the fields of :class:`training.transforms.topdown.Augmentation`
    (inherited, so the defaults stand in one place). Whole-image models take their
    paper's random affine (:meth:`RandomAffine.hprnet`, :meth:`RandomAffine.erpose`) and,
    for ER-Pose, a YOLO mosaic with probability ``mosaic_p``, off for the last
    ``close_mosaic`` epochs.
    """

    enabled: bool = True
    mosaic_p: float = 0.0
    close_mosaic: int = 0

    def topdown(self) -> Augmentation:
        """The top-down augmentation these settings describe."""
        return Augmentation(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(Augmentation)}
        )


@dataclass
class OptimizerConfig:
    """``adam`` or ``adamw`` or ``sgd`` at learning rate ``lr``.

    ``momentum`` is SGD's momentum, or the first beta of Adam and AdamW (Ultralytics sets
    both from its ``momentum``); ``nesterov`` applies to SGD.
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    """The learning rate by epoch, after a warm-up.

    ``kind``: ``step`` decays as ``lr * gamma ** (number of milestones passed)``, milestones
    in epochs (HRNet, HPRNet); ``linear`` and ``cosine`` fall from ``lr`` at epoch 0 to
    ``lr * final_lr`` at ``epochs`` (Ultralytics' ``lrf``, ``cos_lr``).
    ``steps_per_epoch`` sets an epoch's length, in further passes over the data if one pass
    is shorter (None: one pass); ``warmup_steps`` ramps
    the learning rate linearly from 0; validation runs every ``val_every`` epochs and after
    the last.

    ``minutes`` (Ultralytics' ``time``) trains for that long instead of ``epochs``: after
    each epoch, ``epochs`` becomes as many as the mean epoch so far (validation included)
    fits in the time, at least the epochs done, and training stops there; the ``linear`` or
    ``cosine`` decay follows the share of the time spent (not of the epochs, whose count a
    re-plan may raise), so the rate only falls and ends at the deadline.
    """

    kind: Literal["step", "linear", "cosine"] = "step"
    final_lr: float = 0.01
    epochs: int = 210
    milestones: list[int] = field(default_factory=lambda: [170, 200])
    gamma: float = 0.1
    steps_per_epoch: int | None = None
    warmup_steps: int = 0
    val_every: int = 1
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.minutes is None:
            return
        if self.minutes <= 0:
            raise ConfigError(f"schedule.minutes: {self.minutes} is not a positive time")
        if self.kind == "step":
            raise ConfigError(
                "schedule.minutes re-plans the epochs, which a step schedule's milestones "
                "(in epochs) cannot follow; use kind: cosine or linear, or drop minutes"
            )


@dataclass
class EMAConfig:
    """Exponential moving average of the weights: decay ``d * (1 - exp(-step / tau))``."""

    enabled: bool = True
    decay: float = 0.9998
    tau: float = 2000.0


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        model: zoo name; ``model_overrides`` change its config (``input_size``, ``width``...).
        skeleton: the keypoint set of the data; the model is built with its K.
        batch_size: per process (per GPU under torchrun).
        workers: DataLoader worker processes per rank, started once for the run in fresh
            interpreters (``spawn``): a script that builds a :class:`~training.trainer.Trainer`
            with workers must guard its entry point with ``if __name__ == "__main__":``.
        amp: mixed precision, on CUDA only (a CPU: ``cpu_amp``).
        amp_dtype: ``float16`` (with a gradient scaler, whose inf check waits for the GPU
            each step) or ``bfloat16`` (float32's range: no scaler, no wait; Ampere and newer).
        cpu_amp: on a CPU, run the model's forward pass in bfloat16 (autocast; the weights,
            their gradients and the loss stay float32): about 1.6x faster HRNet-W16
            steps on a CPU with AMX. Needs bfloat16 in hardware (AMX or AVX512-BF16);
            elsewhere it is refused, as bfloat16 emulated runs slower than float32.
        channels_last: keep weights and inputs in NHWC, which convolutions run faster in
            (about 12% per HRNet-W16 step on a 2-core CPU; more with tensor cores).
        clip_grad_norm: clip the gradient norm to this; None: no clipping.
        flip_test: average with the flipped crop in validation.
        seed: makes the run repeatable (weights, data order, augmentation).
        load_from: a checkpoint of the same model (``.safetensors`` or ``.pth``) to start from
            instead of fresh weights: a fine-tuning run with its own schedule (``--resume``
            continues a run; this starts one).
        load_strict: with false, ``load_from`` may lack some of the model's weights (a
            head added to the model since, e.g. HRNet's ``context_head``), which keep their
            fresh values, and hold weights the model has not; both are logged. Shapes must
            still match.
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
        deterministic: cuDNN's deterministic kernels, for runs repeatable to the bit on one
            GPU; false lets cuDNN benchmark and pick the fastest (CPU runs are repeatable
            either way).
    """

    model: str = "hrnet_w32"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    skeleton: str = "coco17"
    data: DataConfig = field(default_factory=DataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    batch_size: int = 32
    workers: int = 4
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    cpu_amp: bool = False
    channels_last: bool = True
    clip_grad_norm: float | None = None
    flip_test: bool = True
    seed: int = 0
    load_from: str | None = None
    load_strict: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written next to checkpoints."""
        return dataclasses.asdict(self)


def _convert(value: Any, kind: Any, where: str) -> Any:
    """``value`` read from YAML, checked and converted to the annotated type ``kind``."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(kind, value, where)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(kind))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0]
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if kind is Any or origin is dict:
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            pass
    if kind in (int, str, bool) and type(value) is kind:
        return value
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


def from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a YAML mapping; ``where`` prefixes error messages."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; keys are {names}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Set ``a.b.c=value`` in a nested mapping in place; the value is parsed as YAML."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. schedule.epochs=3")
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a mapping")
        node = child
    node[leaf] = yaml.safe_load(text)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply ``--set`` overrides.

    Raises:
        ConfigError: unreadable YAML, unknown keys or wrong types, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see training/configs/")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for assignment in overrides or []:
        apply_override(values, assignment)
    return from_dict(TrainConfig, values, str(path))

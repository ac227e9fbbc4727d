"""The config of a sequence-model purchase / churn run (seqjax/train/binary_loop.py) and its file form."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import yaml

from seqjax import config as config_lib
from seqjax.config import ConfigError
from seqjax.evaluation.binary import METRICS
from seqjax.models.event_encoder import BINARY_HEADS, EventEncoderConfig
from seqjax.train import run_dir
from seqjax.train.config import OptimConfig
from seqjax.train.sampled_losses import LossConfig

SECTION = "sequence_task"  # config path of SequenceTaskConfig, for error messages
CONFIG_FILE = "task_config.yaml"  # the resolved SequenceTaskConfig of a run directory
DATA_FILE = "task_data.json"  # path and checksum of every prepared directory the run reads
MIN_METRICS = ("log_loss", "Brier", "ECE")  # lower is better; the other METRICS: higher is better


@dataclasses.dataclass(frozen=True)
class BinaryHeadConfig:
    weight: float = 1.0  # weight of this head's BCE in the total loss
    pos_weight: float = 1.0  # BCE weight of positive examples (e.g. negatives / positives when positives are rare)
    data: str = ""  # prepared DATA_DIR (--task <this head>, user level) holding this head's labels;
    # "" = data_path, whose task must then be this head


@dataclasses.dataclass(frozen=True)
class NextItemHeadConfig:
    weight: float = 0.1  # weight of the next-item softmax loss in the total loss
    loss_chunk: int = 512  # positions scored at once by the full-softmax loss
    repeat: bool = False  # repeat-explore mixture (seqjax.models.repeat_head): a gate chooses between the
    # user's own history items (attention over past events) and the rest of the catalogue; for shop logs,
    # where users often come back to items they viewed or bought
    loss: LossConfig = LossConfig()  # full softmax, or sampled / gbce for large catalogues (uniform negatives:
    # task runs keep no item counts for popularity sampling)


@dataclasses.dataclass(frozen=True)
class SequenceTaskConfig:
    data_path: str = ""  # prepared DATA_DIR (`seqjax prepare --task`): the run's examples, histories and splits
    max_len: int = 200  # events per history: each example's most recent max_len before the cutoff
    batch_size: int = 128  # examples per training batch
    eval_batch_size: int = 256  # examples per prediction batch
    buckets: tuple[int, ...] = ()  # padded history lengths; () = 16, 32, 64, ... and max_len
    reader_threads: int = 2  # Grain reader threads
    encoder: EventEncoderConfig = EventEncoderConfig()
    heads: tuple[Literal["purchase", "churn", "next_item"], ...] = ()  # heads to train; () = data_path's task
    aggregates: bool = False  # also feed each example's RFM aggregates (the classical models' table, prepared
    # as for logreg with training-split statistics) to the binary heads, beside the sequence (wide & deep)
    purchase: BinaryHeadConfig = BinaryHeadConfig()
    churn: BinaryHeadConfig = BinaryHeadConfig()
    next_item: NextItemHeadConfig = NextItemHeadConfig()
    optim: OptimConfig = OptimConfig()
    seed: int = 0  # parameters, dropout and data order all derive from it
    rng_impl: Literal["rbg", "threefry2x32"] = "rbg"  # dropout RNG (as train.rng_impl)
    epochs: int = 20  # maximum epochs (one epoch = every training example once)
    patience: int = 3  # stop after this many evaluations without improvement; 0 = never
    metric: str = "PR-AUC"  # validation metric (seqjax.evaluation.binary.METRICS), averaged over the binary heads
    eval_every_epochs: int = 1  # validate every this many epochs (a checkpoint is saved after every epoch)
    checkpoint_every_steps: int = 0  # extra checkpoints inside an epoch; 0 = only at epoch ends
    keep_latest: int = 2  # latest checkpoints kept
    keep_best: int = 1  # best checkpoints (by metric) kept
    log_every_steps: int = 20  # TensorBoard and progress update interval
    max_steps: int = 0  # stop after this many steps in total; 0 = no limit
    num_devices: int = 1  # devices on the data-parallel mesh axis; both batch sizes must divide by it

    def validate(self) -> None:
        p = SECTION
        for name in ("max_len", "batch_size", "eval_batch_size", "epochs", "eval_every_epochs", "keep_latest",
                     "log_every_steps", "num_devices", "reader_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{p}.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "keep_best", "max_steps", "checkpoint_every_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{p}.{name}: must be >= 0, got {getattr(self, name)}")
        if self.metric not in METRICS:
            raise ConfigError(f"{p}.metric: {self.metric!r} is not one of {list(METRICS)}")
        if len(set(self.heads)) != len(self.heads):
            raise ConfigError(f"{p}.heads: {list(self.heads)} names a head twice")
        if self.heads and not any(h in BINARY_HEADS for h in self.heads):
            raise ConfigError(f"{p}.heads: {list(self.heads)} has no binary head (purchase or churn)")
        if "next_item" in self.heads and self.encoder.kind == "transformer" and not self.encoder.causal:
            raise ConfigError(f"{p}.heads: next_item needs a causal encoder ({p}.encoder.causal=true)")
        for name in BINARY_HEADS:
            h = getattr(self, name)
            if h.weight < 0 or h.pos_weight <= 0:
                raise ConfigError(f"{p}.{name}: weight must be >= 0 and pos_weight > 0, got {h.weight}, {h.pos_weight}")
        if "next_item" in self.heads and "items" not in self.encoder.features:
            raise ConfigError(f"{p}.encoder.features must include 'items' for the next_item head (it scores items "
                              "against the item table)")
        if self.next_item.repeat and "next_item" not in self.heads:
            raise ConfigError(f"{p}.next_item.repeat=true: next_item is not in {p}.heads={list(self.heads)}")
        if self.next_item.weight < 0 or self.next_item.loss_chunk < 1:
            raise ConfigError(f"{p}.next_item: weight must be >= 0 and loss_chunk >= 1")
        self.next_item.loss.validate(prefix=f"{SECTION}.next_item.loss")
        if self.next_item.loss.needs_popularity:
            raise ConfigError(f"{p}.next_item.loss: {self.next_item.loss.kind} with these options needs item "
                              "popularity, which task runs do not count; use sampler=uniform (sampled) or "
                              "in_batch_logq=false (in_batch)")
        if self.next_item.loss.exclude_own_items:
            raise ConfigError(f"{p}.next_item.loss.exclude_own_items is for next-item runs (seqjax train), "
                              "not task runs")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) % self.num_devices:
                raise ConfigError(f"{p}.{name}={getattr(self, name)} does not divide by {p}.num_devices="
                                  f"{self.num_devices}")
        if self.buckets and max(self.buckets) != self.max_len:
            raise ConfigError(f"{p}.buckets must end at {p}.max_len={self.max_len}")

    @property
    def best_mode(self) -> Literal["max", "min"]:
        return "min" if self.metric in MIN_METRICS else "max"

    def length_buckets(self) -> tuple[int, ...]:
        if self.buckets:
            return self.buckets
        return tuple(b for b in (16, 32, 64, 128, 256, 512, 1024) if b < self.max_len) + (self.max_len,)


@dataclasses.dataclass(frozen=True)
class SequenceTaskRun:
    """The file form of a sequence-task run: YAML with one `sequence_task:` section (`seqjax train`)."""
    sequence_task: SequenceTaskConfig = SequenceTaskConfig()


def load_task_config(workdir: str | Path) -> SequenceTaskConfig:
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise run_dir.RunDirError(f"{workdir} has no {CONFIG_FILE}: not a sequence-task run directory")
    return config_lib.from_dict(SequenceTaskConfig, yaml.safe_load(path.read_text()))

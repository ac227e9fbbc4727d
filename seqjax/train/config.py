"""The experiment config of `seqjax train` / `seqjax evaluate`: typed defaults, one doc line per field."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

from seqjax.config import ConfigError
from seqjax.models.baselines import ItemKNNConfig, MarkovConfig, PopularityConfig
from seqjax.models.bert4rec import BERT4RecConfig
from seqjax.models.classical import GBDTConfig, KNNConfig, LogRegConfig, TreeConfig
from seqjax.models.hstu import HSTUConfig
from seqjax.models.recurrent import GRU4RecConfig, LSTMConfig
from seqjax.models.sasrec import SASRecConfig
from seqjax.train.sampled_losses import LossConfig

COUNT_KINDS = ("pop", "markov", "itemknn")  # fitted in one pass, no epochs, no checkpoints
ATTENTION_KINDS = ("sasrec", "bert4rec", "hstu")
# kind -> its attention, for kinds whose attention cuDNN (and jax.nn.dot_product_attention) cannot run
NO_CUDNN_KINDS = {"hstu": "pointwise SiLU attention with relative position/time biases"}
BINARY_TASKS = ("purchase", "churn")  # tasks on DATA_DIR/task/ (`seqjax prepare --task`)
CLASSICAL_KINDS = ("logreg", "tree", "knn", "gbdt")  # scikit-learn on the task features (models/classical.py)
BINARY_ONLY_KINDS = (*CLASSICAL_KINDS, "bgnbd")  # predict a label, rank no items: binary tasks only
NEXT_ITEM_ONLY_KINDS = ("pop", "markov", "itemknn", "bert4rec", "hstu")  # item scorers with no binary head
# train.metric of a binary task -> "max" or "min" (better is larger / smaller)
BINARY_METRICS = {"PR-AUC": "max", "ROC-AUC": "max", "log_loss": "min"}
NEXT_ITEM_DEFAULT_METRIC = "NDCG@10"
BINARY_DEFAULT_METRIC = "PR-AUC"


@dataclasses.dataclass(frozen=True)
class BGNBDConfig:
    period_days: float = 7.0  # time unit of the fit (x, t_x, T and the horizon in periods); the fitted
    # probabilities do not depend on it (alpha scales with it), the optimiser's starting point does

    def validate(self) -> None:
        if not self.period_days > 0:
            raise ValueError(f"model.bgnbd.period_days: must be > 0, got {self.period_days}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: str = ""  # prepared data directory (output of `seqjax prepare`)
    max_len: int = 200  # model input length: each user's most recent max_len events
    batch_size: int = 128  # users per training batch
    eval_batch_size: int = 256  # users per evaluation batch
    buckets: tuple[int, ...] = ()  # padded training lengths; () = 16, 32, 64, ... and max_len
    sort_window: int = 32  # batches per length-sorting window in the training shuffle
    pack: bool = False  # pack each batch's users into full max_len rows (SASRec, reference attention):
    # the same users per step, almost no padding, so random batches (sort_window=1) cost no padding
    reader_threads: int = 2  # Grain reader threads
    train_history: Literal["recent", "all"] = "recent"  # next-item training examples: each user's most recent
    # max_len events once per epoch, or every training event once per epoch (long histories cut into max_len
    # windows from the end, each its own example: more steps per epoch)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    kind: Literal["sasrec", "bert4rec", "hstu", "gru4rec", "lstm", "pop", "markov", "itemknn",
                  "logreg", "tree", "knn", "gbdt", "bgnbd"] = "sasrec"  # which model to train; logreg..bgnbd:
    # purchase/churn only (task), pop/markov/itemknn/bert4rec/hstu: next_item only
    attention: Literal["reference", "blockwise", "cudnn", "xla"] = "reference"  # attention implementation
    # (attention models); cudnn: GPU only, bfloat16, head dim a multiple of 8 up to 128 (256 on Hopper)
    sasrec: SASRecConfig = SASRecConfig()
    bert4rec: BERT4RecConfig = BERT4RecConfig()
    hstu: HSTUConfig = HSTUConfig()
    gru4rec: GRU4RecConfig = GRU4RecConfig()
    lstm: LSTMConfig = LSTMConfig()
    pop: PopularityConfig = PopularityConfig()
    markov: MarkovConfig = MarkovConfig()
    itemknn: ItemKNNConfig = ItemKNNConfig()
    logreg: LogRegConfig = LogRegConfig()
    tree: TreeConfig = TreeConfig()
    knn: KNNConfig = KNNConfig()
    gbdt: GBDTConfig = GBDTConfig()
    bgnbd: BGNBDConfig = BGNBDConfig()


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate
    schedule: Literal["constant", "cosine", "linear"] = "constant"  # decay after warmup
    warmup_steps: int = 100  # linear warmup from 0
    decay_steps: int = 0  # step at which the decay ends (warmup included); 0 = epochs x steps per epoch
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay
    b1: float = 0.9  # Adam's first-moment decay
    b2: float = 0.98  # Adam's second-moment decay (torch's default is 0.999)
    clip_norm: float = 1.0  # global gradient-norm clipping; 0 = off


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # parameters, dropout and data order all derive from it
    rng_impl: Literal["rbg", "threefry2x32"] = "rbg"  # dropout RNG: rbg is ~3x cheaper on CPU; threefry2x32
    # gives the same bits however the batch is sharded
    epochs: int = 200  # maximum epochs (one epoch = every training user once)
    patience: int = 10  # stop after this many evaluations without improvement; 0 = never
    metric: str = NEXT_ITEM_DEFAULT_METRIC  # validation metric for early stopping and the best checkpoint;
    # next_item: HR@K, NDCG@K or MRR; purchase/churn: PR-AUC (the default there: NDCG@10 reads as PR-AUC),
    # ROC-AUC or log_loss (lower is better)
    eval_every_epochs: int = 1  # validate every this many epochs (a checkpoint is saved after every epoch)
    checkpoint_every_steps: int = 0  # extra checkpoints inside an epoch; 0 = only at epoch ends
    keep_latest: int = 2  # latest checkpoints kept
    keep_best: int = 1  # best checkpoints (by metric) kept
    loss_norm: Literal["batch", "epoch"] = "batch"  # divide each batch's summed loss by its own real
    # positions (batch), or by the epoch's mean positions per batch (epoch: every position weighs the
    # same, as with unsorted batches, although length-sorted batches differ in size)
    loss: LossConfig = LossConfig()  # full softmax, or a sampled loss for large catalogues
    loss_chunk: int = 512  # positions scored at once by the full-softmax loss (small chunks stay in cache)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype (parameters stay float32)
    num_devices: int = 1  # devices on the data-parallel mesh axis; batch_size must divide by it
    log_every_steps: int = 20  # TensorBoard and progress update interval
    max_steps: int = 0  # stop after this many steps in total; 0 = no limit (quick checks)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    filter_seen: Literal["auto", "true", "false"] = "auto"  # auto: on when training has no repeated (user, item)
    ks: tuple[int, ...] = (1, 5, 10, 20)  # cut-offs of HR@K and NDCG@K


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    task: Literal["next_item", "purchase", "churn"] = "next_item"  # what is predicted: the next item (ranked
    # over the catalogue), or a label of DATA_DIR/task/ (`seqjax prepare --task`), which must be this task
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    def __post_init__(self):
        # A binary task's default metric is PR-AUC. train.metric cannot tell a default NDCG@10 from a written
        # one, and NDCG@10 means nothing for a label, so it is read as the binary default. Resolving here
        # (not with an "auto" value) keeps next_item configs and the run directories they wrote unchanged.
        if self.task in BINARY_TASKS and self.train.metric == NEXT_ITEM_DEFAULT_METRIC:
            object.__setattr__(self, "train", dataclasses.replace(self.train, metric=BINARY_DEFAULT_METRIC))

    def validate(self) -> None:
        kind = self.model.kind
        if self.task == "next_item" and kind in BINARY_ONLY_KINDS:
            raise ConfigError(f"model.kind={kind} predicts a purchase/churn label and ranks no items: set "
                              "task=purchase or task=churn (task=next_item is the default)")
        if self.task in BINARY_TASKS and kind in NEXT_ITEM_ONLY_KINDS:
            raise ConfigError(f"model.kind={kind} scores next items and has no binary head: task={self.task} "
                              f"needs a model with a binary output ({', '.join(BINARY_ONLY_KINDS)})")
        if self.model.kind not in ATTENTION_KINDS and self.model.attention != "reference":
            warnings.warn(f"model.attention={self.model.attention} is ignored: model.kind={self.model.kind} "
                          "has no attention", stacklevel=2)
        if self.model.attention == "cudnn" and self.model.kind in ATTENTION_KINDS:
            check_cudnn(self)
        if kind == "sasrec" and self.model.sasrec.attention_dropout == "weights" and self.model.attention != "reference":
            raise ConfigError(f"model.sasrec.attention_dropout=weights drops the attention weights, which only "
                              f"model.attention=reference holds (not {self.model.attention})")
        if self.model.kind in NO_CUDNN_KINDS and self.model.attention == "xla":
            raise ConfigError(f"model.attention=xla: model.kind={self.model.kind} uses "
                              f"{NO_CUDNN_KINDS[self.model.kind]}; use reference or blockwise")
        for name in ("epochs", "eval_every_epochs", "loss_chunk", "log_every_steps", "num_devices"):
            if getattr(self.train, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self.train, name)} must be >= 1")
        for name in ("checkpoint_every_steps", "max_steps", "patience"):
            if getattr(self.train, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self.train, name)} must be >= 0")
        if self.data.batch_size % self.train.num_devices:
            raise ConfigError(f"data.batch_size={self.data.batch_size} does not divide by "
                              f"train.num_devices={self.train.num_devices}")
        if self.data.eval_batch_size % self.train.num_devices:
            raise ConfigError(f"data.eval_batch_size={self.data.eval_batch_size} does not divide by "
                              f"train.num_devices={self.train.num_devices}")
        if self.data.pack and (kind != "sasrec" or self.model.attention != "reference" or self.task != "next_item"):
            raise ConfigError(f"data.pack=true needs task=next_item, model.kind=sasrec and model.attention=reference "
                              f"(segment-masked attention), not task={self.task}, model.kind={kind}, "
                              f"model.attention={self.model.attention}")
        if self.data.train_history != "recent" and self.task != "next_item":
            raise ConfigError(f"data.train_history={self.data.train_history} shapes next-item training examples; "
                              f"task={self.task} builds its own examples (set data.train_history=recent)")
        if self.data.buckets and max(self.data.buckets) != self.data.max_len:
            raise ConfigError(f"data.buckets must end at data.max_len={self.data.max_len}")
        if self.task in BINARY_TASKS:
            if self.train.metric not in BINARY_METRICS:
                raise ConfigError(f"train.metric={self.train.metric!r}: task={self.task} uses "
                                  f"{', '.join(BINARY_METRICS)}")
        elif self.train.metric not in {"MRR", *(f"{m}@{k}" for m in ("HR", "NDCG") for k in self.eval.ks)}:
            raise ConfigError(f"train.metric={self.train.metric!r}: use MRR, or HR@K or NDCG@K with K in "
                              f"eval.ks={list(self.eval.ks)}")


def check_cudnn(cfg: ExperimentConfig, backend: str | None = None, compute_capability: str | None = None) -> None:
    """Refuses at config load what cuDNN's fused attention cannot run, instead of failing inside jit.

    `backend` / `compute_capability` default to the first local device's (tests pass them explicitly).
    """
    kind = cfg.model.kind
    if kind in NO_CUDNN_KINDS:
        raise ConfigError(f"model.attention=cudnn: model.kind={kind} uses {NO_CUDNN_KINDS[kind]}, which cuDNN "
                          "has no kernel for; use reference or blockwise")
    if cfg.train.dtype != "bfloat16":
        raise ConfigError(f"model.attention=cudnn needs train.dtype=bfloat16 (cuDNN fused attention runs only "
                          f"in bf16/fp16), got {cfg.train.dtype}")
    section = getattr(cfg.model, kind)
    head_dim = section.dim // section.heads
    if backend is None:
        import jax  # only here: loading a config should not initialise a backend otherwise
        device = jax.devices()[0]
        backend, compute_capability = device.platform, getattr(device, "compute_capability", None)
    if backend != "gpu":
        raise ConfigError(f"model.attention=cudnn needs an NVIDIA GPU; this process runs on {backend}: use "
                          "blockwise or reference")
    hopper = str(compute_capability or "").startswith("9")
    limit = 256 if hopper else 128
    if head_dim % 8 or head_dim > limit:
        raise ConfigError(f"model.attention=cudnn: head dim model.{kind}.dim/heads = {section.dim}/{section.heads} "
                          f"= {head_dim} must be a multiple of 8 and at most {limit}"
                          f"{' on Hopper' if hopper else ' (256 on Hopper)'}")

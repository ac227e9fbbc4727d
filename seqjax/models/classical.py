"""Classical binary classifiers for purchase and churn prediction on the tabular task features.

Input: the tables `seqjax prepare --task` writes (DATA_DIR/task/{train,valid,test}.parquet): id columns
`user`, `item`, `cutoff`, `label` (0/1), then numeric feature columns, nullable (seqjax.data.features).
Every numeric column other than ID_COLUMNS is a feature; non-numeric ones are left out and listed in
`model.info["ignored_columns"]`. The feature list is fixed at fit time; a table to score must have
those columns (extra ones are ignored).

Kinds and preprocessing, every statistic fitted on the training table only:

* logreg, knn: signed log1p (sign(x) log(1 + |x|)) of the heavy-tailed columns, then missing values
  imputed with the training medians plus one 0/1 missingness indicator per column that had a missing
  value in training, then every column standardised with the training mean and standard deviation.
  Heavy-tailed = names matching LOG1P_PATTERN: event counts `n_*`, durations `secs_since_*` and
  `mean_session_seconds`, `mean_session_events`, `distinct_*`, `purchase_value_*` (and the `pair_`
  versions): non-negative values spanning orders of magnitude, where a few heavy users would
  otherwise dominate a dot product or a Euclidean distance.
* tree: median imputation + indicators only. Splits are invariant to monotone transforms and scale.
* gbdt: raw values; scikit-learn's HistGradientBoostingClassifier bins on training quantiles and
  learns a direction for NaN at every split.

gbdt early stopping: boosting runs on the training table while the log-loss on the *given validation
table* is recorded after every iteration (scikit-learn's `X_val`/`y_val`, not an internal random
split); it stops after `patience` iterations without improvement, and the model then predicts with
the prefix of iterations whose validation log-loss was lowest (staged selection; ties: fewest).

Artefact (`save` / `load`): one file, `MAGIC` line, a JSON header line (format version, kind,
config, feature columns, seed, Python/NumPy/scikit-learn versions, sha256 and size of the payload),
then the payload: a pickle of the `ClassicalModel` (sklearn estimator + NumPy preprocessing). `load`
checks the header and the payload's sha256 before unpickling, and refuses a file written under
another scikit-learn minor version. Why pickle: scikit-learn estimators have no stable format of
their own; ONNX (skl2onnx, not a dependency) computes in float32, so the round trip would not give
the fitted model's probabilities, and the NumPy preprocessing would need rewriting as ONNX ops; that
is worth it for serving outside Python, which these baselines do not need. skops.io (a restricted
loader) would be the safer choice for files from elsewhere; it is not installed either. The sha256
detects corruption and edits that did not rewrite the header; it is not a signature: pickle runs
code on load, so load only your own files, and pass `expected_sha256` (the digest `save` returned,
kept in the run's metadata) to refuse a replaced file.

KNN memory: the training matrix is stored once (N x D); predictions are made in blocks of query
rows so that no block's distances exceed KNN_BLOCK_BYTES, whatever scikit-learn does internally:
memory is O(N D + KNN_BLOCK_BYTES), never O(queries x N). Time is O(queries x N x D) (brute force).

Shapes: N rows, F feature columns, M missingness indicators, D = F + M model inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import platform
import re
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID_COLUMNS = ("user", "item", "cutoff", "label", "split")  # never features
LOG1P_PATTERN = re.compile(r"^(pair_)?(n_|secs_since_|distinct_|purchase_value_|mean_session_)")
KNN_BLOCK_BYTES = 1 << 28  # float64 distances held per KNN prediction block (query rows x training rows)
MAGIC = b"seqjax-classical\n"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LogRegConfig:
    C: float = 1.0  # inverse L2 strength on standardised inputs; larger = weaker (intercept not penalised)
    class_weight: Literal["none", "balanced"] = "none"  # balanced: class c weighs N / (2 N_c)
    max_iter: int = 1000  # L-BFGS iterations; scikit-learn warns (ConvergenceWarning) when they run out

    def validate(self) -> None:
        if not self.C > 0:
            raise ValueError(f"model.logreg.C: must be > 0, got {self.C}")
        if self.class_weight not in ("none", "balanced"):
            raise ValueError(f"model.logreg.class_weight: {self.class_weight!r} is not one of ['none', 'balanced']")
        if self.max_iter < 1:
            raise ValueError(f"model.logreg.max_iter: must be >= 1, got {self.max_iter}")


@dataclasses.dataclass(frozen=True)
class TreeConfig:
    max_depth: int = 8  # deepest split level; 0 = grow until leaves are pure or min_samples_leaf stops it
    min_samples_leaf: int = 50  # training rows a leaf must hold: leaf probabilities are means of >= this many

    def validate(self) -> None:
        if self.max_depth < 0:
            raise ValueError(f"model.tree.max_depth: must be >= 0 (0 = unlimited), got {self.max_depth}")
        if self.min_samples_leaf < 1:
            raise ValueError(f"model.tree.min_samples_leaf: must be >= 1, got {self.min_samples_leaf}")


@dataclasses.dataclass(frozen=True)
class KNNConfig:
    k: int = 50  # neighbours; the probability is their (weighted) share of positives
    weights: Literal["uniform", "distance"] = "uniform"  # distance: weight 1/d (exact matches take all)

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"model.knn.k: must be >= 1, got {self.k}")
        if self.weights not in ("uniform", "distance"):
            raise ValueError(f"model.knn.weights: {self.weights!r} is not one of ['uniform', 'distance']")


@dataclasses.dataclass(frozen=True)
class GBDTConfig:
    learning_rate: float = 0.1  # shrinkage of every tree
    max_iter: int = 500  # most boosting iterations (one tree each)
    max_leaf_nodes: int = 31  # leaves per tree
    min_samples_leaf: int = 20  # training rows a leaf must hold
    l2_regularization: float = 0.0  # L2 penalty on leaf values
    patience: int = 20  # stop after this many iterations without a better validation log-loss
    tol: float = 1e-7  # an improvement smaller than this does not count

    def validate(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"model.gbdt.learning_rate: must be > 0, got {self.learning_rate}")
        for name, low in (("max_iter", 1), ("max_leaf_nodes", 2), ("min_samples_leaf", 1), ("patience", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"model.gbdt.{name}: must be >= {low}, got {getattr(self, name)}")
        for name in ("l2_regularization", "tol"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.gbdt.{name}: must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ClassicalConfig:
    """One section per kind, as they sit under `model.` in an experiment config."""

    logreg: LogRegConfig = LogRegConfig()
    tree: TreeConfig = TreeConfig()
    knn: KNNConfig = KNNConfig()
    gbdt: GBDTConfig = GBDTConfig()

    def validate(self) -> None:
        for kind in KINDS:
            getattr(self, kind).validate()


KindConfig = LogRegConfig | TreeConfig | KNNConfig | GBDTConfig
CONFIGS: dict[str, type] = {"logreg": LogRegConfig, "tree": TreeConfig, "knn": KNNConfig, "gbdt": GBDTConfig}
KINDS = tuple(CONFIGS)
# kind -> (log1p heavy-tailed columns, impute + indicators, standardise)
RECIPES = {"logreg": (True, True, True), "knn": (True, True, True), "tree": (False, True, False),
           "gbdt": (False, False, False)}


# ---------------------------------------------------------------- tables -> matrices

def feature_columns(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """(numeric feature columns in table order, other non-id columns, which are not used)."""
    used, ignored = [], []
    for field in schema:
        if field.name in ID_COLUMNS:
            continue
        t = field.type
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        (used if numeric else ignored).append(field.name)
    return used, ignored


def feature_matrix(table: pa.Table, columns: list[str] | tuple[str, ...]) -> np.ndarray:
    """float64 [N, F] of `columns` in that order; nulls (and NaN) become NaN."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"table lacks feature column(s) {missing} that the model was trained on")
    out = np.empty((table.num_rows, len(columns)), np.float64)
    for j, name in enumerate(columns):
        col = pc.cast(table.column(name), pa.float64())
        out[:, j] = col.to_numpy(zero_copy_only=False)
    return out


def labels(table: pa.Table) -> np.ndarray:
    """int8 [N] of the `label` column, checked to be 0/1 without nulls."""
    if "label" not in table.column_names:
        raise ValueError("table has no 'label' column")
    col = table.column("label")
    if col.null_count:
        raise ValueError(f"'label' has {col.null_count} null(s)")
    y = col.to_numpy(zero_copy_only=False)
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"'label' must be 0/1, found {sorted(set(np.unique(y).tolist()) - {0, 1})[:5]}")
    return y.astype(np.int8)


@dataclasses.dataclass
class Preprocessor:
    """Feature matrix [N, F] -> model input [N, D]; every statistic from the training matrix."""

    columns: tuple[str, ...]  # [F] feature columns, in order
    log1p: np.ndarray  # bool [F]: signed log1p applied
    medians: np.ndarray | None  # float64 [F] fill values (after log1p); None = NaN left for the model
    indicators: np.ndarray  # int64 [M]: columns that get a 0/1 "was missing" input, appended in this order
    mean: np.ndarray | None  # float64 [D]; None = not standardised
    scale: np.ndarray | None  # float64 [D], > 0

    @classmethod
    def fit(cls, x: np.ndarray, columns, log1p: bool, impute: bool, standardise: bool) -> Preprocessor:
        columns = tuple(columns)
        heavy = np.array([bool(log1p and LOG1P_PATTERN.match(c)) for c in columns], bool)
        prep = cls(columns, heavy, None, np.zeros(0, np.int64), None, None)
        if impute:
            logged = prep._log1p(x)
            seen = ~np.isnan(logged)
            prep.medians = np.zeros(len(columns))
            for j in range(len(columns)):  # nanmedian warns on an all-NaN column; such a column is filled with 0
                if seen[:, j].any():
                    prep.medians[j] = np.median(logged[seen[:, j], j])
            prep.indicators = np.flatnonzero(~seen.all(axis=0))
        if standardise:
            z = prep._impute(prep._log1p(x))
            prep.mean, std = z.mean(axis=0), z.std(axis=0)
            prep.scale = np.where(std > 0, std, 1.0)
        return prep

    @property
    def width(self) -> int:
        """D, the columns `transform` returns: the features and one indicator per column with missing values."""
        return len(self.columns) + len(self.indicators)

    def _log1p(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[:, self.log1p] = np.sign(x[:, self.log1p]) * np.log1p(np.abs(x[:, self.log1p]))
        return out

    def _impute(self, x: np.ndarray) -> np.ndarray:
        if self.medians is None:
            return x
        gone = np.isnan(x)
        filled = np.where(gone, self.medians, x)
        return np.concatenate([filled, gone[:, self.indicators].astype(np.float64)], axis=1)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """x: float64 [N, F] in `columns` order -> float64 [N, D]."""
        if x.shape[1] != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} feature columns, got {x.shape[1]}")
        z = self._impute(self._log1p(x))
        return z if self.mean is None else (z - self.mean) / self.scale


# ---------------------------------------------------------------- fit / predict

@dataclasses.dataclass
class ClassicalModel:
    kind: str
    cfg: KindConfig
    seed: int
    prep: Preprocessor
    estimator: object  # the fitted scikit-learn classifier
    n_iter: int | None = None  # gbdt: boosting iterations used for prediction (best on validation)
    info: dict = dataclasses.field(default_factory=dict)  # JSON-ready facts about the fit

    @property
    def columns(self) -> tuple[str, ...]:
        return self.prep.columns


def kind_config(kind: str, cfg: ClassicalConfig | KindConfig) -> KindConfig:
    """The section of `kind`, validated (ValueError naming `model.<kind>.<field>`); TypeError for a per-kind
    config of another kind's class."""
    if kind not in CONFIGS:
        raise ValueError(f"model.kind: {kind!r} is not a classical kind (one of {list(KINDS)})")
    if isinstance(cfg, ClassicalConfig):
        cfg = getattr(cfg, kind)
    if not isinstance(cfg, CONFIGS[kind]):
        raise TypeError(f"model.{kind}: expected a {CONFIGS[kind].__name__}, got {type(cfg).__name__}")
    cfg.validate()
    return cfg


def _estimator(kind: str, cfg: KindConfig, seed: int):
    # scikit-learn is imported here, not at module level: every config load imports this module.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.tree import DecisionTreeClassifier
    if kind == "logreg":
        return LogisticRegression(C=cfg.C, class_weight=None if cfg.class_weight == "none" else "balanced",
                                  max_iter=cfg.max_iter, solver="lbfgs", random_state=seed)
    if kind == "tree":
        return DecisionTreeClassifier(max_depth=cfg.max_depth or None, min_samples_leaf=cfg.min_samples_leaf,
                                      random_state=seed)
    if kind == "knn":
        return KNeighborsClassifier(n_neighbors=cfg.k, weights=cfg.weights, algorithm="brute")
    return HistGradientBoostingClassifier(
        learning_rate=cfg.learning_rate, max_iter=cfg.max_iter, max_leaf_nodes=cfg.max_leaf_nodes,
        min_samples_leaf=cfg.min_samples_leaf, l2_regularization=cfg.l2_regularization, early_stopping=True,
        scoring="loss", n_iter_no_change=cfg.patience, tol=cfg.tol, random_state=seed)


def fit(kind: str, cfg: ClassicalConfig | KindConfig, train: pa.Table, valid: pa.Table | None,
        seed: int) -> ClassicalModel:
    """Fits `kind` on `train`; `valid` is read by gbdt only (early stopping) and may be None otherwise.

    Deterministic given the seed (tree: order of equally good splits; gbdt: its random state).
    """
    cfg = kind_config(kind, cfg)
    columns, ignored = feature_columns(train.schema)
    if not columns:
        raise ValueError("the training table has no numeric feature columns")
    x, y = feature_matrix(train, columns), labels(train)
    if len(np.unique(y)) < 2:
        raise ValueError(f"the training table has one class only (label {int(y[0]) if len(y) else None} "
                         f"in all {len(y)} rows); a classifier needs both")
    prep = Preprocessor.fit(x, columns, *RECIPES[kind])
    est = _estimator(kind, cfg, seed)
    info = {"train_rows": len(y), "train_positive_rate": float(y.mean()), "ignored_columns": ignored,
            "model_inputs": len(columns) + len(prep.indicators)}
    n_iter = None
    if kind == "gbdt":
        if valid is None:
            raise ValueError("model.gbdt: early stopping needs the validation table; got None")
        est.fit(prep.transform(x), y, X_val=prep.transform(feature_matrix(valid, columns)), y_val=labels(valid))
        curve = -np.asarray(est.validation_score_)  # [iterations run + 1] validation log-loss, from 0 trees
        n_iter = max(1, int(np.argmin(curve)))
        info.update(iterations_run=int(est.n_iter_), iterations_used=n_iter, valid_rows=valid.num_rows,
                    valid_log_loss=float(curve[n_iter]), valid_log_loss_curve=curve.tolist())
    else:
        est.fit(prep.transform(x), y)
    return ClassicalModel(kind, cfg, seed, prep, est, n_iter, info)


def predict_proba(model: ClassicalModel, table: pa.Table) -> np.ndarray:
    """float64 [N]: probability of label 1 for every row of `table`."""
    x = model.prep.transform(feature_matrix(table, model.columns))
    est = model.estimator
    if not len(x):
        return np.zeros(0, np.float64)
    if model.kind == "knn":
        block = max(1, KNN_BLOCK_BYTES // (8 * est.n_samples_fit_))
        return np.concatenate([est.predict_proba(x[i:i + block])[:, 1] for i in range(0, len(x), block)])
    if model.kind == "gbdt" and model.n_iter < est.n_iter_:
        for i, p in enumerate(est.staged_predict_proba(x), start=1):
            if i == model.n_iter:
                return p[:, 1].astype(np.float64)
    return est.predict_proba(x)[:, 1].astype(np.float64)


# ---------------------------------------------------------------- artefact

def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "numpy": np.__version__, "sklearn": version("scikit-learn"),
            "pyarrow": pa.__version__}


def save(model: ClassicalModel, path: str | Path) -> str:
    """Writes the artefact (see the module doc); returns the payload's sha256 (hex), to record in metadata."""
    payload = pickle.dumps(model, protocol=5)
    digest = hashlib.sha256(payload).hexdigest()
    header = {"format": MAGIC.decode().strip(), "format_version": FORMAT_VERSION, "kind": model.kind,
              "config": dataclasses.asdict(model.cfg), "seed": model.seed, "feature_columns": list(model.columns),
              "info": model.info, "versions": _versions(), "payload_sha256": digest, "payload_bytes": len(payload)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + json.dumps(header).encode() + b"\n" + payload)
    tmp.replace(path)
    return digest


def read_header(path: str | Path) -> dict:
    """The artefact's JSON header, without reading or unpickling the payload."""
    with open(path, "rb") as f:
        return _header(f, path)


def _header(f, path) -> dict:
    if f.readline() != MAGIC:
        raise ValueError(f"{path}: not a seqjax classical model (first line is not {MAGIC!r})")
    try:
        header = json.loads(f.readline())
    except ValueError:
        raise ValueError(f"{path}: damaged header line") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {header.get('format_version')}, this code reads {FORMAT_VERSION}")
    return header


def load(path: str | Path, expected_sha256: str | None = None,
         allow_version_mismatch: bool = False) -> ClassicalModel:
    """Reads an artefact written by `save`, refusing it (ValueError) before unpickling when the payload's
    size or sha256 differ from the header (or from `expected_sha256`), or when it was written under
    another scikit-learn major.minor version (unless `allow_version_mismatch`)."""
    with open(path, "rb") as f:
        header = _header(f, path)
        payload = f.read()
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) != header["payload_bytes"] or digest != header["payload_sha256"]:
        raise ValueError(f"{path}: payload sha256 {digest} ({len(payload)} bytes) does not match the header's "
                         f"{header['payload_sha256']} ({header['payload_bytes']} bytes): corrupt or altered")
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"{path}: payload sha256 {digest} is not the expected {expected_sha256}")
    saved = header["versions"]["sklearn"]
    if saved.split(".")[:2] != version("scikit-learn").split(".")[:2] and not allow_version_mismatch:
        raise ValueError(f"{path}: written with scikit-learn {saved}, this is {version('scikit-learn')}; pickled "
                         f"estimators are not portable across versions (allow_version_mismatch=True to try)")
    model = pickle.loads(payload)
    if not isinstance(model, ClassicalModel) or model.kind != header["kind"]:
        raise ValueError(f"{path}: payload is not the {header['kind']} model its header describes")
    return model

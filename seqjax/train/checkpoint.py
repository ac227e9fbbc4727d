"""Training checkpoints: an Orbax `CheckpointManager` plus a checksum manifest per step.

One step on disk::

    <directory>/<step>/state/...                 the state pytree (Orbax StandardSave)
    <directory>/<step>/meta/metadata             host-side metadata (Orbax JsonSave)
    <directory>/<step>/metrics/metrics           validation metrics (Orbax's own item; drives BestN)
    <directory>/<step>/seqjax_manifest.json      size and sha256 of every other file of the step

Orbax makes a step appear atomically: it writes `<step>.orbax-checkpoint-tmp`, and renames it to
`<step>` only once every item is written, so a save killed midway never shows up as a step (the
leftover tmp directory is removed when the next store opens the directory). The manifest is the
second line of defence, for damage after that commit: bit rot, files truncated by a power loss
before the page cache reached the disk, a partial copy between machines, or a kill between Orbax's
commit and the manifest. A step is *intact* when its manifest exists and every file it lists has
the recorded size and sha256; restore falls back past steps that are not, and says so.

The state is a pytree of arrays. A PRNG key cannot be stored as a typed key array: store
`jax.random.key_data(key)` (uint32) and rebuild it with `jax.random.wrap_key_data(data)`.

Requires orbax-checkpoint >= 0.12 (`checkpoint_managers.BestN(get_metric_fn=...,
keep_checkpoints_without_metrics=...)`; 0.11.13-0.11.x had an incompatible BestN, older none).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger(__name__)


def _warn(message: str) -> None:
    # Printed as well as logged: absl may leave the logging module without a handler, and a user
    # resuming after a crash must see that a checkpoint was skipped.
    log.warning(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)

MANIFEST_NAME = "seqjax_manifest.json"
_STATE = "state"
_META = "meta"
# Where Orbax keeps the metrics passed to `CheckpointManager.save`, relative to the step directory.
_ORBAX_METRICS_FILE = Path("metrics") / "metrics"


class CheckpointError(RuntimeError):
    """Checkpoints exist, but none of those asked for is intact (or the request is impossible)."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(step_dir: Path) -> None:
    """Record size and sha256 of every file under `step_dir` in `step_dir/MANIFEST_NAME`.

    Each file is fsynced as it is hashed, so the data is on disk before the manifest that vouches
    for it; the manifest itself is written to a temporary file and renamed into place.
    """
    files = {}
    for path in sorted(step_dir.rglob("*")):
        if not path.is_file() or path.name == MANIFEST_NAME or path.name.startswith(".seqjax"):
            continue
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        name = path.relative_to(step_dir).as_posix()
        files[name] = {"size": path.stat().st_size, "sha256": digest}
    text = json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=step_dir, prefix=".seqjax_manifest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, step_dir / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(step_dir)


def manifest_problem(step_dir: Path) -> str | None:
    """Why `step_dir` does not match its manifest, or None when it is intact.

    Sizes are checked for every file before any hashing, so a truncation is reported cheaply.
    Files not listed in the manifest are ignored.
    """
    try:
        files = json.loads((step_dir / MANIFEST_NAME).read_text())["files"]
        expected = {name: (int(e["size"]), str(e["sha256"])) for name, e in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST_NAME}: the save did not finish"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST_NAME} is unreadable ({type(e).__name__})"
    for name, (size, _) in sorted(expected.items()):
        try:
            actual = (step_dir / name).stat().st_size
        except FileNotFoundError:
            return f"{name}: missing"
        if actual != size:
            return f"{name}: {actual} bytes, manifest says {size} (truncated?)"
    for name, (_, digest) in sorted(expected.items()):
        if _sha256(step_dir / name) != digest:
            return f"{name}: sha256 mismatch"
    return None


def _set_aside_unreadable_metrics(directory: Path) -> None:
    """Rename steps whose Orbax metrics file is not JSON to `<step>.corrupt-<ns>`.

    `CheckpointManager.__init__` parses every step's metrics eagerly and only tolerates a missing
    file, so one damaged metrics file would stop the store from opening and block resuming from
    any other step. The renamed directory no longer looks like a step to Orbax but is kept.
    """
    if not directory.is_dir():
        return
    for step_dir in sorted(directory.iterdir()):
        metrics_file = step_dir / _ORBAX_METRICS_FILE
        if not (step_dir.name.isdigit() and metrics_file.is_file()):
            continue
        try:
            json.loads(metrics_file.read_text())
        except (ValueError, UnicodeDecodeError):
            target = step_dir.with_name(f"{step_dir.name}.corrupt-{time.time_ns()}")
            log.warning(
                "checkpoint step %s is corrupted (%s is not JSON); moved it aside to %s",
                step_dir.name, _ORBAX_METRICS_FILE.as_posix(), target.name,
            )
            step_dir.rename(target)


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class CheckpointStore:
    """Saves and restores `(state pytree, JSON metadata)` per training step, with verification.

    Retention keeps the newest `keep_latest` steps and the `keep_best` steps with the best
    `metrics[best_metric]`, and as many for each metric of `extra_best` ({metric: "max" | "min"}:
    e.g. one per head of a multi-task model, each restored by `restore(step="best", metric=...)`).
    A step saved without metrics is never kept for being best, only for being recent; one whose
    metrics lack the metric (or hold a NaN) ranks below every step that has it.
    `keep_latest >= 1`: resuming needs the newest step.

    Every method is to be called by all processes. Process 0 writes the manifest; each process
    verifies on its own (the directory must be shared storage visible to all of them).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        keep_latest: int = 2,
        keep_best: int = 1,
        best_metric: str = "NDCG@10",
        best_mode: Literal["max", "min"] = "max",
        extra_best: Mapping[str, Literal["max", "min"]] | None = None,
    ):
        if keep_latest < 1:
            raise ValueError(f"keep_latest must be >= 1 to resume, got {keep_latest}")
        if keep_best < 0:
            raise ValueError(f"keep_best must be >= 0, got {keep_best}")
        self.modes = {best_metric: best_mode, **(extra_best or {})}
        for name, mode in self.modes.items():
            if mode not in ("max", "min"):
                raise ValueError(f"the mode of {name!r} must be 'max' or 'min', got {mode!r}")
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        if jax.process_index() == 0:
            _set_aside_unreadable_metrics(self.directory)
        _sync_processes("seqjax_checkpoint_open")
        # BestN alone would delete the newest step whenever it is not among the best, and resume
        # would then go back to an old step; LatestN keeps it. BestN skips steps without metrics.
        policy = checkpoint_managers.AnyPreservationPolicy(
            policies=[checkpoint_managers.LatestN(n=keep_latest)] + [
                checkpoint_managers.BestN(
                    get_metric_fn=functools.partial(self._rank_value, metric=name),
                    reverse=mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
                for name, mode in self.modes.items()
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn is what makes Orbax write each step's metrics, so BestN still knows them
            # after a restart; retention itself is entirely `preservation_policy`.
            best_fn=self._rank_value,
            best_mode=best_mode,
            # Synchronous: when save() returns, nothing of this step is still being written.
            enable_async_checkpointing=False,
            # Orbax's default leaves `<step>.orbax-checkpoint-tmp` of killed saves on disk forever.
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(_STATE, _META)
        )

    def _rank_value(self, metrics: Any, metric: str | None = None) -> float:
        """The value BestN sorts by: the metric (default `best_metric`), or the worst possible value
        when it is absent."""
        metric = metric or self.best_metric
        worst = -math.inf if self.modes[metric] == "max" else math.inf
        try:
            value = float(metrics[metric])
        except (TypeError, KeyError, ValueError):
            return worst
        return value if math.isfinite(value) else worst

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        """Retained steps, oldest first (intact or not)."""
        return sorted(self._manager.all_steps())

    def metrics_of(self, step: int) -> dict[str, float] | None:
        """The metrics saved with `step`, or None if it was saved without."""
        metrics = self._manager.metrics(step)
        return None if metrics is None else dict(metrics)

    def _best_first(self, metric: str | None = None) -> list[int]:
        """Steps that have a finite `metric` (default `best_metric`), best first; later steps win ties."""
        metric = metric or self.best_metric
        if metric not in self.modes:
            raise ValueError(f"{metric!r} is not a metric this store keeps best steps of: {list(self.modes)}")
        ranked = []
        for step in self.all_steps():
            value = self._rank_value(self.metrics_of(step), metric)
            if math.isfinite(value):
                ranked.append((value if self.modes[metric] == "max" else -value, step))
        return [step for _, step in sorted(ranked, reverse=True)]

    def _first_intact(self, candidates: list[int]) -> tuple[int | None, list[tuple[int, str]]]:
        """The first intact step among `candidates`, and `(step, reason)` for those skipped."""
        skipped = []
        for step in candidates:
            problem = manifest_problem(self._step_dir(step))
            if problem is None:
                for bad, reason in skipped:
                    _warn(f"checkpoint step {bad} is corrupted ({reason}); falling back to step {step}")
                return step, skipped
            skipped.append((step, problem))
        for bad, reason in skipped:
            _warn(f"checkpoint step {bad} is corrupted ({reason}); no intact step to fall back to")
        return None, skipped

    def latest_intact_step(self) -> int | None:
        """The newest step that passes verification, or None."""
        return self._first_intact(self.all_steps()[::-1])[0]

    def best_step(self, metric: str | None = None) -> int | None:
        """The retained, intact step with the best `metric` (default `best_metric`), or None."""
        return self._first_intact(self._best_first(metric))[0]

    def save(
        self,
        step: int,
        state: Any,
        meta: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Write `state` (pytree of arrays) and `meta` (JSON-able) as `step`; returns when durable.

        An existing step that is not intact is replaced (a run that fell back past it and reaches
        the same step again); an intact one is an error.
        """
        step = int(step)
        if step in self.all_steps():
            problem = manifest_problem(self._step_dir(step))
            if problem is None:
                raise CheckpointError(f"checkpoint step {step} already exists in {self.directory}")
            log.warning("replacing checkpoint step %d, which is corrupted (%s)", step, problem)
            self._manager.delete(step)
        if metrics is not None:
            metrics = {name: float(value) for name, value in metrics.items()}
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(dict(meta))}
        )
        self._manager.save(step, args=args, metrics=metrics, force=True)
        self._manager.wait_until_finished()
        # The manifest must describe the committed step, so it is written only after Orbax's rename.
        if jax.process_index() == 0:
            write_manifest(self._step_dir(step))
        _sync_processes(f"seqjax_checkpoint_manifest_{step}")

    def restore(
        self,
        abstract_state: Any = None,
        step: int | Literal["latest", "best"] | None = "latest",
        metric: str | None = None,
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """Load `(step, state, meta)`; None when the directory holds no checkpoint at all.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with shardings to place the
        arrays); None restores as saved. `step` is "latest" (or None), "best" (by `metric`, default
        `best_metric`), or a step number.
        "latest" and "best" fall back past steps that fail verification, logging each one; a step
        number does not. Raises CheckpointError when no requested step is intact.
        """
        steps = self.all_steps()
        if not steps:
            return None
        if step is None or step == "latest":
            candidates = steps[::-1]
        elif step == "best":
            candidates = self._best_first(metric)
            if not candidates:
                raise CheckpointError(
                    f"no checkpoint in {self.directory} has metric {metric or self.best_metric!r}"
                )
        elif isinstance(step, int) and not isinstance(step, bool):
            if step not in steps:
                raise CheckpointError(
                    f"no checkpoint step {step} in {self.directory}; retained: {steps}"
                )
            candidates = [step]
        else:
            raise ValueError(f"step must be 'latest', 'best', None or an int, got {step!r}")
        chosen, skipped = self._first_intact(candidates)
        if chosen is None:
            reasons = "; ".join(f"step {s}: {r}" for s, r in skipped)
            raise CheckpointError(f"no intact checkpoint in {self.directory} ({reasons})")
        restored = self._manager.restore(
            chosen,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract_state), _META: ocp.args.JsonRestore()}
            ),
        )
        return chosen, restored[_STATE], dict(restored[_META])

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""What a run directory holds besides checkpoints: the resolved config and the data it was trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from seqjax import config as config_lib
from seqjax.data.schema import SCHEMA_VERSION
from seqjax.train.config import ExperimentConfig

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"


class RunDirError(ValueError):
    """A run directory that does not match the config or data it is used with."""


def load_metadata(data_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(data_dir) / "metadata.json"
    if not str(data_dir):
        raise RunDirError("data.path is not set: pass --set data.path=DIR (a `seqjax prepare` output)")
    if not path.is_file():
        raise RunDirError(f"{path} not found: data.path must point at a `seqjax prepare` output")
    meta = json.loads(path.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise RunDirError(f"{path}: schema version {meta.get('schema_version')}, this seqjax reads {SCHEMA_VERSION}; "
                          "prepare the data again")
    return meta


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def bind(workdir: Path, cfg: ExperimentConfig, metadata: dict[str, Any], allow_config_change: bool) -> None:
    """Records config and data identity in a new run dir, or checks them against an existing one."""
    workdir.mkdir(parents=True, exist_ok=True)
    resolved = config_lib.to_dict(cfg)
    cfg_path = workdir / CONFIG_FILE
    if cfg_path.exists():
        saved = yaml.safe_load(cfg_path.read_text()) or {}
        try:  # fill keys a newer seqjax added with their defaults, so they do not count as changes
            saved = config_lib.to_dict(config_lib.from_dict(ExperimentConfig, saved))
        except config_lib.ConfigError:
            pass  # a key this version no longer knows: the raw diff below names it
        changed = config_lib.diff(saved, resolved)
        if changed and not allow_config_change:
            raise RunDirError(f"{workdir} was started with a different config (changed: {', '.join(changed)}); "
                              "use a new --workdir, or pass --allow-config-change to resume anyway")
    check_data(workdir, metadata)
    write_atomic(cfg_path, yaml.safe_dump(resolved, sort_keys=False))
    write_atomic(workdir / DATA_FILE, json.dumps(
        {"path": str(Path(cfg.data.path).resolve()), "checksum": metadata["checksum"],
         "schema_version": metadata["schema_version"]}, indent=1))


def check_data(workdir: Path, metadata: dict[str, Any]) -> None:
    """Refuses data whose checksum or schema version differs from what the run was trained on."""
    path = workdir / DATA_FILE
    if not path.exists():
        return
    trained = json.loads(path.read_text())
    for key in ("checksum", "schema_version"):
        if trained[key] != metadata[key]:
            raise RunDirError(f"data {key} {metadata[key]!r} differs from {trained[key]!r} that {workdir} was "
                              "trained on: evaluate on the data the run was trained with")


def load_run_config(workdir: Path) -> ExperimentConfig:
    path = workdir / CONFIG_FILE
    if not path.exists():
        raise RunDirError(f"{workdir} has no {CONFIG_FILE}: not a `seqjax train` run directory")
    return config_lib.from_dict(ExperimentConfig, yaml.safe_load(path.read_text()))


def check_task(metadata: dict[str, Any], task: str, data_path: str | os.PathLike) -> dict[str, Any]:
    """metadata["task"] when the data was prepared for `task`; RunDirError naming both tasks otherwise."""
    section = metadata.get("task")
    if section is None:
        raise RunDirError(f"task={task}: {data_path} has no task section (prepared without --task); prepare it "
                          f"with `seqjax prepare ... --task {task}`")
    prepared = section["config"]["task"]
    if prepared != task:
        raise RunDirError(f"task={task}, but {data_path} was prepared for task={prepared}")
    return section


def filter_seen(cfg: ExperimentConfig, metadata: dict[str, Any]) -> bool:
    """eval.filter_seen: `auto` filters history items when training has no repeated (user, item) pair."""
    if cfg.eval.filter_seen == "auto":
        return not metadata.get("train_has_repeats", True)
    return cfg.eval.filter_seen == "true"

"""`base:` in a config file: a variant names only what it changes; errors name the file."""

import pytest

from seqjax import config as config_lib
from seqjax.train.config import ExperimentConfig


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_variant_overrides_its_base_key_by_key_and_overrides_come_last(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  kind: sasrec\n  sasrec:\n    dim: 32\n    heads: 2\noptim:\n  lr: 0.01\n")
    variant = write(tmp_path / "sub" / "wide.yaml", "base: ../base.yaml\nmodel:\n  sasrec:\n    dim: 96\n")
    cfg = config_lib.load(ExperimentConfig, variant, ["optim.lr=0.003"])
    assert (cfg.model.sasrec.dim, cfg.model.sasrec.heads, cfg.optim.lr) == (96, 2, 0.003)
    assert config_lib.read_yaml(variant) == {"model": {"kind": "sasrec", "sasrec": {"dim": 96, "heads": 2}},
                                             "optim": {"lr": 0.01}}


def test_bases_chain(tmp_path):
    write(tmp_path / "a.yaml", "optim:\n  lr: 0.01\n  b2: 0.9\n")
    write(tmp_path / "b.yaml", "base: a.yaml\noptim:\n  lr: 0.02\n")
    c = write(tmp_path / "c.yaml", "base: b.yaml\noptim:\n  b2: 0.95\n")
    cfg = config_lib.load(ExperimentConfig, c)
    assert (cfg.optim.lr, cfg.optim.b2) == (0.02, 0.95)


def test_a_missing_base_names_both_files(tmp_path):
    variant = write(tmp_path / "v.yaml", "base: nowhere.yaml\n")
    with pytest.raises(config_lib.ConfigError, match=r"nowhere\.yaml \(base: of .*v\.yaml\)"):
        config_lib.load(ExperimentConfig, variant)


def test_a_base_cycle_is_refused_with_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    b = write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(config_lib.ConfigError, match=r"include each other: .*b\.yaml -> .*a\.yaml -> .*b\.yaml"):
        config_lib.load(ExperimentConfig, b)


@pytest.mark.parametrize("text, message", [("base: 3\n", "base: expected the path"),
                                           ("model: [1,\n", "not valid YAML"),
                                           ("- 1\n", "top level must be a mapping")])
def test_bad_files_name_the_file(tmp_path, text, message):
    bad = write(tmp_path / "bad.yaml", text)
    with pytest.raises(config_lib.ConfigError, match=message) as e:
        config_lib.load(ExperimentConfig, bad)
    assert "bad.yaml" in str(e.value)

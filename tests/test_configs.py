"""Every YAML under configs/ loads and resolves; the ablation files change exactly their documented field.

Only configurations are built here (`model_config`), never the Swin-B model, so the tests take a second.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from provg.data import DATASETS
from provg.engine import load_config
from provg.engine.config import TrainConfig
from provg.losses import LossConfig
from provg.models import model_config
from provg.models.config import ProVGConfig
from provg.models.pcm import normalize_pcm_mode

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ABLATIONS = CONFIGS / "ablations"
PAPER = CONFIGS / "provg_swin_b_rrsisd.yaml"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
ABLATION_YAML = sorted(ABLATIONS.glob("*.yaml"))

# Benchmarks the data package has or will have (some loaders are still being written).
KNOWN_DATASETS = {"synthrs", "rrsisd", "risbench", "refsegrs", "dior_rsvg", "rsvg_hr"} | set(DATASETS)

# Each ablation file's documented change from the paper setting (configs/ablations/README.md), in
# resolved form: "model.<ProVGConfig field>", "loss.<LossConfig field>" or a TrainConfig field.
EXPECTED_CHANGES: dict[str, dict[str, Any]] = {
    "table1_pcm_global": {"model.pcm_mode": normalize_pcm_mode("global")},
    "table1_pcm_parallel": {"model.pcm_mode": "parallel"},
    "table1_pcm_sequential": {"model.pcm_mode": normalize_pcm_mode("sequential")},
    "table1_pcm_svl": {"model.pcm_mode": "SVL"},
    "table1_pcm_lvs": {"model.pcm_mode": "LVS"},
    "table1_pcm_vls": {"model.pcm_mode": "VLS"},
    "table4_no_pcm": {"model.pcm_mode": "none"},
    "table4_no_cfm": {"model.cfm": False},
    "table4_no_lcm": {"model.lcm": False},
    "table4_no_fa": {"model.fa": False},
    "table5_lambda_mask_0.3": {"loss.lambda_mask": 0.3},
    "table5_lambda_mask_0.7": {"loss.lambda_mask": 0.7},
    "table5_lambda_cons_0": {"loss.lambda_cons": 0.0},
    "table5_lambda_cons_0.2": {"loss.lambda_cons": 0.2},
}

# Bookkeeping that every run sets for itself, not part of the experiment.
BOOKKEEPING = {"out_dir"}


def _name(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def resolved(path: Path) -> dict[str, Any]:
    """The effective setting of a config file: architecture, loss and schedule, flattened."""
    cfg = load_config(path)
    flat: dict[str, Any] = {
        f"model.{k}": v for k, v in model_config(cfg.model, **cfg.model_overrides).to_dict().items()
    }
    flat.update({f"loss.{k}": v for k, v in dataclasses.asdict(cfg.loss_config()).items()})
    for f in dataclasses.fields(TrainConfig):
        if f.name not in {"model_overrides", "loss", *BOOKKEEPING}:
            flat[f.name] = getattr(cfg, f.name)
    return flat


def changes(path: Path, reference: Path = PAPER) -> dict[str, Any]:
    base, other = resolved(reference), resolved(path)
    return {key: other[key] for key in other if other[key] != base[key]}


def test_configs_are_found():
    assert PAPER in ALL_YAML and CONFIGS / "provg_swin_b_risbench.yaml" in ALL_YAML
    assert len(ABLATION_YAML) >= len(EXPECTED_CHANGES)


@pytest.mark.parametrize("path", ALL_YAML, ids=_name)
def test_config_loads_and_resolves(path):
    cfg = load_config(path)
    assert isinstance(model_config(cfg.model, **cfg.model_overrides), ProVGConfig)
    assert isinstance(cfg.loss_config(), LossConfig)
    assert cfg.dataset in KNOWN_DATASETS
    assert all(m < cfg.epochs for m in cfg.milestones)


@pytest.mark.parametrize("path", ALL_YAML, ids=_name)
def test_config_starts_with_a_comment(path):
    assert path.read_text().startswith("#"), f"{_name(path)} should say what it is in a leading comment"


def test_paper_setting_per_benchmark():
    """RISBench uses the RRSIS-D hyper-parameters (the paper gives one setting): only the data differ."""
    risbench = CONFIGS / "provg_swin_b_risbench.yaml"
    assert changes(risbench) == {"dataset": "risbench", "data_root": "data/risbench"}
    paper = load_config(PAPER)
    assert (paper.model, paper.epochs, paper.milestones, paper.lr, paper.weight_decay) == (
        "provg_swin_b",
        70,
        [50, 60],
        3e-5,
        0.01,
    )
    assert dataclasses.asdict(paper.loss_config())["lambda_mask"] == 0.5
    assert model_config(paper.model, **paper.model_overrides).pcm_mode == "SLV"


def test_table1_global_row():
    cfg = load_config(ABLATIONS / "table1_pcm_global.yaml")
    config = model_config(cfg.model, **cfg.model_overrides)
    assert config.pcm_mode == normalize_pcm_mode("global") == "S"
    assert "Table 1" in (ABLATIONS / "table1_pcm_global.yaml").read_text().splitlines()[0]


def test_every_ablation_file_is_documented():
    stems = {p.name.removesuffix(".yaml") for p in ABLATION_YAML}
    assert stems == set(EXPECTED_CHANGES), "add new ablation files to EXPECTED_CHANGES and the README"
    readme = (ABLATIONS / "README.md").read_text()
    for stem in stems:
        assert f"`{stem}.yaml`" in readme


@pytest.mark.parametrize("stem", sorted(EXPECTED_CHANGES))
def test_ablation_changes_exactly_its_field(stem):
    path = ABLATIONS / f"{stem}.yaml"
    assert changes(path) == pytest.approx(EXPECTED_CHANGES[stem])
    table = stem.split("_")[0].removeprefix("table")
    assert path.read_text().startswith(f"# Table {table}")


@pytest.mark.parametrize("table", ["table1", "table4", "table5"])
def test_ablations_of_a_table_differ_from_each_other_and_the_paper(table):
    paths = sorted(ABLATIONS.glob(f"{table}_*.yaml"))
    assert len(paths) >= 2
    settings = [resolved(p) for p in [PAPER, *paths]]
    for i, a in enumerate(settings):
        for b in settings[i + 1 :]:
            assert a != b
    assert all(len(changes(p)) == 1 for p in paths), "each row changes exactly one field"

"""The installed form: parsers/ installs as provg.parsers and configs/ as provg.configs, never as
top-level packages, and provg imports without its compiled extension."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PROVG_NO_EXTENSION="1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        env=env,
        cwd=target,
    )
    return target


def _run(site: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` seeing the installed copy and the dependencies, but not this checkout.

    ``-S`` skips the .pth files of site-packages, among them the editable install's finder, which would
    otherwise resolve the installed copy's missing modules (``provg._C``) from the source tree.
    """
    dependencies = sysconfig.get_paths()["purelib"]
    prelude = f"import sys; sys.path[:0] = [{str(site)!r}]; sys.path.append({dependencies!r})\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + code], env=env, cwd=site.parent, capture_output=True, text=True
    )


@pytest.mark.slow
def test_installed_layout_has_no_generic_top_level_packages(installed):
    assert (installed / "provg" / "parsers" / "__init__.py").is_file()
    assert (installed / "provg" / "configs" / "synthrs_tiny.yaml").is_file()
    assert (installed / "provg" / "configs" / "ablations" / "table4_no_cfm.yaml").is_file()
    assert (installed / "provg" / "ops" / "triton" / "survey_gate.py").is_file()
    assert not (installed / "parsers").exists()
    assert not (installed / "configs").exists()
    result = _run(installed, "import parsers")
    assert result.returncode != 0 and "No module named 'parsers'" in result.stderr


@pytest.mark.slow
def test_installed_parsers_import_and_parse(installed):
    code = (
        "import sys, provg.parsers as p\n"
        f"assert p.__file__.startswith({str(installed)!r}), p.__file__\n"
        "d = p.get_parser('naive').parse('the red ship on the left')\n"
        "assert [c.text for c in d.spatial] == ['on the left']\n"
        "assert 'torch' not in sys.modules\n"
        "import provg.configs\n"
        "print(provg.configs.path('synthrs_tiny'))\n"
        "assert provg.configs.path('ablations/table1_pcm_global').is_file()\n"
    )
    result = _run(installed, code)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_installed_package_runs_without_extension(installed):
    code = (
        "import torch, provg.ops as ops\n"
        "assert ops.available_backends()['cpp'] is False\n"
        "m = torch.zeros(1, 4, 5, dtype=torch.bool); m[0, 1, 2] = True\n"
        "boxes, valid = ops.mask_to_box(m)\n"
        "assert boxes.tolist() == [[2.0, 1.0, 3.0, 2.0]] and valid.tolist() == [True]\n"
        "try:\n"
        "    ops.mask_to_box(m, backend='cpp')\n"
        "except RuntimeError as e:\n"
        "    assert 'not built' in str(e)\n"
        "else:\n"
        "    raise SystemExit('forcing cpp without the extension must raise')\n"
    )
    result = _run(installed, code)
    assert result.returncode == 0, result.stderr
    assert "falling back to the torch reference" in result.stderr

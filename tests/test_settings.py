"""`fit --set KEY=VALUE`: typed parsing of method settings, clear errors, and resume consistency."""

import json

import pytest

from zerolevel.cli import main
from zerolevel.data import example_mesh_path
from zerolevel.errors import InputError
from zerolevel.geometry.mesh import load_mesh
from zerolevel.pipeline import render_scene
from zerolevel.recon.sdfdiff import SDFDiffConfig
from zerolevel.settings import apply_overrides, parse_assignments
from zerolevel.recon.tetsdf import TetSDFConfig


def test_values_are_parsed_by_the_declared_type():
    config = apply_overrides(SDFDiffConfig(), parse_assignments(
        ["resolutions=16, 32,64", "lr=0.05", "redistance=no", "schedule=greedy", "rays_per_iter=100"]))
    assert config.resolutions == (16, 32, 64) and config.lr == 0.05 and config.redistance is False
    assert config.schedule == "greedy" and config.rays_per_iter == 100 and isinstance(config.rays_per_iter, int)
    assert SDFDiffConfig().resolutions != config.resolutions  # a copy; the default is untouched
    tet = apply_overrides(TetSDFConfig(), {"eikonal_cells": "none", "level_shares": "1,1,2"})
    assert tet.eikonal_cells is None and tet.level_shares == (1.0, 1.0, 2.0)
    assert apply_overrides(TetSDFConfig(), {"eikonal_cells": "2"}).eikonal_cells == 2.0


@pytest.mark.parametrize("pairs, message", [
    (["lr"], "KEY=VALUE"),
    (["=3"], "KEY=VALUE"),
    (["learning_rate=0.1"], "no such setting"),
    (["lr=fast"], "expected a number"),
    (["rays_per_iter=1.5"], "expected an integer"),
    (["redistance=maybe"], "expected true or false"),
    (["resolutions=,"], "comma-separated"),
])
def test_bad_assignments_raise_one_clear_error(pairs, message):
    with pytest.raises(InputError, match=message):
        apply_overrides(SDFDiffConfig(), parse_assignments(pairs))


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("settings") / "scene"
    render_scene(load_mesh(example_mesh_path()), views=6, resolution=48, progress=False).write(path)
    return path


def _fit(scene_dir, out, *extra):
    return main(["fit", str(scene_dir), "-o", str(out), "--method", "sdfdiff", "--iters", "4",
                 "--resolution", "32", "-q", "--threads", "1", "--set", "rays_per_iter=256", *extra])


def test_cli_fit_uses_the_settings_and_resume_refuses_others(scene_dir, tmp_path, capsys):
    out = tmp_path / "fit"
    assert _fit(scene_dir, out, "--set", "resolutions=12,16") == 0, capsys.readouterr().err
    page = (out / "report.html").read_text()
    assert "12, 16" in page or "(12, 16)" in page or "[12, 16]" in page  # the report lists the settings
    assert json.loads((out / "summary.json").read_text())["iterations"] == 4
    capsys.readouterr()
    assert _fit(scene_dir, out, "--resume", "--set", "resolutions=12,24") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resolutions=12,16" in err and "checkpoint" in err
    assert _fit(scene_dir, out, "--resume", "--set", "resolutions=12,16") == 0


@pytest.mark.parametrize("pair, message", [("bogus=1", "no such setting"),
                                           ("resolutions=16,8", "resolutions")])
def test_cli_bad_setting_exits_2_with_one_line(scene_dir, tmp_path, capsys, pair, message):
    code = main(["fit", str(scene_dir), "-o", str(tmp_path / "fit"), "--method", "tetsdf", "--iters", "2",
                 "-q", "--set", pair])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "fit" / "mesh.ply").exists()

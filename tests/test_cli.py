"""The `nnunet-scribble` command line: version, trainer listing and name check, nnU-Net-style option
spellings, help texts, and the declared dependencies."""
from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from nnunet_scribble.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _parse(*argv):
    args = vars(build_parser().parse_args(list(argv)))
    args.pop("func")
    return args


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.strip() == f"nnunet-scribble {version('nnunet-scribble')} (nnunetv2 {version('nnunetv2')})"


def test_trainers_lists_each_base_trainer_once_with_its_variants(capsys):
    from nnunet_scribble.trainers import plugin_trainers

    assert main(["trainers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = set()
    base = None
    for line in lines:
        if match := re.match(r"(nnUNetTrainer\w*)\s", line + " "):
            base = match[1]
            assert base not in names, f"{base} listed twice"
            names.add(base)
        elif match := re.fullmatch(r"\s+variants: (.*)", line):
            names.update(base + suffix for suffix in match[1].split())
    listed_bases = {m[1] for line in lines if (m := re.match(r"(nnUNetTrainer\w*)\s", line + " "))}
    # every re-exported trainer is reachable from the listing, and nothing else is invented
    assert names - {"nnUNetTrainer"} == set(plugin_trainers())
    assert {"nnUNetTrainerPCE", "nnUNetTrainerMaCo", "nnUNetTrainerSAMSP", "nnUNetTrainer"} <= listed_bases
    assert "nnUNetTrainerPCE_5epochs" not in listed_bases  # variants are grouped, not one line each
    assert len(lines) < 4 * len(listed_bases)
    pce = lines.index(next(line for line in lines if line.startswith("nnUNetTrainerPCE ")))
    assert "_5epochs" in lines[pce + 1].split() and "_3000it" in lines[pce + 1].split()


def test_unknown_trainer_gets_did_you_mean_before_anything_runs(tmp_path, capsys, monkeypatch):
    import nnunet_scribble.demo.run as demo_run

    def must_not_run(*args, **kwargs):
        raise AssertionError("the demo started although the trainer name is wrong")

    monkeypatch.setattr(demo_run, "run_demo", must_not_run)
    out = tmp_path / "demo"
    assert main(["demo", "-tr", "nnUNetTrainerPce_5epochs", "--output", str(out), "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown trainer 'nnUNetTrainerPce_5epochs'" in err
    assert "did you mean nnUNetTrainerPCE_5epochs?" in err and "nnunet-scribble trainers" in err
    assert not out.exists()


def test_trainer_check_accepts_plugin_and_stock_names_and_rejects_nonsense():
    from nnunet_scribble.errors import UserFacingError
    from nnunet_scribble.trainers import check_trainer_name

    for name in ("nnUNetTrainerPCE_5epochs", "nnUNetTrainer_3000it", "nnUNetTrainerNoMirroring", "nnUNetTrainer"):
        check_trainer_name(name)
    with pytest.raises(UserFacingError, match="did you mean nnUNetTrainerMaCo"):
        check_trainer_name("nnUNetTrainerMACO")
    assert "did you mean" not in str(check_error("completelyWrong"))
    suggested = re.search(r"did you mean (.*)\?", str(check_error("nnUNetTrainerSAMSP_1epochs")))[1]
    assert "nnUNetTrainerSAMSP_1epoch" in suggested.split(" or ")


def check_error(name):
    from nnunet_scribble.errors import UserFacingError
    from nnunet_scribble.trainers import check_trainer_name

    with pytest.raises(UserFacingError) as e:
        check_trainer_name(name)
    return e.value


def test_nnunet_option_spellings_parse_like_the_long_forms():
    assert (_parse("demo", "-tr", "nnUNetTrainerMaCo", "-f", "all", "-device", "cpu")
            == _parse("demo", "--trainer", "nnUNetTrainerMaCo", "--fold", "all", "--device", "cpu"))
    assert (_parse("sam-pseudolabels", "-d", "27", "-f", "0", "-device", "cpu")
            == _parse("sam-pseudolabels", "--dataset", "27", "--fold", "0", "--device", "cpu"))
    assert _parse("sam-pseudolabels", "-d27", "-f", "0")["dataset"] == "27"  # -device does not swallow -d
    chill = _parse("evaluate", "-pred", "p", "-gt", "g", "--chill")
    assert chill == _parse("evaluate", "-pred", "p", "-gt", "g", "--allow-missing-predictions")
    assert chill["allow_missing_predictions"] is True


def _parsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_has_help_and_shows_its_default():
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            where = f"{' '.join(path)} {action.option_strings[0]}"
            assert action.help, f"{where} has no help text"
            if action.default not in (None, "", []) and not isinstance(action.default, bool):
                assert "default" in parser._get_formatter()._get_help_string(action).lower(), where
    helps = {p: parser.format_help() for p, parser in _parsers(build_parser())}
    assert "parallel worker processes (default: 2)" in re.sub(r"\s+", " ", helps[("evaluate",)])
    assert "random seed" not in helps[("demo",)] and "synthetic images and scribbles (default: 0)" in re.sub(
        r"\s+", " ", helps[("demo",)])
    folder = re.sub(r"\s+", " ", helps[("convert", "folder")])
    examples = [re.search(rf"--{kind}-suffix \S+ {kind} file name ending before the extension \(e\.g\. (\S+)\)",
                          folder)[1] for kind in ("image", "scribble", "dense")]
    assert len(set(examples)) == 3, examples


def test_conversion_script_help_shows_its_dataset_id_as_set(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["Dataset027_ACDCScribble.py", "-h"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "dataset_conversion" / "Dataset027_ACDCScribble.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    usage = re.sub(r"\s+", " ", out.split("\n\n")[0])
    assert usage.startswith("usage: Dataset027_ACDCScribble.py ")
    assert "[-d DATASET_ID]" in usage and " -i INPUT" in usage
    assert "default: 27, set by this script" in re.sub(r"\s+", " ", out)


def test_wsl4mis_without_h5py_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "h5").mkdir()
    (tmp_path / "h5" / "patient001_frame01.h5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py -> ImportError
    assert main(["convert", "wsl4mis", "-i", str(tmp_path / "h5"), "-d", "28",
                 "--nnunet-raw", str(tmp_path / "raw")]) == 2
    assert 'pip install "nnunet-scribble[wsl4mis]"' in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()


def _canonical(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def test_every_imported_distribution_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_canonical(r) for r in project["dependencies"]}
    extras = {name: {_canonical(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    declared = core.union(*extras.values())
    providers = packages_distributions()
    imported = {}
    for path in (ROOT / "nnunet_scribble").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "nnunet_scribble":
                    imported.setdefault(top, path.relative_to(ROOT))
    missing = {top: str(where) for top, where in imported.items()
               if not {_canonical(d) for d in providers.get(top, [top])} & declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    # segment-anything imports torchvision without declaring it
    assert "torchvision" in core
    # `pip install -e ".[test]"` (the README's command) installs every optional part the tests use
    assert set().union(*(reqs for name, reqs in extras.items() if name != "test")) <= extras["test"]


def test_shipped_text_cites_no_file_outside_the_repository():
    shipped = [ROOT / "README.md", ROOT / "pyproject.toml", *(ROOT / "docs").rglob("*.md"),
               *(ROOT / "nnunet_scribble").rglob("*.py"), *(ROOT / "dataset_conversion").glob("*.py")]
    benchmarks = [*(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.md")]
    found = [f"{p.relative_to(ROOT)}: {word}" for p in shipped + benchmarks for word in ("DESIGN.md", "DESIGN:")
             if word in p.read_text()]
    # the benchmarks' default data folder is a path outside the clone, so only shipped text is checked here
    found += [f"{p.relative_to(ROOT)}: ../shared" for p in shipped if "../shared" in p.read_text()]
    assert not found

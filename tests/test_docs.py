"""The documentation runs: every public name has an example (run as doctests), and every code
block of README.md runs as written (Python blocks in order, as in a notebook; the ``crumple``
commands of the shell blocks through the command's own parser, and run where they are
complete)."""

import contextlib
import inspect
import re
import shlex
import sys
import types
from pathlib import Path

import pytest

import crumple as cr
from crumple.cli import build_parser, main
from crumple.cli import options as cli_options

PUBLIC = [getattr(cr, n) for n in cr.__all__ if n not in ("__version__", "plot", "CrumpleError")]
PUBLIC += [getattr(cr.plot, n) for n in cr.plot.__all__]
README = Path(__file__).parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# what `crumple surface ...` stands for in the README: the options every surface run needs
ELLIPSIS = ["--model", "mymodels:make_net", "--data", "mydata:test_loader"]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__name__)
def test_public_names_have_runnable_examples(obj):
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"{obj.__name__} has no example in its docstring"
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if not name.startswith("_") and callable(getattr(member, "__func__", member)):
                assert ">>>" in (inspect.getdoc(member) or ""), f"{obj.__name__}.{name}: no example"


def readme_blocks(language: str) -> list[tuple[int, str]]:
    """Each fenced block of README.md in ``language`` ("" for none), with the README line
    number of its first line."""
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start(2)) + 1, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) == language
    ]


def test_readme_blocks_are_found():
    assert len(readme_blocks("python")) >= 5
    assert len(readme_blocks("bash")) >= 3


def slurm_stand_in(clusters: list) -> types.ModuleType:
    """``dask_jobqueue`` for a machine without Slurm: ``SLURMCluster`` is a Dask cluster of
    one in-process worker, so the README's Slurm block runs its crumple call as written."""
    from distributed import LocalCluster

    class SLURMCluster(LocalCluster):
        def __init__(self, **slurm_options):
            super().__init__(
                n_workers=0, processes=False, threads_per_worker=1, dashboard_address=None
            )
            clusters.append(self)

        def scale(self, n=0, jobs=0, **options):  # any number of jobs: one worker
            return super().scale(1 if jobs else n)

    module = types.ModuleType("dask_jobqueue")
    module.SLURMCluster = SLURMCluster
    return module


def files_named(code: str) -> set[str]:
    """The files and folders a block says it writes: figure and plane files, ``store=`` and
    ``to=`` folders."""
    files = re.findall(r'"([\w./-]+\.(?:html|pdf|png|svg|safetensors))"', code)
    return set(files) | set(re.findall(r'\b(?:store|to)="([^"]+)"', code))


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks write files
    clusters: list = []
    monkeypatch.setitem(sys.modules, "dask_jobqueue", slurm_stand_in(clusters))
    scope: dict = {"__name__": "readme"}
    try:
        for k, (line, code) in enumerate(readme_blocks("python")):
            # compiled at its README line, so a traceback points into README.md
            exec(compile("\n" * (line - 1) + code, str(README), "exec"), scope)
            missing = [f for f in files_named(code) if not Path(f).exists()]
            assert not missing, f"the block at README.md:{line} did not write {missing}"
            if k == 0:  # "In Python": the article's surface, and its SGD path on the figure
                assert scope["ds"].loss.shape == (80, 80)
                traces = [t.name for t in scope["fig"].data if t.type == "scatter3d"]
                assert traces.count("SGD") == 1
    finally:
        from distributed import default_client

        for cluster in clusters:
            with contextlib.suppress(ValueError):
                default_client().close()
            cluster.close()


def readme_commands() -> list[tuple[int, list[str], bool]]:
    """Each ``crumple`` command of the README's shell blocks and of its usage block: its line,
    the arguments after ``crumple`` (``...`` stands for :data:`ELLIPSIS`, ``[--option
    value]`` for the option given, ``a|b|c`` for each of the three), and whether it is
    complete as written (no ``...``, no ``[...]`` or ``|``, no remote Dask address)."""
    lines = []
    for line, code in readme_blocks("bash"):
        for k, text in enumerate(code.splitlines()):
            if lines and lines[-1][1].endswith("\\"):  # a continued line
                lines[-1] = (lines[-1][0], lines[-1][1][:-1] + text)
            else:
                lines.append((line + k, text))
    usage = [(n, " ".join(code.split())) for n, code in readme_blocks("") if code[:8] == "crumple "]
    commands = []
    for line, text in lines + usage:
        words = shlex.split(re.sub(r"\[(--[^]]*)\]", r"\1", text), comments=True)
        if words[:1] != ["crumple"]:
            continue
        complete = "[--" not in text and not any(w == "..." or "://" in w for w in words)
        complete = complete and not any("|" in w and w[0] != "-" for w in words)
        argv = [[]]
        for word in words[1:]:
            if word == "...":
                argv = [a + ELLIPSIS for a in argv]
            elif "|" in word and not word.startswith("-"):
                argv = [a + [choice] for a in argv for choice in word.split("|")]
            else:
                argv = [a + [word] for a in argv]
        commands += [(line, a, complete) for a in argv]
    return commands


COMMANDS = readme_commands()


def test_readme_commands_are_found():
    assert len(COMMANDS) >= 8
    assert {a[0] for _, a, _ in COMMANDS} >= {"demo", "surface"}
    assert any(complete for *_, complete in COMMANDS)


@pytest.mark.parametrize(
    ("line", "argv"), [c[:2] for c in COMMANDS], ids=[f"README.md:{c[0]}" for c in COMMANDS]
)
def test_readme_commands_parse(line, argv, capsys):
    try:
        args = build_parser().parse_args(cli_options.joined_negative_values(argv))
    except SystemExit:
        pytest.fail(f"README.md:{line}: crumple {shlex.join(argv)}\n{capsys.readouterr().err}")
    assert args.command == argv[0]


MODELS = """
from crumple.examples import zoo

def make_net():
    return zoo.mlp(features=64, width=16).model
"""
DATA = """
from crumple.examples import zoo

test_loader = loader = zoo.mlp(features=64, width=16, n=256).data
"""


def test_readme_complete_commands_run(tmp_path, monkeypatch):
    """The complete ``crumple surface`` commands run as written, with the ``mymodels.py``,
    ``mydata.py`` and ``net.pt`` they name made here."""
    import torch

    complete = [argv for _, argv, complete in COMMANDS if complete and argv[0] == "surface"]
    assert complete, "no complete crumple surface command in README.md"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mymodels.py").write_text(MODELS)
    (tmp_path / "mydata.py").write_text(DATA)
    try:
        import mymodels

        torch.save(mymodels.make_net().state_dict(), tmp_path / "net.pt")
        for argv in complete:
            main(argv)
            out = Path(argv[argv.index("--out") + 1] if "--out" in argv else "out/surface")
            assert (out / "landscape.html").is_file() and (out / "plane.safetensors").is_file()
    finally:
        for name in ("mymodels", "mydata"):
            sys.modules.pop(name, None)


def test_a_missing_extra_says_which_to_install():
    from crumple.errors import require_extra

    with pytest.raises(ImportError, match=r"pip install 'crumple\[static\]'"):
        require_extra("no_such_module_for_crumple", "static")

"""Every public name documents itself with an example (the examples run as doctests)."""

import inspect

import pytest

import crumple as cr

PUBLIC = [getattr(cr, n) for n in cr.__all__ if n not in ("__version__", "plot", "CrumpleError")]
PUBLIC += [getattr(cr.plot, n) for n in cr.plot.__all__]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__name__)
def test_public_names_have_runnable_examples(obj):
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"{obj.__name__} has no example in its docstring"
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if not name.startswith("_") and callable(getattr(member, "__func__", member)):
                assert ">>>" in (inspect.getdoc(member) or ""), f"{obj.__name__}.{name}: no example"


def test_readme_python_example_runs():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["ds"].loss.shape == (80, 80)
    assert [t.name for t in scope["fig"].data if t.type == "scatter3d"].count("SGD") == 1


def test_a_missing_extra_says_which_to_install():
    import pytest

    from crumple.errors import require_extra

    with pytest.raises(ImportError, match=r"pip install 'crumple\[static\]'"):
        require_extra("no_such_module_for_crumple", "static")

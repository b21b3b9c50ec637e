"""Progress bars: tqdm's notebook widget where Jupyter can draw it (ipywidgets installed),
its text bar everywhere else (tqdm.auto would warn in a notebook without ipywidgets)."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]

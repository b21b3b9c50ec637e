"""How fast the ``crumple`` command and ``import crumple`` start, beside ``import torch``.

Each command runs in a fresh process, the four interleaved round by round so that a busy
machine slows them alike; the median of the rounds is printed. Goals (issue 10):
``crumple --help`` and an argument error under 1 s on a 2-core machine, and ``import
crumple`` no slower than ``import torch`` plus 0.3 s. It also lists which heavy modules
``crumple --help`` imported (``python -X importtime``): none is the design.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

PYTHON = sys.executable
CRUMPLE = str(Path(PYTHON).parent / "crumple")  # the script pip installed beside this python
COMMANDS = {
    "crumple --help": [CRUMPLE, "--help"],
    "crumple surface --grid nonsense (argparse error)": [CRUMPLE, "surface", "--grid", "nonsense"],
    'python -c "import torch"': [PYTHON, "-c", "import torch"],
    'python -c "import crumple"': [PYTHON, "-c", "import crumple"],
    # for information: the first use of cr.surface imports torch, xarray, zarr, plotly's
    # neighbours as the old eager package did at `import crumple`
    'python -c "import crumple; crumple.surface"': [
        PYTHON,
        "-c",
        "import crumple; crumple.surface",
    ],
}
HEAVY = ("torch", "numpy", "xarray", "zarr", "plotly", "pandas", "scipy")
HELP_GOAL_S = 1.0
IMPORT_MARGIN_S = 0.3


def wall_time(command: list[str]) -> float:
    """Seconds from start to exit of one fresh process (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def heavy_imports(command: list[str]) -> list[str]:
    """The modules of :data:`HEAVY` that ``command`` (a Python script) imports."""
    done = subprocess.run(
        [PYTHON, "-X", "importtime", *command], capture_output=True, text=True, check=False
    )
    names = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()}
    return [m for m in HEAVY if m in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per command")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not Path(CRUMPLE).is_file():
        sys.exit(f"no crumple script at {CRUMPLE}: install crumple into this environment")

    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command))
    median = {name: statistics.median(t) for name, t in times.items()}

    print(f"startup, median of {args.rounds} fresh processes (interleaved):")
    for name, seconds in median.items():
        spread = f"{min(times[name]):.2f} to {max(times[name]):.2f} s"
        print(f"  {name:<50} {seconds:6.2f} s   ({spread})")
    names = list(COMMANDS)
    help_s, error_s, torch_s, crumple_s, first_use_s = (median[n] for n in names)
    worst = max(help_s, error_s)
    met = "met" if worst < HELP_GOAL_S else "NOT met"
    print(f"goal: --help and an argument error under {HELP_GOAL_S:.0f} s: {worst:.2f} s, {met}")
    limit = torch_s + IMPORT_MARGIN_S
    met = "met" if crumple_s <= limit else "NOT met"
    print(
        f"goal: import crumple <= import torch + {IMPORT_MARGIN_S} s = {limit:.2f} s: "
        f"{crumple_s:.2f} s, {met}"
    )
    print(f"crumple --help is {torch_s / help_s:.1f}x faster than import torch alone")
    print(f"the first use of crumple.surface adds {first_use_s - torch_s:+.2f} s to import torch")
    heavy = heavy_imports(COMMANDS["crumple --help"])
    print(f"heavy modules crumple --help imports: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()

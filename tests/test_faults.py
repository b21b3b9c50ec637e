"""Run folders that cannot lie: one writer per folder, tiles verified (not trusted), files
written whole or not at all, damaged side files named, names checked where they enter and
folders that stay folders. Faults are made for real: racing processes, deleted and flipped
chunk bytes, a full disk under ``ulimit -f``, truncated and hostile files."""

import contextlib
import errno
import hashlib
import html
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

import crumple as cr
from crumple import report
from crumple.checks import check_name
from crumple.cli import main
from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.evaluation.extras import check_variables
from crumple.files import umask, written
from crumple.landscape import Landscape
from crumple.names import (
    DATA,
    HESSIAN,
    LOCK,
    PAGE,
    RESERVED,
    SPREAD,
    TILE_DIGEST,
    TILE_DONE,
    TRAJECTORY_INDEX,
)
from crumple.plot.page import page as html_page
from crumple.report import write_page
from crumple.run import store as run_store
from crumple.run.lock import holder, writer
from crumple.run.store import open_run
from tests import cli_fixtures

# --- one writer (lock) ---


LOCK_ROOT = Path(__file__).parents[1]
LOCK_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same bits in every process
# a command-line run that holds its folder for seconds, mostly asleep (the slower loss)
LOCK_CLI = [
    *(sys.executable, "-m", "crumple", "surface", "--model", "tests.cli_fixtures:make_mlp"),
    *("--data", "tests.cli_fixtures:digits_loader", "--strategy", "loop", "--chunk-size", "4"),
    *("--loss", "tests.cli_fixtures:slower_cross_entropy", "--grid", "-1:1:8"),
]
# the same from Python, cr.surface(store=...), on a grid of 12 tiles
LOCK_API = """
import sys, numpy as np, torch, crumple as cr
from tests import cli_fixtures
torch.set_num_threads(1)
model = cli_fixtures.make_mlp()
cr.surface(model, cli_fixtures.slower_cross_entropy, cli_fixtures.digits_loader(),
           cr.Plane.random(model, seed=1), cr.Grid(np.linspace(-1, 1, 6), np.linspace(-1, 1, 5)),
           store=sys.argv[1], strategy="loop", chunk_size=4)
"""
# a process that holds a folder until its stdin closes
LOCK_HOLDER = """
import sys
from crumple.run.lock import writer
with writer(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def lock_processes():
    """Start processes (``Popen``'s arguments); those still running at the end are killed."""
    started = []

    def start(args, **kwargs):
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        kwargs = pipes | kwargs
        started.append(subprocess.Popen(args, cwd=LOCK_ROOT, env=LOCK_ENV, **kwargs))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _lock_cli(start, out, seed=1):
    return start([*LOCK_CLI, "--seed", str(seed), "--out", str(out)])


def _lock_held_by(folder, process) -> dict:
    """Wait until ``process`` holds ``folder``; what the lock file says of it."""
    while process.poll() is None:
        named = holder(folder)
        if named is not None and named["pid"] == process.pid:
            return named
        time.sleep(0.02)
    pytest.fail(f"the writer ended before it held {folder}: {process.communicate()}")


def _lock_run(folder) -> dict:
    """What a finished run folder holds: loss bits, fingerprint, file names."""
    import zarr

    surface = zarr.open_group(str(folder / "landscape.zarr"), mode="r", path="surface")
    return {
        "loss": cr.open_run(folder)["surface"].loss.values.tobytes(),
        "fingerprint": surface.attrs["fingerprint"],
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*")),
    }


def _lock_points(folder) -> int:
    """How many points of a run being written are stored (0 while its store is being made)."""
    with contextlib.suppress(CrumpleError):
        return int(np.isfinite(cr.open_run(folder)["surface"].loss).sum())
    return 0


def _lock_digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_one_writer_per_folder_nested_in_one_thread_refused_in_another(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    refused = []

    def other_thread():
        try:
            with writer(folder):
                pass
        except CrumpleError as e:
            refused.append(str(e))

    with writer(folder):
        named = holder(folder)
        assert named["pid"] == os.getpid() and named["host"] and named["since"][:2] == "20"
        with writer(tmp_path / "." / "run"):  # nested, spelled otherwise: the same writer
            assert holder(folder) == named
        assert holder(folder) == named  # the inner writer did not release it
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(refused) == 1, refused
    assert f"{str(folder)!r} is being written by process {os.getpid()} on host" in refused[0]
    assert "wait for it to finish or write to another folder" in refused[0]
    assert (folder / "crumple.lock").read_text() == ""  # released: kept, empty
    assert holder(folder) is None
    with writer(None):  # no run folder: nothing held
        assert holder(folder) is None
    made = tmp_path / "made" / "run"
    with writer(made):  # a writer that wrote nothing in the folders it made
        assert holder(made)["pid"] == os.getpid()
    assert not (tmp_path / "made").exists()  # leaves none of them
    with writer(made):
        (made / "written").write_text("x")
    assert sorted(p.name for p in made.iterdir()) == ["crumple.lock", "written"]


@pytest.mark.slow
def test_every_writer_is_refused_while_another_process_holds_the_folder(
    tmp_path, lock_processes, capsys
):
    from crumple import report
    from crumple.cli import main
    from crumple.landscape import Landscape
    from crumple.run import store
    from tests import cli_fixtures

    folder, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    model, data = cli_fixtures.make_mlp(), cli_fixtures.digits_loader()
    plane, grid = cr.Plane.random(model, seed=1), cr.Grid([-1.0, 0.0, 1.0], [0.0, 1.0])

    def surface():
        return cr.surface(model, F.cross_entropy, data, plane, grid, store=folder)

    ds = surface()
    hessian = xr.Dataset({"eigenvalues": ("rank", [4.0, 1.0])}, coords={"rank": [0, 1]})
    store.save_hessian(folder, hessian)
    holding = lock_processes([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdin=-1)
    assert holding.stdout.readline() == "held\n"
    before = _lock_digest(folder)  # the lock file naming the holder included
    message = f"is being written by process {holding.pid} on host"
    landscape = Landscape(model, F.cross_entropy, data, store=folder)
    spread = xr.Dataset({"loss": (("direction", "alpha"), np.ones((2, 3)))})
    for name, write in {
        "cr.surface": surface,
        "save_run": lambda: store.save_run(folder, ds.drop_attrs()),
        "save_hessian": lambda: store.save_hessian(folder, hessian),
        "save_spread": lambda: store.save_spread(folder, spread),
        "write_run": lambda: report.write_run(folder, landscape, plane, grid),
        "write_page": lambda: report.write_page(folder, ds),
    }.items():
        with pytest.raises(CrumpleError, match=message):
            write()
        assert _lock_digest(folder) == before, f"{name} touched the folder"
    model_options = ["--model", "tests.cli_fixtures:make_mlp"]
    model_options += ["--data", "tests.cli_fixtures:digits_loader", "--out", str(folder)]
    for command in (["surface", *model_options], ["hessian", *model_options], ["demo"]):
        args = command + ["--out", str(folder)] * (command == ["demo"])
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2 and message in capsys.readouterr().err, command
        assert _lock_digest(folder) == before, f"crumple {command[0]} touched the folder"
    # readers read while the folder is held
    assert cr.open_run(folder)["surface"].loss.values.tobytes() == ds.loss.values.tobytes()
    main(["info", str(folder)])
    assert "surface: loss over alpha 3 x beta 2, complete" in capsys.readouterr().out
    main(["plot", str(folder), "--html", str(elsewhere / "page.html")])
    assert (elsewhere / "page.html").is_file()
    holding.stdin.close()  # the holder ends: the folder is free
    assert holding.wait() == 0
    assert store.save_hessian(folder, hessian.isel(rank=[0])).is_dir()
    assert store.open_hessian(folder).eigenvalues.values.tolist() == [4.0]


def _lock_race_references(start, root) -> dict:
    """An uninterrupted command-line run of each seed, into fresh folders."""
    runs = {seed: _lock_cli(start, root / f"seed{seed}", seed) for seed in (1, 2)}
    for process in runs.values():
        assert process.wait() == 0, process.communicate()
    return {seed: _lock_run(root / f"seed{seed}") for seed in runs}


@pytest.fixture(scope="module")
def lock_references(tmp_path_factory):
    started = []

    def start(args, **kwargs):
        started.append(subprocess.Popen(args, cwd=LOCK_ROOT, env=LOCK_ENV, **kwargs))
        return started[-1]

    try:
        yield _lock_race_references(start, tmp_path_factory.mktemp("references"))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.slow
@pytest.mark.parametrize(
    "planes, started",
    [("same", "together"), ("other", "together"), ("same", "after"), ("other", "after")],
)
def test_two_command_line_writers_race_one_writes(
    tmp_path, lock_processes, lock_references, planes, started
):
    """Two ``crumple surface`` runs into one --out: exactly one writes, the other is refused
    at once, naming it; the folder is then the winner's uninterrupted run."""
    out = tmp_path / "run"
    seeds = (1, 1 if planes == "same" else 2)
    first = _lock_cli(lock_processes, out, seeds[0])
    if started == "after":
        _lock_held_by(out, first)
    second = _lock_cli(lock_processes, out, seeds[1])
    while first.poll() is None and second.poll() is None:
        time.sleep(0.02)
    loser = first if first.poll() is not None else second
    winner = second if loser is first else first
    assert winner.poll() is None, "both ended: neither was refused at once"
    _, refusal = loser.communicate()
    assert loser.returncode == 2, refusal
    assert f"is being written by process {winner.pid} on host" in refusal
    assert "wait for it to finish or write to another folder" in refusal
    _, said = winner.communicate()
    assert winner.returncode == 0, said
    if started == "after":
        assert winner is first
    expected = lock_references[seeds[0] if winner is first else seeds[1]]
    found = _lock_run(out)
    assert found["fingerprint"] == expected["fingerprint"]
    assert found["files"] == expected["files"]
    a, b = (np.frombuffer(r["loss"]) for r in (found, expected))
    assert a.tobytes() == b.tobytes(), f"loss differs at {np.argwhere(a != b)[:5]}"


@pytest.mark.slow
def test_python_and_command_line_writers_take_the_same_lock(tmp_path, lock_processes, capsys):
    from crumple.cli import main
    from tests import cli_fixtures

    out = tmp_path / "python"
    python = lock_processes([sys.executable, "-c", LOCK_API, str(out)])
    _lock_held_by(out, python)
    cli = _lock_cli(lock_processes, out)
    _, refusal = cli.communicate()
    assert cli.returncode == 2 and f"by process {python.pid} on host" in refusal, refusal
    assert python.poll() is None  # refused at once, while the Python writer writes
    # a reader reads a folder being written (once its store is made)
    while python.poll() is None and _lock_points(out) == 0:
        time.sleep(0.05)
    main(["info", str(out)])
    assert f"run {str(out)!r}" in capsys.readouterr().out
    assert holder(out)["pid"] == python.pid  # still held: read while written
    assert python.wait() == 0, python.communicate()
    # the other way round: a command-line writer refuses cr.surface(store=...) here
    out = tmp_path / "cli"
    cli = _lock_cli(lock_processes, out)
    _lock_held_by(out, cli)
    model = cli_fixtures.make_mlp()
    with pytest.raises(CrumpleError, match=f"by process {cli.pid} on host"):
        cr.surface(
            model, F.cross_entropy, cli_fixtures.digits_loader(), cr.Plane.random(model),
            cr.Grid([0.0, 1.0], [0.0, 1.0]), store=out,
        )  # fmt: skip
    assert cli.poll() is None
    assert cli.wait() == 0, cli.communicate()


@pytest.mark.slow
def test_a_writer_killed_holding_the_lock_is_taken_over_and_resumed(
    tmp_path, lock_processes, capfd
):
    from tests import cli_fixtures

    torch.set_num_threads(1)
    model = cli_fixtures.make_mlp()
    loss = cli_fixtures.slower_cross_entropy
    grid = cr.Grid(np.linspace(-1, 1, 6), np.linspace(-1, 1, 5))

    def surface(store):
        return cr.surface(
            model, loss, cli_fixtures.digits_loader(), cr.Plane.random(model, seed=1), grid,
            store=store, strategy="loop", chunk_size=4,
        )  # fmt: skip

    whole = surface(tmp_path / "whole")  # uninterrupted, for its bits
    out = tmp_path / "run"
    child = lock_processes([sys.executable, "-c", LOCK_API, str(out)])
    _lock_held_by(out, child)
    while child.poll() is None and _lock_points(out) < 8:  # two tiles or more
        time.sleep(0.05)
    assert child.poll() is None, f"the run ended before it could be killed: {child.communicate()}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert holder(out)["pid"] == child.pid  # it died holding it: still named
    capfd.readouterr()
    resumed = surface(out)
    note = capfd.readouterr().err
    assert f"was left locked by process {child.pid} on host" in note
    assert "its lock is taken over" in note
    assert 0 < resumed.attrs["tiles_computed"] < whole.attrs["tiles_computed"]  # not again
    a, b = resumed.loss.values, whole.loss.values
    assert a.tobytes() == b.tobytes(), f"loss differs at {np.argwhere(a != b)[:5]}"
    assert holder(out) is None


LOCK_FULL_DISK = """
import json, resource, sys
import numpy as np, xarray as xr
from crumple.errors import CrumpleError
from crumple.run import store
folder = sys.argv[1]
big = np.random.default_rng(0).random((400, 400))
writes = {
    "hessian.zarr": lambda: store.save_hessian(folder, xr.Dataset({"m": (("a", "b"), big)})),
    "spread.zarr": lambda: store.save_spread(
        folder, xr.Dataset({"loss": (("direction", "alpha"), big)})),
    "landscape.zarr": lambda: store.save_run(
        folder, xr.Dataset({"loss": (("alpha", "beta"), big)})),
}
resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, resource.RLIM_INFINITY))  # ulimit -f 64
said = {}
for name, write in writes.items():
    try:
        write()
    except CrumpleError as e:
        said[name] = str(e)
print(json.dumps(said))
"""


@pytest.mark.slow
def test_a_failed_store_write_keeps_the_previous_store(tmp_path, lock_processes):
    """``save_hessian``, ``save_spread`` and ``save_run`` (over an earlier result) write a
    whole new store under a file size limit that it exceeds: each is refused naming the
    store, the previous one is read as before, and no temporary store is left, nor one that
    a writer killed before had left (mid-write, or between its two renames)."""
    import json

    from crumple.run import store

    folder = tmp_path / "run"
    hessian = xr.Dataset({"eigenvalues": ("rank", [4.0, 1.0])}, coords={"rank": [0, 1]})
    spread = xr.Dataset(
        {"loss": (("direction", "alpha"), np.ones((2, 3)))}, coords={"alpha": [-1.0, 0.0, 1.0]}
    )
    surface = xr.Dataset({"loss": (("alpha", "beta"), np.arange(6.0).reshape(3, 2))})
    store.save_hessian(folder, hessian)
    store.save_spread(folder, spread)
    store.save_run(folder, surface)
    (folder / "hessian.zarr").rename(folder / ".hessian.zarr.99999.old")  # killed between
    shutil.copytree(folder / "spread.zarr", folder / ".spread.zarr.99999.new")  # mid-write
    child = lock_processes([sys.executable, "-c", LOCK_FULL_DISK, str(folder)])
    out, err = child.communicate()
    assert child.returncode == 0, err
    said = json.loads(out)
    for name in ("hessian.zarr", "spread.zarr", "landscape.zarr"):
        assert name in said, f"writing {name} past the limit was not refused: {said}"
        assert f"could not write {str(folder / name)!r}: [Errno 27]" in said[name]
    assert store.open_hessian(folder).identical(hessian)
    assert store.open_spread(folder).loss.values.tolist() == spread.loss.values.tolist()
    assert cr.open_run(folder)["surface"].loss.values.tolist() == surface.loss.values.tolist()
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["crumple.lock", "hessian.zarr", "landscape.zarr", "spread.zarr"], names


# --- verified tiles ---


# 27 tiles of one row by two columns, the last of each row one point (a chunk's edge)
TILES_GRID = cr.Grid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 5))
TILES_HIT = (0, 13, 26)  # first (timed when the tiles were sized), middle, last (at the edge)


def tiles_surface(store, loss=F.cross_entropy):
    torch.set_num_threads(1)
    model = cli_fixtures.make_mlp()
    plane = cr.Plane.random(model, seed=1)
    data = cli_fixtures.digits_loader()
    return cr.surface(
        model, loss, data, plane, TILES_GRID, store=store, strategy="loop", chunk_size=2
    )


@pytest.fixture(scope="module")
def tiles_reference(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A finished run, never interrupted, and its loss."""
    store = tmp_path_factory.mktemp("tiles") / "run"
    ds = tiles_surface(store)
    assert ds.attrs["tiles_computed"] == 27 and ds.attrs["tiles_damaged"] == 0
    return store, ds.loss.values


def tiles_chunk(store: Path, array: str, k: int) -> Path:
    """The file of tile ``k``'s chunk of ``array`` (tiles row by row, three per row)."""
    key = [str(k)] if array == TILE_DIGEST else [str(k // 3), str(k % 3)]
    return store.joinpath(DATA, "surface", array, "c", *key)


def tiles_flip(byte: int):
    def flip(chunk: Path, other: Path) -> None:
        data = bytearray(chunk.read_bytes())
        data[byte] ^= 0x10
        chunk.write_bytes(bytes(data))

    return flip


TILES_FAULTS = {
    "deleted": lambda chunk, other: chunk.unlink(),
    "empty": lambda chunk, other: chunk.write_bytes(b""),
    "truncated": lambda chunk, other: chunk.write_bytes(chunk.read_bytes()[:-3]),
    "garbage": lambda chunk, other: chunk.write_bytes(b"\x00not a chunk of this array\xff"),
    "another tile's": lambda chunk, other: shutil.copyfile(other, chunk),
    "magic flipped": tiles_flip(0),  # zstd frame header: the chunk cannot be decoded
    "size flipped": tiles_flip(5),
    "payload flipped": tiles_flip(-9),  # the first value's top byte: decodes, changed
}


def tiles_state(capsys, store: Path) -> str:
    """The surface line of ``crumple info``."""
    main(["info", str(store)])
    out = capsys.readouterr().out
    return next(line for line in out.splitlines() if line.startswith("surface:"))


@pytest.mark.parametrize("array", ["loss", TILE_DIGEST])
@pytest.mark.parametrize("fault", list(TILES_FAULTS))
def test_damaged_tiles_are_reported_never_shown_and_recomputed_bit_for_bit(
    tiles_reference, tmp_path, capsys, array, fault
):
    reference, whole = tiles_reference
    store = tmp_path / "run"
    shutil.copytree(reference, store)
    for k in TILES_HIT:
        TILES_FAULTS[fault](tiles_chunk(store, array, k), tiles_chunk(store, array, (k + 4) % 27))
    # a deleted digest is a tile never finished (the run stopped before writing it)
    broken = 0 if (fault, array) == ("deleted", TILE_DIGEST) else 3
    surface = open_run(store)["surface"]
    assert surface.attrs["tiles_done"] == "24 of 27"
    assert surface.attrs["tiles_damaged"] == broken
    loss = surface.loss.values
    shown = ~np.isnan(loss)
    assert shown.sum() == whole.size - 5  # two tiles of two points, one of one
    assert loss[shown].tobytes() == whole[shown].tobytes(), np.argwhere(loss != whole)
    state = tiles_state(capsys, store)
    assert "complete" not in state
    if broken:
        assert "(24 of 27 tiles done; 3 tile(s) damaged: rerun the same command" in state
    else:
        assert "(24 of 27 tiles done; run the same command again to resume)" in state
    resumed = tiles_surface(store)
    note = capsys.readouterr().err
    assert ("3 damaged tile(s) in" in note and "(tiles 0, 13, 26;" in note) == bool(broken), note
    assert resumed.attrs["tiles_computed"] == 3
    assert resumed.loss.values.tobytes() == whole.tobytes()
    assert resumed.attrs["tiles_done"] == "27 of 27" and resumed.attrs["tiles_damaged"] == 0
    assert state.endswith("complete") is False and tiles_state(capsys, store).endswith("complete")


def test_a_stopped_run_with_damaged_tiles_resumes_both(tiles_reference, tmp_path, capsys):
    """Tiles never finished (digest 0) are computed, damaged ones computed again."""
    import zarr

    reference, whole = tiles_reference
    store = tmp_path / "run"
    shutil.copytree(reference, store)
    group = zarr.open_group(str(store / DATA), mode="r+", path="surface")
    group[TILE_DIGEST][20:] = 0  # as if stopped after tile 19
    tiles_chunk(store, "loss", 3).unlink()
    surface = open_run(store)["surface"]
    assert (surface.attrs["tiles_done"], surface.attrs["tiles_damaged"]) == ("19 of 27", 1)
    assert "(19 of 27 tiles done; 1 tile(s) damaged" in tiles_state(capsys, store)
    resumed = tiles_surface(store)
    assert resumed.attrs["tiles_computed"] == 8
    assert resumed.loss.values.tobytes() == whole.tobytes()


def test_a_run_written_before_digests_reads_and_resumes_unverified(
    tiles_reference, tmp_path, capsys
):
    """An earlier crumple's run (done flags, no digests) is trusted tile by tile but counted
    as unverified; a chunk of it that cannot be decoded is still a damaged tile."""
    import zarr

    reference, whole = tiles_reference
    store = tmp_path / "run"
    shutil.copytree(reference, store)
    shutil.rmtree(store / DATA / "surface" / TILE_DIGEST)
    flags = np.ones(27, dtype=bool)
    flags[[4, 5]] = False  # stopped before these two
    group = zarr.open_group(str(store / DATA), mode="r+", path="surface")
    done = group.create_array(
        TILE_DONE, shape=(27,), chunks=(1,), dtype=bool, dimension_names=("tile",)
    )
    done[:] = flags  # as crumple wrote it before digests
    tiles_chunk(store, "loss", 7).write_bytes(b"")
    surface = open_run(store)["surface"]
    assert surface.attrs["tiles_done"] == "24 of 27"
    assert (surface.attrs["tiles_damaged"], surface.attrs["tiles_unverified"]) == (1, 24)
    assert int(np.isnan(surface.loss.values).sum()) == 5  # tiles 4, 5 (at the edge), 7
    main(["info", str(store)])
    assert "unverified: 24 tiles, written by a crumple that kept no" in capsys.readouterr().out
    resumed = tiles_surface(store)
    assert resumed.attrs["tiles_computed"] == 3
    assert resumed.loss.values.tobytes() == whole.tobytes()
    assert resumed.attrs["tiles_unverified"] == 27  # still an earlier crumple's run
    assert not (store / DATA / "surface" / TILE_DIGEST).exists()


TILES_RUN = """
import numpy as np, torch, crumple as cr
from tests import cli_fixtures
torch.set_num_threads(1)
model = cli_fixtures.make_mlp()
cr.surface(model, cli_fixtures.slow_cross_entropy, cli_fixtures.digits_loader(),
           cr.Plane.random(model, seed=1),
           cr.Grid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 5)),
           store={store!r}, strategy="loop", chunk_size=2)
"""


def tiles_finished(store: Path) -> int:
    import zarr

    try:
        group = zarr.open_group(str(store / DATA), mode="r", path="surface")
        return int((group[TILE_DIGEST][:] != 0).sum())
    except Exception:  # not made yet
        return 0


@pytest.mark.slow
def test_a_file_size_limit_mid_run_names_the_store_and_the_rerun_resumes(tiles_reference, tmp_path):
    """The run's process meets a file size limit of 0 (as a full disk) part-way: a
    CrumpleError names the store and the cause; the tiles written stay, and resume."""
    store = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", TILES_RUN.format(store=str(store))],
        cwd=Path(__file__).parents[1],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None and tiles_finished(store) < 3:
        time.sleep(0.02)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.prlimit(child.pid, resource.RLIMIT_FSIZE, (0, hard))
    error = child.communicate(timeout=120)[1]
    assert child.returncode == 1, error
    last = error.strip().splitlines()[-1]
    assert last.startswith("crumple.errors.CrumpleError: could not write "), error
    assert f"{str(store / DATA)!r}: [Errno 27] File too large" in last
    done_before = tiles_finished(store)
    assert 3 <= done_before < 27
    resumed = tiles_surface(store, loss=cli_fixtures.slow_cross_entropy)
    assert resumed.attrs["tiles_computed"] == 27 - done_before
    assert resumed.loss.values.tobytes() == tiles_reference[1].tobytes()


# --- atomic files ---


ATOMIC_ROOT = Path(__file__).resolve().parents[1]


def atomic_limited(blocks: int, *argv: str) -> subprocess.CompletedProcess:
    """``argv`` (a ``python`` command line) run in the repository under ``ulimit -f BLOCKS``
    (KiB): Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full
    disk."""
    return subprocess.run(
        ["bash", "-c", f'ulimit -f {blocks}; exec "$@"', "limited", sys.executable, *argv],
        cwd=ATOMIC_ROOT,
        capture_output=True,
        text=True,
    )


def atomic_refused(done: subprocess.CompletedProcess, command: str, file: Path) -> str:
    """The one-line CLI error of ``done`` (exit status 2, no traceback), which names ``file``
    (after what a progress bar left on that line, if anything)."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    last = last[last.find(f"crumple {command}: error: ") :]
    assert last.startswith(f"crumple {command}: error: could not write {str(file)!r}"), last
    return last


def atomic_names(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden ones (a temporary file left behind) included."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def atomic_run(tmp_path_factory) -> Path:
    """A run folder (``save_run``) of an asymmetric bowl on a 61 x 61 grid: its netCDF,
    meshes and PNG are tens of KiB or more."""
    from crumple.run.store import save_run

    a, b = np.linspace(-1, 1, 61), np.linspace(-0.5, 0.5, 61)
    loss = 1 + (a[:, None] - 0.3) ** 2 + 4 * b[None, :] ** 2 + 0.1 * np.sin(9 * a[:, None])
    ds = xr.Dataset({"loss": (("alpha", "beta"), loss)}, coords={"alpha": a, "beta": b})
    return save_run(tmp_path_factory.mktemp("atomic") / "run", ds)


def test_written_replaces_the_file_whole_with_the_users_permissions(tmp_path):
    target = tmp_path / "page.html"
    target.write_text("earlier")
    before = os.umask(0o027)
    try:
        with written(target) as temporary:
            temporary.write_text("new page")
            assert target.read_text() == "earlier"  # nothing replaced before the end
    finally:
        os.umask(before)
    assert target.read_text() == "new page"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)  # 0o666 less the umask, not 0o600
    assert atomic_names(tmp_path) == ["page.html"]


def test_written_temporary_is_hidden_beside_with_the_suffix(tmp_path):
    seen = []
    for _ in range(2):
        with written(tmp_path / "sub" / "x.Surface.PNG") as temporary:
            temporary.write_bytes(b"png")
            seen.append(temporary)
    first, second = seen
    assert first.parent == tmp_path / "sub" and first.name.startswith(".")
    assert first.suffix == ".PNG" and str(os.getpid()) in first.name
    assert first != second  # a random part: two writers never share a temporary
    assert atomic_names(tmp_path / "sub") == ["x.Surface.PNG"]


def test_written_keeps_the_earlier_file_on_any_error(tmp_path):
    target = tmp_path / "x.nc"
    target.write_bytes(b"earlier")
    # not a write error: passes through as it is
    with pytest.raises(ZeroDivisionError), written(target) as temporary:
        temporary.write_bytes(b"half")
        raise ZeroDivisionError("the figure failed")
    with pytest.raises(CrumpleError) as caught, written(target) as temporary:
        temporary.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    said = str(caught.value)
    assert said.startswith(f"could not write {str(target)!r}: [Errno 28] No space left")
    assert "free some space" in said and "left as it was" in said
    assert isinstance(caught.value.__cause__, OSError)
    assert target.read_bytes() == b"earlier" and atomic_names(tmp_path) == ["x.nc"]


def test_written_in_a_folder_that_is_a_file_names_it(tmp_path):
    (tmp_path / "run").write_text("a file, not a folder")
    refused = pytest.raises(CrumpleError, match=r"could not write '.*run/x.stl': .*not a folder")
    with refused, written(tmp_path / "run" / "x.stl") as temporary:
        temporary.write_bytes(b"solid")
    assert atomic_names(tmp_path) == ["run"]


def test_written_past_the_file_size_limit_is_a_crumple_error(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"earlier")
    code = (
        "import sys\nfrom crumple.files import written\n"
        "try:\n"
        f"    with written({str(target)!r}) as t:\n"
        "        t.write_bytes(bytes(100_000))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    done = atomic_limited(8, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"CrumpleError could not write {str(target)!r}: [Errno 27]")
    assert "ulimit -f" in done.stdout
    assert target.read_bytes() == b"earlier" and atomic_names(tmp_path) == ["big.bin"]


def test_surface_page_past_the_limit_fails_whole_and_the_rerun_finishes(tmp_path):
    out = tmp_path / "run"
    argv = ["-m", "crumple", "surface", "--model", "tests.cli_fixtures:make_mlp"]
    argv += ["--data", "tests.cli_fixtures:digits_loader", "--grid", "-1:1:9"]
    argv += ["--chunk-size", "20", "--out", str(out)]
    # the page (about 2 MB) is past 1000 KiB; the zarr chunks and the plane are not
    last = atomic_refused(atomic_limited(1000, *argv), "surface", out / "landscape.html")
    assert "File too large" in last and "ulimit -f" in last
    assert not (out / "landscape.html").exists()
    assert not [n for n in atomic_names(out) if n.startswith(".")]  # no temporary left
    stored = [p for p in (out / "landscape.zarr").rglob("*") if p.is_file() and "c" in p.parts]
    chunks = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in stored}
    assert chunks  # the tiles were stored before the page failed
    again = subprocess.run([sys.executable, *argv], cwd=ATOMIC_ROOT, capture_output=True)
    assert again.returncode == 0, again.stderr
    assert (out / "landscape.html").stat().st_size > 1_000_000
    assert (out / "landscape.html").read_text().rstrip().endswith("</html>")
    # resumed: no tile computed again, so no chunk rewritten
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in chunks} == chunks
    assert not [n for n in atomic_names(out) if n.startswith(".")]


def test_netcdf_export_past_the_limit_keeps_the_earlier_file(atomic_run, tmp_path):
    file = tmp_path / "run.nc"
    file.write_bytes(b"earlier")
    argv = ["-m", "crumple", "info", str(atomic_run), "--netcdf", str(file)]
    last = atomic_refused(atomic_limited(8, *argv), "info", file)
    assert "[Errno 27] File too large" in last
    assert file.read_bytes() == b"earlier" and atomic_names(tmp_path) == ["run.nc"]
    done = subprocess.run([sys.executable, *argv], cwd=ATOMIC_ROOT, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert xr.open_dataset(file).loss.shape == (61, 61)
    assert oct(file.stat().st_mode & 0o777) == oct(0o666 & ~umask())


@pytest.mark.parametrize(
    "option, name",
    [
        ("--vtk", "run.vtu"),
        ("--vtk", "run.vtk"),
        ("--stl", "run.stl"),
        ("--obj", "run.obj"),
        ("--glb", "run.glb"),
    ],
)
def test_mesh_export_past_the_limit_keeps_the_earlier_file(atomic_run, tmp_path, option, name):
    pytest.importorskip("meshio" if option == "--vtk" else "trimesh")
    file = tmp_path / name
    file.write_bytes(b"earlier")
    argv = ["-m", "crumple", "export", str(atomic_run), option, str(file)]
    last = atomic_refused(atomic_limited(8, *argv), "export", file)
    assert "ulimit -f" in last  # EFBIG, or numpy's short write (legacy VTK) without an errno
    assert file.read_bytes() == b"earlier" and atomic_names(tmp_path) == [name]


def test_static_png_past_the_limit_keeps_the_earlier_file(atomic_run, tmp_path):
    pytest.importorskip("matplotlib")
    file = tmp_path / "run.png"
    file.write_bytes(b"earlier")
    argv = ["-m", "crumple", "plot", str(atomic_run), "--png", str(file)]
    last = atomic_refused(atomic_limited(8, *argv), "plot", file)
    assert "[Errno 27] File too large" in last
    assert file.read_bytes() == b"earlier" and atomic_names(tmp_path) == ["run.png"]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into a read-only (0o555) folder regardless; the folder-that-is-a-file "
    "test makes another real write failure",
)
def test_read_only_folder_is_a_crumple_error(atomic_run, tmp_path):
    from crumple.cli import main

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as stopped:
            main(["info", str(atomic_run), "--netcdf", str(folder / "run.nc")])
        assert stopped.value.code == 2
        refused = pytest.raises(CrumpleError, match=r"Permission denied.*no permission")
        with refused, written(folder / "x.html") as temporary:
            temporary.write_text("page")
        assert atomic_names(folder) == []
    finally:
        folder.chmod(0o755)


def test_export_into_a_folder_that_is_a_file_is_one_line(atomic_run, tmp_path, capsys):
    from crumple.cli import main

    (tmp_path / "meshes").write_text("a file")
    file = tmp_path / "meshes" / "run.stl"
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(atomic_run), "--stl", str(file)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"crumple export: error: could not write {str(file)!r}"), err
    assert err.count("\n") == 1 and "is a file, not a folder" in err


def test_recorder_past_the_limit_names_the_snapshot_and_the_index(tmp_path):
    """A snapshot too big for the disk is not left half written; an index line that does not
    fit is a CrumpleError naming trajectory.jsonl."""
    code = (
        "import sys, torch\nimport crumple as cr\n"
        "model = torch.nn.Linear(int(sys.argv[1]), 1)\n"
        "try:\n"
        "    rec = cr.Recorder(model, to=sys.argv[2])  # keeps step 0\n"
        "    for _ in range(200):\n"
        "        rec.record(loss=1.0)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    big, small = tmp_path / "big", tmp_path / "small"
    done = atomic_limited(4, "-c", code, "4000", str(big))  # a 16 KB snapshot
    snapshot = big / "step_000000000.safetensors"
    assert done.stdout.startswith(f"CrumpleError could not write {str(snapshot)!r}"), done
    assert atomic_names(big) == ["trajectory.jsonl"]
    done = atomic_limited(4, "-c", code, "2", str(small))  # 200 lines: past 4 KiB
    index = small / "trajectory.jsonl"
    assert done.stdout.startswith(f"CrumpleError could not write {str(index)!r}: [Errno 27]")


# --- damaged side files ---


SIDE_ROOT = Path(__file__).resolve().parents[1]
SIDE_MODEL = "tests.cli_fixtures:make_tiny64"
SIDE_DATA_SPEC = "tests.cli_fixtures:digits_pair"


def side_recorded(folder: Path, steps: int = 3) -> Path:
    """A trajectory folder of ``steps`` snapshots of a small model, as a Recorder writes it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    recorder = cr.Recorder(model, to=folder, loss=1.0)  # step 0
    for step in range(1, steps):
        with torch.no_grad():
            model.weight.add_(0.1)
        recorder.record(loss=1.0 / (step + 1))
    return folder


def test_a_half_written_last_line_is_read_up_to_it_and_the_next_row_starts_a_line(tmp_path):
    folder = side_recorded(tmp_path / "traj")
    index = folder / TRAJECTORY_INDEX
    with open(index, "a") as f:
        f.write('{"step": 3, "lo')  # the run was stopped while writing this row
    with pytest.warns(UserWarning, match=rf"{TRAJECTORY_INDEX}' ends in a half-written line"):
        trajectory = cr.Trajectory.load(folder)
    assert trajectory.steps == [0, 1, 2]
    assert trajectory.series("weight").shape == (3, 2, 3)
    # a training run taken up again (the callbacks' resume) appends after the whole lines
    recorder = cr.Recorder(torch.nn.Linear(3, 2))
    recorder.trajectory, recorder.step = trajectory, 3
    recorder.record(loss=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cr.Trajectory.load(folder)
    assert again.steps == [0, 1, 2, 3] and again.losses[-1] == 0.25
    # a whole row that lost only its line end is kept, and the next row gets a line of its own
    index.write_text(index.read_text().rstrip("\n"))
    assert cr.Trajectory.load(folder).steps == [0, 1, 2, 3]
    recorder.record(loss=0.125)
    assert cr.Trajectory.load(folder).steps == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "line, said",
    [
        ('{"step": 1, "loss": 0.5', "is not JSON"),
        ('{"step": "1", "loss": 0.5}', "the step '1' is not a whole number"),
        ('{"step": 1.5, "loss": 0.5}', "the step 1.5 is not a whole number"),
        ('{"step": 1, "loss": "low"}', "the loss 'low' is not a number"),
        ('{"step": 1}', "is not a row"),
        ("[1, 0.5]", "is not a row"),
        ('{"step": 0, "loss": 0.5}', "the step 0 does not come after the step before it, 0"),
    ],
)
def test_a_damaged_line_of_a_trajectory_index_is_named(tmp_path, line, said):
    folder = side_recorded(tmp_path / "traj")
    index = folder / TRAJECTORY_INDEX
    rows = index.read_text().splitlines()
    for lines in ([rows[0], line, rows[2]], [rows[0], line]):  # in the middle, or last
        index.write_text("\n".join(lines) + "\n")
        with pytest.raises(CrumpleError) as caught:
            cr.Trajectory.load(folder)
        message = str(caught.value)
        assert f"{str(index)!r}, line 2: " in message and said in message, message
        assert "delete line 2" in message
    if said != "is not JSON":  # a whole row without its line end is not a half-written one
        index.write_text(f"{rows[0]}\n{line}")
        with pytest.raises(CrumpleError, match="line 2: "):
            cr.Trajectory.load(folder)


def test_a_missing_truncated_or_flipped_snapshot_is_named(tmp_path):
    folder = side_recorded(tmp_path / "traj")
    snapshot = folder / "step_000000001.safetensors"
    whole = snapshot.read_bytes()
    snapshot.unlink()
    with pytest.raises(CrumpleError) as caught:
        cr.Trajectory.load(folder)
    assert f"the snapshot {str(snapshot)!r} of step 1 (line 2 of" in str(caught.value)
    assert "is missing; restore it, or delete line 2" in str(caught.value)
    snapshot.write_bytes(whole[: len(whole) - 7])  # truncated
    trajectory = cr.Trajectory.load(folder)
    with pytest.raises(CrumpleError, match=rf"the snapshot '{snapshot}' of step 1 .*cannot"):
        trajectory.series("weight")
    snapshot.write_bytes(b"\xff" * 8 + whole[8:])  # its header's length flipped
    with pytest.raises(CrumpleError, match=rf"the snapshot '{snapshot}' .*truncated or"):
        trajectory.snapshot(1)
    snapshot.write_bytes(whole)
    assert trajectory.snapshot(1).keys() == {"weight", "bias"}
    with pytest.raises(CrumpleError, match=r"step_000000000.safetensors' holds no param"):
        trajectory.series("nope")


def test_a_snapshot_linked_to_a_file_outside_its_folder_is_refused(tmp_path):
    folder = side_recorded(tmp_path / "traj")
    outside = tmp_path / "elsewhere.safetensors"
    snapshot = folder / "step_000000002.safetensors"
    shutil.move(snapshot, outside)
    snapshot.symlink_to(outside)  # a readable, valid snapshot, but not in the folder
    with pytest.raises(CrumpleError) as caught:
        cr.Trajectory.load(folder)
    message = str(caught.value)
    assert f"{str(folder / TRAJECTORY_INDEX)!r} names 'step_000000002.safetensors'" in message
    assert "outside" in message and "through a symbolic link" in message
    snapshot.unlink()
    inner = folder / "kept" / "step_2.safetensors"  # a link within the folder is fine
    inner.parent.mkdir()
    shutil.move(outside, inner)
    snapshot.symlink_to(inner)
    assert cr.Trajectory.load(folder).series("weight").shape == (3, 2, 3)


def test_a_missing_truncated_or_damaged_plane_file_is_named(tmp_path):
    from safetensors.torch import save_file

    plane = cr.Plane.random(torch.nn.Linear(3, 2), seed=1)
    path = plane.save(tmp_path / "plane.safetensors")
    whole = path.read_bytes()
    missing = tmp_path / "none.safetensors"
    with pytest.raises(CrumpleError, match=rf"no plane at '{missing}': there is no such file"):
        cr.Plane.load(missing)
    path.write_bytes(whole[:-5])
    with pytest.raises(CrumpleError, match=rf"'{path}' .*truncated or damaged; write it again"):
        cr.Plane.load(path)
    tensors = {f"origin/{n}": t for n, t in plane.origin.items()}
    tensors |= {f"direction0/{n}": t for n, t in plane.directions[0].items()}
    for meta, said in [
        ("{not json", "its metadata '{not json' is not JSON"),
        ('["kind"]', "is not a plane's"),
        ('{"axis_names": 3}', "is not a plane's"),
    ]:
        save_file(tensors, str(path), metadata={"crumple_plane": meta})
        with pytest.raises(CrumpleError, match=rf"the plane in '{path}' is damaged: "):
            cr.Plane.load(path)
        with pytest.raises(CrumpleError, match=re.escape(said)):
            cr.Plane.load(path)
    only_origin = {k: v for k, v in tensors.items() if k.startswith("origin/")}
    save_file(only_origin, str(path), metadata={"crumple_plane": "{}"})
    with pytest.raises(CrumpleError, match=rf"'{path}' is damaged: it holds the tensors of"):
        cr.Plane.load(path)
    bent = tensors | {"direction0/weight": torch.ones(5)}
    save_file(bent, str(path), metadata={"crumple_plane": "{}"})
    with pytest.raises(CrumpleError, match=rf"'{path}' is damaged: direction 0 must have"):
        cr.Plane.load(path)
    path.write_bytes(whole)
    assert cr.Plane.load(path).attrs["seed"] == 1


@pytest.fixture(scope="module")
def side_gpt2_folder(tmp_path_factory) -> Path:
    """A tiny GPT-2 saved by save_pretrained in several shards, with their index."""
    from tests.test_hf import tiny_gpt2

    folder = tmp_path_factory.mktemp("hf") / "model"
    tiny_gpt2().save_pretrained(folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


def test_a_sharded_model_whose_index_is_damaged_is_refused_naming_it(side_gpt2_folder, tmp_path):
    from crumple.specs import hf_model

    folder = tmp_path / "model"
    shutil.copytree(side_gpt2_folder, folder)
    index = folder / "model.safetensors.index.json"
    good = json.loads(index.read_text())
    shards = sorted(set(good["weight_map"].values()))
    assert len(shards) > 1 and hf_model(folder) is not None
    name = next(iter(good["weight_map"]))
    for text, said in [
        ('{"weight_map": {', "is not a JSON object (JSONDecodeError"),
        ("[1, 2]", "is not a JSON object (AttributeError"),
        ('{"metadata": {}}', "has no weight_map (parameter name -> file name), it has None"),
        ('{"weight_map": ["a.safetensors"]}', "has no weight_map"),
        (json.dumps({"weight_map": {name: 3}}), f"maps {name!r} to 3, not to a file name"),
        (json.dumps({"weight_map": {name: ""}}), "names '' where a file name belongs"),
    ]:
        index.write_text(text)
        with pytest.raises(CrumpleError) as caught:
            hf_model(folder)
        assert str(index) in str(caught.value) and said in str(caught.value), str(caught.value)


def test_a_shard_outside_the_model_folder_is_never_read(side_gpt2_folder, tmp_path):
    from crumple.specs import hf_model

    folder = tmp_path / "model"
    shutil.copytree(side_gpt2_folder, folder)
    index = folder / "model.safetensors.index.json"
    good = json.loads(index.read_text())
    moved = sorted(set(good["weight_map"].values()))[0]
    (tmp_path / "outside").mkdir()
    shutil.move(folder / moved, tmp_path / "outside" / moved)
    for named, how in [
        (f"../outside/{moved}", "outside"),
        (str(tmp_path / "outside" / moved), "outside"),
        (f"sub/../../outside/{moved}", "outside"),
    ]:
        weight_map = {k: named if v == moved else v for k, v in good["weight_map"].items()}
        index.write_text(json.dumps(good | {"weight_map": weight_map}))
        with pytest.raises(CrumpleError) as caught:
            hf_model(folder)
        message = str(caught.value)
        assert f"{str(index)!r} names {named!r}, which lies {how} {str(folder)!r}" in message
        assert "through a symbolic link" not in message
    index.write_text(json.dumps(good))
    (folder / moved).symlink_to(tmp_path / "outside" / moved)
    with pytest.raises(CrumpleError, match=r"lies outside .* through a symbolic link"):
        hf_model(folder)
    (folder / moved).unlink()
    shutil.move(tmp_path / "outside" / moved, folder / moved)
    assert hf_model(folder) is not None


@pytest.fixture(scope="module")
def side_run(tmp_path_factory) -> Path:
    """A surface run of crumple surface, with crumple hessian's results and a spread beside."""
    out = tmp_path_factory.mktemp("side") / "run"
    inputs = ["--model", SIDE_MODEL, "--data", SIDE_DATA_SPEC]
    main(["surface", *inputs, "--grid", "-1:1:3", "--spread", "2", "--out", str(out)])
    main(["hessian", *inputs, "--top", "2", "--trace", "--probes", "4", "--out", str(out)])
    return out


def side_damage(store: Path, how: str) -> None:
    """Damage a zarr store for real: a chunk replaced by garbage or deleted (read back as
    the fill value: only the store's digest finds it), its zarr.json cut short, or text
    written where a number belongs."""
    if how.startswith("chunk"):
        chunk = next(p for p in store.rglob("c/*") if p.is_file() and "rank" not in p.parts)
        chunk.write_bytes(b"\x8f garbage \x00" * 3) if how == "chunk garbage" else chunk.unlink()
    elif how == "zarr.json truncated":
        meta = store / "zarr.json"
        meta.write_text(meta.read_text()[:30])
    else:
        meta = store / "zarr.json"
        group = json.loads(meta.read_text())
        group["attributes"]["trace"] = "3.5e2 (about)"
        meta.write_text(json.dumps(group))


DAMAGES = ("chunk garbage", "chunk deleted", "zarr.json truncated", "text where a number belongs")


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_hessian_store_is_named_and_the_surface_is_still_drawn(side_run, tmp_path, how):
    run = tmp_path / "run"
    shutil.copytree(side_run, run)
    assert run_store.open_hessian(run).attrs["trace"] > 0
    side_damage(run / HESSIAN, how)
    with pytest.raises(CrumpleError) as caught:
        run_store.open_hessian(run)
    message = str(caught.value)
    assert message.startswith(f"{str(run / HESSIAN)!r} is damaged"), message
    assert f"crumple hessian --out {str(run)!r}" in message and "delete just" in message
    assert "delete the folder" not in message
    if how == "text where a number belongs":
        assert "its attribute 'trace' is '3.5e2 (about)', not a number" in message
    page = tmp_path / "page.html"
    with pytest.warns(UserWarning, match="hessian not drawn: .*hessian.zarr' is damaged"):
        main(["plot", str(run), "--html", str(page)])
    text = page.read_text()
    assert "hessian not drawn: " in text and "is damaged and cannot be read" in text
    assert "top eigenvalue" not in text  # the facts of the damaged store are left out
    assert "random directions" in text  # the spread beside it is drawn
    with pytest.warns(UserWarning, match="hessian not drawn"):  # crumple surface's page
        written = write_page(run, cr.open_run(run)["surface"])
    assert written == run / PAGE and "hessian not drawn: " in written.read_text()
    info = subprocess.run(
        [sys.executable, "-m", "crumple", "info", str(run)],
        cwd=SIDE_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert info.returncode == 0, info.stderr
    assert f"hessian: {str(run / HESSIAN)!r} is damaged" in info.stdout
    assert "spread: spread.zarr, 2 random directions" in info.stdout


def test_crumple_plot_draws_the_surface_beside_a_damaged_store_and_says_so(side_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(side_run, run)
    side_damage(run / SPREAD, "chunk garbage")
    side_damage(run / HESSIAN, "zarr.json truncated")
    page = tmp_path / "page.html"
    done = subprocess.run(
        [sys.executable, "-m", "crumple", "plot", str(run), "--html", str(page)],
        cwd=SIDE_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {page}" in done.stdout
    for name in (HESSIAN, SPREAD):
        assert f"not drawn: {str(run / name)!r} is damaged" in done.stderr, done.stderr
    warned = done.stderr.splitlines()  # one line each, the command's own, no source lines
    assert [line.split(" not drawn")[0] for line in warned] == [
        "crumple plot: warning: hessian",
        "crumple plot: warning: spread",
    ], done.stderr
    for reader in ("head -1", "true"):  # true has gone before crumple writes: a broken pipe
        info = subprocess.run(
            f"{sys.executable} -m crumple info {str(run)!r} | {reader}",
            shell=True, cwd=SIDE_ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert info.stdout == ("" if reader == "true" else f"run {str(run)!r}\n")
        assert info.stderr == "", info.stderr
    text = page.read_text()
    assert "hessian not drawn: " in text and "spread not drawn: " in text
    assert "random directions" not in text
    # the fixes the messages give: write each store again, and the page draws them
    inputs = ["--model", SIDE_MODEL, "--data", SIDE_DATA_SPEC, "--out", str(run)]
    main(["hessian", *inputs, "--top", "2"])
    main(["surface", *inputs, "--grid", "-1:1:3", "--spread", "2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        main(["plot", str(run), "--html", str(page)])
    text = page.read_text()
    assert "not drawn" not in text and "top eigenvalue" in text and "random directions" in text


def test_a_store_beside_that_is_a_file_or_holds_no_spread_is_named(side_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(side_run, run, ignore=shutil.ignore_patterns(HESSIAN))
    (run / HESSIAN).write_text("not a store")
    with pytest.raises(CrumpleError, match=rf"'{run / HESSIAN}' is damaged"):
        run_store.open_hessian(run)
    shutil.rmtree(run / SPREAD)
    run_store.save_hessian(run / "other", cr.open_run(run)["surface"])
    shutil.move(run / "other" / HESSIAN, run / SPREAD)  # a store, not a spread
    with pytest.raises(CrumpleError, match=r"spread.zarr' is damaged .*not loss by direction"):
        run_store.open_spread(run)
    texts = xr.Dataset({"eigenvalues": ("rank", ["4", "1"])}, coords={"rank": [0, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: no Zarr v3 specification for text
        run_store.save_hessian(run, texts)
    with pytest.raises(CrumpleError, match=r"its variable 'eigenvalues' holds <U1 values, not"):
        run_store.open_hessian(run)
    assert (run / DATA).is_dir()


# --- names and folders ---


# names a run cannot store or that would shadow crumple's own: each is refused
NAMES_REFUSED = [
    *RESERVED,
    "../../x",
    "../../../x",
    "a/b",
    "a\\b",
    "",
    ".",
    "..",
    ".zattrs",
    "zarr.json",
    "tab\there",
    "nul\x00",
]
# names that look hostile on a page but that a run stores and a page shows as text
NAMES_HOSTILE = [
    "<!--<script>",
    "<img src=x onerror=\"document.title='pwned'\">",
    "line\u2028and\u2029para",
    "<b>bold &amp; ünïcode",
]


def names_problem():
    """A model, its data, a plane and a grid, small enough for every test here."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    x = torch.randn(8, 2)
    return net, (x, x[:, :1]), cr.Plane.random(net, seed=0), cr.Grid([-1.0, 0.0, 1.0], [0.0, 1.0])


def names_path(net, data, plane) -> xr.Dataset:
    rec = cr.Recorder(net)
    rec.record(loss=1.0)
    rec.record(loss=0.5)
    return cr.project(rec.trajectory, plane, net, F.mse_loss, data)


def names_refusal(error: pytest.ExceptionInfo, name: str) -> None:
    """The refusal names the name as given, lists the reserved names and says to rename."""
    text = str(error.value)
    assert repr(name) in text and "rename it" in text, text
    assert ", ".join(RESERVED) in text, text


@pytest.mark.parametrize("name", NAMES_REFUSED)
def test_metric_names_a_run_cannot_hold_are_refused_before_any_work(tmp_path, name):
    net, data, plane, grid = names_problem()
    calls = []

    def metric(pred, y):
        calls.append(1)
        return F.l1_loss(pred, y)

    folder = tmp_path / "run"
    with pytest.raises(CrumpleError) as e:
        cr.surface(net, F.mse_loss, data, plane, grid, metrics={name: metric}, store=folder)
    if name != "loss":  # the loss's own refusal (a metric named loss replaces it) comes first
        names_refusal(e, name)
    assert calls == [] and not folder.exists() and not (tmp_path / "x").exists()


def test_hostile_looking_names_are_stored_and_read_back_whole(tmp_path):
    net, data, plane, grid = names_problem()
    metrics = {name: F.l1_loss for name in NAMES_HOSTILE}
    ds = cr.surface(
        net, F.mse_loss, data, plane, grid, metrics=metrics, store=tmp_path, progress=False
    )
    path = names_path(net, data, plane)
    run_store.save_run(tmp_path, ds, {name: path for name in NAMES_HOSTILE})
    run = cr.open_run(tmp_path)
    assert sorted(run) == sorted(["surface", *NAMES_HOSTILE])
    assert sorted(map(str, run["surface"].data_vars)) == sorted(["loss", *NAMES_HOSTILE])
    stored = tmp_path / "landscape.zarr" / "paths"
    assert sorted(p.name for p in stored.iterdir() if p.is_dir()) == sorted(NAMES_HOSTILE)


def test_a_path_group_named_like_the_surface_is_refused_on_reading(tmp_path):
    net, data, plane, grid = names_problem()
    run_store.save_run(tmp_path, cr.surface(net, F.mse_loss, data, plane, grid))
    (tmp_path / DATA / "paths" / "surface").mkdir(parents=True)  # made by hand
    with pytest.raises(CrumpleError, match="'surface' is one of crumple's own names"):
        cr.open_run(tmp_path)


@pytest.mark.parametrize("name", ["../../../x", "surface", "loss", "a/b", "", "zarr.json"])
def test_path_names_are_refused_before_anything_is_written(tmp_path, name):
    net, data, plane, grid = names_problem()
    path = names_path(net, data, plane)
    ds = cr.surface(net, F.mse_loss, data, plane, grid)
    folder = tmp_path / "a" / "b" / "run"
    with pytest.raises(CrumpleError) as e:
        run_store.save_run(folder, ds, {name: path})
    names_refusal(e, name)
    assert not (tmp_path / "a").exists() and not (tmp_path / "x").exists()
    # write_run refuses it before the surface is computed: the loss is never called
    calls = []

    def loss(pred, y):
        calls.append(1)
        return F.mse_loss(pred, y)

    land = Landscape(net, loss, data, progress=False)
    with pytest.raises(CrumpleError) as e:
        report.write_run(folder, land, plane, grid, paths={name: path})
    names_refusal(e, name)
    written = [p for p in tmp_path.rglob("*") if not p.is_dir() and p.name != LOCK]
    assert calls == [] and written == []  # the lock, taken first, is all there is


@pytest.mark.parametrize("draw", ["surface", "contour", "losses", "report"])
def test_plot_functions_refuse_a_path_name_a_run_cannot_hold(tmp_path, draw):
    net, data, plane, grid = names_problem()
    ds = cr.surface(net, F.mse_loss, data, plane, grid)
    paths = {"a/b": names_path(net, data, plane)}
    with pytest.raises(CrumpleError) as e:
        if draw == "report":
            cr.plot.report(tmp_path / "page.html", ds, paths)
        elif draw == "losses":
            cr.plot.losses(paths)
        else:
            getattr(cr.plot, draw)(ds, paths)
    names_refusal(e, "a/b")
    assert list(tmp_path.iterdir()) == []


def test_a_name_that_is_not_a_string_is_a_type_error():
    with pytest.raises(CrumpleTypeError, match="the path named 3 is not a string"):
        check_name(3, "the path named")


@pytest.mark.parametrize(
    ("metric", "name"), [("random:seed", "seed"), ("no.such.module:a/b", "a/b")]
)
def test_cli_metric_names_are_refused_before_the_model_loads(tmp_path, capsys, metric, name):
    argv = ["surface", "--model", "no.such.module:model", "--data", "no.such.module:data"]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--metric", metric, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--metric {name!r}" in err and "no.such.module" not in err, err
    assert [p.name for p in tmp_path.rglob("*") if not p.is_dir()] in ([], [LOCK])


def test_extra_variables_are_checked_against_each_other_and_the_functions(tmp_path):
    net, data, plane, grid = names_problem()
    with pytest.raises(CrumpleError, match="'lambda_max' is also a function's"):
        Landscape(net, F.mse_loss, data, metrics={"lambda_max": F.l1_loss}, curvature=True)

    class Extra:
        key, long_names = "mine", {}

        def __init__(self, *names):
            self.names = names

    with pytest.raises(CrumpleError) as e:
        check_variables(["loss"], [Extra("tile_done")])
    names_refusal(e, "tile_done")
    with pytest.raises(CrumpleError, match="'w' is also the mine extra's"):
        check_variables(["loss"], [Extra("w"), Extra("w")])
    check_variables(["loss", "accuracy"], [Extra(*NAMES_HOSTILE)])


def test_every_array_a_run_store_adds_is_a_reserved_name(tmp_path):
    """A bookkeeping array added to the store must be reserved, or a metric could take it."""
    import zarr

    net, data, plane, grid = names_problem()
    cr.surface(net, F.mse_loss, data, plane, grid, store=tmp_path, progress=False)
    group = zarr.open_group(str(tmp_path / "landscape.zarr"), mode="r", path="surface")
    added = set(group.array_keys()) - {"loss"}
    assert added and added <= set(RESERVED), sorted(added - set(RESERVED))


def names_figures_script(text: str) -> str:
    start = text.index('<script id="figures" type="application/json">')
    start = text.index(">", start) + 1
    return text[start : text.index("</script>", start)]


def test_page_scripts_hold_hostile_texts_escaped_and_whole():
    import plotly.graph_objects as go

    hostile = [*NAMES_HOSTILE, "</script><script>document.title='pwned'</script>", "</SCRIPT"]
    figures = [
        go.Figure([go.Scatter(x=[0], y=[0], name=n) for n in hostile], layout_title_text=hostile[4])
    ]
    text = html_page(figures, title=hostile[4], facts={hostile[0]: hostile[1]}, notes=hostile[2:])
    script = names_figures_script(text)
    assert not {"<", ">", "&", "\u2028", "\u2029"} & set(script), script[:200]
    specs = json.loads(script)
    assert [t["name"] for t in specs[0]["data"]] == hostile
    assert specs[0]["layout"]["title"]["text"] == hostile[4]
    # the rest of the page holds them as HTML text only
    for n in hostile:
        assert n not in text.replace(html.escape(n), ""), n
    assert text.count("<script") == 3 and text.count("</script>") == 3


def test_static_figures_draw_names_as_text(tmp_path, monkeypatch):
    import matplotlib.figure

    from crumple.plot.static import save_static

    a = np.linspace(-1, 1, 5)
    ds = xr.Dataset(
        {"loss": (("alpha", "beta"), a[:, None] ** 2 + a[None, :] ** 2, {"long_name": "$x^$"})},
        coords={"alpha": a, "beta": a},
    )
    path = xr.Dataset({v: ("step", [0.0, 0.5]) for v in ("alpha", "beta", "loss")})
    legends = []
    save = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        legends.extend(
            t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
        )
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    out = save_static(ds, tmp_path / "s.png", paths={"$x^$": path, "_sgd": path}, title="$a^")
    assert out.stat().st_size > 0
    assert "$x^$" in legends and "\u200b_sgd" in legends


@pytest.mark.parametrize("key, value", [("n_samples", "many"), ("plane_eigenvalues", [1.0, "x"])])
def test_text_where_the_surface_holds_a_number_is_named(tmp_path, key, value):
    a = np.linspace(-1, 1, 3)
    ds = xr.Dataset(
        {"loss": (("alpha", "beta"), np.ones((3, 3)))},
        coords={"alpha": a, "beta": a},
        attrs={"n_samples": 10, "plane_seed": None, key: value},
    )
    run_store.save_run(tmp_path, ds)
    with pytest.raises(CrumpleError, match=f"its attribute {key!r} is .*, not a number"):
        cr.open_run(tmp_path)
    ds.attrs[key] = 3.0
    run_store.save_run(tmp_path, ds)
    assert cr.open_run(tmp_path)["surface"].attrs[key] == 3.0


def test_removing_the_lock_file_lets_no_second_writer_in(tmp_path):
    folder = tmp_path / "run"
    with writer(folder):
        (folder / LOCK).unlink()  # by hand, while the writer holds the folder
        other = subprocess.run(
            [sys.executable, "-c", LOCK_HOLDER.replace("sys.stdin.read()", "pass"), str(folder)],
            capture_output=True, text=True, cwd=LOCK_ROOT,
        )  # fmt: skip
        assert other.returncode != 0 and f"{LOCK} was removed while it held it" in other.stderr
    with writer(folder):  # released: the next writer gets it
        assert holder(folder)["pid"] == os.getpid()

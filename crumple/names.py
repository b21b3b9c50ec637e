"""Every name the command line's ``--help`` lists, and the names of a run folder's files, in
one torch-free place: the registries and the CLI both read them here, so ``crumple --help``
needs no torch and no tuple is kept twice.

Example:
    >>> STRATEGIES
    ('loop', 'expanded', 'vmap')
    >>> LOSSES["mse"]
    'mse_loss'
"""

# evaluation strategies, in the order of crumple.evaluation.STRATEGIES (a test checks)
STRATEGIES = ("loop", "expanded", "vmap")

# losses by name: the torch.nn.functional function each one is
LOSSES = {
    "cross_entropy": "cross_entropy",
    "mse": "mse_loss",
    "l1": "l1_loss",
    "nll": "nll_loss",
    "bce_with_logits": "binary_cross_entropy_with_logits",
    "huber": "huber_loss",
}
METRICS = ("accuracy", *LOSSES)

# optimizers of crumple demo --compare
OPTIMIZERS = ("sgd", "momentum", "adam")

# how the Hessian is cut into diagonal blocks (by=), and the trace estimators
BLOCKINGS = ("parameter", "layer", "module")
TRACE_METHODS = ("hutchinson", "hutch++")

# the curvature map's variables (cr.surface(..., curvature=True))
CURVATURE = {
    "lambda_max": "largest Hessian eigenvalue",
    "lambda_min": "smallest Hessian eigenvalue",
    "lambda_ratio": "|lambda_min / lambda_max|",
}

# a run folder's files
DATA = "landscape.zarr"
PLANE = "plane.safetensors"
PAGE = "landscape.html"
HESSIAN = "hessian.zarr"
HESSIAN_PAGE = "hessian.html"
SPREAD = "spread.zarr"
TRAJECTORY_INDEX = "trajectory.jsonl"
CURVATURE_ROWS = "curvature.jsonl"  # curvature measured while training, beside the index
CURVATURE_ATTRS = "curvature.json"  # how it was measured
SHARPNESS = "sharpness.zarr"  # that history in a run folder (cr.open(run)["sharpness"])
LOCK = "crumple.lock"  # who writes the folder now (crumple.run.lock)

# the bookkeeping arrays beside a tile run's values in landscape.zarr (crumple.run.store):
# each tile's digest (0 while not done), and the unchecked done flags of runs written before
# digests; no metric or variable may take these names
TILE_DIGEST = "tile_digest"
TILE_DONE = "tile_done"
RUN_BOOKKEEPING = (TILE_DIGEST, TILE_DONE)

# names no metric, path or evaluation extra's variable may take (crumple.checks.check_name):
# the coordinates of a grid, a path and a spread; the variables crumple writes itself; a
# run's bookkeeping arrays and their dimension; "surface" and "sharpness", a run's keys
# beside its paths
RESERVED = (
    *("alpha", "beta", "step", "direction", "seed"),
    *("loss", "loss_on_plane", "off_plane", "recorded_loss"),
    *RUN_BOOKKEEPING,
    "tile",
    "surface",
    "sharpness",
)

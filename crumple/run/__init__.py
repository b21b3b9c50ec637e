"""The one owner of a run folder: what is in it (``store``: ``landscape.zarr`` and the
stores beside it, the plane), what a result looks like (``schema``), what a run was made
from (``fingerprint``), and the resumable tile driver that fills it (``driver``, here or on
Dask workers through ``distributed``). Nothing else opens a run folder's files."""

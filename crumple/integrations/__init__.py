"""Training callbacks that record the path of the weights as the framework trains, and
draw the landscape when training ends: :mod:`crumple.integrations.lightning` (also
:mod:`crumple.integrations.pytorch_lightning`) and :mod:`crumple.integrations.transformers`.
Each imports its framework only when it is imported itself (``import crumple`` imports
neither); without it, the import says which extra installs it.

Example:
    >>> import crumple.integrations.tracking as tracking
    >>> tracking.PLANES
    ('pca', 'random')
"""

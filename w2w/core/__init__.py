"""What every stage shares: the grid and its tilings, stores, storage, configs, errors,
the Ray runtime, class tables, statistics, the spatial split and metrics.

Stages import from here (and from :mod:`w2w.model`), never from one another.
"""

"""The benchmark suite: ``xcodec-fast bench`` / ``python bench/run.py`` (see :mod:`.suite`).

Parts: ``suite`` (the command: settings, the run, the result file), ``kernels`` (every op at the
model's real sites against eager, with roofline ceilings), ``e2e`` (encode / decode against
transformers and torch.compile), ``long`` (long audio: chunked decode, windowed encode,
streaming), ``report`` (markdown and staleness), ``cases`` (sites, costs, inputs), ``timing``,
``machine``.
"""

from .suite import DEFAULT_PLOTS, DEFAULT_RESULTS, SCHEMA, add_arguments, main, run

__all__ = ["DEFAULT_PLOTS", "DEFAULT_RESULTS", "SCHEMA", "add_arguments", "main", "run"]

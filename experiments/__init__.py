"""homeo_jax's experiments: ``python -m experiments.<name>`` from the repository root.

Each writes its results to ``experiments/results/<name>.md`` and ``.json`` (command, git
revision, date, hardware, seeds, per-arm numbers, verdicts) through ``experiments.common``;
those files are committed and the docs quote them.
"""

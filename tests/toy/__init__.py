"""A task the core has never heard of, kept outside ``src/`` and ``conf/``: regression of
y = sin(x) with an MLP. It plugs in the way a user's own task would, through
``hydra.searchpath`` and its own classes (see tests/training/test_any_task.py)."""

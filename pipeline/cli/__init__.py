"""The ``blurset`` command line (click only): it parses, calls one flow or stage, and prints.

``main.py`` holds the root group (global options, ``--version``, error display); each verb family
is a module with a ``register(cli)`` function that ``main.py`` calls: ``data.py`` (sample, ingest,
dedup, dups, quarantine, status), ``annotate.py``, ``labelstudio.py`` (with ``ml-backend``),
``release.py``, ``model.py`` and ``demo.py``. ``context.py`` is what they share (the workspace,
``c.flows``, Prefect's settings, the console filter for expected errors).

New verbs go into the module of their family (a new family: a new module with ``register(cli)``,
added to the tuple in ``main.py``). Rules belong to the stages: a verb raises no domain error of
its own; a :class:`blurset.errors.BlursetError` from below becomes one ``Error:`` line.
"""

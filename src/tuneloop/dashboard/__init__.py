"""``tuneloop ui``: one local web app over everything tuneloop writes.

Runs (live loss curves), evaluations, serving statistics from the store, the registry (promote and
roll back), a playground that streams a served model's answers, and the annotation page. Modules:
``runs``/``evals``/``serving`` read the files and tables, ``pages``+``html`` render, ``guard`` decides who
may connect, ``registry_actions`` and ``playground`` are the writes and the model relay, ``app`` wires
the routes. Python API::

    from tuneloop.dashboard.app import DashboardSettings, create_app
    app = create_app(DashboardSettings(token="...", runs_dir=Path("runs")))
"""

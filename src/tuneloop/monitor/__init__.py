"""Monitoring: per-model latency, error rate and satisfaction from the serving store.

See :mod:`tuneloop.monitor.report`; run it with ``tuneloop monitor [--db URL] [--since 1h]``.
"""

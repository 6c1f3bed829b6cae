"""Data preparation: read user files, validate, clean, redact PII, deduplicate, split, report.

One module per step, in pipeline order: ``ingest`` (files -> raw records with file:line), ``validate``
(shapes and problems), ``records`` (canonical chat/preference/text records), ``clean`` (Unicode,
whitespace), ``pii`` (redaction), ``dedup`` (exact + MinHash/LSH near-duplicates), ``split``
(stratified, group-aware), ``stats`` (token lengths), ``report`` (HTML); ``prepare`` runs them all.
"""

"""Datasets as files: official annotation formats in, Parquet manifests out.

``datasets/`` parses UCF101, HMDB51, Charades and class-folder annotations into records (errors name file and
line), ``prepare`` turns them into probed manifests plus a report, ``manifest`` is the one reader of manifests, and
``synth`` generates small datasets in the official layouts. May import: ``pipeline.schema``, ``pipeline.storage``,
``pipeline.video``.
"""

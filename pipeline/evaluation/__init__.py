"""Scoring models: metrics (top-k, mean class accuracy, the official Charades mAP) and evaluation that scores every
test view exactly once, inside training (``evaluate_distributed``) or offline with Ray Data (``evaluate_weights``).
May import: ``pipeline.schema``, ``pipeline.storage``, ``pipeline.video``, ``pipeline.data``, ``pipeline.clips``,
``pipeline.config``, ``stpa_model``.
"""

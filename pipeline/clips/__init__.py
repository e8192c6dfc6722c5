"""Clips on Ray Data: a manifest in, batches of uint8 clips out.

``dataset`` holds ``ClipConfig`` and the Ray Data decode pipeline, ``ledger`` the decode-failure reports and
per-video epoch counts, ``cache`` the decode-once clip cache, ``preview`` one clip through the same code path for
``stpa inspect``. May import: ``pipeline.schema``, ``pipeline.storage``, ``pipeline.video``, ``pipeline.data``.
"""

"""Frames from video files, and the pure index math and array transforms applied to them.

``decode`` probes a file and reads frames by index ("frame i" is the i-th frame of a sequential decode), ``encode``
writes videos with PyAV (the dataset generator and tests), ``sampling`` is pure frame-index math (TSN, dense,
multi-view test), ``transforms`` holds pure uint8 array transforms and the device-side normalisation to the
model's input. May import: ``pipeline.schema``, ``pipeline.storage``; nothing else of ``pipeline``.
"""

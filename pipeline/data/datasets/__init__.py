"""Parsers of the official annotation files of UCF101, HMDB51 and Charades, and of a ``<root>/<class>/<video>``
folder, into typed records (``records.py``). Pure text-to-records functions plus one ``load`` per dataset that
reads the files through fsspec; errors name the file and line (``AnnotationError``).
"""

from pipeline.data.datasets.records import AnnotationError, DatasetIndex, Segment, VideoRecord

__all__ = ["AnnotationError", "DatasetIndex", "Segment", "VideoRecord"]

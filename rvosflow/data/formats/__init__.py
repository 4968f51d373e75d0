"""Writers and readers of the four real on-disk formats (MeViS, Ref-YTVOS, Ref-DAVIS17, RefCOCO).

Every reader is a :class:`ReferringSource`: an index of :class:`ExpressionRef` built at init and
lazy ``load_frames`` / ``load_target``. Format problems raise :class:`DatasetFormatError`.
"""

from rvosflow.data.formats.base import (
    DatasetFormatError,
    ExpressionRef,
    ReferringSource,
)
from rvosflow.data.formats.davis import ANNOTATOR_SETS, RefDAVISSource, write_davis
from rvosflow.data.formats.mevis import MevisSource, write_mevis
from rvosflow.data.formats.refcoco import RefCOCOSource, load_refs, write_refcoco
from rvosflow.data.formats.ytvos import RefYTVOSSource, write_ytvos

__all__ = [
    "ANNOTATOR_SETS",
    "DatasetFormatError",
    "ExpressionRef",
    "MevisSource",
    "RefCOCOSource",
    "RefDAVISSource",
    "RefYTVOSSource",
    "ReferringSource",
    "load_refs",
    "write_davis",
    "write_mevis",
    "write_refcoco",
    "write_ytvos",
]

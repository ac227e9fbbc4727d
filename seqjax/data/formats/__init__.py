"""One small reader per public log format; each returns a `RawTable` of unvalidated string fields."""

from seqjax.data.formats.base import PrepareError, RawTable
from seqjax.data.formats.cdnow import read_cdnow
from seqjax.data.formats.diginetica import read_diginetica
from seqjax.data.formats.generic import Columns, read_generic
from seqjax.data.formats.movielens import read_movielens
from seqjax.data.formats.otto import read_otto
from seqjax.data.formats.retailrocket import read_retailrocket
from seqjax.data.formats.sasrec import read_sasrec
from seqjax.data.formats.taobao import read_taobao
from seqjax.data.formats.yoochoose import read_yoochoose

FORMATS = ("generic", "sasrec", "movielens", "taobao", "retailrocket", "yoochoose", "diginetica", "otto", "cdnow")

__all__ = ["FORMATS", "Columns", "PrepareError", "RawTable", "read_cdnow", "read_diginetica", "read_generic",
           "read_movielens", "read_otto", "read_retailrocket", "read_sasrec", "read_taobao", "read_yoochoose"]

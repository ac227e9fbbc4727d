"""One small reader per public log format; each returns a `RawTable` of unvalidated string fields."""

from seqjax.data.formats.base import PrepareError, RawTable
from seqjax.data.formats.generic import Columns, read_generic
from seqjax.data.formats.movielens import read_movielens
from seqjax.data.formats.sasrec import read_sasrec

FORMATS = ("generic", "sasrec", "movielens")

__all__ = ["FORMATS", "Columns", "PrepareError", "RawTable", "read_generic", "read_movielens", "read_sasrec"]

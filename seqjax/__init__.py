"""seqjax: sequence models over user-behaviour logs, in JAX."""

__version__ = "0.1.0"

"""The layer cache, split so that each of its rules has one home: ``keys`` (what a step's key is made
of), ``disk`` (the cache directory's parts and how an entry is read), ``verify`` (when a blob may be
served), ``store`` (hits and entries, shapes), ``usage`` (``cache ls``/``du``) and ``prune``."""

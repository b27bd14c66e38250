"""End-to-end workflows built on :mod:`diffloc.tracing`, :mod:`diffloc.editing` and :mod:`diffloc.eval`.

These sit above the method packages: the demo (:mod:`diffloc.workflows.demo`) and LocoEdit window widening
(:mod:`diffloc.workflows.widening`) combine a localization with an edit and a score; ``tracing`` and ``editing``
never import each other or ``eval``.
"""

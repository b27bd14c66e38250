"""Deprecated alias of :mod:`diffloc.workflows.demo` (the end-to-end demo), kept for code that imports it here."""

from diffloc.workflows.demo import METHODS, DemoConfig, edit_templates, load_summary, run_demo, run_key, trace_entry

__all__ = ["METHODS", "DemoConfig", "edit_templates", "load_summary", "run_demo", "run_key", "trace_entry"]

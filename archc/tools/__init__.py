"""Maintenance tools (run as modules, e.g. ``python -m archc.tools.architectures_doc``)."""

"""Thin operators: arguments, templating, and a small XCom of paths/UIDs; the work is in the core."""

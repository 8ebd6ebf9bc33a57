"""The ``ahvlite`` command line: one module per noun; parse, call one function, render."""

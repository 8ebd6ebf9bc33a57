"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from __future__ import annotations

from bench import facts_parallel, lab_wiring

if __name__ == "__main__":
    lab_wiring.main()
    facts_parallel.main()

"""Open vSwitch through ovsdbapp: one OVSDB transaction per change, errors never swallowed."""

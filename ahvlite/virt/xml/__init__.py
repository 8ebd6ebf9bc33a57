"""libvirt XML as typed objects that round-trip (the virtinst way).

Each object wraps an lxml element and declares the properties ahvlite models;
reading and writing a property touches only its own node, so elements and attributes
ahvlite does not model survive a parse -> change -> serialize round trip.
"""

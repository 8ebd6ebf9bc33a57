"""Free text in specs: what may reach libvirt's XML (labels, fw_cfg, kernel command line).

XML 1.0 cannot carry most control characters at all (lxml refuses them with a
ValueError deep inside the designer), and those it can (tab, newline) or that reach a
terminal (ESC, C1) have no business in a label or a command line. So every C0 and C1
control character, DEL, surrogates and U+FFFE/U+FFFF are refused where the text enters.
"""

from __future__ import annotations

import re

from ahvlite.errors import InvalidSpec

_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
ALLOWED_TEXT = ("text without control characters (C0, DEL, C1) or other characters "
                "XML cannot carry")


def check_text(field: str, value: str) -> str:
    """``value`` if XML can carry it and it holds no control character."""
    if not isinstance(value, str) or _REFUSED.search(value):
        raise InvalidSpec(field, value, ALLOWED_TEXT)
    return value

"""The host's storage path: iSCSI redirector, target health, tgt targets, pools.

``pdu`` (iSCSI PDUs, pure), ``names`` (IQNs, pure), ``health`` (health counting, the
redirect choice and the failback plan, pure), ``tgt`` (tgtadm: commands and output,
pure, run through an injected runner), ``probe`` (the redirector's small iSCSI
initiator: login and NOP-Out), ``redirector`` (the asyncio daemon on 127.0.0.1:3261),
``config`` (what the redirector of one host is told), ``view`` (its status, merged for
``storage show``).
"""

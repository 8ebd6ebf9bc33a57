"""What a user asks of ``ahvlite lab up``."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Interface names are limited to 15 bytes by the kernel; the lab builds names such as
# ``vLABNAME12b`` from the lab name, so the name stays short and lower-case.
LAB_NAME_PATTERN = r"^[a-z][a-z0-9]{0,7}$"
MAX_HOSTS = 16


def default_subnet(name: str) -> ipaddress.IPv4Network:
    """A /24 derived from the lab name, so labs with different names rarely collide.

    10.213.0.0/16 is carved into /24s; the default lab ``lab`` gets a stable one.
    """
    digest = hashlib.sha256(name.encode()).digest()
    return ipaddress.IPv4Network(f"10.213.{digest[0]}.0/24")


class LabSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=LAB_NAME_PATTERN)] = "lab"
    hosts: Annotated[int, Field(ge=1, le=MAX_HOSTS)] = 3
    subnet: ipaddress.IPv4Network | None = None
    guests_per_host: Annotated[int, Field(ge=0, le=8)] = 1
    # A real cluster by default: a ZooKeeper member in the first 3 host namespaces, and
    # on every host a controller (with its API), a host agent and a watchdog.
    zk: bool = True
    controllers: bool = True  # implies zk
    # dir: guests open the shared directory's files; iscsi: tgtd and the redirector on
    # every host, and VM disks are iSCSI LUNs (storage: iscsi in the cluster file).
    storage: Literal["dir", "iscsi"] = "dir"

    @field_validator("subnet", mode="before")
    @classmethod
    def _parse_subnet(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return ipaddress.IPv4Network(value, strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"expected an IPv4 network such as 10.213.7.0/24 ({exc})") from None
        return value

    @field_validator("subnet")
    @classmethod
    def _private_subnet(cls, value: ipaddress.IPv4Network | None) -> object:
        # The lab lives inside namespaces of this machine; a public range could shadow a
        # real destination for the root namespace, so only private ranges are accepted.
        if value is not None and not value.is_private:
            raise ValueError("expected a private IPv4 range (10/8, 172.16/12, 192.168/16)")
        if value is not None and value.prefixlen > 29:
            raise ValueError("expected a prefix of /29 or shorter")
        return value

    @property
    def effective_subnet(self) -> ipaddress.IPv4Network:
        return self.subnet if self.subnet is not None else default_subnet(self.name)

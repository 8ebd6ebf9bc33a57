"""VM templates, versioned like AHV's: what a VM is made of, captured from a VM."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ahvlite.errors import NotFound
from ahvlite.spec.vm import BootSpec, DiskBus, check_name


class TemplateDisk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bus: DiskBus = "scsi"
    volume: str  # the template's own copy in the shared pool


class TemplateNic(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    network: str
    mode: Literal["access", "trunk"] = "access"
    trunk_vlans: tuple[int, ...] = ()


class TemplateVersion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1)]
    from_vm: str
    created_at: str
    vcpus: int
    memory_mib: int
    overcommit: bool = False
    boot: BootSpec = BootSpec()
    vtpm: bool = False
    disks: list[TemplateDisk] = Field(default_factory=list)
    nics: list[TemplateNic] = Field(default_factory=list)


class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    active_version: int
    versions: list[TemplateVersion] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name("name", value)

    def version(self, number: int | None = None) -> TemplateVersion:
        """Version ``number``, or the active one."""
        wanted = self.active_version if number is None else number
        for v in self.versions:
            if v.version == wanted:
                return v
        have = ", ".join(str(v.version) for v in self.versions)
        raise NotFound(f"template {self.name!r} has no version {wanted} (versions: {have})",
                       hint=f"`ahvlite template versions {self.name}` lists them")

    def next_version(self) -> int:
        return max((v.version for v in self.versions), default=0) + 1

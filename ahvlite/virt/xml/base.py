"""Declared XML properties over an lxml element: the building blocks of domain objects."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar, overload

from lxml import etree

from ahvlite.errors import InvalidSpec

O_ = TypeVar("O_", bound="XmlObject")
V = TypeVar("V")


_STEP = re.compile(r"\{[^}]*\}[^/]+|[^/{]+")


def _steps(path: str) -> list[str]:
    """Split a path on ``/`` but not inside ``{namespace}`` (which holds slashes)."""
    return _STEP.findall(path)


def _find(el: etree._Element, path: str) -> etree._Element | None:
    return el.find(path) if path else el


def _make(el: etree._Element, path: str) -> etree._Element:
    """Find ``path`` (tag names joined by ``/``), creating the missing elements."""
    node = el
    for tag in _steps(path):
        child = node.find(tag)
        if child is None:
            child = etree.SubElement(node, tag)
        node = child
    return node


def _prune(el: etree._Element, path: str) -> None:
    """Remove empty elements left along ``path`` after a value was unset."""
    parts = _steps(path)
    while parts:
        node = el.find("/".join(parts))
        if node is None or len(node) or node.attrib or (node.text or "").strip():
            return
        parent = node.getparent()
        assert parent is not None
        parent.remove(node)
        parts.pop()


class XmlProp(Generic[V]):
    """One value in the XML: the text of ``path``, or its attribute ``attr``.

    ``path`` is relative to the object's element ("" = the element itself). Setting
    None removes the value (and elements it leaves empty).
    """

    def __init__(self, path: str = "", *, attr: str | None = None,
                 parse: Callable[[str], V] = str,  # type: ignore[assignment]
                 render: Callable[[V], str] = str) -> None:
        self.path = path
        self.attr = attr
        self.parse = parse
        self.render = render
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> XmlProp[V]: ...
    @overload
    def __get__(self, obj: XmlObject, owner: type) -> V | None: ...

    def __get__(self, obj: XmlObject | None, owner: type) -> Any:
        if obj is None:
            return self
        node = _find(obj.el, self.path)
        if node is None:
            return None
        raw = node.get(self.attr) if self.attr else node.text
        if raw is None:
            return None
        try:
            return self.parse(raw.strip())
        except ValueError:
            raise InvalidSpec(f"{obj.el.tag}.{self.name}", raw, "a valid value") from None

    def __set__(self, obj: XmlObject, value: V | None) -> None:
        if value is None:
            node = _find(obj.el, self.path)
            if node is None:
                return
            if self.attr:
                node.attrib.pop(self.attr, None)
            else:
                node.text = None
            if self.path:
                _prune(obj.el, self.path)
            return
        node = _make(obj.el, self.path)
        if self.attr:
            node.set(self.attr, self.render(value))
        else:
            node.text = self.render(value)


class Str(XmlProp[str]):
    def __init__(self, path: str = "", *, attr: str | None = None) -> None:
        super().__init__(path, attr=attr, parse=str, render=str)


class Int(XmlProp[int]):
    def __init__(self, path: str = "", *, attr: str | None = None) -> None:
        super().__init__(path, attr=attr, parse=int, render=str)


class YesNo(XmlProp[bool]):
    """A boolean written ``yes``/``no`` (read also from ``on``/``off``)."""

    def __init__(self, path: str = "", *, attr: str | None = None) -> None:
        super().__init__(path, attr=attr, parse=yes_no, render=render_yes)


class OnOff(XmlProp[bool]):
    """A boolean written ``on``/``off``."""

    def __init__(self, path: str = "", *, attr: str | None = None) -> None:
        super().__init__(path, attr=attr, parse=yes_no, render=render_on)


class FlagProp:
    """Presence of an (empty) element, like ``<features><acpi/>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __get__(self, obj: XmlObject | None, owner: type) -> Any:
        if obj is None:
            return self
        return obj.el.find(self.path) is not None

    def __set__(self, obj: XmlObject, value: bool) -> None:
        node = obj.el.find(self.path)
        if value and node is None:
            _make(obj.el, self.path)
        elif not value and node is not None:
            parent = node.getparent()
            assert parent is not None
            parent.remove(node)


def yes_no(value: str) -> bool:
    if value not in ("yes", "no", "on", "off"):
        raise ValueError(value)
    return value in ("yes", "on")


def render_yes(value: bool) -> str:
    return "yes" if value else "no"


def render_on(value: bool) -> str:
    return "on" if value else "off"


_UNITS_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
              "m": 1024, "mib": 1024, "mb": 1000 ** 2 / 1024, "g": 1024 ** 2,
              "gib": 1024 ** 2, "gb": 1000 ** 3 / 1024, "t": 1024 ** 3, "tib": 1024 ** 3}


class MemoryProp:
    """A libvirt memory size in whatever unit the XML has, read and written in MiB."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __get__(self, obj: XmlObject | None, owner: type) -> Any:
        if obj is None:
            return self
        node = obj.el.find(self.path)
        if node is None or not (node.text or "").strip():
            return None
        unit = (node.get("unit") or "KiB").lower()
        if unit not in _UNITS_KIB:
            raise InvalidSpec(f"{self.path}@unit", node.get("unit"),
                              ", ".join(sorted(_UNITS_KIB)))
        return int(int(node.text.strip()) * _UNITS_KIB[unit] // 1024)

    def __set__(self, obj: XmlObject, mib: int | None) -> None:
        node = obj.el.find(self.path)
        if mib is None:
            if node is not None:
                parent = node.getparent()
                assert parent is not None
                parent.remove(node)
            return
        node = _make(obj.el, self.path)
        node.attrib.clear()
        node.set("unit", "MiB")
        node.text = str(mib)


class XmlObject:
    """A typed view of one element. Unknown children and attributes are kept."""

    TAG: ClassVar[str] = ""

    def __init__(self, el: etree._Element | None = None) -> None:
        self.el = el if el is not None else etree.Element(self.TAG)

    @classmethod
    def parse(cls: type[O_], xml: str | bytes) -> O_:
        parser = etree.XMLParser(remove_blank_text=True)
        try:
            el = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, parser)
        except etree.XMLSyntaxError as exc:
            raise InvalidSpec(cls.TAG or "xml", None, f"well-formed XML ({exc})") from None
        if cls.TAG and el.tag != cls.TAG:
            raise InvalidSpec("xml", el.tag, f"a <{cls.TAG}> document")
        return cls(el)

    def to_xml(self) -> str:
        el = etree.fromstring(etree.tostring(self.el))  # a copy: indenting changes text
        etree.indent(el, space="  ")
        return etree.tostring(el, encoding="unicode") + "\n"

    def ensure(self, cls: type[O_], path: str | None = None) -> O_:
        """The child at ``path`` (default: ``cls.TAG``), created when missing."""
        return cls(_make(self.el, path or cls.TAG))

    def remove_child(self, path: str) -> None:
        for node in self.el.findall(path):
            parent = node.getparent()
            assert parent is not None
            parent.remove(node)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XmlObject) and self.to_xml() == other.to_xml()

    __hash__ = None  # type: ignore[assignment]


class Children(Generic[O_]):
    """The child elements ``tag`` under ``path``, each wrapped as ``cls``."""

    def __init__(self, cls: type[O_], path: str = "") -> None:
        self.cls = cls
        self.path = path

    def __get__(self, obj: XmlObject | None, owner: type) -> Any:
        if obj is None:
            return self
        return ChildList(obj, self.cls, self.path)


class ChildList(Generic[O_]):
    """Live list of child objects: iterate, append, remove."""

    def __init__(self, owner: XmlObject, cls: type[O_], path: str) -> None:
        self.owner = owner
        self.cls = cls
        self.path = path

    def _parent(self, create: bool) -> etree._Element | None:
        if not self.path:
            return self.owner.el
        return _make(self.owner.el, self.path) if create else self.owner.el.find(self.path)

    def __iter__(self) -> Iterator[O_]:
        parent = self._parent(False)
        if parent is None:
            return iter(())
        return iter([self.cls(c) for c in parent.findall(self.cls.TAG)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, i: int) -> O_:
        return list(self)[i]

    def append(self, child: O_) -> O_:
        parent = self._parent(True)
        assert parent is not None
        # Keep same-tag siblings together: libvirt's own output groups them.
        same = parent.findall(child.TAG)
        if same:
            same[-1].addnext(child.el)
        else:
            parent.append(child.el)
        return child

    def remove(self, child: O_) -> None:
        parent = child.el.getparent()
        if parent is not None:
            parent.remove(child.el)


class Child(Generic[O_]):
    """The child object at ``path`` (default: the class's tag), or None when absent.

    Reading never creates elements (a round trip must not grow empty ones); use
    :meth:`XmlObject.ensure` to create.
    """

    def __init__(self, cls: type[O_], path: str | None = None) -> None:
        self.cls = cls
        self.path = path or cls.TAG

    def __get__(self, obj: XmlObject | None, owner: type) -> Any:
        if obj is None:
            return self
        node = obj.el.find(self.path)
        return None if node is None else self.cls(node)

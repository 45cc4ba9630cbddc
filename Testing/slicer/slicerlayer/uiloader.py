"""``qt.QUiLoader`` for the test layer: builds a Qt Designer ``.ui`` file from real Qt widgets and the
CTK/qMRML stand-ins, and refuses what the real classes lack.

Every ``<widget class=...>`` must be a Qt widget or a stand-in, every ``<property>`` one the class
declares (``stdset="0"`` marks a dynamic property, set with ``setProperty``), every enum or set value
one Qt (or the stand-in's header) knows, and every ``<connection>`` a signal and slot of the objects
named; otherwise loading raises ``UiError`` naming the line's element, as a class that lacks the name
would fail in Slicer (Qt's own loader only warns there, and the widget then misses its setting).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from PyQt5 import QtCore, QtWidgets

from .pythonqt import boundSignal


class UiError(Exception):
    """The .ui file names something the real class lacks."""


LAYOUT_MARGINS = ("leftMargin", "topMargin", "rightMargin", "bottomMargin")
# Custom classes (the stand-ins), registered by the session: name → class.
CUSTOM_CLASSES: dict[str, type] = {}


def _widgetClass(name: str) -> type:
    cls = CUSTOM_CLASSES.get(name) or getattr(QtWidgets, name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, QtWidgets.QWidget)):
        raise UiError(f"widget class '{name}' is neither a Qt widget nor a CTK or qMRML class of this Slicer")
    return cls


def _enumValue(text: str, owner: type):
    value = 0
    for part in text.split("|"):
        scope, _, name = part.strip().rpartition("::")
        holder = QtCore.Qt if scope == "Qt" else (CUSTOM_CLASSES.get(scope) or getattr(QtWidgets, scope, None) or owner)
        member = getattr(holder, name, None)
        if member is None:
            raise UiError(f"enum value '{part}' does not exist")
        value |= int(member)
    return value


def _value(element, owner: type):
    kind = element.tag
    if kind == "string":
        return element.text or ""
    if kind == "bool":
        return element.text == "true"
    if kind == "number":
        return int(element.text)
    if kind == "double":
        return float(element.text)
    if kind in ("enum", "set"):
        return _enumValue(element.text, owner)
    if kind == "stringlist":
        return [item.text or "" for item in element.findall("string")]
    if kind == "size":
        return QtCore.QSize(int(element.findtext("width")), int(element.findtext("height")))
    if kind == "rect":
        return QtCore.QRect(*(int(element.findtext(k)) for k in ("x", "y", "width", "height")))
    raise UiError(f"property value of type <{kind}> is not supported by the test layer's loader")


def _setProperty(obj, element) -> None:
    name = element.get("name")
    value = _value(list(element)[0], type(obj))
    if element.get("stdset") == "0":
        obj.setProperty(name, value)
        return
    if name == "geometry" and isinstance(obj, QtWidgets.QWidget) and obj.parent() is None:
        obj.resize(value.size())
        return
    if isinstance(obj, QtWidgets.QLayout) and name in LAYOUT_MARGINS:  # Designer's pseudo-properties (QFormBuilder)
        margins = obj.contentsMargins()
        getattr(margins, "set" + name[0].upper() + name[1 : -len("Margin")])(value)
        obj.setContentsMargins(margins)
        return
    metaObject = obj.metaObject()
    index = metaObject.indexOfProperty(name)
    if index < 0:
        raise UiError(f"{type(obj).__name__} '{QtCore.QObject.objectName(obj)}' has no property '{name}'")
    prop = metaObject.property(index)
    if prop.isEnumType() and isinstance(value, int):
        value = prop.enumerator().valueToKey(value) if not prop.isFlagType() else value
    if not prop.write(obj, value):
        raise UiError(f"property '{name}' of {type(obj).__name__} '{QtCore.QObject.objectName(obj)}' does not take {value!r}")


class QUiLoader:
    """PythonQt's ``qt.QUiLoader``: ``load(qfile)`` returns the top-level widget."""

    def load(self, device, parentWidget=None):
        data = bytes(device.readAll()).decode("utf-8")
        root = ElementTree.fromstring(data)
        self._widgets: dict[str, QtCore.QObject] = {}
        top = self._widget(root.find("widget"), parentWidget)
        for connection in root.iter("connection"):
            self._connect(connection)
        return top

    def _widget(self, element, parent):
        cls = _widgetClass(element.get("class"))
        widget = cls(parent) if parent is not None else cls()
        widget.setObjectName(element.get("name"))
        self._widgets[element.get("name")] = widget
        for child in element:
            if child.tag == "property":
                _setProperty(widget, child)
            elif child.tag == "layout":
                self._layout(child, widget, None)
            elif child.tag == "widget":
                self._widget(child, widget)
            elif child.tag == "attribute":
                continue
        return widget

    def _layout(self, element, widget, parentLayout):
        cls = getattr(QtWidgets, element.get("class"), None)
        if cls is None:
            raise UiError(f"layout class '{element.get('class')}' does not exist")
        layout = cls(widget) if widget is not None else cls()
        layout.setObjectName(element.get("name") or "")
        for child in element:
            if child.tag == "property":
                _setProperty(layout, child)
            elif child.tag == "item":
                self._item(child, layout, widget)
        return layout

    def _item(self, element, layout, owner):
        content = list(c for c in element if c.tag in ("widget", "layout", "spacer"))[0]
        if content.tag == "widget":
            item = self._widget(content, owner)
        elif content.tag == "layout":
            item = self._layout(content, None, layout)
        else:
            orientation = content.find("property[@name='orientation']/enum").text
            vertical = orientation.endswith("Vertical")
            item = QtWidgets.QSpacerItem(
                0,
                0,
                QtWidgets.QSizePolicy.Minimum if vertical else QtWidgets.QSizePolicy.Expanding,
                QtWidgets.QSizePolicy.Expanding if vertical else QtWidgets.QSizePolicy.Minimum,
            )
        add = {"widget": "addWidget", "layout": "addLayout", "spacer": "addItem"}[content.tag]
        if isinstance(layout, QtWidgets.QFormLayout):
            row, column = int(element.get("row")), int(element.get("column"))
            span = element.get("colspan") == "2"
            role = (
                QtWidgets.QFormLayout.SpanningRole
                if span
                else (QtWidgets.QFormLayout.LabelRole if column == 0 else QtWidgets.QFormLayout.FieldRole)
            )
            if content.tag == "layout":
                layout.setLayout(row, role, item)
            elif content.tag == "spacer":
                layout.setItem(row, role, item)
            else:
                layout.setWidget(row, role, item)
        elif isinstance(layout, QtWidgets.QGridLayout):
            getattr(layout, add)(
                item, int(element.get("row")), int(element.get("column")), int(element.get("rowspan", 1)), int(element.get("colspan", 1))
            )
        else:
            getattr(layout, add)(item)

    def _connect(self, connection) -> None:
        sender = self._widgets.get(connection.findtext("sender"))
        receiver = self._widgets.get(connection.findtext("receiver"))
        if sender is None or receiver is None:
            raise UiError(f"connection between unknown objects {connection.findtext('sender')!r} and {connection.findtext('receiver')!r}")
        signal = boundSignal(sender, connection.findtext("signal"))
        slotName = connection.findtext("slot").split("(")[0]
        slot = getattr(receiver, slotName, None)
        if slot is None or not callable(slot):
            raise UiError(f"{type(receiver).__name__} has no slot '{connection.findtext('slot')}'")
        signal.connect(slot)

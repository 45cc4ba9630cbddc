"""PythonQt's conventions on real Qt objects (PyQt5, offscreen), as Slicer's Python sees Qt.

Slicer's Python talks to Qt through PythonQt, which differs from PyQt in ways code relies on:

- a Qt property reads and writes as an attribute (``button.enabled = False``, ``combo.count``),
  and a property shadows a method of the same name; ``name`` is ``objectName``;
- ``obj.connect("clicked(bool)", callable)`` connects by the C++ signature, which must exist; the
  callable gets as many of the signal's arguments as it accepts;
- a name a class lacks raises ``AttributeError`` (after dynamic properties and child objects of that
  name were looked at), and a new attribute cannot be created on a C++ object (only on instances of
  Python subclasses);
- an exception in a slot is printed, never fatal (PyQt would abort the process);
- a wrapper is true while its C++ object lives (PyQt makes an empty combo box or layout false).

:func:`install` patches ``QObject`` once per process with these rules (read from PythonQt's
``PythonQtInstanceWrapper.cpp``: member lookup property first, then method, then dynamic property,
then child). :data:`slotErrors` collects what slots raised, so a test can fail on it.
"""

from __future__ import annotations

import inspect
import os
import re
import traceback

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt5 import QtCore, QtGui, QtWidgets, sip  # noqa: E402

# (where, formatted traceback) of every exception a slot raised; PythonQt prints them in Slicer's console.
slotErrors: list[tuple[str, str]] = []
_installed = False
_application = None
_originalGetattribute = QtCore.QObject.__getattribute__
_originalSetattr = QtCore.QObject.__setattr__
# Classes whose instances stand for C++ objects (PyQt's own classes and the test layer's stand-ins):
# no new attributes on them, as PythonQt refuses.
_CPP_CLASSES: set[type] = set()


def markCpp(cls: type) -> type:
    """Declare ``cls`` a stand-in for a C++ class (its instances take no new attributes)."""
    _CPP_CLASSES.add(cls)
    return cls


def _isCppClass(cls: type) -> bool:
    return cls in _CPP_CLASSES or cls.__module__.startswith("PyQt5.")


def _pythonLevel(obj, name: str):
    """An attribute found before Qt's members: the instance's own, or one a Python subclass defines."""
    dictionary = _originalGetattribute(obj, "__dict__")
    if name in dictionary:
        return True
    for cls in type(obj).__mro__:
        if _isCppClass(cls) and cls not in _CPP_CLASSES:
            break  # PyQt's classes: members are Qt's, looked up below
        if name in vars(cls):
            return True
    return False


def _property(obj, name: str):
    metaObject = _originalGetattribute(obj, "metaObject")()
    index = metaObject.indexOfProperty(name)
    if index < 0 and name == "name":
        index = metaObject.indexOfProperty("objectName")
    return metaObject.property(index) if index >= 0 else None


def _getattribute(self, name: str):
    if name.startswith("__") or _pythonLevel(self, name):
        return _originalGetattribute(self, name)
    prop = _property(self, name)
    if prop is not None:
        return prop.read(self)
    try:
        return _originalGetattribute(self, name)
    except AttributeError:
        pass
    dynamic = _originalGetattribute(self, "property")(name)
    if dynamic is not None:
        return dynamic
    for child in _originalGetattribute(self, "children")():
        if QtCore.QObject.objectName(child) == name:
            return child
    raise AttributeError(f"{type(self).__name__} has no attribute named '{name}'")


def _setattr(self, name: str, value) -> None:
    prop = _property(self, name)
    if prop is not None:
        if not prop.isWritable():
            raise AttributeError(f"Property '{name}' of {type(self).__name__} object is not writable")
        if isinstance(value, tuple):  # PythonQt converts any sequence (a QStringList from a tuple of str)
            value = list(value)
        if not prop.write(self, value):
            raise AttributeError(
                f"Property '{name}' of type '{prop.typeName()}' does not accept an object of type {type(value).__name__} ({value!r})"
            )
        return
    # A stand-in's own state (``_name``) is its implementation, not an attribute of the C++ API.
    if _pythonLevel(self, name) or not _isCppClass(type(self)) or (name.startswith("_") and type(self) in _CPP_CLASSES):
        _originalSetattr(self, name, value)
        return
    try:
        _originalGetattribute(self, name)
    except AttributeError:
        raise AttributeError(
            f"'{name}' does not exist on {type(self).__name__} and creating new attributes on C++ objects is not allowed"
        ) from None
    raise AttributeError(f"'{name}' of {type(self).__name__} is a method or signal and can not be overwritten")


def _arguments(signature: str) -> tuple[str, list[str]]:
    match = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", signature)
    if match is None:
        raise ValueError(f"'{signature}' is not a Qt signature like 'clicked(bool)'")
    normalized = bytes(QtCore.QMetaObject.normalizedSignature(signature)).decode()
    arguments = normalized[normalized.index("(") + 1 : -1]
    return match.group(1), [a for a in arguments.split(",") if a]


def _accepted(callable_) -> int | None:
    """How many positional arguments a slot takes (None: any number)."""
    try:
        parameters = inspect.signature(callable_).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _slot(callable_, where: str):
    accepted = _accepted(callable_)

    def invoke(*args):
        try:
            callable_(*(args if accepted is None else args[:accepted]))
        except Exception:  # printed by PythonQt in Slicer; recorded here for the test
            slotErrors.append((where, traceback.format_exc()))

    return invoke


_connections: dict[tuple[int, str, int], tuple[object, object]] = {}


def boundSignal(obj, signature: str):
    """The PyQt bound signal of a C++ signature, which must be one of the object's signals."""
    name, arguments = _arguments(signature)
    normalized = f"{name}({','.join(arguments)})"
    known = getattr(type(obj), "cppSignals", {})
    if normalized in known:
        signal = _originalGetattribute(obj, known[normalized][0])
        return signal[known[normalized][1]] if known[normalized][1] is not None else signal
    metaObject = _originalGetattribute(obj, "metaObject")()
    signatures = {
        bytes(metaObject.method(i).methodSignature()).decode()
        for i in range(metaObject.methodCount())
        if metaObject.method(i).methodType() == QtCore.QMetaMethod.Signal
    }
    if normalized not in signatures:
        raise AttributeError(f"{type(obj).__name__} has no signal '{normalized}' (it has: {', '.join(sorted(signatures))})")
    signal = _originalGetattribute(obj, name)
    return signal[tuple(arguments)] if arguments and _overloaded(metaObject, name) else signal


def _overloaded(metaObject, name: str) -> bool:
    return sum(1 for i in range(metaObject.methodCount()) if bytes(metaObject.method(i).name()).decode() == name) > 1


def _connect(self, signature: str, receiver, slot: str | None = None) -> bool:
    if slot is not None:  # connect(signal, receiverObject, "slot(args)")
        receiver = getattr(receiver, _arguments(slot)[0])
    signal = boundSignal(self, signature)
    invoke = _slot(receiver, f"{type(self).__name__}.{signature} → {getattr(receiver, '__qualname__', receiver)}")
    signal.connect(invoke)
    _connections[(id(self), signature, id(receiver))] = (signal, invoke)
    return True


def _disconnect(self, signature: str, receiver=None, slot: str | None = None) -> bool:
    if slot is not None:
        receiver = getattr(receiver, _arguments(slot)[0])
    found = _connections.pop((id(self), signature, id(receiver)), None)
    if found is None:
        return False
    found[0].disconnect(found[1])
    return True


def install() -> QtWidgets.QApplication:
    """Patch Qt with PythonQt's rules (once) and return the process's ``QApplication``."""
    global _installed, _application
    if QtWidgets.QApplication.instance() is None:
        _application = QtWidgets.QApplication(["Slicer"])  # held here: one per process, never collected
    application = QtWidgets.QApplication.instance()
    if not _installed:
        QtCore.QObject.__getattribute__ = _getattribute
        QtCore.QObject.__setattr__ = _setattr
        QtCore.QObject.connect = _connect
        QtCore.QObject.disconnect = _disconnect
        QtCore.QObject.__bool__ = lambda self: not sip.isdeleted(self)
        _installed = True
    return application


def qtModule():
    """PythonQt's ``qt`` module: QtCore, QtGui and QtWidgets in one namespace, with ``QUiLoader``."""
    import types

    from .uiloader import QUiLoader

    module = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets):
        for name in dir(source):
            if name.startswith("Q") or name == "Qt":
                setattr(module, name, getattr(source, name))
    module.QUiLoader = QUiLoader
    return module

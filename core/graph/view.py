"""A small editable view of an ONNX graph: producers, consumers, constant parameters.

The rewrites in :mod:`opendlc.graph.normalize` and :mod:`opendlc.graph.equalize` work on a copy of the
model through this view.  It keeps the producer/consumer maps up to date as nodes are removed and
rewired, and writes parameters without disturbing other users of a shared initializer.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


class GraphView:
    """Producers, consumers and initializers of ``model.graph`` (edited in place)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the maps (after edits that bypassed the view's own methods)."""
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.graph_outputs = {o.name for o in self.graph.output}
        self._taken = set(self.inits) | set(self.producer) | {i.name for i in self.graph.input}

    # Reading ---------------------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer, or None when ``name`` is computed (or a graph input)."""
        if not name or name not in self.inits:
            return None
        if any(i.name == name for i in self.graph.input):  # an overridable default, not a constant
            return None
        return numpy_helper.to_array(self.inits[name])

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The only node reading ``tensor``, or None if several read it or it is a graph output."""
        users = self.consumers.get(tensor, [])
        if tensor in self.graph_outputs or len(users) != 1:
            return None
        return users[0]

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def fresh_name(self, base: str) -> str:
        name, k = base, 1
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name

    # Writing ---------------------------------------------------------------------------------
    def set_param(self, node: onnx.NodeProto, index: int, value: np.ndarray, base_name: str = "") -> None:
        """Make input ``index`` of ``node`` the constant ``value``.

        The initializer is overwritten only when this node is its one user; otherwise (shared
        weights, or no input yet) a new initializer is added, so no other node changes.
        """
        current = node.input[index] if index < len(node.input) else ""
        users = self.consumers.get(current, []) if current else []
        if current and current in self.inits and len(users) == 1 and current not in self.graph_outputs:
            if not any(i.name == current for i in self.graph.input):
                self.inits[current].CopyFrom(numpy_helper.from_array(value, current))
                return
        name = self.fresh_name(base_name or (current or f"{node.name or node.op_type}_param"))
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = self.graph.initializer[-1]
        while len(node.input) <= index:
            node.input.append("")
        if current:
            self.consumers[current] = [n for n in self.consumers[current] if n is not node]
        node.input[index] = name
        self.consumers[name].append(node)

    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                break
        node.attribute.append(onnx.helper.make_attribute(name, value))

    def remove_node(self, node: onnx.NodeProto) -> None:
        for name in node.input:
            if name:
                self.consumers[name] = [n for n in self.consumers[name] if n is not node]
        for out in node.output:
            if self.producer.get(out) is node:
                del self.producer[out]
        for i, n in enumerate(self.graph.node):
            if n is node:
                del self.graph.node[i]
                break

    def absorb_successor(self, node: onnx.NodeProto, successor: onnx.NodeProto) -> None:
        """Drop ``successor`` (whose work ``node`` now does): ``node`` produces its output instead.

        The tensor names downstream (graph outputs included) stay as they were.
        """
        old, new = node.output[0], successor.output[0]
        self.remove_node(successor)
        node.output[0] = new
        self.producer.pop(old, None)
        self.producer[new] = node
        self.consumers.pop(old, None)

    def replace_uses(self, old: str, new: str) -> None:
        """Every reader of ``old`` reads ``new`` instead (``old`` must not be a graph output)."""
        for n in self.consumers.get(old, []):
            for i, name in enumerate(n.input):
                if name == old:
                    n.input[i] = new
            self.consumers[new].append(n)
        self.consumers.pop(old, None)

    def insert_node(self, node: onnx.NodeProto, after: onnx.NodeProto | None = None) -> None:
        """Add ``node`` (right after ``after`` when given, keeping the list topologically sorted)."""
        position = len(self.graph.node)
        if after is not None:
            for i, n in enumerate(self.graph.node):
                if n is after:
                    position = i + 1
                    break
        self.graph.node.insert(position, node)
        stored = self.graph.node[position]
        for out in stored.output:
            self.producer[out] = stored
            self._taken.add(out)
        for name in stored.input:
            if name:
                self.consumers[name].append(stored)

    def prune(self) -> None:
        """Drop initializers nobody reads and value_info of tensors that no longer exist."""
        self.refresh()
        used = set(self.consumers) | self.graph_outputs
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        alive = set(self.producer) | set(self.inits) | {i.name for i in self.graph.input}
        vi = [v for v in self.graph.value_info if v.name in alive]
        del self.graph.value_info[:]
        self.graph.value_info.extend(vi)
        self.refresh()


def scalar(value: np.ndarray | None) -> float | None:
    """The single value of a one-element constant, else None."""
    if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.number):
        return None
    return float(value.reshape(()))


def is_close(value: float | None, target: float, rel: float = 1e-6) -> bool:
    return value is not None and abs(value - target) <= rel * max(abs(target), 1e-30)

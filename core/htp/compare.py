"""Each op on the HTP emulator against the same op in the CPU QDQ simulation, fed the emulator's inputs.

Comparing whole outputs mixes two things: an op that HTP computes differently, and a one-step rounding
difference carried through the rest of the network.  :func:`op_differences` separates them: every
encoded tensor of the container is exposed on the HTP record, and each is recomputed on the CPU from the
emulator's own values of the encoded tensors it is computed from (so only that op -- as HTP groups it,
e.g. a Conv with its fused Relu -- is compared).  The difference is counted in the tensor's output steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from opendlc.container import Container
from opendlc.errors import UsageError
from opendlc.htp.prepare import DEFAULT_SOC, prepare_container
from opendlc.htp.qdq import QDQ_OPS, lower_for_htp, qdq_model_for
from opendlc.htp.run import run_record
from opendlc.quant.export import DEQUANTIZED_SUFFIX


@dataclass
class OpDifference:
    """How far HTP's value of one encoded tensor is from the CPU's, given the same inputs."""

    tensor: str
    ops: str  # the op types computing it, as HTP groups them ("Conv+Relu")
    bits: int
    max_steps: int
    differing: int  # values that differ by at least one step
    values: int


def encoded_activations(container: Container) -> list[str]:
    """The container's integer-encoded activations, in graph order."""
    if container.encodings is None:
        raise UsageError(f"{container.path or 'the model'}: not quantized (opendlc quantize first)")
    enc = container.encodings.tensors
    return [
        o
        for n in container.model.graph.node
        for o in n.output
        if o in enc and enc[o].kind == "activation" and enc[o].dtype == "int"
    ]


def op_differences(
    container: Container, sample: dict[str, np.ndarray], *, soc: str = DEFAULT_SOC
) -> list[OpDifference]:
    """Every encoded activation of ``container`` on ``soc``'s emulator vs its op on the CPU, for one input."""
    import onnxruntime as ort

    tensors = encoded_activations(container)
    assert container.encodings is not None
    cached = prepare_container(container, socs=soc, progress=False, output_tensors=tensors)
    htp = run_record(cached, soc).run(sample)
    lowered, _ = lower_for_htp(qdq_model_for(container))
    producer = {o: n for n in lowered.graph.node for o in n.output}
    out = []
    for t in tensors:
        model, inputs, target = _local_model(lowered, producer, t, set(tensors) - {t})
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        cpu = session.run([target], {name: htp[v] if v in htp else sample[v] for name, v in inputs.items()})[
            0
        ]
        e = container.encodings.tensors[t].encodings[0]
        steps = np.rint(np.abs(np.asarray(htp[t], np.float64) - cpu) / e.scale)
        ops = "+".join(n.op_type for n in model.graph.node if n.op_type not in QDQ_OPS) or "(none)"
        out.append(
            OpDifference(t, ops, e.bitwidth, int(steps.max(initial=0)), int((steps > 0).sum()), steps.size)
        )
    return out


def _local_model(
    lowered: onnx.ModelProto, producer: dict[str, onnx.NodeProto], tensor: str, encoded: set[str]
) -> tuple[onnx.ModelProto, dict[str, str], str]:
    """The part of ``lowered`` (``producer``: its node making each tensor) that computes ``tensor`` from
    the encoded tensors before it: (model, {its input: the encoded tensor or graph input it is}, its
    output)."""
    g = lowered.graph
    outputs = {o.name for o in g.output}

    def dequantized(t: str) -> str:  # the QDQ export's name for t's simulated value (t itself at the outputs)
        return t if t in outputs else t + DEQUANTIZED_SUFFIX

    known = {dequantized(t): t for t in encoded}
    constants = {i.name for i in g.initializer}
    graph_inputs = {i.name for i in g.input}
    target = dequantized(tensor)
    taken: list[onnx.NodeProto] = []
    inputs: set[str] = set()
    seen: set[str] = set()
    stack = [target]
    while stack:
        name = stack.pop()
        if name in seen or not name or name in constants:
            continue
        seen.add(name)
        if name != target and (name in known or name in graph_inputs):
            inputs.add(name)
            continue
        taken.append(producer[name])
        stack.extend(producer[name].input)
    taken_ids = {id(n) for n in taken}
    nodes = [n for n in g.node if id(n) in taken_ids]  # in graph order
    read = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes,
        "one_op",
        [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in sorted(inputs)],
        [helper.make_tensor_value_info(target, TensorProto.FLOAT, None)],
        [i for i in g.initializer if i.name in read],
    )
    m = helper.make_model(graph, opset_imports=lowered.opset_import)
    m.ir_version = lowered.ir_version
    return m, {v: known.get(v, v) for v in inputs}, target

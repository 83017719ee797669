"""Two variants of an ONNX generator that let its tiles share instance-norm statistics: one records, one applies.

The torch path shares statistics by swapping the InstanceNorm2d modules' forward (tiling.py); an
exported graph has no modules, so the same is done by rewriting the graph:

- the recording variant is the model with every InstanceNormalization input's mean and (biased)
  variance over height and width added as outputs, computed as the node itself computes them;
- the applying variant takes those as inputs and normalises with them: each node becomes
  x * a + b with a = scale / sqrt(var + eps) and b = bias - mean * a, where only the
  per-channel a and b are new work (two full-size element-wise operations per node).

Both work on float32 and int8 (QDQ) exports alike: instance norms stay float32 in both.
"""

from __future__ import annotations

import copy
from typing import Any

NORM = "InstanceNormalization"
AXES = "imgtrans_axes_hw"
UNSQUEEZE = "imgtrans_axes_c11"


def norm_count(model: Any) -> int:
    return sum(node.op_type == NORM for node in model.graph.node)


def stat_names(i: int) -> tuple[str, str]:
    """Graph names of the i-th (in node order) norm's mean and variance."""
    return f"imgtrans_norm{i}_mean", f"imgtrans_norm{i}_var"


def _axes(model: Any, name: str, axes: list[int]) -> None:
    import numpy as np
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))


def _stat(name: str) -> Any:
    from onnx import TensorProto, helper

    # The channel count differs between norms, so it stays unnamed (a shared name would equate them).
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", None, 1, 1])


def recording_variant(model: Any) -> Any:
    """A copy of `model` that also outputs every instance norm's input statistics."""
    from onnx import helper

    out = copy.deepcopy(model)
    _axes(out, AXES, [2, 3])
    added = []
    for i, node in enumerate(n for n in model.graph.node if n.op_type == NORM):
        x, (mean, var) = node.input[0], stat_names(i)
        centred, squared = f"{mean}_centred", f"{mean}_squared"
        added += [
            helper.make_node("ReduceMean", [x, AXES], [mean], keepdims=1),
            helper.make_node("Sub", [x, mean], [centred]),
            helper.make_node("Mul", [centred, centred], [squared]),
            helper.make_node("ReduceMean", [squared, AXES], [var], keepdims=1),
        ]
        out.graph.output.extend([_stat(mean), _stat(var)])
    # After every existing node, so the node list stays in topological order.
    out.graph.node.extend(added)
    return out


def applying_variant(model: Any) -> Any:
    """A copy of `model` whose instance norms normalise with statistics given as inputs."""
    from onnx import helper

    out = copy.deepcopy(model)
    _axes(out, UNSQUEEZE, [1, 2])
    nodes = []
    i = 0
    for node in model.graph.node:
        if node.op_type != NORM:
            nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        x, scale, bias = node.input
        mean, var = stat_names(i)
        p = f"imgtrans_norm{i}"
        nodes += [
            helper.make_node("Constant", [], [f"{p}_eps"], value_float=eps),
            helper.make_node("Add", [var, f"{p}_eps"], [f"{p}_var_eps"]),
            helper.make_node("Sqrt", [f"{p}_var_eps"], [f"{p}_std"]),
            helper.make_node("Unsqueeze", [scale, UNSQUEEZE], [f"{p}_scale"]),
            helper.make_node("Unsqueeze", [bias, UNSQUEEZE], [f"{p}_bias"]),
            helper.make_node("Div", [f"{p}_scale", f"{p}_std"], [f"{p}_a"]),
            helper.make_node("Mul", [mean, f"{p}_a"], [f"{p}_mean_a"]),
            helper.make_node("Sub", [f"{p}_bias", f"{p}_mean_a"], [f"{p}_b"]),
            helper.make_node("Mul", [x, f"{p}_a"], [f"{p}_xa"]),
            helper.make_node("Add", [f"{p}_xa", f"{p}_b"], list(node.output), name=node.name),
        ]
        out.graph.input.extend([_stat(mean), _stat(var)])
        i += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out

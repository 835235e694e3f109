"""The decoder's with-cache step as a graph of its own, read out of the bundled ORT file.

Moonshine's ``decoder_model_merged.ort`` is one graph with an ``If`` on
``use_cache_branch``: the *else* branch is the first decoder step (no cache; it also
computes the cross-attention keys and values, ``present.*.encoder.*``, from the encoder
output), the *then* branch is every later step. An ``If`` must produce all of its outputs,
so every later step also copies each layer's cross-attention cache out again
(``present.*.encoder.*`` = ``past_key_values.*.encoder.*``): 12 tensors of
``8 x frames x 36`` floats per step, 1.7 MB for a 3 s utterance, thrown away by the caller.
Measured on this box, that and the ``If`` itself were 13-15 % of a decoder step.

:func:`cache_step_decoder` builds, from the merged file, the graph of the *then* branch
alone: the same nodes and weights, inputs without ``use_cache_branch``, outputs ``logits``
and ``present.*.decoder.*`` only; nodes no output needs are dropped. ONNX Runtime runs the
same kernels on the same inputs, so the tokens are the merged model's
(``tests/unit/test_asr_graph.py`` checks them on the bundled recordings).

The ORT format is a flatbuffer (schema and Python bindings in
``onnxruntime.tools.ort_format_model``); :func:`read_ort_model` turns it back into an ONNX
``ModelProto`` (nodes in dependency order, initializers, value types), the format ONNX
Runtime builds a session from. Nothing is downloaded: the weights are the wheel's.

Example::

    >>> from streamscribe.processors.asr import ModelFiles
    >>> step = cache_step_decoder(ModelFiles.bundled().decoder)
    >>> [o.name for o in step.graph.output][:3]
    ['logits', 'present.0.decoder.key', 'present.0.decoder.value']
    >>> "use_cache_branch" in {i.name for i in step.graph.input}
    False
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from streamscribe.core.errors import AsrModelError

CACHE_FLAG: Final = "use_cache_branch"
"""The merged decoder's boolean input: True selects the with-cache branch."""

LOGITS: Final = "logits"


def read_ort_model(path: Path | str) -> Any:
    """Read an ORT-format model file as an ONNX ``ModelProto`` (subgraphs included).

    Raises :class:`AsrModelError` for a file that is not an ORT model or holds what this
    reader does not convert (sparse or external initializers, attribute kinds other than
    the ONNX basic ones).
    """
    import onnx
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import (
        InferenceSession,
    )

    data = Path(path).read_bytes()
    try:
        model = InferenceSession.GetRootAs(data, 0).Model()
        if model is None:
            raise AsrModelError(f"{path}: no model in the ORT file")
        opsets = [
            onnx.helper.make_opsetid(
                _s(model.OpsetImport(i).Domain()), model.OpsetImport(i).Version()
            )
            for i in range(model.OpsetImportLength())
        ]
        graph = _graph(model.Graph(), "main")
    except AsrModelError:
        raise
    except Exception as exc:  # flatbuffers raises plain Python errors on a bad file
        raise AsrModelError(f"{path}: cannot read the ORT model: {exc}") from exc
    return onnx.helper.make_model(
        graph, opset_imports=opsets, ir_version=model.IrVersion(), producer_name="streamscribe"
    )


def cache_step_decoder(merged_path: Path | str, *, per_row: bool = False) -> Any:
    """The merged decoder's with-cache branch as a model of its own (see the module doc).

    ``per_row``: activations quantized token by token (:func:`per_row_quantized`), for
    runs of several tokens or rows whose results must not depend on each other.
    Raises :class:`AsrModelError` when the merged graph is not the expected one ``If`` on
    :data:`CACHE_FLAG`.
    """
    merged = read_ort_model(merged_path)
    graph, branch = _merged_if(merged, merged_path)
    then = next((a.g for a in branch.attribute if a.name == "then_branch"), None)
    if then is None or len(then.output) != len(branch.output):
        raise AsrModelError(f"{merged_path}: the If has no then_branch matching its outputs")
    wanted = [o for o in graph.output if o.name == LOGITS or ".decoder." in o.name]
    return _branch_model(merged, branch, then, wanted, "decoder_with_cache", per_row=per_row)


def _merged_if(merged: Any, merged_path: Path | str) -> tuple[Any, Any]:
    graph = merged.graph
    branches = [n for n in graph.node if n.op_type == "If"]
    if len(branches) != 1 or list(branches[0].input) != [CACHE_FLAG]:
        raise AsrModelError(f"{merged_path}: not a merged decoder with one If on {CACHE_FLAG}")
    return graph, branches[0]


def _branch_model(
    merged: Any, branch: Any, sub: Any, wanted: list[Any], name: str, *, per_row: bool
) -> Any:
    """One branch of the merged decoder's ``If`` with the outer nodes, as a model whose
    outputs are ``wanted`` (the If's names); nodes none of them needs are dropped."""
    import onnx

    graph = merged.graph
    outer = [n for n in graph.node if n is not branch]
    # The branch's outputs become the model's, under the If's names.
    made = {x for n in sub.node for x in n.output}
    rename = {
        inner.name: outer_name
        for inner, outer_name in zip(sub.output, branch.output, strict=True)
        if inner.name in made
    }
    nodes = []
    for node in [*outer, *sub.node]:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.output[:] = [rename.get(x, x) for x in node.output]
        node.input[:] = [rename.get(x, x) for x in node.input]
        nodes.append(node)
    produced = {x for n in nodes for x in n.output}
    missing = [o.name for o in wanted if o.name not in produced]
    if missing or not wanted or wanted[0].name != LOGITS:
        raise AsrModelError(f"{name}: the branch does not produce {missing}")
    initializers = [*graph.initializer, *sub.initializer]
    if per_row:
        nodes = per_row_quantized(nodes, initializers, keep={i.name for i in graph.input})
    nodes = _needed(nodes, [o.name for o in wanted])
    used = {x for n in nodes for x in n.input}
    initializers = [t for t in initializers if t.name in used]
    inputs = [i for i in graph.input if i.name != CACHE_FLAG and i.name in used]
    model = onnx.helper.make_graph(nodes, name, inputs, wanted, initializers)
    return onnx.helper.make_model(
        model, opset_imports=merged.opset_import, ir_version=merged.ir_version
    )


def _needed(nodes: list[Any], outputs: Iterable[str]) -> list[Any]:
    """The nodes ``outputs`` depend on, in their order (subgraph inputs count as inputs)."""
    producer = {x: k for k, n in enumerate(nodes) for x in n.output}
    keep: set[int] = set()
    todo = [producer[x] for x in outputs]
    while todo:
        k = todo.pop()
        if k in keep:
            continue
        keep.add(k)
        todo.extend(producer[x] for x in _reads(nodes[k]) if x in producer)
    return [n for k, n in enumerate(nodes) if k in keep]


def _reads(node: Any) -> set[str]:
    """Every name a node reads: its inputs and its subgraphs' outer-scope names."""
    names = {x for x in node.input if x}
    for attr in node.attribute:
        for sub in [attr.g, *attr.graphs] if attr.HasField("g") or attr.graphs else []:
            local = {x for n in sub.node for x in n.output} | {t.name for t in sub.initializer}
            local |= {i.name for i in sub.input}
            names |= {x for n in sub.node for x in _reads(n)} - local
    return names


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def _tensor(t: Any) -> Any:
    import onnx

    dims = [t.Dims(i) for i in range(t.DimsLength())]
    if t.ExternalDataOffset() > 0:
        raise AsrModelError(f"initializer {_s(t.Name())} holds external data")
    if t.StringDataLength():
        strings = [t.StringData(i) for i in range(t.StringDataLength())]
        return onnx.helper.make_tensor(_s(t.Name()), t.DataType(), dims, strings)
    proto = onnx.TensorProto(name=_s(t.Name()), data_type=t.DataType(), dims=dims)
    if t.RawDataLength():
        proto.raw_data = t.RawDataAsNumpy().tobytes()
    return proto


def _value_info(v: Any) -> Any:
    import onnx
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TensorTypeAndShape import (
        TensorTypeAndShape,
    )

    name, info = _s(v.Name()), v.Type()
    if info is None or info.ValueType() != 1:  # not a tensor: leave the type to inference
        return onnx.helper.make_empty_tensor_value_info(name)
    tensor = TensorTypeAndShape()
    tensor.Init(info.Value().Bytes, info.Value().Pos)
    shape = tensor.Shape()
    dims: list[int | str | None] | None = None
    if shape is not None:
        dims = []
        for i in range(shape.DimLength()):
            value = shape.Dim(i).Value()
            if value is not None and value.DimType() == 1:
                dims.append(value.DimValue())
            elif value is not None and value.DimType() == 2:
                dims.append(_s(value.DimParam()))
            else:
                dims.append(None)
    return onnx.helper.make_tensor_value_info(name, tensor.ElemType(), dims)


def _attribute(a: Any) -> Any:
    import onnx
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.AttributeType import (
        AttributeType as Kind,
    )

    name, kind, make = _s(a.Name()), a.Type(), onnx.helper.make_attribute
    proto = onnx.AttributeProto
    if kind == Kind.FLOAT:
        return make(name, a.F())
    if kind == Kind.INT:
        return make(name, a.I())
    if kind == Kind.STRING:
        return make(name, a.S())
    if kind == Kind.TENSOR:
        return make(name, _tensor(a.T()))
    if kind == Kind.GRAPH:
        return make(name, _graph(a.G(), name))
    if kind == Kind.FLOATS:
        return make(name, [a.Floats(i) for i in range(a.FloatsLength())], attr_type=proto.FLOATS)
    if kind == Kind.INTS:
        return make(name, [a.Ints(i) for i in range(a.IntsLength())], attr_type=proto.INTS)
    if kind == Kind.STRINGS:
        strings = [a.Strings(i) for i in range(a.StringsLength())]
        return make(name, strings, attr_type=proto.STRINGS)
    raise AsrModelError(f"attribute {name}: kind {kind} is not converted")


def _graph(g: Any, name: str) -> Any:
    import onnx

    if g.SparseInitializersLength():
        raise AsrModelError(f"graph {name}: sparse initializers are not converted")
    ends = {_s(g.Inputs(i)) for i in range(g.InputsLength())}
    ends |= {_s(g.Outputs(i)) for i in range(g.OutputsLength())}
    args = {}
    for i in range(g.NodeArgsLength()):
        arg = g.NodeArgs(i)
        if (arg_name := _s(arg.Name())) in ends:
            args[arg_name] = arg
    initializers = [_tensor(g.Initializers(i)) for i in range(g.InitializersLength())]
    nodes, implicit = [], []
    for i in range(g.NodesLength()):
        n = g.Nodes(i)
        node = onnx.helper.make_node(
            _s(n.OpType()),
            [_s(n.Inputs(j)) for j in range(n.InputsLength())],
            [_s(n.Outputs(j)) for j in range(n.OutputsLength())],
            name=_s(n.Name()),
            domain=_s(n.Domain()) or None,
        )
        node.attribute.extend(_attribute(n.Attributes(j)) for j in range(n.AttributesLength()))
        nodes.append(node)
        implicit.append([_s(n.ImplicitInputs(j)) for j in range(n.ImplicitInputsLength())])
    inputs = [_s(g.Inputs(i)) for i in range(g.InputsLength())]
    outputs = [_s(g.Outputs(i)) for i in range(g.OutputsLength())]
    constant = {t.name for t in initializers}
    # The types of intermediate values are left out: ONNX Runtime infers them (and
    # reading them all took 40 % of the conversion).
    return onnx.helper.make_graph(
        _in_dependency_order(nodes, implicit),
        name,
        [_value_info(args[x]) for x in inputs if x not in constant],
        [_value_info(args[x]) for x in outputs],
        initializers,
    )


def _in_dependency_order(nodes: list[Any], implicit: list[list[str]]) -> list[Any]:
    """Nodes sorted so each comes after the producers of what it reads (ONNX requires it;
    the ORT file keeps them by index, and an ``If`` reads outer names only implicitly)."""
    producer = {x: k for k, n in enumerate(nodes) for x in n.output}
    order: list[Any] = []
    done: set[int] = set()
    for root in range(len(nodes)):
        stack = [(root, False)]
        while stack:
            k, expanded = stack.pop()
            if k in done:
                continue
            if expanded:
                done.add(k)
                order.append(nodes[k])
                continue
            stack.append((k, True))
            reads = [*nodes[k].input, *implicit[k]]
            stack.extend(
                (producer[x], False) for x in reads if x in producer and producer[x] not in done
            )
    return order


def prefill_decoder(merged_path: Path | str) -> Any:
    """The merged decoder's first step (the *else* branch) as a model of its own, for many
    tokens at once, each token's activations quantized on their own (:func:`per_row_quantized`).

    Inputs ``input_ids`` (``batch x tokens``), ``encoder_hidden_states`` and
    ``encoder_attention_mask``; outputs ``logits`` for every position and every
    ``present.*``. Fed ``<s>`` and a draft of tokens, one run gives the logits a step-by-step
    decode would compute at each position (the self-attention is causal), so a draft is
    checked in one run instead of one run per token.
    """
    merged = read_ort_model(merged_path)
    graph, branch = _merged_if(merged, merged_path)
    other = next((a.g for a in branch.attribute if a.name == "else_branch"), None)
    if other is None or len(other.output) != len(branch.output):
        raise AsrModelError(f"{merged_path}: the If has no else_branch matching its outputs")
    wanted = list(graph.output)
    return _branch_model(merged, branch, other, wanted, "decoder_prefill", per_row=True)


def per_row_quantized(nodes: list[Any], initializers: list[Any], keep: set[str]) -> list[Any]:
    """``nodes`` with every dynamic quantization of an activation done row by row.

    ORT's ``DynamicQuantizeLinear`` and ``DynamicQuantizeMatMul`` quantize a whole tensor
    with one scale and zero point, so the result for one token depends on the other
    tokens of the same run. Rewritten here with standard operators, each row (token) gets
    the scale and zero point ORT computes for that row alone, and the same integer
    products: ``(xq - zx) . (wq - zw)`` as ``MatMulInteger(xq, wq - zw) - zx * colsum``
    (ORT's ``MatMulInteger`` takes one zero point for ``x``). Quantizations of the names
    in ``keep`` (the encoder's output, one tensor for every token) are left as they are.
    ``initializers`` gets the new constants.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    weights = {t.name: t for t in initializers}
    quantized_by: dict[str, tuple[str, str]] = {}  # DQL output -> (its input, role)
    out: list[Any] = []
    made: dict[str, dict[str, str]] = {}  # activation -> names of its per-row quantization
    counter = [0]

    def const(value: Any, hint: str) -> str:
        counter[0] += 1
        name = f"per_row/{hint}_{counter[0]}"
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        counter[0] += 1
        name = f"per_row/{hint}_{counter[0]}"
        out.append(onnx.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def rows_of(x: str, k: int) -> dict[str, str]:
        if x in made:
            return made[x]
        x2 = node("Reshape", [x, const(np.array([-1, k], np.int64), "rk")], "x2")
        axis = const(np.array([1], np.int64), "axis")
        zero = const(np.float32(0.0), "zero")
        lo = node("Min", [node("ReduceMin", [x2, axis], "min", keepdims=1), zero], "lo")
        hi = node("Max", [node("ReduceMax", [x2, axis], "max", keepdims=1), zero], "hi")
        raw = node("Div", [node("Sub", [hi, lo], "range"), const(np.float32(255.0), "q")], "s")
        scale = node(
            "Where", [node("Equal", [hi, lo], "flat"), const(np.float32(1.0), "one"), raw], "scale"
        )
        initial = node("Sub", [zero, node("Div", [lo, scale], "lo_s")], "izp")
        zp = node(
            "Round", [node("Clip", [initial, zero, const(np.float32(255.0), "qmax")], "c")], "zp"
        )
        flat = const(np.array([-1], np.int64), "flat")
        zp_u8 = node(
            "Reshape", [node("Cast", [zp], "zp_u8", to=onnx.TensorProto.UINT8), flat], "zp1"
        )
        xq = node("QuantizeLinear", [x2, node("Reshape", [scale, flat], "s1"), zp_u8], "xq", axis=0)
        zp_i32 = node("Cast", [zp], "zp_i32", to=onnx.TensorProto.INT32)
        lead = node(
            "Slice",
            [
                node("Shape", [x], "shape"),
                const(np.array([0], np.int64), "b"),
                const(np.array([-1], np.int64), "e"),
            ],
            "lead",
        )
        made[x] = {"xq": xq, "scale": scale, "zp": zp_i32, "lead": lead}
        return made[x]

    def matmul(x: str, w: str, w_scale: str, w_zp: str, bias: str, y: str) -> None:
        wq = numpy_helper.to_array(weights[w])
        zw = numpy_helper.to_array(weights[w_zp]).astype(np.int32)
        k, n = wq.shape
        if zw.size != 1:
            raise AsrModelError(f"{w}: per-column zero points are not rewritten")
        colsum = (wq.astype(np.int32) - zw).sum(axis=0, dtype=np.int32)
        q = rows_of(x, k)
        acc = node("MatMulInteger", [q["xq"], w, "", w_zp], "acc")
        acc = node("Sub", [acc, node("Mul", [q["zp"], const(colsum, "colsum")], "corr")], "acc_x")
        val = node(
            "Mul",
            [
                node("Cast", [acc], "accf", to=onnx.TensorProto.FLOAT),
                node("Mul", [q["scale"], w_scale], "mult"),
            ],
            "val",
        )
        if bias:
            val = node("Add", [val, bias], "bias")
        shape = node("Concat", [q["lead"], const(np.array([n], np.int64), "n")], "shape_y", axis=0)
        out.append(onnx.helper.make_node("Reshape", [val, shape], [y], name=f"per_row/{y}"))

    for n in nodes:
        if n.op_type == "DynamicQuantizeLinear" and n.input[0] not in keep:
            for role, name in zip(("xq", "scale", "zp"), n.output, strict=True):
                quantized_by[name] = (n.input[0], role)
            continue
        if n.op_type == "DynamicQuantizeMatMul" and n.input[0] not in keep:
            x, w, w_scale, w_zp, *rest = [*n.input, "", ""][:5]
            matmul(x, w, w_scale, w_zp, rest[0], n.output[0])
            continue
        if n.op_type == "MatMulIntegerToFloat" and n.input[0] in quantized_by:
            xq, w, _, w_scale, _, w_zp, *rest = [*n.input, ""][:7]
            matmul(quantized_by[xq][0], w, w_scale, w_zp, rest[0], n.output[0])
            continue
        out.append(n)
    still = {x for n in out for x in n.input} & set(quantized_by)
    if still:
        raise AsrModelError(f"per-tensor quantizations still read by other nodes: {sorted(still)}")
    return out

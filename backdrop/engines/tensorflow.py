"""TensorFlow engine: runs a ``.tflite`` model as a TensorFlow function, with a batch dimension.

The TFLite graph is read with TensorFlow's own flatbuffer schema and rebuilt op by op from plain TF ops
(so TensorFlow places them on a GPU when it sees one). Covered: the ops of the models in the registry —
CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL, RELU, HARD_SWISH, LOGISTIC, AVERAGE_POOL_2D, MEAN,
RESIZE_BILINEAR, CONCATENATION, DEQUANTIZE and MediaPipe's ``Convolution2DTransposeBias``. Another op
is refused at load time with its name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from backdrop.errors import BackdropError

_NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.UINT8: np.uint8,
}
_OP_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_TRANSPOSE_CONV_BIAS = "Convolution2DTransposeBias"


class UnsupportedModel(BackdropError):
    code = "unsupported_model"


def _padding(value: int) -> str:
    return "SAME" if value == schema.Padding.SAME else "VALID"


def _activation(x: tf.Tensor, fused: int) -> tf.Tensor:
    if fused == schema.ActivationFunctionType.NONE:
        return x
    if fused == schema.ActivationFunctionType.RELU:
        return tf.nn.relu(x)
    if fused == schema.ActivationFunctionType.RELU6:
        return tf.nn.relu6(x)
    if fused == schema.ActivationFunctionType.RELU_N1_TO_1:
        return tf.clip_by_value(x, -1.0, 1.0)
    if fused == schema.ActivationFunctionType.TANH:
        return tf.tanh(x)
    raise UnsupportedModel(f"fused activation {fused} is not supported")


class TFLiteGraph:
    """The model's subgraph as a Python callable over TF tensors. ``dtype`` float64 gives a reference
    to judge float32 runtimes by (the tests use it)."""

    def __init__(self, model_bytes: bytes, dtype: type = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
        if len(model.subgraphs) != 1:
            raise UnsupportedModel("only single-subgraph models are supported")
        self.graph = model.subgraphs[0]
        self.codes = [self._op_name(code) for code in model.operatorCodes]
        self.constants: dict[int, np.ndarray] = {}
        for index, tensor in enumerate(self.graph.tensors):
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if data is not None and len(data):
                dtype = _NUMPY_TYPES[tensor.type]
                shape = [int(d) for d in tensor.shape] if tensor.shape is not None else []
                self.constants[index] = np.frombuffer(bytes(data), dtype=dtype).reshape(shape)
        # Float16 weights reach the float ops through DEQUANTIZE: fold those into float32 constants, so
        # weights stay numpy arrays when the graph is built.
        self.operators = []
        for op in self.graph.operators:
            if self.codes[op.opcodeIndex] == "DEQUANTIZE" and op.inputs[0] in self.constants:
                self.constants[op.outputs[0]] = self.constants[op.inputs[0]].astype(np.float32)
            else:
                self.operators.append(op)
        unknown = sorted({self.codes[op.opcodeIndex] for op in self.operators} - _HANDLERS.keys())
        if unknown:
            raise UnsupportedModel(f"ops not supported by the TensorFlow engine: {', '.join(unknown)}")
        (self.input_index,) = self.graph.inputs
        (self.output_index,) = self.graph.outputs
        self.input_shape = [int(d) for d in self.graph.tensors[self.input_index].shape]

    @staticmethod
    def _op_name(code: Any) -> str:
        if code.customCode:
            return code.customCode.decode()
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        return _OP_NAMES.get(builtin, f"builtin {builtin}")

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        values: dict[int, Any] = {self.input_index: images}
        for op in self.operators:
            name = self.codes[op.opcodeIndex]
            inputs = [self._value(values, i) for i in op.inputs]
            outputs = _HANDLERS[name](self, op, inputs)
            values[op.outputs[0]] = outputs
        return values[self.output_index]

    def _value(self, values: dict[int, Any], index: int) -> Any:
        if index in values:
            return values[index]
        if index in self.constants:
            constant = self.constants[index]
            floating = constant.dtype in (np.float16, np.float32)
            values[index] = constant.astype(self.dtype) if floating else constant
            return values[index]
        raise UnsupportedModel(f"tensor {index} has no value")

    def output_size(self, op: Any) -> tuple[int, int]:
        shape = self.graph.tensors[op.outputs[0]].shape
        return int(shape[1]), int(shape[2])


def _conv2d(graph: TFLiteGraph, op: Any, inputs: list[Any]) -> tf.Tensor:
    options = op.builtinOptions
    x, weights = inputs[0], np.transpose(inputs[1], (1, 2, 3, 0))  # [out, kh, kw, in] -> [kh, kw, in, out]
    y = tf.nn.conv2d(
        x, weights, strides=[1, options.strideH, options.strideW, 1], padding=_padding(options.padding),
        dilations=[1, options.dilationHFactor, options.dilationWFactor, 1],
    )  # fmt: skip
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + inputs[2]
    return _activation(y, options.fusedActivationFunction)


def _depthwise(graph: TFLiteGraph, op: Any, inputs: list[Any]) -> tf.Tensor:
    options = op.builtinOptions
    x, weights = inputs[0], inputs[1]
    _, kh, kw, channels = weights.shape
    multiplier = options.depthMultiplier or 1
    filters = weights.reshape(kh, kw, channels // multiplier, multiplier)
    dilations = [options.dilationHFactor, options.dilationWFactor]
    y = tf.nn.depthwise_conv2d(
        x, filters, strides=[1, options.strideH, options.strideW, 1], padding=_padding(options.padding),
        dilations=dilations,
    )  # fmt: skip
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + inputs[2]
    return _activation(y, options.fusedActivationFunction)


def _transpose_conv_bias(graph: TFLiteGraph, op: Any, inputs: list[Any]) -> tf.Tensor:
    # MediaPipe's custom op: options are the raw TfLiteTransposeConvParams (padding, stride w, stride h).
    padding, stride_w, stride_h = struct.unpack("<3i", bytes(op.customOptions)[:12])
    x, weights, bias = inputs
    filters = np.transpose(weights, (1, 2, 0, 3))  # [out, kh, kw, in] -> [kh, kw, out, in]
    height, width = graph.output_size(op)
    output_shape = tf.stack([tf.shape(x)[0], height, width, weights.shape[0]])
    y = tf.nn.conv2d_transpose(
        x, filters, output_shape, strides=[1, stride_h, stride_w, 1], padding="SAME" if padding == 1 else "VALID"
    )
    return y + bias


def _binary(function: Callable[[Any, Any], tf.Tensor]) -> Callable[[TFLiteGraph, Any, list[Any]], tf.Tensor]:
    def handler(graph: TFLiteGraph, op: Any, inputs: list[Any]) -> tf.Tensor:
        fused = op.builtinOptions.fusedActivationFunction if op.builtinOptions is not None else 0
        return _activation(function(inputs[0], inputs[1]), fused)

    return handler


def _average_pool(graph: TFLiteGraph, op: Any, inputs: list[Any]) -> tf.Tensor:
    options = op.builtinOptions
    y = tf.nn.avg_pool2d(
        inputs[0], ksize=[options.filterHeight, options.filterWidth], strides=[options.strideH, options.strideW],
        padding=_padding(options.padding),
    )  # fmt: skip
    return _activation(y, options.fusedActivationFunction)


def _mean(graph: TFLiteGraph, op: Any, inputs: list[Any]) -> tf.Tensor:
    axes = [int(a) for a in np.atleast_1d(inputs[1])]
    return tf.reduce_mean(inputs[0], axis=axes, keepdims=bool(op.builtinOptions.keepDims))


def _resize_bilinear(graph: TFLiteGraph, op: Any, inputs: list[Any]) -> tf.Tensor:
    options = op.builtinOptions
    resized = tf.raw_ops.ResizeBilinear(
        images=inputs[0],
        size=np.asarray(inputs[1], np.int32),
        align_corners=bool(options.alignCorners),
        half_pixel_centers=bool(options.halfPixelCenters),
    )
    return tf.cast(resized, graph.dtype)  # the op always answers float32


def _concatenation(graph: TFLiteGraph, op: Any, inputs: list[Any]) -> tf.Tensor:
    options = op.builtinOptions
    return _activation(tf.concat(inputs, axis=options.axis), options.fusedActivationFunction)


_HANDLERS: dict[str, Callable[[TFLiteGraph, Any, list[Any]], Any]] = {
    "CONV_2D": _conv2d,
    "DEPTHWISE_CONV_2D": _depthwise,
    "ADD": _binary(tf.add),
    "MUL": _binary(tf.multiply),
    "RELU": lambda g, op, i: tf.nn.relu(i[0]),
    "HARD_SWISH": lambda g, op, i: i[0] * tf.nn.relu6(i[0] + 3.0) / 6.0,
    "LOGISTIC": lambda g, op, i: tf.sigmoid(i[0]),
    "AVERAGE_POOL_2D": _average_pool,
    "MEAN": _mean,
    "RESIZE_BILINEAR": _resize_bilinear,
    "CONCATENATION": _concatenation,
    "DEQUANTIZE": lambda g, op, i: tf.cast(i[0], g.dtype),
    _TRANSPOSE_CONV_BIAS: _transpose_conv_bias,
}


class TensorFlowEngine:
    """A ``.tflite`` model as one compiled TF function; any batch size in one call."""

    name = "tensorflow"

    def __init__(self, model_path: Path, *, threads: int) -> None:
        configure_tensorflow(threads)
        graph = TFLiteGraph(Path(model_path).read_bytes())
        self._shape = graph.input_shape
        signature = tf.TensorSpec([None, *self._shape[1:]], tf.float32)
        self._function = tf.function(graph, input_signature=[signature], autograph=False)

    @property
    def input_size(self) -> tuple[int, int]:
        return self._shape[1], self._shape[2]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._function(tf.convert_to_tensor(batch, tf.float32)).numpy()


_configured = False


def configure_tensorflow(threads: int) -> None:
    """GPU memory grows as needed (several processes or models may share a device); thread counts on CPU.
    Runs once per process, before TensorFlow initialises its devices."""
    global _configured
    if _configured:
        return
    _configured = True
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:  # TensorFlow was initialised already (by the caller): keep its settings
        pass


def gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


class FrozenGraphEngine:
    """A DeepLab model-zoo frozen graph (TF1 GraphDef): ``ImageTensor:0`` uint8 RGB batch of one, any
    size, in; ``SemanticPredictions:0`` class index per pixel out (returned as NHW1 float32)."""

    name = "tensorflow-frozen"
    INPUT, OUTPUT = "ImageTensor:0", "SemanticPredictions:0"

    def __init__(self, model_path: Path, *, threads: int) -> None:
        configure_tensorflow(threads)
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(Path(model_path).read_bytes())
        except Exception as exc:
            raise UnsupportedModel(f"{model_path} is not a TensorFlow frozen graph: {exc}") from None

        def imported(images: tf.Tensor) -> tf.Tensor:
            (labels,) = tf.compat.v1.import_graph_def(
                graph_def, input_map={self.INPUT: images}, return_elements=[self.OUTPUT], name=""
            )
            return labels

        try:
            self._function = tf.compat.v1.wrap_function(imported, [tf.TensorSpec([1, None, None, 3], tf.uint8)])
        except (ValueError, KeyError) as exc:
            raise UnsupportedModel(
                f"{model_path} has no {self.INPUT} -> {self.OUTPUT} signature (a DeepLab frozen graph): {exc}"
            ) from None

    @property
    def input_size(self) -> tuple[int, int]:
        return 513, 513

    def run(self, batch: np.ndarray) -> np.ndarray:
        outputs = [self._function(tf.convert_to_tensor(item[None], tf.uint8)).numpy() for item in batch]
        return np.concatenate(outputs).astype(np.float32)[..., None]

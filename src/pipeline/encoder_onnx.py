"""The encoder through ONNX Runtime on CPU: exported once per encoder identity, optionally int8, then cached.

On CPUs without native bf16 (AMX) PyTorch runs the encoder in fp32 eager mode. ONNX Runtime runs the same graph with
its operators fused (attention, layer norm, GELU) for about 1.25x; its dynamic int8 quantization of the linear layers
(weights per output channel, activations per batch) for about 3.4x, at a lowest cosine of about 0.98 to the fp32
vectors (docs/benchmarks.md has the measurement). The exported graph stops at the token states: pooling and
normalization stay in `TextEncoder`, one code path for both runtimes.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineInputError
from pipeline.storage import write_atomic

log = logging.getLogger("pipeline")

ONNX_FILE = "encoder.onnx"
EXTRA = "pip install 'interest-pipeline[onnx]'"


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnx() -> None:
    if not onnx_available():
        raise PipelineInputError(f"encoder.runtime: onnx needs ONNX Runtime, which is not installed ({EXTRA})")


class OnnxForward:
    """Token ids and attention mask (int64 arrays) -> last hidden states, through an ONNX Runtime session."""

    def __init__(self, source: str, folder: Path, quantized: bool, threads: int):
        import onnxruntime

        model_file = folder / ONNX_FILE
        if not model_file.exists():
            export(source, model_file, quantized)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warnings about unused initializers are not the user's to act on
        try:
            self.session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # a damaged file: export again rather than fail every run from now on
            log.warning("encoder: cannot load %s (%s); exporting it again", model_file, str(err).splitlines()[0])
            export(source, model_file, quantized)
            self.session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.inputs = {item.name for item in self.session.get_inputs()}

    def __call__(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in self.inputs}
        return torch.from_numpy(self.session.run(None, feeds)[0])


class _HiddenStates(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors))).last_hidden_state


def export(source: str, model_file: Path, quantized: bool) -> None:
    """The model at `source` as an ONNX graph (dynamic batch and length) at `model_file`, written atomically; with
    `quantized`, its MatMul weights int8 per output channel."""
    from transformers import AutoModel, AutoTokenizer

    log.info("encoder: exporting %s to ONNX%s (once per encoder)", source, " with int8 weights" if quantized else "")
    tokenizer = AutoTokenizer.from_pretrained(source)
    # Eager attention exports as plain MatMul/Softmax nodes, which ONNX Runtime fuses into its attention kernel.
    model = AutoModel.from_pretrained(source, attn_implementation="eager", dtype=torch.float32).eval()
    sample = tokenizer(["an example text", "a second, longer example text"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask"]  # what `TextEncoder` feeds PyTorch too: token types default to zeros
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    model_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_file.parent, prefix=".export-") as scratch:
        exported = Path(scratch) / "fp32.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter: seconds for a BERT, one file, and its tracer warnings concern shapes the
            # dynamic axes cover (checked against PyTorch in tests/test_encoding.py).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _HiddenStates(model, names), tuple(sample[name] for name in names), str(exported),
                input_names=names, output_names=["hidden"], dynamic_axes={**axes, "hidden": {0: "batch", 1: "tokens"}},
                opset_version=17, dynamo=False,
            )
        if quantized:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # MatMuls with constant weights only: the attention's activation-by-activation products and the embedding
            # lookups stay fp32, which keeps the vectors near the fp32 ones (lowest cosine ~0.98 against ~0.92).
            # It advises on pre-processing (for image models) through `logging.warning`, which also installs a
            # handler on the root logger: the pipeline's log lines would then print twice.
            root_handlers = list(logging.getLogger().handlers)
            logging.disable(logging.WARNING)
            try:
                quantize_dynamic(
                    exported, Path(scratch) / "int8.onnx", weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True},
                )
            finally:
                logging.disable(logging.NOTSET)
                logging.getLogger().handlers[:] = root_handlers
            exported = Path(scratch) / "int8.onnx"
        write_atomic(model_file, exported.read_bytes())

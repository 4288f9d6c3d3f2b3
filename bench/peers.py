"""Runners for the benchmark harness (bench/harness.py): archc and its peers.

Each runner has ``setup()`` (build the model and its weights) and ``prepare(batch)`` ->
``(compile_s, run)`` where ``run()`` performs one inference call on a fixed random batch of
``batch`` images and blocks until the result is ready. Inputs are each framework's native layout
(NHWC for archc/Flax/Keras, NCHW for PyTorch/ONNX Runtime), float32. archc and the PyTorch runners
also take ``size`` (the image side; default the network's), archc ``dtype`` ('bfloat16': its
mixed-precision policy) and PyTorch ``device`` ('cuda': channels_last) and ``amp`` (autocast to
bfloat16): bench/gpu_bench.py's GPU table.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

TORCHVISION = {"resnet50": "resnet50", "densenet121": "densenet121", "mobilenet_v2": "mobilenet_v2",
               "efficientnet_b0": "efficientnet_b0", "inception_v3": "inception_v3"}
KERAS = {"resnet50": "ResNet50", "densenet121": "DenseNet121", "mobilenet_v2": "MobileNetV2",
         "efficientnet_b0": "EfficientNetB0", "inception_v3": "InceptionV3"}


def image_size(net: str) -> int:
    return 299 if net == "inception_v3" else 224


def torch_device_setup(device: str):
    """(torch.device, memory format, sync): on a GPU, channels_last (cuDNN's fast NHWC kernels,
    as PyTorch's performance guide recommends) and a sync that waits for the queued kernels."""
    import torch
    dev = torch.device(device)
    if dev.type == "cuda":
        return dev, torch.channels_last, torch.cuda.synchronize
    return dev, torch.contiguous_format, lambda: None


def _nhwc(batch, size, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)


def _nchw(batch, size, seed=0):
    return np.ascontiguousarray(_nhwc(batch, size, seed).transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- JAX-based

class ArchcRunner:
    """archc.load(net), plain (fold=False) or with every BN folded into its conv (fold=True),
    the same initial weights (seed 0) either way."""

    def __init__(self, net: str, fold: bool = False, dtype=None, size=None):
        self.net, self.fold, self.dtype, self.size = net, fold, dtype, size
        self.name = "archc+fold" if fold else "archc"

    def setup(self):
        import archc
        self.model = archc.load(self.net, input_shape=(self.size, self.size, 3)) if self.size else archc.load(self.net)
        self.variables = self.model.init(seed=0)
        if self.fold:
            self.model, self.variables = self.model.fold_batchnorm(self.variables)

    def prepare(self, batch):
        import jax
        import jax.numpy as jnp
        from archc.runtime.bench import compile_forward
        x = jnp.asarray(_nhwc(batch, self.model.input_shape[0]))
        model, dtype = self.model, self.dtype
        compiled, secs = compile_forward(lambda v, x: model.apply_fn(v, x, dtype=dtype), self.variables, x)
        v = self.variables
        return secs, lambda: jax.block_until_ready(compiled(v, x))


class HandwrittenFlaxRunner:
    """bench/flax_resnet50.py with archc's weights mapped onto it (resnet50 only)."""
    name = "flax-handwritten"

    def __init__(self, net: str):
        assert net == "resnet50"

    def setup(self):
        import jax
        import jax.numpy as jnp
        sys.path.insert(0, str(ROOT / "bench"))
        import archc
        from flax_resnet50 import ResNet50
        from resnet50_vs_handwritten import handwritten_variables
        model = archc.load("resnet50")
        v = model.init(seed=0)
        self.module = ResNet50(num_classes=1000)
        shapes = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                                         train=False))
        self.variables = handwritten_variables(model.graph, v, shapes)
        if self.variables is None:
            self.variables = self.module.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)

    def prepare(self, batch):
        import jax
        import jax.numpy as jnp
        from archc.runtime.bench import compile_forward
        x = jnp.asarray(_nhwc(batch, 224))
        m = self.module
        compiled, secs = compile_forward(lambda v, x: m.apply(v, x, train=False), self.variables, x)
        v = self.variables
        return secs, lambda: jax.block_until_ready(compiled(v, x))


class KerasRunner:
    """keras.applications.<Net>(weights=None) on the JAX backend, run as a jitted stateless call
    (the same thing predict_on_batch jits, without its Python overhead)."""
    name = "keras-jax"

    def __init__(self, net: str):
        self.net = net

    def setup(self):
        os.environ.setdefault("KERAS_BACKEND", "jax")
        import keras
        assert keras.backend.backend() == "jax", keras.backend.backend()
        self.model = getattr(keras.applications, KERAS[self.net])(weights=None)
        self.tv = [v.value for v in self.model.trainable_variables]
        self.ntv = [v.value for v in self.model.non_trainable_variables]

    def prepare(self, batch):
        import jax
        import jax.numpy as jnp
        m = self.model
        x = jnp.asarray(_nhwc(batch, image_size(self.net)))

        def fwd(tv, ntv, x):
            return m.stateless_call(tv, ntv, x, training=False)[0]
        t0 = time.perf_counter()
        compiled = jax.jit(fwd).lower(self.tv, self.ntv, x).compile()
        secs = time.perf_counter() - t0
        tv, ntv = self.tv, self.ntv
        return secs, lambda: jax.block_until_ready(compiled(tv, ntv, x))


# ---------------------------------------------------------------- PyTorch-based

def torchvision_model(net: str):
    import torch
    import torchvision
    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": False} if net == "inception_v3" else {}
    return getattr(torchvision.models, TORCHVISION.get(net, net))(weights=None, **kw).eval()


class TorchEagerRunner:
    name = "torch-eager"

    def __init__(self, net: str, device: str = "cpu", amp: bool = False, size=None):
        self.net, self.device, self.amp, self.size = net, device, amp, size or image_size(net)

    def setup(self):
        import torch
        if self.device == "cpu":
            torch.set_num_threads(2)
        self.dev, self.memory_format, self.sync = torch_device_setup(self.device)
        self.model = self.wrap(torchvision_model(self.net).to(self.dev, memory_format=self.memory_format))

    def wrap(self, model):
        return model

    def prepare(self, batch):
        import torch
        x = torch.from_numpy(_nchw(batch, self.size)).to(self.dev, memory_format=self.memory_format)
        m, dev, amp, sync = self.model, self.dev, self.amp, self.sync

        def run():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                y = m(x)
            sync()
            return y
        return 0.0, run


def torch_compile(model):
    """torch.compile(model) with Inductor, or the backend named by ARCHC_BENCH_TORCH_BACKEND
    (bench/gpu.sh --dry-run: 'eager', Dynamo's capture without Inductor's code generation,
    which takes minutes on a small CPU)."""
    import torch
    return torch.compile(model, dynamic=False, backend=os.environ.get("ARCHC_BENCH_TORCH_BACKEND", "inductor"))


class TorchCompileRunner(TorchEagerRunner):
    """torch.compile(model, dynamic=False) (Inductor, default mode); compile time = the first
    call's wall time minus one eager-speed call is not subtracted: it is the first call's time.
    A fresh Inductor cache directory per process, so nothing is reused from earlier runs."""
    name = "torch.compile"

    @property
    def batches(self):
        env = os.environ.get("HARNESS_COMPILE_BATCHES", "")
        return [int(b) for b in env.split(",") if b] or [1, 32]

    def setup(self):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_")
        super().setup()

    def wrap(self, model):
        return torch_compile(model)

    def prepare(self, batch):
        _, run = super().prepare(batch)
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0, run


class OnnxRuntimeRunner:
    """torchvision model exported with torch.onnx (dynamic batch), ONNX Runtime
    CPUExecutionProvider, 2 intra-op threads. 'compile' = InferenceSession creation (graph
    optimisation); the export time is reported separately."""
    name = "onnxruntime"

    def __init__(self, net: str):
        self.net = net

    def setup(self):
        import torch
        import onnxruntime as ort
        torch.set_num_threads(2)
        model = torchvision_model(self.net)
        size = image_size(self.net)
        path = os.path.join(tempfile.mkdtemp(prefix="onnx_"), f"{self.net}.onnx")
        t0 = time.perf_counter()
        x = torch.zeros(1, 3, size, size)
        try:
            torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
        except Exception as e:  # noqa: BLE001 - the TorchScript exporter gone: use the dynamo one
            print(f"note: legacy ONNX export failed ({e!r}); using dynamo=True", file=sys.stderr)
            torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                              dynamic_shapes={"x": {0: torch.export.Dim("n", min=1, max=256)}}, dynamo=True)
        self.export_s = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        t0 = time.perf_counter()
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.session_s = time.perf_counter() - t0
        self.input = self.sess.get_inputs()[0].name

    def prepare(self, batch):
        x = _nchw(batch, image_size(self.net))
        sess, name = self.sess, self.input
        return self.session_s, lambda: sess.run(None, {name: x})


class ArchcOnnxRunner(OnnxRuntimeRunner):
    """archc's own ONNX export (archc.export, NCHW, symbolic batch) of the same network and
    weights as ArchcRunner, on ONNX Runtime set up as OnnxRuntimeRunner (2 intra-op threads)."""
    name = "archc-onnx"

    def setup(self):
        import archc
        from archc.runtime.export import onnx_session
        model = archc.load(self.net)
        t0 = time.perf_counter()
        onnx_model = archc.export(model, model.init(seed=0), format="onnx")
        self.export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.sess = onnx_session(onnx_model, threads=2)
        self.session_s = time.perf_counter() - t0
        self.input = self.sess.get_inputs()[0].name


def runners(net: str, only=None):
    rs = [ArchcRunner(net), ArchcRunner(net, fold=True), ArchcOnnxRunner(net)]
    if net == "resnet50":
        rs.append(HandwrittenFlaxRunner(net))
    rs += [TorchEagerRunner(net), TorchCompileRunner(net), OnnxRuntimeRunner(net), KerasRunner(net)]
    if only:
        rs = [r for r in rs if r.name in only]
    return rs

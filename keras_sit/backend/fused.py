"""Each backend's fastest form of a few operations: fused kernels for eager PyTorch, and
the forms XLA's CPU backend runs best.

JAX and TensorFlow compile the training step with XLA, which fuses
elementwise work into the surrounding matmuls. Eager PyTorch runs each Keras
op on its own, each Keras op or layer call costs Python time, and on a CPU
every fresh output buffer's pages are faulted in again, so a chain of small
ops costs far more than its arithmetic. Where the same maths exists as one
PyTorch kernel, these functions call it on PyTorch and fall back to
`keras.ops` (or the Keras layer) everywhere else, so the results agree across
backends up to float rounding. `docs/performance.md` explains where the time
goes. This module and `keras_sit.backend` hold the library's backend-specific
code.
"""

import collections
import math

import keras


def _eager_torch():
    return keras.backend.backend() == "torch"


def _on_cpu():
    """Whether JAX or TensorFlow computes on the CPU (no GPU or TPU)."""
    return keras.distribution.list_devices()[0].startswith("cpu")


def _compiling():
    import torch

    return torch.compiler.is_compiling()


def dense(layer, x):
    """`layer(x)` for a built `keras.layers.Dense` and an `x` of any rank.

    On PyTorch, one `torch.nn.functional.linear`, as `torch.nn.Linear` runs:
    the bias is added inside the GEMM (`addmm`) and the leading axes are
    folded into its rows without a copy, where Keras' `Dense` makes a matmul,
    then a bias add over a second buffer. Elsewhere a 3-D or higher `x` is
    reshaped to one 2-D matmul around `layer`: XLA's CPU backend runs the
    batched product, and more so its gradient, well below its matmul peak,
    and the reshapes of contiguous tokens cost no copy. A quantized, LoRA or
    activated `Dense` keeps its own `call`.
    """
    plain = (
        layer.bias is not None
        and layer.activation is keras.activations.linear
        and layer.quantization_mode is None
        and not layer.lora_enabled
    )
    if _eager_torch() and plain:
        import torch

        # `.value` inside the calling layer gives the kernel in its compute dtype (mixed precision).
        kernel, bias = layer.kernel.value, layer.bias.value
        return torch.nn.functional.linear(x.to(kernel.dtype), kernel.T, bias)
    if len(x.shape) <= 2:
        return layer(x)
    leading = x.shape[1:-1]
    y = layer(keras.ops.reshape(x, (-1, x.shape[-1])))
    return keras.ops.reshape(y, (-1, *leading, layer.units))


def _torch_bf16_cpu_training(query):
    """Whether PyTorch computes `query` in bfloat16 on a CPU with gradients recorded."""
    import torch

    return query.dtype == torch.bfloat16 and query.device.type == "cpu" and torch.is_grad_enabled()


def dot_product_attention(query, key, value):
    """`keras.ops.dot_product_attention(query, key, value)`, unmasked, on `[B, T, heads, head_dim]`.

    - PyTorch: `scaled_dot_product_attention` reads the heads-first views as
      they are; Keras' op first copies each of the three into a contiguous
      buffer (and its gradient back). Except when a CPU trains in bfloat16:
      there the flash kernel's backward runs at a fifth of the bf16 matmul
      peak, and two batched matmuls around a float32 softmax (below) take
      half its time, forward and backward (`docs/performance.md`).
    - JAX and TensorFlow on a CPU: heads-first matmuls around a float32
      softmax. XLA's CPU backend runs a batched matmul on one core, and Keras'
      op (tokens-first einsums) adds layout copies around those matmuls;
      `docs/performance.md` gives the figures.
    - Elsewhere (GPU, TPU): Keras' op, which picks the fused cuDNN or flash kernels.
    """
    if _eager_torch():
        if not _torch_bf16_cpu_training(query):
            import torch

            query, key, value = (tensor.transpose(1, 2) for tensor in (query, key, value))
            return torch.nn.functional.scaled_dot_product_attention(query, key, value).transpose(1, 2)
    elif not _on_cpu():
        return keras.ops.dot_product_attention(query, key, value)
    ops = keras.ops
    scale = 1.0 / math.sqrt(query.shape[-1])
    query, key, value = (ops.transpose(tensor, (0, 2, 1, 3)) for tensor in (query, key, value))
    scores = ops.matmul(ops.multiply(query, ops.cast(scale, query.dtype)), ops.swapaxes(key, -1, -2))
    weights = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), value.dtype)
    return ops.transpose(ops.matmul(weights, value), (0, 2, 1, 3))


def all_finite(tensors):
    """Whether every value of every float tensor in `tensors` is finite, as a boolean scalar.

    On PyTorch one `torch._foreach_norm` takes each tensor's largest
    magnitude (NaN when it holds a NaN, Inf for an Inf), instead of an
    `isfinite` and an `all` per tensor: a training step checks every
    gradient.
    """
    tensors = list(tensors)
    if _eager_torch() and not _compiling():
        import torch

        return torch.isfinite(torch.stack(torch._foreach_norm(tensors, float("inf")))).all()
    ops = keras.ops
    return ops.all(ops.stack([ops.all(ops.isfinite(tensor)) for tensor in tensors]))


def add_product(x, y, z):
    """`x + y * z`, broadcast: one `torch.addcmul` on PyTorch (one output
    buffer instead of two). Mixed dtypes keep Keras' promotion."""
    if not (_eager_torch() and x.dtype == y.dtype == z.dtype):
        return keras.ops.add(x, keras.ops.multiply(y, z))
    import torch

    return torch.addcmul(x, y, z)


def has_fused_adamw(variables):
    """Whether `adamw` and `lerp` can update `variables`: PyTorch, eager, on CPU or CUDA.

    Under `torch.compile`, Inductor fuses Keras' update itself and cannot
    trace the fused kernel's in-place update of the weights.
    """
    if not _eager_torch():
        return False
    import torch

    return (
        hasattr(torch, "_fused_adamw_")
        and not _compiling()
        and all(v.value.device.type in ("cpu", "cuda") for v in variables)
    )


def adamw(slots, step, learning_rate, beta_1, beta_2, epsilon, weight_decay, amsgrad):
    """One AdamW step with `torch._fused_adamw_`, in place.

    `slots` is `[(weight, grad, m, v, v_max or None, decayed)]` of torch
    tensors. `epsilon` is PyTorch's, inside the bias correction (Keras puts
    it outside; `keras_sit.AdamW` converts). Weights are grouped by device,
    dtype and whether they decay, as the kernel takes one of each.
    """
    import torch

    steps = torch.tensor(float(step))
    groups = collections.defaultdict(lambda: ([], [], [], [], []))
    for weight, grad, m, v, v_max, decayed in slots:
        params, grads, ms, vs, v_maxes = groups[weight.device, weight.dtype, decayed]
        params.append(weight)
        grads.append(grad.to(weight.dtype))
        ms.append(m)
        vs.append(v)
        if amsgrad:
            v_maxes.append(v_max)
    with torch.no_grad():
        for (device, _, decayed), (params, grads, ms, vs, v_maxes) in groups.items():
            torch._fused_adamw_(
                params,
                grads,
                ms,
                vs,
                v_maxes,
                [steps.to(device)] * len(params),
                lr=learning_rate,
                beta1=beta_1,
                beta2=beta_2,
                weight_decay=weight_decay if decayed else 0.0,
                eps=epsilon,
                amsgrad=amsgrad,
                maximize=False,
            )


def lerp(targets, sources, weight):
    """`target += weight * (source - target)` for every pair, as one `torch._foreach_lerp_`."""
    import torch

    with torch.no_grad():
        torch._foreach_lerp_(list(targets), list(sources), weight)

"""Fused kernels for eager PyTorch.

JAX and TensorFlow compile the training step with XLA, which fuses
elementwise work into the surrounding matmuls. Eager PyTorch runs each Keras
op on its own, and on a CPU every fresh output buffer's pages are faulted in
again, so a chain of small ops costs far more than its arithmetic. Where the
same maths exists as one PyTorch kernel, these functions call it on PyTorch
and fall back to `keras.ops` (or the Keras layer) everywhere else, so the
results agree across backends up to float rounding. `docs/performance.md`
explains where the time goes.
"""

import collections

import keras


def _eager_torch():
    return keras.backend.backend() == "torch"


def dense(layer, x):
    """`layer(x)` for a built `keras.layers.Dense` and a 2-D `x`.

    On PyTorch, one `torch.addmm` adds the bias inside the GEMM, as
    `torch.nn.Linear` does, instead of a matmul and a bias add over a second
    buffer. A quantized, LoRA or activated `Dense` keeps its own `call`.
    """
    plain = (
        layer.bias is not None
        and layer.activation is keras.activations.linear
        and layer.quantization_mode is None
        and not layer.lora_enabled
    )
    if not (_eager_torch() and plain):
        return layer(x)
    import torch

    # `.value` inside the calling layer gives the kernel in its compute dtype (mixed precision).
    kernel, bias = layer.kernel.value, layer.bias.value
    return torch.addmm(bias, x.to(kernel.dtype), kernel)


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
        and not torch.compiler.is_compiling()
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

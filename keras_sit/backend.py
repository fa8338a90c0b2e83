"""The one place for backend-specific code.

Everything else in keras_sit is written against `keras.ops` and runs unchanged
on JAX, TensorFlow and PyTorch. What Keras does not abstract lives here.
"""

import collections
import contextlib
import math

import keras


def compile_inference(model, fn):
    """`fn(*tensors)` compiled once per input signature, reading `model`'s weights.

    JAX: `jax.jit` with the model's variable values passed in and mapped onto
    the variables by a `keras.StatelessScope`, so the weights are inputs rather
    than constants baked into the program, and a later call after training
    reuses the compilation. TensorFlow: a `tf.function` compiled with XLA.
    PyTorch: eager, under `torch.no_grad`.
    """
    name = keras.backend.backend()
    if name == "jax":
        import jax

        variables = model.variables

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        jitted = jax.jit(pure)
        return lambda *args: jitted([v.value for v in variables], *args)
    if name == "tensorflow":
        import tensorflow as tf

        # XLA, as Keras' train step: it fuses the sampler's elementwise work into the
        # network's and runs the loop without a host round trip per op.
        return tf.function(fn, reduce_retracing=True, jit_compile=True)

    def run(*args):
        with no_grad():
            return fn(*args)

    return run


def dense_2d(dense, x):
    """`dense(x)` for a built `keras.layers.Dense` and a 2-D `x`.

    PyTorch runs eager, so Keras' `Dense` is a matmul and then a separate
    bias add: a second pass over a freshly allocated `[rows, units]` buffer.
    One `torch.addmm` adds the bias inside the GEMM, as `torch.nn.Linear` does;
    a SiT-S/2 training step on this 2-core CPU took 2% less time (5467 against
    5376 ms, median of 8 alternated steps). JAX and TensorFlow
    compile the step with XLA, which fuses the add on its own. A quantized,
    LoRA or activated `Dense` keeps its own `call`.
    """
    plain = (dense.bias is not None and dense.activation is keras.activations.linear
             and dense.quantization_mode is None and not dense.lora_enabled)
    if keras.backend.backend() != "torch" or not plain:
        return dense(x)
    import torch

    # `.value` inside the calling layer gives the kernel in its compute dtype (mixed precision).
    kernel, bias = dense.kernel.value, dense.bias.value
    return torch.addmm(bias, x.to(kernel.dtype), kernel)


def add_product(x, y, z):
    """`x + y * z`, broadcast.

    PyTorch runs eager, so `ops.add(x, ops.multiply(y, z))` writes the
    product into a fresh buffer and the sum into a second; on a CPU each
    fresh buffer's pages are faulted in again. One `torch.addcmul` writes
    one. JAX and TensorFlow compile with XLA, which fuses the two ops on
    its own. Mixed dtypes keep Keras' promotion.
    """
    if keras.backend.backend() != "torch" or not x.dtype == y.dtype == z.dtype:
        return keras.ops.add(x, keras.ops.multiply(y, z))
    import torch

    return torch.addcmul(x, y, z)


def per_replica_loss(loss):
    """`loss / replicas` under a TensorFlow `tf.distribute` strategy, else `loss`.

    Each replica's gradients are summed across replicas, so a custom
    `compute_loss` must divide by their number (Keras' own does); JAX and
    PyTorch run one program over the global batch and need nothing.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            return loss / replicas
    return loss


def vjp(fn, x, cotangent):
    """`(fn(x), J^T cotangent)` for `J` the Jacobian of `fn` at `x`.

    Keras has no backend-neutral autodiff outside training, and the
    likelihood's divergence needs one vector-Jacobian product per probe.
    """
    name = keras.backend.backend()
    if name == "jax":
        import jax

        y, pullback = jax.vjp(fn, x)
        return y, pullback(cotangent)[0]
    if name == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x, output_gradients=cotangent)
    import torch

    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = fn(x)
        (grad,) = torch.autograd.grad(y, x, grad_outputs=cotangent)
    return y.detach(), grad


def no_grad():
    """Context for inference loops: on PyTorch, stop autograd from recording.

    Without it, a sampling loop over a model whose variables require grad
    builds a graph through every step and grows memory with the step count.
    JAX and TensorFlow record nothing outside their gradient transforms.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def has_fused_adamw(variables):
    """Whether `fused_adamw_update` and `lerp_moving_average` can update `variables`.

    Only on PyTorch, eager, on CPU and CUDA. JAX and TensorFlow compile
    Keras' update with XLA, and `torch.compile` with Inductor, which fuse it
    on their own (and Inductor cannot trace the fused kernel's in-place
    update of the weights).
    """
    if keras.backend.backend() != "torch":
        return False
    import torch

    return (hasattr(torch, "_fused_adamw_") and not torch.compiler.is_compiling()
            and all(v.value.device.type in ("cpu", "cuda") for v in variables))


def fused_adamw_update(optimizer, grads, variables, learning_rate):
    """Keras' AdamW update of `variables`, weight decay included, as `torch._fused_adamw_`.

    Keras runs AdamW on torch as a dozen `torch._foreach_*` passes over the
    weights, several into fresh buffers: 367 ms a step for SiT-S/2's 33M
    weights on this project's 2-core CPU, against 25 ms for the fused kernel
    (112-134 ms for `torch.optim`'s default). Keras puts epsilon outside the
    bias correction, `lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`,
    torch inside it; passing `eps / sqrt(1 - b2^t)` makes the two the same.
    Needs `has_fused_adamw(variables)`.
    """
    import torch

    step = int(keras.ops.convert_to_numpy(optimizer.iterations)) + 1  # Keras counts steps from 0
    epsilon = optimizer.epsilon / math.sqrt(1.0 - optimizer.beta_2**step)
    learning_rate = float(keras.ops.convert_to_numpy(learning_rate))
    decay = optimizer.weight_decay or 0.0
    # The kernel takes one step tensor per weight; they may all be one tensor.
    steps = torch.tensor(float(step))
    groups = collections.defaultdict(lambda: ([], [], [], [], []))
    for grad, variable in zip(grads, variables):
        value = variable.value
        index = optimizer._get_variable_index(variable)
        decayed = bool(decay) and optimizer._use_weight_decay(variable)
        params, grads_, momentums, velocities, maxima = groups[value.device, value.dtype, decayed]
        params.append(value)
        grads_.append(grad.to(value.dtype))
        momentums.append(optimizer._momentums[index].value)
        velocities.append(optimizer._velocities[index].value)
        if optimizer.amsgrad:
            maxima.append(optimizer._velocity_hats[index].value)
    with torch.no_grad():
        for (device, _, decayed), (params, grads_, momentums, velocities, maxima) in groups.items():
            torch._fused_adamw_(
                params, grads_, momentums, velocities, maxima, [steps.to(device)] * len(params),
                lr=learning_rate, beta1=optimizer.beta_1, beta2=optimizer.beta_2,
                weight_decay=decay if decayed else 0.0, eps=epsilon, amsgrad=optimizer.amsgrad, maximize=False,
            )


def lerp_moving_average(optimizer, variables):
    """Keras' EMA update of `variables` as one `torch._foreach_lerp_`.

    Keras updates the averages one variable at a time with four ops each:
    174 ms a step for SiT-S/2's weights on this project's 2-core CPU,
    against 12 ms. Needs `has_fused_adamw(variables)`.
    """
    import torch

    pairs = [(average.value, variable.value)
             for variable, average in zip(variables, optimizer._model_variables_moving_average)
             if average is not None]
    # As Keras: the first step copies the weights, later ones move by `1 - momentum`.
    first_step = int(keras.ops.convert_to_numpy(optimizer.iterations)) == 0
    weight = 1.0 if first_step else 1.0 - optimizer.ema_momentum
    with torch.no_grad():
        torch._foreach_lerp_([a for a, _ in pairs], [v for _, v in pairs], weight)

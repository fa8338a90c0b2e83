"""The fastest an eager PyTorch SiT training step can be, from the kernels it cannot avoid.

    python -m benchmarks.benchmark --mode kernel-floor                  # SiT-S/2, 32x32x4, batch 16, 5 repeats
    python -m benchmarks.benchmark --mode kernel-floor --preset SiT-B/2 --batch-size 32 --repeats 10

Times, in plain PyTorch, the kernels of one SiT training step that any
eager implementation must run, with the network's shapes: the matmuls of
every `Linear` of a block (forward, input gradient, weight gradient), the
attention core (`scaled_dot_product_attention`, forward and backward), the
tanh GELU and its gradient, and the two LayerNorms of each block with their
gradients. Everything else a step does (biases, modulation, residual adds,
reshapes, the embeddings, the loss, the optimizer) is left out, as if it were
free.

Prints each kernel's time a step (its median over `--repeats`, times the
depth) and its share of the matmul peak, and the whole floor as a fraction of
the peak: the most a training step of this network could reach on this
machine with PyTorch's own kernels, on the GPU if there is one, else the CPU. The peak is `MatmulPeak`'s, measured in
windows between the repeats, as the full benchmark measures it between its
steps. Runs on Keras' torch backend (for the peak), in float32.
"""

import statistics
import time

from benchmarks.common import MatmulPeak, device_name, require_torch_backend


def block_kernels(batch, tokens, hidden, heads, mlp, device="cpu"):
    """The unavoidable kernels of one block's forward and backward, as (name, callable, FLOPs)."""
    import torch
    import torch.nn.functional as F

    def randn(*shape, requires_grad=False):
        return torch.randn(*shape, device=device, requires_grad=requires_grad)

    rows = batch * tokens
    kernels = []
    linears = (("qkv", hidden, 3 * hidden), ("proj", hidden, hidden), ("fc1", hidden, mlp), ("fc2", mlp, hidden))
    for name, n_in, n_out in linears:
        a, w, dy = randn(rows, n_in), randn(n_in, n_out), randn(rows, n_out)
        flops = 2 * rows * n_in * n_out
        kernels += [
            (f"{name} forward", lambda a=a, w=w: a @ w, flops),
            (f"{name} input grad", lambda dy=dy, w=w: dy @ w.T, flops),
            (f"{name} weight grad", lambda a=a, dy=dy: a.T @ dy, flops),
        ]
    q, k, v = (randn(batch, heads, tokens, hidden // heads, requires_grad=True) for _ in range(3))
    attention_flops = 4 * batch * tokens * tokens * hidden  # q k^T and attention x v
    grad_out = randn(batch, heads, tokens, hidden // heads)

    def attention():
        F.scaled_dot_product_attention(q, k, v).backward(grad_out)

    # The backward pass costs twice the forward's matmuls.
    kernels.append(("attention forward+backward", attention, 3 * attention_flops))
    h, dh = randn(rows, mlp), randn(rows, mlp)
    kernels += [
        ("gelu forward", lambda: F.gelu(h, approximate="tanh"), 0),
        ("gelu backward", lambda: torch.ops.aten.gelu_backward(dh, h, approximate="tanh"), 0),
    ]
    x_norm, g = randn(rows, hidden, requires_grad=True), randn(rows, hidden)

    def layer_norm():
        F.layer_norm(x_norm, (hidden,), eps=1e-6).backward(g)

    kernels += [(f"layer norm {i} forward+backward", layer_norm, 0) for i in (1, 2)]
    return kernels


def run(preset, input_shape, batch_size, repeats, peak_size=None):
    """Time the kernels; print them and return the floor's fraction of the matmul peak."""
    require_torch_backend("kernel-floor")
    import torch

    from keras_sit.presets import preset_config

    config = preset_config(preset, input_shape=input_shape)
    height, width, _ = config["input_shape"]
    hidden, depth, p = config["hidden_size"], config["depth"], config["patch_size"]
    tokens = (height // p) * (width // p)
    mlp = int(hidden * config.get("mlp_ratio", 4.0))
    # The device `MatmulPeak` uses on PyTorch; kernels on a GPU run asynchronously, so each is waited for.
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    kernels = block_kernels(batch_size, tokens, hidden, config["num_heads"], mlp, "cuda" if cuda else "cpu")
    peak = MatmulPeak("float32", peak_size)
    for _, fn, _ in kernels:
        fn()  # warm up
    sync()
    times = {name: [] for name, _, _ in kernels}
    for _ in range(repeats):
        peak.measure()
        for name, fn, _ in kernels:
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    peak.measure()
    median = {name: statistics.median(seconds) for name, seconds in times.items()}
    floor_s = depth * sum(median.values())
    step_flops = depth * sum(flops for _, _, flops in kernels)
    print(
        f"{preset} {input_shape}, {tokens} tokens, batch {batch_size}, {device_name()}, "
        f"{torch.get_num_threads()} threads; matmul peak {peak.rate / 1e9:.1f} GFLOP/s"
    )
    for name, _, flops in kernels:
        rate = f"{flops / median[name] / peak.rate:5.0%} of peak" if flops else ""
        print(f"  {name:>28}  {1e3 * depth * median[name]:7.1f} ms a step  {rate}")
    fraction = step_flops / floor_s / peak.rate
    print(f"unavoidable kernels: {floor_s:.2f} s a step for {step_flops / 1e9:.0f} GFLOP of block matmuls")
    print(f"best fraction of peak an eager PyTorch step can reach: {fraction:.0%}")
    return fraction

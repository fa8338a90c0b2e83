"""The fastest an eager PyTorch SiT training step can be, from the kernels it cannot avoid.

Times, in plain PyTorch, the kernels of one SiT training step that any
eager implementation must run, with the network's shapes: the matmuls of
every `Linear` (forward, input gradient, weight gradient), the attention
core (`scaled_dot_product_attention`, forward and backward), the tanh GELU
and its gradient, and the two LayerNorms of each block with their
gradients. Everything else a step does (biases, modulation, residual adds,
reshapes, the loss, the optimizer) is left out, as if it were free.

It prints that floor as a fraction of `benchmark.py`'s matmul peak, taken
in windows between the timed repetitions: the most a training step of this
network could reach on this machine with PyTorch's own CPU kernels.

    KERAS_BACKEND=torch python benchmarks/torch_kernel_floor.py      # SiT-S/2, 32x32x4, batch 16
    KERAS_BACKEND=torch python benchmarks/torch_kernel_floor.py --repeats 10
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def block_kernels(batch, tokens, hidden, heads, mlp):
    """The unavoidable kernels of one block's forward and backward, as (name, callable, FLOPs)."""
    rows = batch * tokens
    kernels = []
    for name, n_in, n_out in (("qkv", hidden, 3 * hidden), ("proj", hidden, hidden),
                              ("fc1", hidden, mlp), ("fc2", mlp, hidden)):
        a, w, dy = torch.randn(rows, n_in), torch.randn(n_in, n_out), torch.randn(rows, n_out)
        flops = 2 * rows * n_in * n_out
        kernels += [(f"{name} forward", lambda a=a, w=w: a @ w, flops),
                    (f"{name} input grad", lambda dy=dy, w=w: dy @ w.T, flops),
                    (f"{name} weight grad", lambda a=a, dy=dy: a.T @ dy, flops)]
    q, k, v = (torch.randn(batch, heads, tokens, hidden // heads, requires_grad=True) for _ in range(3))
    attention_flops = 4 * batch * tokens * tokens * hidden
    grad_out = torch.randn(batch, heads, tokens, hidden // heads)

    def attention():
        F.scaled_dot_product_attention(q, k, v).backward(grad_out)

    kernels.append(("attention forward+backward", attention, 3 * attention_flops))
    h, dh = torch.randn(rows, mlp), torch.randn(rows, mlp)
    kernels += [("gelu forward", lambda: F.gelu(h, approximate="tanh"), 0),
                ("gelu backward", lambda: torch.ops.aten.gelu_backward(dh, h, approximate="tanh"), 0)]
    x_norm, g = torch.randn(rows, hidden, requires_grad=True), torch.randn(rows, hidden)

    def layer_norm():
        F.layer_norm(x_norm, (hidden,), eps=1e-6).backward(g)

    kernels += [(f"layer norm {i} forward+backward", layer_norm, 0) for i in (1, 2)]
    return kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="SiT-S/2")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import keras

    if keras.backend.backend() != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch")
    from benchmark import MatmulPeak

    from keras_sit.presets import preset_config

    config = preset_config(args.preset)
    hidden, depth = config["hidden_size"], config["depth"]
    tokens = (args.image_size // config["patch_size"]) ** 2
    kernels = block_kernels(args.batch_size, tokens, hidden, config["num_heads"], 4 * hidden)
    peak = MatmulPeak("float32")
    for _, fn, _ in kernels:
        fn()
    times = {name: [] for name, _, _ in kernels}
    for _ in range(args.repeats):
        peak.measure()
        for name, fn, _ in kernels:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    peak.measure()
    median = {name: statistics.median(ts) for name, ts in times.items()}
    floor_s = depth * sum(median[name] for name, _, _ in kernels)
    step_flops = depth * sum(flops for _, _, flops in kernels)
    print(f"{args.preset}, {tokens} tokens, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          f"matmul peak {peak.rate / 1e9:.1f} GFLOP/s")
    for name, _, flops in kernels:
        rate = f"{flops / median[name] / peak.rate:5.0%} of peak" if flops else ""
        print(f"  {name:>28}  {1e3 * depth * median[name]:7.1f} ms a step  {rate}")
    print(f"unavoidable kernels: {floor_s:.2f} s a step for {step_flops / 1e9:.0f} GFLOP of block matmuls")
    print(f"best fraction of peak an eager PyTorch step can reach: {step_flops / floor_s / peak.rate:.0%}")


if __name__ == "__main__":
    main()

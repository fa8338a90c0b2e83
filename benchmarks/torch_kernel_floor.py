"""The fastest an eager PyTorch SiT training step can be, from the kernels it cannot avoid.

Times, in plain PyTorch, the kernels of one SiT training step that any
eager implementation must run, with the network's shapes: the matmuls of
every `Linear` (forward, input gradient, weight gradient), the attention
core (`scaled_dot_product_attention`, forward and backward), the tanh GELU
and its gradient, and the two LayerNorms of each block with their
gradients. Everything else a step does (biases, modulation, residual adds,
reshapes, the loss, the optimizer) is left out, as if it were free.

It prints that floor as a fraction of the matmul peak measured the way
`benchmark.py` measures it (back-to-back square matmuls, in windows taken
between the timed repetitions): the most a training step of this network
could reach on this machine with PyTorch's own CPU kernels.

    python benchmarks/torch_kernel_floor.py                 # SiT-S/2, 32x32x4, batch 16
    python benchmarks/torch_kernel_floor.py --repeats 10
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

PRESETS = {"SiT-S/2": (384, 12, 6, 2), "SiT-B/2": (768, 12, 12, 2), "SiT-L/2": (1024, 24, 16, 2)}


def square_matmul_rate(seconds=1.0, sizes=(1024, 2048, 3072)):
    """Sustained FLOP/s of back-to-back square matmuls, for the best size."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(sizes):
            a @ b
            count += 1
        best = max(best, count * 2 * size**3 / (time.perf_counter() - start))
    return best


def block_kernels(batch, tokens, hidden, heads, mlp):
    """The unavoidable kernels of one block's forward and backward, as (name, callable, FLOPs)."""
    rows = batch * tokens
    x, g = torch.randn(rows, hidden), torch.randn(rows, hidden)
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
    x_norm = x.clone().requires_grad_()

    def layer_norm():
        F.layer_norm(x_norm, (hidden,), eps=1e-6).backward(g)

    kernels += [(f"layer norm {i} forward+backward", layer_norm, 0) for i in (1, 2)]
    return kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="SiT-S/2", choices=sorted(PRESETS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    hidden, depth, heads, patch = PRESETS[args.preset]
    tokens = (args.image_size // patch) ** 2
    kernels = block_kernels(args.batch_size, tokens, hidden, heads, 4 * hidden)
    for _, fn, _ in kernels:
        fn()
    times = {name: [] for name, _, _ in kernels}
    peaks = []
    for _ in range(args.repeats):
        peaks.append(square_matmul_rate())
        for name, fn, _ in kernels:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    peaks.append(square_matmul_rate())
    peak = statistics.fmean(peaks)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    floor_s = depth * sum(median[name] for name, _, _ in kernels)
    step_flops = depth * sum(flops for _, _, flops in kernels)
    print(f"{args.preset}, {tokens} tokens, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s")
    for name, _, flops in kernels:
        rate = f"{flops / median[name] / peak:5.0%} of peak" if flops else ""
        print(f"  {name:>28}  {1e3 * depth * median[name]:7.1f} ms a step  {rate}")
    print(f"unavoidable kernels: {floor_s:.2f} s a step for {step_flops / 1e9:.0f} GFLOP of block matmuls")
    print(f"best fraction of peak an eager PyTorch step can reach: {step_flops / floor_s / peak:.0%}")


if __name__ == "__main__":
    main()

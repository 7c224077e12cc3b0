"""The forward pass in another runtime: how close to the GEMM-only ceiling can MiniLM get on this CPU at all?

    pip install openvino        # not a tokembed dependency: this benchmark's peer only
    python bench/openvino_peer.py [--docs 1200] [--repeats 3] [--batch-tokens 4096 16384]

The timings issue asks for >= 85% (float32) and >= 70% (bfloat16) of the GEMM-only ceiling that
``bench/encode.py`` measures. This script times the backbone's forward alone, over the same token batches
(the docstrings sorted by length, cut at each --batch-tokens budget), in:

* torch: tokembed's own backbone (the native BERT of ``tokembed/models/bert.py``), two lanes of one thread
  each and glibc keeping freed blocks, as ``tokembed encode`` runs on a 2-core CPU;
* OpenVINO: that same module converted by ``openvino.convert_model`` (dynamic batch and length), compiled for
  the CPU with two streams of one thread, ``INFERENCE_PRECISION_HINT`` f32 or bf16 (OpenVINO's default on a
  CPU with AVX512-BF16 is bf16, i.e. not float32), two requests in flight.

Sides alternate --repeats times; medians. Prints tokens/s, each as a fraction of the GEMM-only ceilings
measured in the same run, OpenVINO's max |Δ| / least cosine to torch float32 (normalized last hidden state,
real tokens only) and its one-time conversion seconds. Forward only: no tokenizing, projection or writing,
so the figures bound what a whole ``encode`` in either runtime could reach. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tokembed  # noqa: E402,F401  (before torch: the native-library settings the CLI gets)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _corpus import docstrings  # noqa: E402
from encode import gemm_ceilings, native_bfloat16  # noqa: E402

MAX_LENGTH = 256


def token_batches(tokenizer, texts: list[str], budget: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded (ids, mask) batches of the texts sorted by length, each at most ``budget`` padded tokens."""
    encoded = sorted((tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"] for text in texts), key=len)
    groups, current = [], []
    for ids in encoded:
        if current and (len(current) + 1) * len(ids) > budget:
            groups.append(current)
            current = []
        current.append(ids)
    groups.append(current)
    batches = []
    for group in groups:
        ids = torch.zeros(len(group), len(group[-1]), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(group):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        batches.append((ids, mask))
    return batches


def torch_forward(backbone, batches, lanes: int = 2):
    from tokembed.engine.local import ops_threads_per_lane, run_on_lanes

    def run(batch):
        with torch.inference_mode():
            return backbone(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state.float()

    with ops_threads_per_lane(lanes):
        return run_on_lanes(batches, run, lanes)


def openvino_model(backbone, example):
    import openvino as ov

    from tokembed.models.openvino_backbone import LastHiddenState

    started = time.perf_counter()
    with torch.no_grad():  # the example must hold padding: the native BERT skips the mask when there is none
        model = ov.convert_model(LastHiddenState(backbone).eval(), example_input=example,
                                 input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)])
    return model, time.perf_counter() - started


def openvino_forward(compiled, batches):
    import openvino as ov

    outputs = [None] * len(batches)
    queue = ov.AsyncInferQueue(compiled, 2)
    queue.set_callback(lambda request, i: outputs.__setitem__(i, torch.from_numpy(request.get_output_tensor(0).data.copy())))
    for i, (ids, mask) in enumerate(batches):
        queue.start_async({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, i)
    queue.wait_all()
    return outputs


def agreement(reference, other, batches) -> tuple[float, float]:
    """max |Δ| and least cosine of the normalized last hidden states over the real tokens."""
    worst, least = 0.0, 1.0
    for a, b, (_, mask) in zip(reference, other, batches):
        keep = mask.bool()
        a, b = (torch.nn.functional.normalize(x[keep].float(), dim=-1) for x in (a, b))
        worst, least = max(worst, (a - b).abs().max().item()), min(least, (a * b).sum(-1).min().item())
    return worst, least


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1200, help="real docstrings in the batches (default 1200)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating forwards over all batches per side, median printed (default 3)")
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[4096, 16384],
                        help="padded-token budgets of the batches, each timed in turn (default 4096 16384)")
    args = parser.parse_args()
    try:
        import openvino as ov
    except ImportError:
        sys.exit("this benchmark's peer needs OpenVINO: pip install openvino")
    from tokembed.embedder import Embedder
    from tokembed.engine.device import keep_freed_blocks
    from tokembed.models.resolve import resolve_model
    from tokembed.settings import EncodeFlags

    keep_freed_blocks()  # glibc keeps freed activations, as a CPU ``BatchExecutor`` has it (README: page faults)

    dtypes = ["float32", "bfloat16"] if native_bfloat16() else ["float32"]
    texts = docstrings(args.docs)
    torch_models = {d: Embedder.load(None, EncodeFlags(dtype=d, store_dtype="float32")).model for d in dtypes}
    tokenizer = torch_models["float32"].tokenizer
    core = ov.Core()
    for budget in args.batch_tokens:
        batches = token_batches(tokenizer, texts, budget)
        tokens = int(sum(mask.sum() for _, mask in batches))
        converted, convert_seconds = openvino_model(torch_models["float32"].backbone, batches[0])
        sides = {}
        for dtype in dtypes:
            compiled = core.compile_model(converted, "CPU", {
                "INFERENCE_PRECISION_HINT": "f32" if dtype == "float32" else "bf16",
                "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": torch.get_num_threads()})
            backbone = torch_models[dtype].backbone
            sides[f"torch {dtype}"] = (lambda b=backbone: torch_forward(b, batches))
            sides[f"openvino {dtype}"] = (lambda c=compiled: openvino_forward(c, batches))
        reference = sides["torch float32"]()
        for name in [n for n in sides if n.startswith("openvino")]:
            worst, least = agreement(reference, sides[name](), batches)
            print(f"{budget}-token batches, {name} vs torch float32: max |Δ| {worst:.2e}, least cosine {least:.6f}")
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, run in sides.items():
                started = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - started)
        ceilings = gemm_ceilings(resolve_model(None).path)
        print(f"{len(texts)} docstrings, {tokens} tokens in {len(batches)} batches of <= {budget} padded tokens; "
              f"OpenVINO {ov.__version__} conversion {convert_seconds:.1f} s (once per checkpoint); median of {args.repeats}")
        for name, runs in seconds.items():
            rate = tokens / statistics.median(runs)
            dtype = name.split()[-1]
            print(f"  {name:<20} {rate:>9,.0f} tokens/s = {rate / ceilings[dtype]:.0%} of the {dtype} GEMM-only ceiling"
                  f"   (runs {', '.join(f'{s:.2f}' for s in runs)} s)")


if __name__ == "__main__":
    main()

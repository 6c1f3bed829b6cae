"""Does ``torch.compile`` of the one-token decode step pay on this CPU? A probe, not a benchmark.

Decodes 40 greedy steps of the embedded model (bf16, one thread, a transformers ``StaticCache`` of
256 columns, batch B) eagerly or through inductor (``compile``; ``freeze``: with
``torch._inductor.config.freezing``), and prints the warm-up time (first three steps, i.e. the
compile) and ms per step after it.

    python benchmarks/probe_decode_compile.py eager|compile|freeze [B]
"""

from __future__ import annotations

import sys
import time

import torch


def main() -> None:
    from transformers import AutoModelForCausalLM, StaticCache

    from tuneloop.models.loading import resolve_model

    mode = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(1)
    path = resolve_model("smollm2-135m-instruct").path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    cache = StaticCache(config=model.config, max_cache_len=256)
    prompt = torch.randint(0, 1000, (batch, 20))
    mask = torch.zeros(batch, 256, dtype=torch.long)
    mask[:, :20] = 1

    def step(token, position, mask):
        return model(input_ids=token, attention_mask=mask, position_ids=position, cache=cache,
                     use_cache=True).logits[:, -1]

    with torch.inference_mode():
        out = model(input_ids=prompt, attention_mask=mask[:, :20], position_ids=torch.arange(20).expand(batch, 20),
                    cache=cache, use_cache=True, logits_to_keep=1)
    if mode != "eager":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = mode == "freeze"
        step = torch.compile(step, dynamic=False)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    timings = []
    with torch.inference_mode():
        for count in (3, 40):
            start = time.perf_counter()
            for _ in range(count):
                position = int(mask.sum(1)[0])
                mask[:, position] = 1
                token = step(token, torch.full((batch, 1), position), mask).argmax(-1, keepdim=True)
            timings.append(time.perf_counter() - start)
    print(f"{mode} batch {batch}: warm-up {timings[0]:.1f} s; {timings[1] / 40 * 1000:.1f} ms/step; "
          f"{40 * batch / timings[1]:.1f} tokens/s")


if __name__ == "__main__":
    main()

"""Greedy generation with vLLM's offline LLM: the reference the mesh must match token for token.

Usage: python tests/vllm_reference.py MODEL_DIR ID,ID,...[;ID,ID,...] MAX_TOKENS
  -> prints "RESULT id,id,..." for each prompt (prompts separated by ';'), in order.
Engine arguments match the worker's CPU defaults (services/worker/engine/device.py).
"""

import sys


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    model, max_tokens = sys.argv[1], int(sys.argv[3])
    prompts = [[int(x) for x in ids.split(",")] for ids in sys.argv[2].split(";")]
    llm = LLM(model=model, seed=0, enforce_eager=True, kv_cache_memory_bytes=256 * 1024 * 1024, max_num_seqs=64,
              disable_log_stats=True)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    # One at a time: each prompt's tokens as it gets them alone (batching may tip bf16 near-ties).
    for ids in prompts:
        (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
        print("RESULT " + ",".join(map(str, out.outputs[0].token_ids)), flush=True)


if __name__ == "__main__":
    main()

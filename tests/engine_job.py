"""Run greedy requests on a fresh vLLM engine and print tokens/logprobs as JSON.

Used by tests that need a process whose environment differs from the test process,
e.g. vLLM with the plugin absent. Input (stdin): {"model", "requests": [[ids, extra]],
"max_tokens", "logprobs", "engine": {...}}.
"""

import json
import sys

if __name__ == "__main__":
    job = json.loads(sys.stdin.read())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(job["model"], **job["engine"])
    outs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids, _ in job["requests"]],
        [
            SamplingParams(max_tokens=job["max_tokens"], temperature=0.0, ignore_eos=True,
                           logprobs=job.get("logprobs"), extra_args=extra or None)
            for _, extra in job["requests"]
        ],
        use_tqdm=False,
    )
    result = []
    for o in outs:
        c = o.outputs[0]
        lps = [{str(k): v.logprob for k, v in step.items()} for step in (c.logprobs or [])]
        result.append({"tokens": list(c.token_ids), "logprobs": lps})
    print("ADARAS_RESULT " + json.dumps({"outputs": result}), flush=True)

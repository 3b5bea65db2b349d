"""A self-trained reasoning "model organism": a tiny Qwen3 that solves chained 2-digit sums.

No model hub is reachable where this project is built, and a random model has no reasoning
to steer, so this package makes a real one: ``task`` generates verifiable multi-step
arithmetic problems with a written scratchpad (and the character-level tokenizer and chat
template that go with them), ``train`` trains a small Qwen3ForCausalLM on them on CPU into a
directory that both transformers and vLLM load.
"""

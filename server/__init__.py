"""The adaras OpenAI-compatible server: vLLM's own OpenAI app plus first-class steering
fields, validation, audit of what was applied, map listing, metrics and auth."""

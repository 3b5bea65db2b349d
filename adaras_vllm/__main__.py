"""`python -m adaras_vllm`: the same CLI as the `adaras` command."""

from adaras_vllm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

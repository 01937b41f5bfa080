"""`python -m qkv` is the same as the `qkv` command (a worker that re-imports this file as
`__mp_main__` runs none of it, as qkv.command explains)."""

import sys

if __name__ == "__main__":
    from qkv.command import main

    sys.exit(main())

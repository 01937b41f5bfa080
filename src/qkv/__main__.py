"""`python -m qkv` is the same as the `qkv` command."""

import sys

from qkv.cli import main

sys.exit(main())

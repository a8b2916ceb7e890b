"""`python -m kakumei.cli`: the same as the `kakumei` command."""

import sys

from kakumei.cli import main

sys.exit(main())

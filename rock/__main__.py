"""`python -m rock ...` is the `rock` command."""

import sys

from rock.cli import main

sys.exit(main())

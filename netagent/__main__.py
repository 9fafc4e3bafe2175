"""`python -m netagent`: the same as `ipam dhcp`."""

import sys

from .cli import main

sys.exit(main())

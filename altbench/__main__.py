import sys

from altbench.cli import main

sys.exit(main())

import sys

from deepstep.cli import main

sys.exit(main())

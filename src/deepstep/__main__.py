import os
import sys

from deepstep.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, once the run is done and written: leave without the interpreter's teardown,
    # where gloo's worker threads abort about one process in ten ('terminate called without an
    # active exception'; see pytorch/pytorch#190489), which torchrun reports as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)

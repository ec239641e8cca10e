# SPDX-License-Identifier: Apache-2.0
"""CPU decode benchmark: swisslm vs CTranslate2 (int8, float32) vs transformers fp32 eager.

    pip install -e ".[bench]"
    python bench/cpu_decode.py [--batch-sizes 1,8] [--threads 2] [--peers ...]   # = swisslm bench decode

The implementation lives in swisslm.quant.bench so the installed `swisslm bench decode` runs
the same code.
"""

import argparse
import sys

from swisslm.quant.bench import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/cpu_decode.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))

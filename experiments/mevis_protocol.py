"""MeViS trained from scratch -> valid_u scored as the official script -> valid zipped for the server.

    python -m experiments.mevis_protocol                 # on the embedded synthetic benchmark
    python -m experiments.mevis_protocol --real model.path=/path/Wan2.1-T2V-1.3B-Diffusers data.root=/data/mevis
"""

import sys

from rvosflow.protocols import main

if __name__ == "__main__":
    sys.exit(main("mevis"))

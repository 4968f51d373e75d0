import sys

from rvosflow.sweep.cli import main

sys.exit(main())

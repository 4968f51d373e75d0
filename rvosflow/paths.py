"""Default locations, all relative to the project root so a fresh clone works from anywhere."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = PROJECT_ROOT / "data"
SYNTHETIC_ROOT = DATA_ROOT / "synthetic"  # `make data` writes the embedded benchmark here
TINY_BUNDLE_DIR = DATA_ROOT / "tiny-wan"  # shipped in git; `make tiny-wan` reproduces it

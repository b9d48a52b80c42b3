"""dtkd-pipeline: diffusion-to-transformer knowledge distillation for x4 super-resolution.

Stage one (`cache-teacher`) runs the ResShift teacher once and stores its outputs in Zarr;
stage two (`distill`) trains a SwinIR-small student against that cache.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dtkd-pipeline")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

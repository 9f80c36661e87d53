"""evoarena: neuroevolution with compact genomes, locally or on a fleet."""

from .arithmetic import pin as _pin_cpu_arithmetic

__version__ = "0.1.0"

_pin_cpu_arithmetic()  # before torch computes anything in this process: arithmetic.py says why

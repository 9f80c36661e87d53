"""evoarena: neuroevolution with compact genomes, locally or on a fleet."""

__version__ = "0.1.0"
